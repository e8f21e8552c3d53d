//! Configuration errors: reading the file, parsing the TOML, and values
//! refused by validation, placed at the line of their key.

use std::path::PathBuf;

/// A configuration error, with enough context to fix the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrongly typed values.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The TOML parser's message, which gives the line and column.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{path}: {}`{key}`: {message}", line_prefix(.line))]
    Invalid {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The line the key is on (1-based), when it is in the file.
        line: Option<usize>,
        /// The offending key, as `section.key`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn line_prefix(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// A value that validation refused, before it is placed in the file.
#[derive(Debug)]
pub(super) struct Invalid {
    /// `section.key`.
    pub(super) key: &'static str,
    /// Which `[[upstream]]` entry, for keys of one.
    pub(super) entry: Option<usize>,
    /// What is wrong and what is allowed.
    pub(super) message: String,
}

/// A refused value of `key` (not in an `[[upstream]]` entry).
pub(super) fn invalid(key: &'static str, message: String) -> Invalid {
    Invalid {
        key,
        entry: None,
        message,
    }
}

/// The line (1-based) of `key` (`section.key`; in entry `entry` of an
/// array of tables such as `[[upstream]]`) in the TOML `text`, if it is
/// written there.
pub(super) fn line_of(text: &str, key: &str, entry: Option<usize>) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let (section, name) = key.split_once('.')?;
    let root = DeTable::parse(text).ok()?;
    fn find<'i>(table: &DeTable<'i>, name: &str) -> Option<(std::ops::Range<usize>, DeValue<'i>)> {
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == name)
            .map(|(k, v)| (k.span(), v.get_ref().clone()))
    }
    let (section_span, value) = find(root.get_ref(), section)?;
    let table = match (value, entry) {
        (DeValue::Table(t), _) => t,
        (DeValue::Array(a), Some(i)) => match a.get(i)?.get_ref() {
            DeValue::Table(t) => t.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let at = find(&table, name).map_or(section_span.start, |(span, _)| span.start);
    Some(text[..at].matches('\n').count() + 1)
}
