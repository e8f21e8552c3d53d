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
struct Invalid {
    /// `section.key`.
    key: &'static str,
    /// Which `[[upstream]]` entry, for keys of one.
    entry: Option<usize>,
    message: String,
}

fn invalid(key: &'static str, message: String) -> Invalid {
    Invalid {
        key,
        entry: None,
        message,
    }
}

/// The line (1-based) of `key` (`section.key`; in entry `entry` of an
/// array of tables such as `[[upstream]]`) in the TOML `text`, if it is
/// written there.
fn line_of(text: &str, key: &str, entry: Option<usize>) -> Option<usize> {
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

/// The whole configuration.
///
/// [`Config::default`] is what `fastntpd` runs without `--config`: the
/// `pool.ntp.org` pool as upstream. A configuration *file* lists its own
/// upstreams; one without `[[upstream]]` has none (it serves the local clock
/// at `local-stratum`, or "unsynchronized").
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `[server]`: sockets, workers and I/O.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[clock]`: where the served time comes from.
    #[serde(default)]
    pub clock: ClockConfig,
    /// `[[upstream]]`: the servers and pools to synchronize to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            clock: ClockConfig::default(),
            upstreams: vec![UpstreamConfig {
                address: DEFAULT_POOL.to_owned(),
                kind: UpstreamKind::Pool,
                iburst: true,
                min_poll: DEFAULT_MIN_POLL,
                max_poll: DEFAULT_MAX_POLL,
            }],
        }
    }
}

/// The upstream of the built-in configuration.
pub const DEFAULT_POOL: &str = "pool.ntp.org";
/// Default `min-poll` (log2 s): 64 s.
pub const DEFAULT_MIN_POLL: i8 = 6;
/// Default `max-poll` (log2 s): 1024 s.
pub const DEFAULT_MAX_POLL: i8 = 10;
/// Smallest `min-poll` accepted (62.5 ms: LAN use and tests only).
pub const MIN_POLL_LIMIT: i8 = -4;
/// Largest `max-poll` accepted (36 hours, as ntpd).
pub const MAX_POLL_LIMIT: i8 = 17;
/// `min-poll` below this is logged as a warning (too fast for servers one
/// does not operate).
pub const MIN_POLL_WARN: i8 = 4;
/// The NTP port, used when an upstream address has none.
pub const NTP_PORT: u16 = 123;

/// `[[upstream]]`: one server or pool to synchronize to.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// Host name or address, optionally with `:port` (`[v6]:port` for an
    /// IPv6 address with a port).
    pub address: String,
    /// A single server, or a pool name resolving to several.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Send a burst of 8 requests while the source is unreachable (at start),
    /// for a first synchronization within seconds.
    #[serde(default = "default_true")]
    pub iburst: bool,
    /// Shortest poll interval, log2 seconds.
    #[serde(default = "default_min_poll")]
    pub min_poll: i8,
    /// Longest poll interval, log2 seconds.
    #[serde(default = "default_max_poll")]
    pub max_poll: i8,
}

/// `[[upstream]] kind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// One server (the first address the name resolves to).
    #[default]
    Server,
    /// A pool: up to several of the addresses the name resolves to, each
    /// replaced when it becomes unreachable.
    Pool,
}

impl UpstreamConfig {
    /// Splits `address` into host and port (123 when none is given).
    pub fn host_port(&self) -> Result<(String, u16), AddressError> {
        split_host_port(&self.address)
    }
}

/// Why an `[[upstream]] address` cannot be split into host and port.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing (or only blanks).
    #[error("is empty; give a host name or address")]
    Empty,
    /// The port is not 1–65535.
    #[error("`{address}` has a bad port `{port}` (use 1 to 65535)")]
    BadPort {
        /// The address as written.
        address: String,
        /// The port part.
        port: String,
    },
    /// `[v6` without its `]`.
    #[error("`{0}`: missing `]`")]
    MissingBracket(String),
    /// `[v6]` followed by something other than `:port`.
    #[error("`{0}`: expected `:port` after `]`")]
    ExpectedPort(String),
    /// `:port` without a host.
    #[error("`{0}` has no host")]
    NoHost(String),
}

/// `host`, `host:port`, `a:b::c` (IPv6, no port) or `[a:b::c]:port`.
fn split_host_port(address: &str) -> Result<(String, u16), AddressError> {
    let address = address.trim();
    if address.is_empty() {
        return Err(AddressError::Empty);
    }
    let port_of = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(AddressError::BadPort {
            address: address.to_owned(),
            port: p.to_owned(),
        }),
        Ok(port) => Ok(port),
    };
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddressError::MissingBracket(address.to_owned()))?;
        let port = match after {
            "" => NTP_PORT,
            _ => port_of(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| AddressError::ExpectedPort(address.to_owned()))?,
            )?,
        };
        return Ok((host.to_owned(), port));
    }
    match address.matches(':').count() {
        0 => Ok((address.to_owned(), NTP_PORT)),
        1 => {
            let (host, port) = address.split_once(':').unwrap_or((address, ""));
            if host.is_empty() {
                return Err(AddressError::NoHost(address.to_owned()));
            }
            Ok((host.to_owned(), port_of(port)?))
        }
        _ => Ok((address.to_owned(), NTP_PORT)),
    }
}

fn default_true() -> bool {
    true
}

fn default_min_poll() -> i8 {
    DEFAULT_MIN_POLL
}

fn default_max_poll() -> i8 {
    DEFAULT_MAX_POLL
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
    /// Seconds a request may wait in a receive queue: older ones are
    /// dropped unanswered, and the queues are sized to about this much
    /// work (see `io::queue`).
    #[serde(default = "default_max_queue_delay")]
    pub max_queue_delay: f64,
}

/// Default `[server] max-queue-delay`, seconds.
pub const DEFAULT_MAX_QUEUE_DELAY: f64 = 0.05;
/// Range of `[server] max-queue-delay`, seconds.
pub const MAX_QUEUE_DELAY_RANGE: (f64, f64) = (0.001, 1.0);

fn default_max_queue_delay() -> f64 {
    DEFAULT_MAX_QUEUE_DELAY
}

impl ServerConfig {
    /// `max-queue-delay` as a duration.
    pub fn max_queue_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.max_queue_delay)
    }
}

/// `[clock]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockConfig {
    /// How the served time is steered.
    #[serde(default)]
    pub discipline: DisciplineMode,
    /// Seconds; corrections larger than this are stepped, smaller ones
    /// slewed. 0 = never step (after the first correction in software mode).
    #[serde(default = "default_step_threshold")]
    pub step_threshold: f64,
    /// Seconds; corrections larger than this are refused. 0 = no limit.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: f64,
    /// The first correction after start may exceed `panic-threshold`
    /// (like `ntpd -g`).
    #[serde(default = "default_true")]
    pub first_step_unlimited: bool,
    /// Kernel mode: where the kernel clock's frequency is kept across
    /// restarts (ppm, one number, written atomically).
    #[serde(default)]
    pub drift_file: Option<PathBuf>,
    /// Serve the local clock at this stratum when nothing better is known;
    /// `None` = serve "unsynchronized".
    #[serde(default)]
    pub local_stratum: Option<u8>,
    /// IERS/tzdata `leap-seconds.list`: announces leap seconds (with an
    /// expiry date) independently of the upstreams.
    #[serde(default)]
    pub leap_file: Option<PathBuf>,
}

/// `[clock] discipline`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisciplineMode {
    /// Never touch the kernel clock: serve kernel time plus a correction.
    #[default]
    Software,
    /// Steer the kernel clock (adjtimex; needs CAP_SYS_TIME).
    Kernel,
    /// Another daemon disciplines the kernel clock: serve it as is, with
    /// its synchronization status from adjtimex.
    External,
}

impl DisciplineMode {
    /// The configuration spelling.
    pub const fn name(self) -> &'static str {
        match self {
            DisciplineMode::Software => "software",
            DisciplineMode::Kernel => "kernel",
            DisciplineMode::External => "external",
        }
    }
}

/// Default `step-threshold`, seconds (ntpd's 128 ms).
pub const DEFAULT_STEP_THRESHOLD: f64 = 0.128;
/// Default `panic-threshold`, seconds (ntpd's 1000 s).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 1000.0;

fn default_step_threshold() -> f64 {
    DEFAULT_STEP_THRESHOLD
}

fn default_panic_threshold() -> f64 {
    DEFAULT_PANIC_THRESHOLD
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            discipline: DisciplineMode::Software,
            step_threshold: DEFAULT_STEP_THRESHOLD,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            first_step_unlimited: true,
            drift_file: None,
            local_stratum: None,
            leap_file: None,
        }
    }
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
            max_queue_delay: DEFAULT_MAX_QUEUE_DELAY,
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
        let text =
            crate::files::read_bounded(path, crate::files::MAX_CONFIG_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate().map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            line: line_of(text, e.key, e.entry),
            key: e.key,
            message: e.message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
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
        let (lo, hi) = MAX_QUEUE_DELAY_RANGE;
        let delay = self.server.max_queue_delay;
        if !(lo..=hi).contains(&delay) {
            return Err(invalid(
                "server.max-queue-delay",
                format!("{delay} is out of range; give seconds from {lo} to {hi}"),
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
        self.validate_clock()?;
        self.validate_upstreams()
    }

    fn validate_clock(&self) -> Result<(), Invalid> {
        let clock = &self.clock;
        for (key, value) in [
            ("clock.step-threshold", clock.step_threshold),
            ("clock.panic-threshold", clock.panic_threshold),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(
                    key,
                    format!("{value} is not allowed; give seconds, 0 or more"),
                ));
            }
        }
        if clock.panic_threshold > 0.0 && clock.panic_threshold < clock.step_threshold {
            return Err(invalid(
                "clock.panic-threshold",
                format!(
                    "{} is below step-threshold ({}); every step would be refused",
                    clock.panic_threshold, clock.step_threshold
                ),
            ));
        }
        for (key, path) in [
            ("clock.drift-file", &clock.drift_file),
            ("clock.leap-file", &clock.leap_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key, "is empty; give a file path".into()));
            }
        }
        if clock.discipline == DisciplineMode::External
            && self.upstreams.is_empty()
            && clock.local_stratum.is_none()
        {
            return Err(invalid(
                "clock.discipline",
                "\"external\" needs [[upstream]] entries (to learn the stratum and refid to \
                 serve) or `local-stratum`"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), Invalid> {
        let mut seen = HashSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            validate_upstream(up, &mut seen).map_err(|e| Invalid {
                entry: Some(i),
                ..e
            })?;
        }
        Ok(())
    }

    /// Things that are allowed but probably not meant, one message each
    /// (logged at start and printed by `--check-config`, not errors). The
    /// files named are checked by whoever reads them (see
    /// `server::preflight`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .upstreams
            .iter()
            .filter(|u| u.min_poll < MIN_POLL_WARN)
            .map(|u| {
                format!(
                    "upstream `{}`: min-poll {} polls faster than every {} s; only do this \
                     with servers you operate (LAN, tests)",
                    u.address,
                    u.min_poll,
                    1u32 << MIN_POLL_WARN
                )
            })
            .collect();
        if let (Some(path), mode) = (&self.clock.drift_file, self.clock.discipline) {
            if mode != DisciplineMode::Kernel {
                out.push(format!(
                    "`clock.drift-file` ({}) is only used with discipline = \"kernel\"; \
                     ignored with \"{}\"",
                    path.display(),
                    mode.name()
                ));
            }
        }
        out
    }
}

/// One `[[upstream]]` entry; `seen` holds the (host, port) of the entries
/// before it.
fn validate_upstream(
    up: &UpstreamConfig,
    seen: &mut HashSet<(String, u16)>,
) -> Result<(), Invalid> {
    let (host, port) = up
        .host_port()
        .map_err(|e| invalid("upstream.address", e.to_string()))?;
    if !seen.insert((host.to_ascii_lowercase(), port)) {
        return Err(invalid(
            "upstream.address",
            format!("`{}` is listed twice", up.address),
        ));
    }
    for (key, poll) in [
        ("upstream.min-poll", up.min_poll),
        ("upstream.max-poll", up.max_poll),
    ] {
        if !(MIN_POLL_LIMIT..=MAX_POLL_LIMIT).contains(&poll) {
            return Err(invalid(
                key,
                format!(
                    "{poll} (upstream `{}`) is out of range; use {MIN_POLL_LIMIT} to \
                         {MAX_POLL_LIMIT} (log2 seconds)",
                    up.address
                ),
            ));
        }
    }
    if up.min_poll > up.max_poll {
        return Err(invalid(
            "upstream.min-poll",
            format!(
                "{} is above max-poll {} (upstream `{}`)",
                up.min_poll, up.max_poll, up.address
            ),
        ));
    }
    Ok(())
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
        // A file lists its own upstreams: none here.
        assert_eq!(
            c,
            Config {
                upstreams: Vec::new(),
                ..Config::default()
            }
        );
        assert_eq!(c.clock.discipline, DisciplineMode::Software);
        assert_eq!(c.clock.step_threshold, 0.128);
        assert_eq!(c.clock.panic_threshold, 1000.0);
        assert!(c.clock.first_step_unlimited);
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
    fn built_in_defaults_use_the_pool() {
        let c = Config::default();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].address, "pool.ntp.org");
        assert_eq!(c.upstreams[0].kind, UpstreamKind::Pool);
        assert!(c.upstreams[0].iburst);
        assert_eq!((c.upstreams[0].min_poll, c.upstreams[0].max_poll), (6, 10));
        assert!(c.validate().is_ok());
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn clock_and_upstreams_parse() {
        let c = parse(
            r#"
            [clock]
            discipline = "kernel"
            step-threshold = 0.5
            panic-threshold = 0
            first-step-unlimited = false
            drift-file = "/var/lib/fastntpd/drift"
            leap-file = "/usr/share/zoneinfo/leap-seconds.list"
            [[upstream]]
            address = "ntp.nict.jp"
            [[upstream]]
            address = "[2001:db8::1]:1123"
            kind = "server"
            iburst = false
            min-poll = -4
            max-poll = 0
            [[upstream]]
            address = "2.debian.pool.ntp.org"
            kind = "pool"
            "#,
        )
        .unwrap();
        assert_eq!(c.clock.discipline, DisciplineMode::Kernel);
        assert_eq!(c.clock.step_threshold, 0.5);
        assert_eq!(c.clock.panic_threshold, 0.0);
        assert!(!c.clock.first_step_unlimited);
        assert_eq!(
            c.clock.drift_file.as_deref(),
            Some(Path::new("/var/lib/fastntpd/drift"))
        );
        assert_eq!(c.upstreams.len(), 3);
        let nict = &c.upstreams[0];
        assert_eq!(nict.host_port().unwrap(), ("ntp.nict.jp".into(), 123));
        assert_eq!(
            (nict.kind, nict.iburst, nict.min_poll, nict.max_poll),
            (UpstreamKind::Server, true, 6, 10)
        );
        let v6 = &c.upstreams[1];
        assert_eq!(v6.host_port().unwrap(), ("2001:db8::1".into(), 1123));
        assert_eq!((v6.iburst, v6.min_poll, v6.max_poll), (false, -4, 0));
        assert_eq!(c.upstreams[2].kind, UpstreamKind::Pool);
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("2001:db8::1"));
    }

    #[test]
    fn upstream_addresses_split_into_host_and_port() {
        for (text, host, port) in [
            ("ntp.example", "ntp.example", 123),
            ("127.0.0.1:1123", "127.0.0.1", 1123),
            ("::1", "::1", 123),
            ("[::1]", "::1", 123),
            ("[fe80::1]:5", "fe80::1", 5),
        ] {
            assert_eq!(
                split_host_port(text).unwrap(),
                (host.to_owned(), port),
                "{text}"
            );
        }
        let bad_port = |p: &str| AddressError::BadPort {
            address: format!("host:{p}"),
            port: p.into(),
        };
        for (bad, want) in [
            ("", AddressError::Empty),
            ("host:0", bad_port("0")),
            ("host:x", bad_port("x")),
            ("[::1", AddressError::MissingBracket("[::1".into())),
            ("[::1]x", AddressError::ExpectedPort("[::1]x".into())),
            (":123", AddressError::NoHost(":123".into())),
        ] {
            assert_eq!(split_host_port(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn bad_clock_and_upstream_values_name_their_key() {
        for (text, needle) in [
            ("[clock]\ndiscipline = \"ntpd\"", "software"),
            ("[clock]\nstep-threshold = -1", "clock.step-threshold"),
            ("[clock]\npanic-threshold = nan", "clock.panic-threshold"),
            ("[clock]\npanic-threshold = 0.01", "below step-threshold"),
            ("[clock]\ndrift-file = \"\"", "clock.drift-file"),
            ("[clock]\ndiscipline = \"external\"", "needs [[upstream]]"),
            ("[[upstream]]\nkind = \"pool\"", "address"),
            ("[[upstream]]\naddress = \"a\"\nkind = \"peer\"", "pool"),
            ("[[upstream]]\naddress = \"a:99999\"", "upstream.address"),
            (
                "[[upstream]]\naddress = \"a\"\n[[upstream]]\naddress = \"A:123\"",
                "listed twice",
            ),
            (
                "[[upstream]]\naddress = \"a\"\nmin-poll = -5",
                "upstream.min-poll",
            ),
            (
                "[[upstream]]\naddress = \"a\"\nmax-poll = 18",
                "upstream.max-poll",
            ),
            (
                "[[upstream]]\naddress = \"a\"\nmin-poll = 8\nmax-poll = 7",
                "above max-poll",
            ),
            ("[[upstream]]\naddress = \"a\"\nburst = true", "burst"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(parse("[clock]\ndiscipline = \"external\"\nlocal-stratum = 1").is_ok());
    }

    #[test]
    fn value_errors_name_the_line_of_their_key() {
        let text = "[server]\nworkers = 2\n\n[clock]\nlocal-stratum = 99\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("line 5: `clock.local-stratum`"), "{err}");
        // The second [[upstream]] entry's key, not the first one's.
        let text = "[[upstream]]\naddress = \"a\"\nmin-poll = 3\n[[upstream]]\n\
                    address = \"b\"\nmin-poll = 30\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("line 6: `upstream.min-poll`"), "{err}");
        // A key left at its default: the line of its section.
        let text = "[server]\nworkers = 1\n[clock]\nstep-threshold = 2000\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("line 3: `clock.panic-threshold`"), "{err}");
        let text = "[clock]\nstep-threshold = 5\n";
        let err = parse(&format!("{text}panic-threshold = 2\n")).unwrap_err();
        assert!(err.to_string().contains("line 3:"), "{err}");
    }

    #[test]
    fn a_drift_file_outside_kernel_mode_is_a_warning() {
        let c = parse("[clock]\ndrift-file = \"/var/lib/fastntpd/drift\"\n").unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("only used with discipline = \"kernel\""),
            "{w:?}"
        );
        let c = parse("[clock]\ndiscipline = \"kernel\"\ndrift-file = \"/x\"\n").unwrap();
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Config::load(Path::new("/nonexistent/fastntpd.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/fastntpd.toml"));
    }

    #[test]
    fn an_endless_file_is_refused_with_its_size_limit() {
        let err = Config::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains("larger than 1048576 bytes"),
            "{err}"
        );
    }
}
