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
//!   [`OVERLOAD_INTERVALS`] intervals running, and the kernel drops
//!   datagrams at the full queue) shrinks the queue (by limit / oldest
//!   wait) until a full queue holds about the limit's worth of work. A
//!   slow spell that the deep queue absorbs changes nothing (its requests
//!   are answered, late); once the deep queue overflows, its depth is pure
//!   delay, and shrinking it costs no request that was not lost anyway. The
//!   excess is then dropped by the kernel on arrival, cheaply, and what is
//!   answered is answered fast;
//! - once no request has come out older than the limit for a second (or
//!   the worker was idle that long), or when the kernel drops datagrams
//!   while requests come out younger than half the limit (a burst that did
//!   not fit, not an overload), the queue is deep again;
//! - a request that waited [`STALE_AFTER_NANOS`] (a second: a client's
//!   usual timeout) or [`STALE_FACTOR`] times the limit, whichever is
//!   longer, when the worker gets to it is dropped unanswered
//!   ([`DropReason::Stale`]): it waited out a long stall (the process was
//!   stopped, the host took the core away); its client has likely given up
//!   or retried, and answering it first would delay the fresh requests
//!   behind it. Younger ones are answered, late but right: the receive
//!   timestamp was taken on arrival. While the queue is shrunk (an
//!   overload), [`STALE_FACTOR`] times the limit is enough: the backlog the
//!   deep queue gathered before the shrink is worked off at the cost of a
//!   drop, not of a reply, and what comes after is answered sooner.
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
/// A request is stale once it waited this many times the limit…
pub const STALE_FACTOR: i64 = 4;
/// …or this long (ns), whichever is longer. (With 4 × 50 ms alone, the
/// backlog of a short burst past capacity, which a deep queue holds and
/// works off within half a second, was dropped instead of answered.)
pub const STALE_AFTER_NANOS: i64 = 1_000_000_000;
/// How often the queue size is reconsidered.
const ADJUST_EVERY_NANOS: i64 = 100_000_000;
/// Intervals in a row with requests older than the limit that, with the
/// kernel dropping at the full queue, make an overload: half a second. A
/// stall passes sooner. (Without the drop condition, shrinking on old
/// requests alone cost 1–5 % of the requests in fixed-rate runs at 95 % of
/// capacity, and sweeps found 5–20 % less capacity: slow spells of the
/// host that a deep queue rides out shrank it for nothing.)
pub const OVERLOAD_INTERVALS: u32 = 5;
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
    /// Age from which a request is stale: `patient_nanos` while the queue
    /// is deep, `overload_nanos` while it is shrunk.
    stale_nanos: i64,
    patient_nanos: i64,
    overload_nanos: i64,
    bytes: usize,
    /// Start of the current adjustment interval (zero: not started).
    interval_start: UnixTime,
    /// Oldest request seen this interval, ns.
    oldest_nanos: i64,
    /// Intervals in a row with requests older than the limit.
    streak: u32,
    /// When the last such interval ended.
    last_old: UnixTime,
    /// The kernel's drop count at the last adjustment.
    kernel_drops: Option<u64>,
    /// After a shrink: no other before this (the backlog queued before it
    /// has to drain first, or its old requests would shrink it again).
    hold_until: UnixTime,
}

impl QueueBound {
    /// A bound of `limit` (at least 1 ms).
    pub fn new(limit: Duration) -> Self {
        let limit_nanos = limit.as_nanos().clamp(1_000_000, i64::MAX as u128) as i64;
        let overload_nanos = limit_nanos.saturating_mul(STALE_FACTOR);
        let patient_nanos = overload_nanos.max(STALE_AFTER_NANOS);
        QueueBound {
            limit_nanos,
            stale_nanos: patient_nanos,
            patient_nanos,
            overload_nanos,
            bytes: MAX_BYTES,
            interval_start: UnixTime::default(),
            oldest_nanos: 0,
            streak: 0,
            last_old: UnixTime::default(),
            hold_until: UnixTime::default(),
            kernel_drops: None,
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

    /// Ends an adjustment interval at `now`; `kernel_drops` is the kernel's
    /// running count of datagrams dropped at the worker's full queues.
    /// Returns the new queue size when it should change.
    pub fn adjust(&mut self, now: UnixTime, kernel_drops: u64) -> Option<usize> {
        let dropped = self
            .kernel_drops
            .replace(kernel_drops)
            .is_some_and(|before| kernel_drops > before);
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
        let wanted = if self.streak >= OVERLOAD_INTERVALS && dropped && now >= self.hold_until {
            // Straight towards the limit's worth: the oldest request waited
            // about what a full queue holds.
            let toward = (self.limit_nanos as f64 / oldest as f64).clamp(MIN_SHRINK, MAX_SHRINK);
            self.streak = 0;
            self.hold_until = UnixTime::new(
                now.secs + oldest / 1_000_000_000,
                now.nanos + (oldest % 1_000_000_000) as u32,
            );
            (self.bytes as f64 * toward) as usize
        } else if calm || (dropped && oldest < self.limit_nanos / 2) {
            // Deep again: the overload is over, or the queue (not the
            // worker) is what drops: requests come out young, yet a burst
            // did not fit.
            MAX_BYTES
        } else {
            self.bytes
        }
        .clamp(MIN_BYTES, MAX_BYTES);
        (wanted != self.bytes).then(|| {
            self.bytes = wanted;
            self.stale_nanos = if wanted < MAX_BYTES {
                self.overload_nanos
            } else {
                self.patient_nanos
            };
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
        assert!(!q.is_stale(at(1000), at(1999)));
        assert!(q.is_stale(at(1000), at(2001)));
        let mut q = QueueBound::new(Duration::from_millis(500));
        assert!(!q.is_stale(at(1000), at(2999)));
        assert!(q.is_stale(at(1000), at(3001)));
        // A clock that went back gives a negative age: not stale.
        assert!(!q.is_stale(at(1000), at(990)));
    }

    #[test]
    fn sustained_overload_shrinks_the_queue_and_calm_grows_it_back() {
        let mut q = QueueBound::new(Duration::from_millis(50));
        assert_eq!(q.bytes(), MAX_BYTES, "deep while the server keeps up");
        assert!(q.due(at(0)));
        assert_eq!(q.adjust(at(0), 0), None);
        let t = std::cell::Cell::new(0);
        let drops = std::cell::Cell::new(0);
        // One interval whose oldest request waited `age` ms; `dropping`:
        // the kernel dropped datagrams at the full queue meanwhile.
        let interval = |q: &mut QueueBound, age: i64, dropping: bool| {
            t.set(t.get() + 100);
            drops.set(drops.get() + u64::from(dropping) * 900);
            let now = t.get();
            assert!(!q.due(at(now - 50)));
            q.is_stale(at(now - age), at(now));
            assert!(q.due(at(now)));
            q.adjust(at(now), drops.get())
        };
        // A stall: requests come out 80 ms old for a while, less than an
        // overload's length. Nothing changes.
        for _ in 0..OVERLOAD_INTERVALS - 1 {
            assert_eq!(interval(&mut q, 80, true), None);
        }
        assert_eq!(interval(&mut q, 5, false), None);
        // A slow spell the deep queue absorbs (old requests, no drops):
        // however long, the queue stays deep and every request is answered.
        for _ in 0..3 * OVERLOAD_INTERVALS {
            assert_eq!(interval(&mut q, 80, false), None);
        }
        // Overload: old requests for OVERLOAD_INTERVALS in a row, and the
        // deep queue overflows.
        // (Asked of a copy: asking records the age.)
        let stale_at = |q: &QueueBound, age: i64| q.clone().is_stale(at(0), at(age));
        assert!(!stale_at(&q, 999), "patient while deep");
        let first = interval(&mut q, 80, true).expect("shrinks");
        assert!(stale_at(&q, 201), "4 × the limit while shrunk");
        assert_eq!(first, (MAX_BYTES as f64 * 50.0 / 80.0) as usize);
        // The backlog queued before drains first: old requests right after
        // do not shrink it again at once…
        for _ in 0..OVERLOAD_INTERVALS - 1 {
            assert_eq!(interval(&mut q, 80, true), None);
        }
        // …but an overload that persists does.
        let second = interval(&mut q, 80, true).expect("shrinks again");
        assert!(second < first);
        // A burst the small queue could not hold, with young requests:
        // deep again at once.
        assert_eq!(interval(&mut q, 5, true), Some(MAX_BYTES));
        // Old requests with drops (an overload) never do that.
        for _ in 0..3 * OVERLOAD_INTERVALS {
            assert_ne!(interval(&mut q, 80, true), Some(MAX_BYTES));
        }
        // Down to the floor at most.
        for _ in 0..100 {
            interval(&mut q, 80, true);
        }
        assert_eq!(q.bytes(), MIN_BYTES);
        // Calm for a second: deep again at once.
        for _ in 0..9 {
            assert_eq!(interval(&mut q, 5, false), None);
        }
        assert_eq!(interval(&mut q, 5, false), Some(MAX_BYTES));
        assert!(!stale_at(&q, 999), "patient again");
        // Idle for a while, then overloaded: shrinks only after
        // OVERLOAD_INTERVALS old intervals again.
        let after_idle = t.get() + 5_000;
        q.is_stale(at(after_idle - 80), at(after_idle));
        assert_eq!(q.adjust(at(after_idle), drops.get()), None);
        assert_eq!(q.bytes(), MAX_BYTES);
    }
}
