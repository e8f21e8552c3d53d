//! Bounding how long a request waits in a worker's socket receive queue.
//!
//! A receive queue sized in bytes holds, past capacity, whatever it holds:
//! 32 MiB of small datagrams is over half a second of work, so under
//! overload every answered request waited that long, its client had
//! likely timed out and retried, and the retry added load. The bound here
//! is in time (`[server] max-queue-delay`):
//!
//! - the queue is sized, by feedback, so that a full queue holds about half
//!   the limit's worth of work: when requests come out older than half the
//!   limit in two intervals running (overload; a single stall passes), the
//!   queue shrinks; when the kernel drops datagrams although
//!   requests come out young (bursts, not overload), it grows. The excess
//!   of an overload is then dropped by the kernel on arrival, cheaply, and
//!   what is answered is answered fast;
//! - a request that waited [`STALE_FACTOR`] times the limit or more when
//!   the worker gets to it is dropped unanswered ([`DropReason::Stale`]).
//!   With the queue bounded that only happens after a stall (the host took
//!   the core away, the process was stopped): the queue then holds
//!   requests whose clients have likely retried, and answering them first
//!   would delay the fresh ones behind. The margin keeps an ordinary
//!   scheduling delay on a busy host from costing replies.
//!
//! Feedback needs receive timestamps; with `timestamping = "none"` the
//! queue keeps its initial size and nothing is dropped as stale.
//!
//! [`DropReason::Stale`]: crate::proto::DropReason::Stale

use std::time::Duration;

use crate::proto::UnixTime;

/// Default `[server] max-queue-delay`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(50);
/// Receive-queue memory the kernel charges per small datagram on loopback
/// (skb truesize, measured with `SO_MEMINFO` on kernel 6.18: 832 bytes for
/// 0–48-byte payloads). Real NICs charge more; the feedback corrects it.
const BYTES_PER_DATAGRAM: usize = 832;
/// Requests per second a worker is assumed to handle before feedback has
/// said otherwise (about one core of this VM).
const ASSUMED_RATE: f64 = 250_000.0;
/// Smallest queue asked for (bytes): a few hundred datagrams.
pub const MIN_BYTES: usize = 256 << 10;
/// Largest queue asked for (bytes).
pub const MAX_BYTES: usize = 32 << 20;
/// A request is stale once it waited this many times the limit.
pub const STALE_FACTOR: i64 = 4;
/// How often the queue size is reconsidered.
const ADJUST_EVERY_NANOS: i64 = 100_000_000;
/// Shrink and growth factors of one adjustment.
const SHRINK: f64 = 0.7;
const GROW: f64 = 1.5;

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
    stale: u64,
    kernel_drops: Option<u64>,
    /// The last interval saw requests older than half the limit.
    was_old: bool,
}

impl QueueBound {
    /// A bound of `limit` (at least 1 ms).
    pub fn new(limit: Duration) -> Self {
        let limit_nanos = limit.as_nanos().clamp(1_000_000, i64::MAX as u128) as i64;
        QueueBound {
            limit_nanos,
            stale_nanos: limit_nanos.saturating_mul(STALE_FACTOR),
            bytes: Self::initial_bytes(limit),
            interval_start: UnixTime::default(),
            oldest_nanos: 0,
            stale: 0,
            kernel_drops: None,
            was_old: false,
        }
    }

    /// The receive queue to start with: half the limit's worth of requests
    /// at [`ASSUMED_RATE`], within [`MIN_BYTES`]..=[`MAX_BYTES`].
    pub fn initial_bytes(limit: Duration) -> usize {
        let datagrams = ASSUMED_RATE * limit.as_secs_f64() / 2.0;
        ((datagrams * BYTES_PER_DATAGRAM as f64) as usize).clamp(MIN_BYTES, MAX_BYTES)
    }

    /// The receive-queue size currently wanted, bytes.
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
        let stale = age > self.stale_nanos;
        self.stale += stale as u64;
        stale
    }

    /// Whether an adjustment is due at `now` (call [`Self::adjust`] then).
    #[inline]
    pub fn due(&self, now: UnixTime) -> bool {
        let elapsed = (now.secs - self.interval_start.secs) * 1_000_000_000 + now.nanos as i64
            - self.interval_start.nanos as i64;
        !(0..ADJUST_EVERY_NANOS).contains(&elapsed)
    }

    /// Ends an adjustment interval at `now`; `kernel_drops` is the kernel's
    /// running count of datagrams dropped on the worker's sockets (queue
    /// full). Returns the new queue size when it should change.
    pub fn adjust(&mut self, now: UnixTime, kernel_drops: u64) -> Option<usize> {
        let dropped = self
            .kernel_drops
            .replace(kernel_drops)
            .is_some_and(|before| kernel_drops > before);
        let oldest = self.oldest_nanos;
        self.interval_start = now;
        self.oldest_nanos = 0;
        self.stale = 0;
        // Old requests in two intervals running: overload, not a stall
        // (a stall passes; shrinking for it would only cost the next burst).
        let old = oldest > self.limit_nanos / 2;
        let overloaded = old && std::mem::replace(&mut self.was_old, old);
        let wanted = if overloaded {
            (self.bytes as f64 * SHRINK) as usize
        } else if dropped && oldest < self.limit_nanos / 4 {
            (self.bytes as f64 * GROW) as usize
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
    fn the_initial_queue_holds_half_the_limit_of_work_within_bounds() {
        let b = QueueBound::initial_bytes(DEFAULT_MAX_DELAY);
        assert_eq!(b, (250_000.0 * 0.025) as usize * BYTES_PER_DATAGRAM);
        assert_eq!(QueueBound::initial_bytes(Duration::ZERO), MIN_BYTES);
        assert_eq!(
            QueueBound::initial_bytes(Duration::from_secs(10)),
            MAX_BYTES
        );
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
    fn overload_shrinks_the_queue_and_bursts_grow_it() {
        let mut q = QueueBound::new(Duration::from_millis(50));
        let start = q.bytes();
        assert!(q.due(at(0)));
        assert_eq!(q.adjust(at(0), 0), None, "first interval: nothing known");
        // A stall: requests come out 40 ms old once. Nothing changes.
        q.is_stale(at(60), at(100));
        assert!(!q.due(at(50)));
        assert!(q.due(at(100)));
        assert_eq!(q.adjust(at(100), 0), None);
        // Overload: the next interval's requests come out old too.
        q.is_stale(at(160), at(199));
        let shrunk = q.adjust(at(200), 500).expect("shrinks");
        assert!(shrunk < start);
        // Young requests and no kernel drops: unchanged.
        q.is_stale(at(299), at(300));
        assert_eq!(q.adjust(at(300), 500), None);
        // Young requests but the kernel dropped some: a burst; grow.
        q.is_stale(at(399), at(400));
        let grown = q.adjust(at(400), 900).expect("grows");
        assert!(grown > shrunk);
        // Shrinking stops at the floor.
        for i in 0..100 {
            let t = 500 + 100 * i;
            q.is_stale(at(t - 60), at(t));
            q.adjust(at(t), 900);
        }
        assert_eq!(q.bytes(), MIN_BYTES);
    }
}
