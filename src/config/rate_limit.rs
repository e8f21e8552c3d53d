//! `[rate-limit]`: per-client rate limiting with chrony's `ratelimit`
//! semantics in seconds — keys, defaults, ranges, warnings — and its
//! mapping to [`crate::policy::RateLimit`].

use serde::Deserialize;

use super::error::{invalid, Invalid};
use crate::policy::client_table::ENTRY_BYTES;
use crate::policy::RateLimit;

/// `[rate-limit]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RateLimitConfig {
    /// Off by default (as chrony's `ratelimit`): on, each client address
    /// is also steered to one worker.
    #[serde(default)]
    pub enabled: bool,
    /// Average seconds between requests a client may send.
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Requests a client may send back to back.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// A limited client still gets one request in 2^`leak` answered.
    #[serde(default = "default_leak")]
    pub leak: u8,
    /// The answered requests of a limited client get a KoD RATE.
    #[serde(default)]
    pub kod: bool,
    /// IPv4 prefix bits that count as one client.
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// IPv6 prefix bits that count as one client.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Clients remembered (the oldest are forgotten first).
    #[serde(default = "default_clients")]
    pub clients: usize,
}

/// Default `interval`, seconds (chrony's `ratelimit interval 3` and ntpd's
/// `discard average 3`: 2^3 s).
pub const DEFAULT_INTERVAL: f64 = 8.0;
/// Range of `interval`, seconds.
pub const INTERVAL_RANGE: (f64, f64) = (1e-6, 4096.0);
/// Default `burst` (chrony's).
pub const DEFAULT_BURST: u32 = 8;
/// Largest `burst`.
pub const MAX_BURST: u32 = 65_536;
/// Default `leak` (chrony's: one in four).
pub const DEFAULT_LEAK: u8 = 2;
/// Largest `leak`.
pub const MAX_LEAK: u8 = 16;
/// Default `clients`.
pub const DEFAULT_CLIENTS: usize = 1 << 20;
/// Range of `clients`.
pub const CLIENTS_RANGE: (usize, usize) = (16, 1 << 26);

fn default_interval() -> f64 {
    DEFAULT_INTERVAL
}
fn default_burst() -> u32 {
    DEFAULT_BURST
}
fn default_leak() -> u8 {
    DEFAULT_LEAK
}
fn default_ipv4_prefix() -> u8 {
    32
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_clients() -> usize {
    DEFAULT_CLIENTS
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            interval: DEFAULT_INTERVAL,
            burst: DEFAULT_BURST,
            leak: DEFAULT_LEAK,
            kod: false,
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            clients: DEFAULT_CLIENTS,
        }
    }
}

impl RateLimitConfig {
    /// The limit for [`crate::policy::Protection`], `None` when off.
    pub fn limit(&self) -> Option<RateLimit> {
        self.enabled.then(|| RateLimit {
            interval_nanos: (self.interval * 1e9).round() as u64,
            burst: self.burst,
            leak: self.leak,
            kod: self.kod,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            clients: self.clients,
        })
    }

    /// Memory the client tables take at most, bytes.
    pub fn table_bytes(&self) -> usize {
        self.clients.saturating_mul(ENTRY_BYTES)
    }

    /// Checks every key (also when off, so that turning it on later does
    /// not reveal an old mistake).
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let (lo, hi) = INTERVAL_RANGE;
        if !(lo..=hi).contains(&self.interval) {
            return Err(invalid(
                "rate-limit.interval",
                format!(
                    "{} is out of range; give seconds from {lo} to {hi}",
                    self.interval
                ),
            ));
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return Err(invalid(
                "rate-limit.burst",
                format!(
                    "{} is out of range; give 1 to {MAX_BURST} requests",
                    self.burst
                ),
            ));
        }
        if self.leak > MAX_LEAK {
            return Err(invalid(
                "rate-limit.leak",
                format!(
                    "{} is out of range; give 0 to {MAX_LEAK} (one refused request in 2^leak \
                     is answered)",
                    self.leak
                ),
            ));
        }
        if self.ipv4_prefix > 32 {
            return Err(invalid(
                "rate-limit.ipv4-prefix",
                format!("{} is not an IPv4 prefix length (0–32)", self.ipv4_prefix),
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(invalid(
                "rate-limit.ipv6-prefix",
                format!("{} is not an IPv6 prefix length (0–128)", self.ipv6_prefix),
            ));
        }
        let (lo, hi) = CLIENTS_RANGE;
        if !(lo..=hi).contains(&self.clients) {
            return Err(invalid(
                "rate-limit.clients",
                format!(
                    "{} is out of range; give {lo} to {hi} ({ENTRY_BYTES} bytes each)",
                    self.clients
                ),
            ));
        }
        Ok(())
    }

    /// Allowed but probably not meant.
    pub(super) fn warnings(&self, deny_kod: bool) -> Vec<String> {
        let mut out = Vec::new();
        if !self.enabled {
            if deny_kod {
                out.push(
                    "`[access] deny-action = \"kod\"` without `[rate-limit] enabled`: every \
                     request from a denied client gets a KoD DENY"
                        .to_owned(),
                );
            }
            return out;
        }
        if self.ipv4_prefix < 24 || self.ipv6_prefix < 48 {
            out.push(format!(
                "`[rate-limit] ipv4-prefix = {}` / `ipv6-prefix = {}`: a whole network counts \
                 as one client and shares one allowance",
                self.ipv4_prefix, self.ipv6_prefix
            ));
        }
        if self.leak == 0 {
            out.push(
                "`[rate-limit] leak = 0`: every request over the limit is still answered"
                    .to_owned(),
            );
        }
        out
    }
}
