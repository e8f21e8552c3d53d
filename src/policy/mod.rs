//! Who gets an answer, sans-IO: the access list (which client addresses
//! are served, [`access`]) and per-client rate limiting ([`rate_limit`],
//! remembering clients in a bounded [`client_table`]), over one address
//! space for both families ([`cidr`]). [`proto::respond`](crate::proto::respond)
//! asks a worker's [`Policy`] at the right steps of its pipeline (parse →
//! access → mode → rate limit → reply); this module only answers, with
//! time as an argument. No syscalls, no locks, no allocation per request.
#![forbid(unsafe_code)]

pub mod access;
pub mod cidr;
pub mod client_table;
pub mod rate_limit;

use std::net::IpAddr;
use std::sync::Arc;

pub use access::{Access, AccessList, AccessRules};
pub use cidr::{Cidr, CidrError};
pub use rate_limit::{Rate, RateLimit, RateLimiter};

/// What a denied client gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DenyAction {
    /// Nothing.
    #[default]
    Ignore,
    /// A KoD DENY per request (rate-limited like any request when rate
    /// limiting is on).
    Kod,
}

/// The server's protection as configured, compiled once and shared by the
/// workers.
#[derive(Clone, Debug, Default)]
pub struct Protection {
    /// The compiled access list.
    pub access: Arc<AccessList>,
    /// What a denied client gets.
    pub deny_action: DenyAction,
    /// The rate limit, if on.
    pub rate_limit: Option<RateLimit>,
}

impl Protection {
    /// Compiles the access rules; `rate_limit` as given.
    pub fn new(
        rules: &AccessRules,
        deny_action: DenyAction,
        rate_limit: Option<RateLimit>,
    ) -> Protection {
        Protection {
            access: Arc::new(AccessList::new(rules)),
            deny_action,
            rate_limit,
        }
    }

    /// One worker's [`Policy`], with its share of the client table when
    /// `workers` share the clients out (each client address is steered to
    /// one of them).
    pub fn for_worker(&self, workers: usize) -> Policy {
        Policy {
            access: Arc::clone(&self.access),
            deny_kod: self.deny_action == DenyAction::Kod,
            rate_kod: self.rate_limit.is_some_and(|l| l.kod),
            limiter: self
                .rate_limit
                .map(|l| RateLimiter::new(&l, l.clients.div_ceil(workers.max(1)))),
        }
    }
}

/// One worker's policy: the shared access list and its own rate limiter.
pub struct Policy {
    access: Arc<AccessList>,
    deny_kod: bool,
    rate_kod: bool,
    limiter: Option<RateLimiter>,
}

impl Default for Policy {
    /// Everyone served, no rate limit.
    fn default() -> Self {
        Protection::default().for_worker(1)
    }
}

impl Policy {
    /// Whether `from` may be served at all.
    #[inline]
    pub fn access(&self, from: IpAddr) -> Access {
        self.access.check(cidr::to_bits(from))
    }

    /// A denied client gets a KoD DENY (else nothing).
    #[inline]
    pub fn deny_kod(&self) -> bool {
        self.deny_kod
    }

    /// A limited client's let-through requests get a KoD RATE (else a
    /// normal reply).
    #[inline]
    pub fn rate_kod(&self) -> bool {
        self.rate_kod
    }

    /// Counts a request from `from` received at `now` (nanoseconds since
    /// the epoch) against its client's allowance; always
    /// [`Rate::Allowed`] with rate limiting off.
    #[inline]
    pub fn rate(&mut self, from: IpAddr, now: u64) -> Rate {
        match &mut self.limiter {
            Some(l) => l.check(cidr::to_bits(from), now),
            None => Rate::Allowed,
        }
    }

    /// The rate limiter, when rate limiting is on.
    pub fn limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_ref()
    }
}
