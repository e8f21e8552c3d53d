//! The configuration file: TOML with kebab-case keys, unknown keys rejected
//! with their name and line, values checked with a message that names the
//! key. [`Config::default`] is what `fastntpd` runs without `--config`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Most workers a configuration may ask for.
pub const MAX_WORKERS: usize = 1024;

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
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The offending key, as `section.key`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `[server]`: sockets, workers and I/O.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[clock]`: where the served time comes from.
    #[serde(default)]
    pub clock: ClockConfig,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Addresses to answer on (port 0 = pick a free port once, then share it
    /// between all workers).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Number of workers.
    #[serde(default)]
    pub workers: Workers,
    /// I/O backend.
    #[serde(default)]
    pub io: IoBackend,
    /// Source of receive timestamps.
    #[serde(default)]
    pub timestamping: Timestamping,
}

/// `[clock]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockConfig {
    /// Serve the local clock at this stratum when nothing better is known;
    /// `None` = serve "unsynchronized".
    pub local_stratum: Option<u8>,
}

/// How many workers to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workers {
    /// One per core this process may run on.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

/// Which I/O backend the workers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoBackend {
    /// Probe io_uring, fall back to mmsg.
    #[default]
    Auto,
    /// io_uring with multishot receive.
    IoUring,
    /// recvmmsg/sendmmsg, the portable fallback.
    Mmsg,
}

/// Where receive timestamps come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timestamping {
    /// Kernel software receive timestamps (SO_TIMESTAMPING).
    #[default]
    Software,
    /// NIC hardware timestamps.
    Hardware,
    /// A clock read when the worker gets the datagram.
    None,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], 123)),
        SocketAddr::from(([0u16; 8], 123)),
    ]
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            workers: Workers::Auto,
            io: IoBackend::Auto,
            timestamping: Timestamping::Software,
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;
        impl Visitor<'_> for WorkersVisitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "\"auto\" or a number of workers from 1 to {MAX_WORKERS}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                match usize::try_from(v) {
                    Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers::Count(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        d.deserialize_any(WorkersVisitor)
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        };
        let listen = &self.server.listen;
        if listen.is_empty() {
            return Err(invalid(
                "server.listen",
                "needs at least one address".into(),
            ));
        }
        let mut seen = HashSet::new();
        for addr in listen {
            if !seen.insert(addr) {
                return Err(invalid("server.listen", format!("{addr} is listed twice")));
            }
        }
        if self.server.timestamping == Timestamping::Hardware {
            return Err(invalid(
                "server.timestamping",
                "\"hardware\" is not supported yet; use \"software\" (kernel receive \
                 timestamps) or \"none\""
                    .into(),
            ));
        }
        if let Some(s) = self.clock.local_stratum {
            if !(1..=15).contains(&s) {
                return Err(invalid(
                    "clock.local-stratum",
                    format!("{s} is out of range; use 1 to 15"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.server.listen[0].port(), 123);
        assert!(c.server.listen[1].is_ipv6());
        assert_eq!(c.server.workers, Workers::Auto);
        assert_eq!(c.server.io, IoBackend::Auto);
        assert_eq!(c.server.timestamping, Timestamping::Software);
        assert_eq!(c.clock.local_stratum, None);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            [server]
            listen = ["127.0.0.1:1123", "[::1]:1123"]
            workers = 2
            io = "mmsg"
            timestamping = "none"
            [clock]
            local-stratum = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.server.listen[1], "[::1]:1123".parse().unwrap());
        assert_eq!(c.server.workers, Workers::Count(2));
        assert_eq!(c.server.io, IoBackend::Mmsg);
        assert_eq!(c.server.timestamping, Timestamping::None);
        assert_eq!(c.clock.local_stratum, Some(10));
        assert_eq!(
            parse("[server]\nio = \"io-uring\"").unwrap().server.io,
            IoBackend::IoUring
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[server]\nworkers = 1\nlistne = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[sever]\n").unwrap_err().to_string();
        assert!(err.contains("sever") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        for (text, needle) in [
            ("[server]\nworkers = 0", "\"auto\" or a number"),
            ("[server]\nworkers = \"many\"", "\"auto\" or a number"),
            ("[server]\nlisten = [\"127.0.0.1\"]", "line 2"),
            ("[server]\nlisten = []", "needs at least one address"),
            (
                "[server]\nlisten = [\"[::1]:5\", \"[::1]:5\"]",
                "listed twice",
            ),
            ("[server]\nio = \"epoll\"", "io-uring"),
            ("[server]\ntimestamping = \"hardware\"", "not supported yet"),
            ("[clock]\nlocal-stratum = 16", "1 to 15"),
            ("[clock]\nlocal-stratum = 0", "1 to 15"),
            ("[server\n", "line 1"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("test.toml"), "{err}");
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Config::load(Path::new("/nonexistent/fastntpd.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/fastntpd.toml"));
    }
}
