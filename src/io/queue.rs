//! Bounding how long a request waits in a worker's socket receive queue.
//!
//! A receive queue sized in bytes holds, past capacity, whatever it holds:
//! 32 MiB of small datagrams is over half a second of work, so under
//! overload every answered request waited that long, its client had
//! likely timed out and retried, and the retry added load. Yet a deep queue
//! is what lets a server ride out a stall (the host taking the core away
//! for tens of milliseconds) without losing a request. So the queue is
//! deep while the server keeps up and bounded in *time* while it does not
//! (`[server] max-queue-delay`):
//!
//! - sustained overload (requests come out older than the limit for
//!   [`OVERLOAD_INTERVALS`] intervals running, a second; a stall passes sooner)
//!   shrinks the queue (by limit / oldest wait, interval by interval) until a full queue holds
//!   about the limit's worth of work. The excess is then dropped by the
//!   kernel on arrival, cheaply, and what is answered is answered fast;
//! - once no request has come out older than the limit for a second (or
//!   the worker was idle that long), the queue is deep again;
//! - a request that waited [`STALE_FACTOR`] times the limit or more when
//!   the worker gets to it is dropped unanswered ([`DropReason::Stale`]):
//!   it waited out a long stall (the process was stopped, the host took the
//!   core away); its client has likely retried, and answering it first
//!   would delay the fresh requests behind it.
//!
//! Both need receive timestamps; with `timestamping = "none"` the queue
//! stays deep and nothing is dropped as stale.
//!
//! [`DropReason::Stale`]: crate::proto::DropReason::Stale

use std::time::Duration;

use crate::proto::UnixTime;

/// Default `[server] max-queue-delay`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(50);
/// Smallest queue asked for (bytes): a few hundred datagrams.
pub const MIN_BYTES: usize = 256 << 10;
/// Largest queue asked for (bytes of kernel memory): the queue while the
/// worker keeps up.
pub const MAX_BYTES: usize = 64 << 20;
/// A request is stale once it waited this many times the limit.
pub const STALE_FACTOR: i64 = 4;
/// How often the queue size is reconsidered.
const ADJUST_EVERY_NANOS: i64 = 100_000_000;
/// Intervals in a row with requests older than the limit that make an
/// overload: a second. A stall passes sooner, and so does the queue a
/// burst leaves when the worker runs close to its capacity (with 0.3 s,
/// fixed-rate runs at 95 % of capacity lost 1–5 % of their requests to a
/// queue shrunk for nothing).
pub const OVERLOAD_INTERVALS: u32 = 10;
/// Time without requests older than the limit after which the queue is
/// deep again (ns).
const CALM_NANOS: i64 = 1_000_000_000;
/// Bounds of one shrinking step (the factor is limit / oldest wait).
const MIN_SHRINK: f64 = 0.25;
const MAX_SHRINK: f64 = 0.8;

/// The time bound of one worker's receive queues (the same for each of its
/// sockets).
#[derive(Clone, Copy, Debug)]
pub struct QueueBound {
    limit_nanos: i64,
    stale_nanos: i64,
    bytes: usize,
    /// Start of the current adjustment interval (zero: not started).
    interval_start: UnixTime,
    /// Oldest request seen this interval, ns.
    oldest_nanos: i64,
    /// Intervals in a row with requests older than the limit.
    streak: u32,
    /// When the last such interval ended.
    last_old: UnixTime,
    /// After a shrink: no other before this (the backlog queued before it
    /// has to drain first, or its old requests would shrink it again).
    hold_until: UnixTime,
}

impl QueueBound {
    /// A bound of `limit` (at least 1 ms).
    pub fn new(limit: Duration) -> Self {
        let limit_nanos = limit.as_nanos().clamp(1_000_000, i64::MAX as u128) as i64;
        QueueBound {
            limit_nanos,
            stale_nanos: limit_nanos.saturating_mul(STALE_FACTOR),
            bytes: MAX_BYTES,
            interval_start: UnixTime::default(),
            oldest_nanos: 0,
            streak: 0,
            last_old: UnixTime::default(),
            hold_until: UnixTime::default(),
        }
    }

    /// The receive-queue size currently wanted, bytes (it starts deep).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A request received at `received` is handled at `now`: whether it is
    /// too old to answer.
    #[inline]
    pub fn is_stale(&mut self, received: UnixTime, now: UnixTime) -> bool {
        let age =
            (now.secs - received.secs) * 1_000_000_000 + now.nanos as i64 - received.nanos as i64;
        if age > self.oldest_nanos {
            self.oldest_nanos = age;
        }
        age > self.stale_nanos
    }

    /// Whether an adjustment is due at `now` (call [`Self::adjust`] then).
    #[inline]
    pub fn due(&self, now: UnixTime) -> bool {
        let elapsed = (now.secs - self.interval_start.secs) * 1_000_000_000 + now.nanos as i64
            - self.interval_start.nanos as i64;
        !(0..ADJUST_EVERY_NANOS).contains(&elapsed)
    }

    /// Ends an adjustment interval at `now`. Returns the new queue size
    /// when it should change.
    pub fn adjust(&mut self, now: UnixTime) -> Option<usize> {
        let oldest = std::mem::take(&mut self.oldest_nanos);
        let old = oldest > self.limit_nanos;
        self.interval_start = now;
        if old {
            self.streak += 1;
            self.last_old = now;
        } else {
            self.streak = 0;
        }
        let calm = (now.secs - self.last_old.secs) * 1_000_000_000 + now.nanos as i64
            - self.last_old.nanos as i64
            >= CALM_NANOS;
        let wanted = if self.streak >= OVERLOAD_INTERVALS && now >= self.hold_until {
            // Straight towards the limit's worth: the oldest request waited
            // about what a full queue holds.
            let toward = (self.limit_nanos as f64 / oldest as f64).clamp(MIN_SHRINK, MAX_SHRINK);
            self.streak = 0;
            self.hold_until = UnixTime::new(
                now.secs + oldest / 1_000_000_000,
                now.nanos + (oldest % 1_000_000_000) as u32,
            );
            (self.bytes as f64 * toward) as usize
        } else if calm {
            MAX_BYTES
        } else {
            self.bytes
        }
        .clamp(MIN_BYTES, MAX_BYTES);
        (wanted != self.bytes).then(|| {
            self.bytes = wanted;
            wanted
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: i64) -> UnixTime {
        UnixTime::new(
            1_800_000_000 + millis / 1000,
            (millis % 1000) as u32 * 1_000_000,
        )
    }

    #[test]
    fn requests_older_than_the_limit_are_stale() {
        let mut q = QueueBound::new(Duration::from_millis(50));
        assert!(!q.is_stale(at(1000), at(1199)));
        assert!(q.is_stale(at(1000), at(1201)));
        // A clock that went back gives a negative age: not stale.
        assert!(!q.is_stale(at(1000), at(990)));
    }

    #[test]
    fn sustained_overload_shrinks_the_queue_and_calm_grows_it_back() {
        let mut q = QueueBound::new(Duration::from_millis(50));
        assert_eq!(q.bytes(), MAX_BYTES, "deep while the server keeps up");
        assert!(q.due(at(0)));
        assert_eq!(q.adjust(at(0)), None);
        let t = std::cell::Cell::new(0);
        let interval = |q: &mut QueueBound, age: i64| {
            t.set(t.get() + 100);
            let now = t.get();
            assert!(!q.due(at(now - 50)));
            q.is_stale(at(now - age), at(now));
            assert!(q.due(at(now)));
            q.adjust(at(now))
        };
        // A stall: requests come out 80 ms old for a while, less than an
        // overload's length. Nothing changes.
        for _ in 0..OVERLOAD_INTERVALS - 1 {
            assert_eq!(interval(&mut q, 80), None);
        }
        assert_eq!(interval(&mut q, 5), None);
        // Overload: old requests for OVERLOAD_INTERVALS in a row.
        for _ in 0..OVERLOAD_INTERVALS - 1 {
            assert_eq!(interval(&mut q, 80), None);
        }
        let first = interval(&mut q, 80).expect("shrinks");
        assert_eq!(first, (MAX_BYTES as f64 * 50.0 / 80.0) as usize);
        // The backlog queued before drains first: old requests right after
        // do not shrink it again at once…
        for _ in 0..OVERLOAD_INTERVALS - 1 {
            assert_eq!(interval(&mut q, 80), None);
        }
        // …but an overload that persists does.
        let second = interval(&mut q, 80).expect("shrinks again");
        assert!(second < first);
        // Down to the floor at most.
        for _ in 0..100 {
            interval(&mut q, 80);
        }
        assert_eq!(q.bytes(), MIN_BYTES);
        // Calm for a second: deep again at once.
        for _ in 0..9 {
            assert_eq!(interval(&mut q, 5), None);
        }
        assert_eq!(interval(&mut q, 5), Some(MAX_BYTES));
        // Idle for a while, then overloaded: shrinks only after three old
        // intervals again.
        let after_idle = t.get() + 5_000;
        q.is_stale(at(after_idle - 80), at(after_idle));
        assert_eq!(q.adjust(at(after_idle)), None);
        assert_eq!(q.bytes(), MAX_BYTES);
    }
}
