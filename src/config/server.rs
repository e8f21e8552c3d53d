//! `[server]`: the listen sockets, workers, I/O backend, receive
//! timestamps and receive-queue delay — keys, defaults and validation.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::{invalid, Invalid};

/// Most workers a configuration may ask for.
pub const MAX_WORKERS: usize = 1024;

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

impl ServerConfig {
    /// Checks `[server]`.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.listen.is_empty() {
            return Err(invalid(
                "server.listen",
                "needs at least one address".into(),
            ));
        }
        let mut seen = HashSet::new();
        for addr in &self.listen {
            if !seen.insert(addr) {
                return Err(invalid("server.listen", format!("{addr} is listed twice")));
            }
        }
        if self.timestamping == Timestamping::Hardware {
            return Err(invalid(
                "server.timestamping",
                "\"hardware\" is not supported yet; use \"software\" (kernel receive \
                 timestamps) or \"none\""
                    .into(),
            ));
        }
        let (lo, hi) = MAX_QUEUE_DELAY_RANGE;
        let delay = self.max_queue_delay;
        if !(lo..=hi).contains(&delay) {
            return Err(invalid(
                "server.max-queue-delay",
                format!("{delay} is out of range; give seconds from {lo} to {hi}"),
            ));
        }
        Ok(())
    }
}
