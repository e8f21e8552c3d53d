//! The configuration file: TOML with kebab-case keys, unknown keys rejected
//! with their name and line, values checked with a message that names the
//! key. [`Config::default`] is what `fastntpd` runs without `--config`.
//!
//! One module per concern: [`error`] (reading, parsing and validation
//! errors, placed at their line), [`server`] (`[server]`), [`clock`]
//! (`[clock]`), [`upstream`] (`[[upstream]]`), [`access`] (`[access]`),
//! [`rate_limit`] (`[rate-limit]`); this one holds the whole file, its
//! loading and its validation in order, and maps it to the types the
//! sans-IO cores take ([`Config::protection`]).

pub mod access;
pub mod clock;
pub mod error;
pub mod rate_limit;
pub mod server;
pub mod upstream;

use std::path::Path;

use serde::Deserialize;

pub use access::{AccessConfig, AccessDefault, DenyActionConfig, Prefix};
pub use clock::{ClockConfig, DisciplineMode, DEFAULT_PANIC_THRESHOLD, DEFAULT_STEP_THRESHOLD};
pub use error::ConfigError;
use error::{line_of, Invalid};
pub use rate_limit::RateLimitConfig;
pub use server::{
    IoBackend, ServerConfig, Timestamping, Workers, DEFAULT_MAX_QUEUE_DELAY, MAX_QUEUE_DELAY_RANGE,
    MAX_WORKERS,
};
pub use upstream::{
    AddressError, UpstreamConfig, UpstreamKind, DEFAULT_MAX_POLL, DEFAULT_MIN_POLL, DEFAULT_POOL,
    MAX_POLL_LIMIT, MIN_POLL_LIMIT, MIN_POLL_WARN, NTP_PORT,
};

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
    /// `[access]`: which clients are served.
    #[serde(default)]
    pub access: AccessConfig,
    /// `[rate-limit]`: per-client rate limiting.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
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
            access: AccessConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

fn default_true() -> bool {
    true
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

    /// Checks the sections in file order: the first refused value is
    /// reported.
    fn validate(&self) -> Result<(), Invalid> {
        self.server.validate()?;
        self.clock.validate(!self.upstreams.is_empty())?;
        upstream::validate_upstreams(&self.upstreams)?;
        self.rate_limit.validate()
    }

    /// One line saying who is served and how fast, for the start-up log.
    pub fn protection_summary(&self) -> String {
        let a = &self.access;
        let access = if a.allow.is_empty() && a.deny.is_empty() {
            format!(
                "access: everyone {}",
                match a.default {
                    AccessDefault::Allow => "allowed",
                    AccessDefault::Deny => "denied",
                }
            )
        } else {
            format!(
                "access: {} allow and {} deny prefixes, default {}, denied clients get {}",
                a.allow.len(),
                a.deny.len(),
                match a.default {
                    AccessDefault::Allow => "allow",
                    AccessDefault::Deny => "deny",
                },
                match a.deny_action {
                    DenyActionConfig::Ignore => "nothing",
                    DenyActionConfig::Kod => "a KoD DENY",
                }
            )
        };
        let r = &self.rate_limit;
        let rate = if r.enabled {
            format!(
                "rate limit: burst {} then one per {} s per client (/{} IPv4, /{} IPv6), \
                 1 in {} over it answered{}, {} clients remembered",
                r.burst,
                r.interval,
                r.ipv4_prefix,
                r.ipv6_prefix,
                1u64 << r.leak,
                if r.kod { " with a KoD RATE" } else { "" },
                r.clients
            )
        } else {
            "no rate limit".to_owned()
        };
        format!("{access}; {rate}")
    }

    /// The access list and rate limit for the workers.
    pub fn protection(&self) -> crate::policy::Protection {
        crate::policy::Protection::new(
            &self.access.rules(),
            self.access.deny_action(),
            self.rate_limit.limit(),
        )
    }

    /// Things that are allowed but probably not meant, one message each
    /// (logged at start and printed by `--check-config`, not errors). The
    /// files named are checked by whoever reads them (see
    /// `server::preflight`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = upstream::upstream_warnings(&self.upstreams);
        out.extend(self.clock.warning());
        out.extend(self.access.warning());
        out.extend(
            self.rate_limit
                .warnings(self.access.deny_action == DenyActionConfig::Kod),
        );
        out
    }
}

#[cfg(test)]
mod tests;
