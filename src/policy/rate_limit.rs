//! Per-client rate limiting with chrony's `ratelimit` semantics in
//! seconds: a client may send `burst` requests back to back and then one
//! per `interval` on average; past that its requests are refused, except
//! one in 2^`leak`, which is let through (as a normal reply, or as a KoD
//! RATE when `kod` is on) so that a flood spoofing a victim's address
//! cannot silence the victim. A refused request gets nothing, so no client
//! ever gets more replies than it sent, and a KoD goes to a limited client
//! at most once per 2^`leak` of its refused requests.
//!
//! The allowance is the generic cell rate algorithm (a token bucket kept
//! as one timestamp): each client's entry holds the time its allowance
//! would be back to full ("theoretical arrival time"); a request at `now`
//! is allowed when that time, moved on by one interval, is no more than
//! `burst` intervals ahead of `now`. Time comes from the caller (the
//! request's receive time); a clock going backwards only delays refills.

use super::cidr::client_key;
use super::client_table::ClientTable;

/// The rate limit as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Average nanoseconds between requests a client may send.
    pub interval_nanos: u64,
    /// Requests a client may send back to back (at least 1).
    pub burst: u32,
    /// One refused request in 2^`leak` is let through.
    pub leak: u8,
    /// Let-through requests of a limited client get a KoD RATE instead of
    /// a normal reply.
    pub kod: bool,
    /// IPv4 prefix bits that count as one client.
    pub ipv4_prefix: u8,
    /// IPv6 prefix bits that count as one client.
    pub ipv6_prefix: u8,
    /// Clients remembered (over all workers).
    pub clients: usize,
}

/// The latest time the limiter counts with, nanoseconds since the epoch;
/// later times count as this one.
const LATEST: u64 = u64::MAX / 2;

/// What the rate limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Within the client's allowance.
    Allowed,
    /// Over it, but this one is let through (see [`RateLimit::leak`]).
    Leaked,
    /// Over it: send nothing.
    Refused,
}

/// One worker's rate limiter: its own client table, no sharing. Clients
/// are steered to workers by address, so each client meets one limiter.
pub struct RateLimiter {
    table: ClientTable,
    interval: u64,
    /// `burst` intervals: how far ahead of now the allowance may run.
    window: u64,
    leak_mask: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl RateLimiter {
    /// A limiter for `limit` with room for `clients` clients (this worker's
    /// share of [`RateLimit::clients`]).
    pub fn new(limit: &RateLimit, clients: usize) -> RateLimiter {
        let interval = limit.interval_nanos.max(1);
        RateLimiter {
            table: ClientTable::new(clients),
            interval,
            window: interval.saturating_mul(u64::from(limit.burst.max(1))),
            leak_mask: (1u32 << limit.leak.min(31)) - 1,
            ipv4_prefix: limit.ipv4_prefix,
            ipv6_prefix: limit.ipv6_prefix,
        }
    }

    /// Counts one request from `addr` (128 bits, see
    /// [`to_bits`](super::cidr::to_bits)) received at `now` (nanoseconds
    /// since the epoch) and says whether it may be answered.
    #[inline]
    pub fn check(&mut self, addr: u128, now: u64) -> Rate {
        // Far beyond any real clock (year 2262), so that the arithmetic
        // below never saturates: a saturated allowance would let every
        // request through (found by fuzzing with absurd receive times).
        let now = now.min(LATEST);
        let key = client_key(addr, self.ipv4_prefix, self.ipv6_prefix);
        let entry = self.table.entry(key);
        // A fresh entry (tat 0) starts with a full allowance.
        let next = entry.tat.max(now).saturating_add(self.interval);
        if next.saturating_sub(now) <= self.window {
            entry.tat = next;
            return Rate::Allowed;
        }
        // Counted over all of the client's refused requests (not reset
        // when one is allowed), so exactly one in 2^leak is let through.
        entry.limited = entry.limited.wrapping_add(1);
        if entry.limited & self.leak_mask == 0 {
            Rate::Leaked
        } else {
            Rate::Refused
        }
    }

    /// The client table (for statistics and a view of the top talkers).
    pub fn table(&self) -> &ClientTable {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::super::cidr::to_bits;
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_800_000_000 * 1_000_000_000;

    fn limit(interval_ms: u64, burst: u32, leak: u8) -> RateLimit {
        RateLimit {
            interval_nanos: interval_ms * MS,
            burst,
            leak,
            kod: true,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            clients: 1024,
        }
    }

    fn addr(s: &str) -> u128 {
        to_bits(s.parse().unwrap())
    }

    /// Sends `n` requests from `from`, `gap_ms` apart from `start`; counts
    /// the outcomes (allowed, leaked, refused).
    fn send(l: &mut RateLimiter, from: u128, start: u64, n: u64, gap_ms: u64) -> [u64; 3] {
        let mut out = [0; 3];
        for k in 0..n {
            match l.check(from, start + k * gap_ms * MS) {
                Rate::Allowed => out[0] += 1,
                Rate::Leaked => out[1] += 1,
                Rate::Refused => out[2] += 1,
            }
        }
        out
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let mut l = RateLimiter::new(&limit(100, 8, 2), 1024);
        // 10 s at 10× the allowed rate: 8 + 100 allowed.
        let [allowed, leaked, refused] = send(&mut l, addr("192.0.2.1"), T0, 1000, 10);
        assert!((107..=109).contains(&allowed), "{allowed}");
        // One in four of the rest is let through.
        assert_eq!(leaked, (1000 - allowed) / 4);
        assert_eq!(allowed + leaked + refused, 1000);
    }

    #[test]
    fn a_client_within_its_rate_is_never_limited() {
        let mut l = RateLimiter::new(&limit(100, 1, 2), 1024);
        assert_eq!(send(&mut l, addr("2001:db8::1"), T0, 500, 100), [500, 0, 0]);
    }

    #[test]
    fn an_idle_client_gets_its_burst_back() {
        let mut l = RateLimiter::new(&limit(100, 4, 2), 1024);
        let a = addr("192.0.2.1");
        assert_eq!(send(&mut l, a, T0, 10, 0)[0], 4);
        assert_eq!(send(&mut l, a, T0 + 1000 * MS, 10, 0)[0], 4);
    }

    #[test]
    fn clients_are_counted_by_prefix() {
        let mut l = RateLimiter::new(&limit(1000, 2, 1), 1024);
        // Two hosts of one IPv6 /64 share an allowance; another /64 has its own.
        assert_eq!(send(&mut l, addr("2001:db8:1:1::1"), T0, 2, 0)[0], 2);
        assert_eq!(send(&mut l, addr("2001:db8:1:1::2"), T0, 2, 0)[0], 0);
        assert_eq!(send(&mut l, addr("2001:db8:1:2::1"), T0, 2, 0)[0], 2);
        assert_eq!(send(&mut l, addr("192.0.2.1"), T0, 2, 0)[0], 2);
        assert_eq!(send(&mut l, addr("192.0.2.2"), T0, 2, 0)[0], 2);
    }

    #[test]
    fn absurd_times_still_limit() {
        let mut l = RateLimiter::new(&limit(1000, 2, 2), 1024);
        let a = addr("192.0.2.1");
        assert_eq!(send(&mut l, a, u64::MAX, 10, 0), [2, 2, 6]);
        assert_eq!(send(&mut l, a, LATEST + 1, 10, 0), [0, 2, 8]);
    }

    #[test]
    fn leak_zero_lets_every_refused_request_through_and_time_going_back_does_not_refill() {
        let mut l = RateLimiter::new(&limit(1000, 1, 0), 1024);
        let a = addr("192.0.2.1");
        assert_eq!(send(&mut l, a, T0, 5, 0), [1, 4, 0]);
        assert_eq!(send(&mut l, a, T0 - 5000 * MS, 5, 0), [0, 5, 0]);
    }
}
