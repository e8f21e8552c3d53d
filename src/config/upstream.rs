//! `[[upstream]]`: the servers and pools to synchronize to — their keys
//! and defaults, splitting `address` into host and port, and their
//! validation (no entry twice, poll intervals in range).

use std::collections::HashSet;

use serde::Deserialize;

use super::default_true;
use super::error::{invalid, Invalid};

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
pub(super) fn split_host_port(address: &str) -> Result<(String, u16), AddressError> {
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

fn default_min_poll() -> i8 {
    DEFAULT_MIN_POLL
}

fn default_max_poll() -> i8 {
    DEFAULT_MAX_POLL
}

/// Checks the `[[upstream]]` entries, naming the entry of a refused key.
pub(super) fn validate_upstreams(upstreams: &[UpstreamConfig]) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (i, up) in upstreams.iter().enumerate() {
        validate_upstream(up, &mut seen).map_err(|e| Invalid {
            entry: Some(i),
            ..e
        })?;
    }
    Ok(())
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

/// Entries polling faster than [`MIN_POLL_WARN`] allows without a
/// warning, one message each.
pub(super) fn upstream_warnings(upstreams: &[UpstreamConfig]) -> Vec<String> {
    upstreams
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
        .collect()
}
