//! The `config` target: any UTF-8 text through `Config::parse`, as
//! `fastntpd --config` and `--check-config` do. It must return a
//! configuration or an error (never panic), and an error must read well: a
//! line it names is in the file.

use fastntp::config::{Config, ConfigError};
use std::path::Path;

/// Runs one input; panics on a broken rule. Non-UTF-8 input is skipped
/// (the server reads the file into a `String` and refuses it earlier).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        // What `--check-config` prints for a good file.
        Ok(config) => drop(config.warnings()),
        Err(error) => {
            if let Err(broken) = verify_error(text, &error) {
                panic!("{broken}: {error}");
            }
        }
    }
}

/// Checks what an operator reads in an error for `text`; `Err` names the
/// broken rule.
pub fn verify_error(text: &str, error: &ConfigError) -> Result<(), &'static str> {
    if error.to_string().is_empty() {
        return Err("empty error message");
    }
    if let ConfigError::Invalid {
        line: Some(line), ..
    } = error
    {
        let lines = text.matches('\n').count() + 1;
        if !(1..=lines).contains(line) {
            return Err("error names a line that is not in the file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn invalid(line: Option<usize>) -> ConfigError {
        ConfigError::Invalid {
            path: PathBuf::from("fuzz.toml"),
            line,
            key: "clock.local-stratum",
            message: "must be 1–15".into(),
        }
    }

    #[test]
    fn a_line_outside_the_file_is_caught() {
        let text = "[clock]\nlocal-stratum = 16\n";
        assert_eq!(verify_error(text, &invalid(Some(2))), Ok(()));
        assert_eq!(verify_error(text, &invalid(None)), Ok(()));
        assert!(verify_error(text, &invalid(Some(0))).is_err());
        assert!(verify_error(text, &invalid(Some(4))).is_err());
    }

    #[test]
    fn refused_value_is_reported_at_its_line() {
        let text = "# x\n[clock]\nlocal-stratum = 16\n";
        let error = Config::parse(text, Path::new("fuzz.toml")).unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { line: Some(3), .. }),
            "{error:?}"
        );
        check(text.as_bytes());
    }
}
