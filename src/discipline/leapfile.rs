//! The IERS / tzdata `leap-seconds.list` file: which leap seconds happened
//! or are scheduled, and until when the list is known to be complete (its
//! `#@` expiry line). Lines are `NTP-seconds TAI-UTC [# comment]`; each
//! NTP time is the first instant at which the new TAI−UTC holds, i.e. the
//! midnight right after the leap second. The `#h` hash is not verified.

use std::path::{Path, PathBuf};

use crate::proto::time::NTP_UNIX_OFFSET;
use crate::proto::LeapIndicator;

/// Why a leap-second file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LeapFileError {
    /// It could not be read.
    #[error("cannot read leap-second file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is neither a comment nor `seconds offset`.
    #[error("leap-second file, line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No `#@` expiry line, or no entries.
    #[error("leap-second file has no {0}")]
    Incomplete(&'static str),
}

/// A parsed leap-second list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeapTable {
    /// Unix time after which the list may be missing leap seconds.
    pub expires: i64,
    /// (Unix time the new offset starts, TAI − UTC from then), ascending.
    pub entries: Vec<(i64, i32)>,
}

impl LeapTable {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<LeapTable, LeapFileError> {
        let text = crate::files::read_bounded(path, crate::files::MAX_LEAP_FILE_BYTES).map_err(
            |source| LeapFileError::Read {
                path: path.to_owned(),
                source,
            },
        )?;
        LeapTable::parse(&text)
    }

    /// Parses the text of a leap-second list.
    pub fn parse(text: &str) -> Result<LeapTable, LeapFileError> {
        let mut expires = None;
        let mut entries: Vec<(i64, i32)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| LeapFileError::Parse {
                line: i + 1,
                message,
            };
            if let Some(rest) = line.strip_prefix("#@") {
                let secs: i64 = rest
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("bad expiry `{}`", rest.trim())))?;
                expires = Some(secs - NTP_UNIX_OFFSET);
                continue;
            }
            let data = line.split('#').next().unwrap_or("").trim();
            if data.is_empty() {
                continue;
            }
            let mut fields = data.split_whitespace();
            let (Some(secs), Some(offset), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(format!("expected `seconds offset`, got `{data}`")));
            };
            let secs: i64 = secs
                .parse()
                .map_err(|_| bad(format!("bad NTP seconds `{secs}`")))?;
            let offset: i32 = offset
                .parse()
                .map_err(|_| bad(format!("bad TAI-UTC offset `{offset}`")))?;
            if entries
                .last()
                .is_some_and(|&(t, _)| t >= secs - NTP_UNIX_OFFSET)
            {
                return Err(bad("entries are not in ascending order".into()));
            }
            entries.push((secs - NTP_UNIX_OFFSET, offset));
        }
        let expires = expires.ok_or(LeapFileError::Incomplete("`#@` expiry line"))?;
        if entries.is_empty() {
            return Err(LeapFileError::Incomplete("entries"));
        }
        Ok(LeapTable { expires, entries })
    }

    /// Whether the list is past its expiry at Unix time `now`.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires
    }

    /// The leap second at the end of the UTC day containing Unix time
    /// `now`: `InsertSecond`, `DeleteSecond`, or `NoWarning`.
    pub fn leap_at_end_of_day(&self, now: i64) -> LeapIndicator {
        let next_midnight = (now.div_euclid(86_400) + 1) * 86_400;
        let Some(pos) = self.entries.iter().position(|&(t, _)| t == next_midnight) else {
            return LeapIndicator::NoWarning;
        };
        let before = match pos {
            0 => return LeapIndicator::NoWarning,
            p => self.entries[p - 1].1,
        };
        match self.entries[pos].1 - before {
            1 => LeapIndicator::InsertSecond,
            -1 => LeapIndicator::DeleteSecond,
            _ => LeapIndicator::NoWarning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
#\tcomment
#$\t 3676924800
#@\t3991593600
2272060800\t10\t# 1 Jan 1972
3644697600\t36\t# 1 Jul 2015
3692217600\t37\t# 1 Jan 2017
#h\t49db2447 571e5e1b 2f002a53 9c8da8e4 39b8e49e
";

    /// 2016-12-31T12:00:00Z and 2017-01-01T00:00:00Z as Unix times.
    const NOON_BEFORE_LEAP: i64 = 1_483_185_600;
    const AFTER_LEAP: i64 = 1_483_228_800;

    #[test]
    fn parses_entries_and_expiry() {
        let t = LeapTable::parse(SAMPLE).unwrap();
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.entries[2], (AFTER_LEAP, 37));
        // 3991593600 NTP = 2026-06-28T00:00:00Z
        assert_eq!(t.expires, 1_782_604_800);
        assert!(t.expired(1_790_000_000));
        assert!(!t.expired(1_700_000_000));
    }

    #[test]
    fn announces_the_leap_only_on_its_day() {
        let t = LeapTable::parse(SAMPLE).unwrap();
        assert_eq!(
            t.leap_at_end_of_day(NOON_BEFORE_LEAP),
            LeapIndicator::InsertSecond
        );
        assert_eq!(
            t.leap_at_end_of_day(AFTER_LEAP - 1),
            LeapIndicator::InsertSecond
        );
        assert_eq!(t.leap_at_end_of_day(AFTER_LEAP), LeapIndicator::NoWarning);
        assert_eq!(
            t.leap_at_end_of_day(NOON_BEFORE_LEAP - 86_400),
            LeapIndicator::NoWarning
        );
        // The first entry is the start of the list, not a leap.
        assert_eq!(
            t.leap_at_end_of_day(63_072_000 - 10),
            LeapIndicator::NoWarning
        );
    }

    #[test]
    fn a_negative_leap_is_a_deletion() {
        let text = "#@ 4000000000\n3692217600 37\n3723753600 36\n";
        let t = LeapTable::parse(text).unwrap();
        assert_eq!(
            t.leap_at_end_of_day(3_723_753_600 - NTP_UNIX_OFFSET - 5),
            LeapIndicator::DeleteSecond
        );
    }

    #[test]
    fn malformed_files_are_reported_with_their_line() {
        for (text, needle) in [
            ("#@ 1\n3692217600\n", "line 2"),
            ("#@ x\n", "bad expiry"),
            ("#@ 1\n3692217600 37\n3644697600 36\n", "ascending"),
            ("3692217600 37\n", "expiry"),
            ("#@ 4000000000\n", "entries"),
        ] {
            let err = LeapTable::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_endless_file_is_refused_with_its_size_limit() {
        let err = LeapTable::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, LeapFileError::Read { .. }));
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn the_system_list_parses_when_present() {
        let path = Path::new("/usr/share/zoneinfo/leap-seconds.list");
        if path.exists() {
            let t = LeapTable::load(path).unwrap();
            assert!(t.entries.len() >= 28);
            assert_eq!(t.entries[0].1, 10);
        }
    }
}
