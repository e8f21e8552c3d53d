//! Per-worker traffic counters. Each worker counts in plain integers and
//! publishes them once per batch into its own cache-line-aligned block of
//! atomics (plain stores, no read-modify-write, no sharing of lines between
//! workers); readers such as the statistics log sum the blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::{DropReason, Kiss};

const DROP_REASONS: usize = DropReason::ALL.len();
const KISS_CODES: usize = Kiss::ALL.len();

/// One worker's totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams received.
    pub received: u64,
    /// Replies handed to the kernel.
    pub replied: u64,
    /// Datagrams dropped, indexed by [`DropReason::index`].
    pub dropped: [u64; DROP_REASONS],
    /// Kiss-o'-death replies handed to the kernel, indexed by
    /// [`Kiss::index`] (not counted in `replied`).
    pub kod: [u64; KISS_CODES],
    /// Requests that arrived without a kernel receive timestamp although
    /// timestamping was on (a clock read stood in).
    pub missing_rx_stamp: u64,
    /// Replies the kernel refused (e.g. send buffer full).
    pub send_errors: u64,
    /// Datagrams the kernel dropped before the worker could read them
    /// (socket receive queue full). Not counted by the worker: whoever
    /// holds the sockets fills it in from the kernel's own per-socket count
    /// (see `socket::kernel_drops`), so no datagram carries it.
    pub kernel_drops: u64,
    /// Times a multishot receive ended and was re-armed (io_uring only;
    /// a steadily growing count means the buffer ring runs dry).
    pub rearms: u64,
    /// Receives the kernel failed (counted and survived; see
    /// [`super::errors`]).
    pub receive_errors: u64,
    /// io_uring instances rebuilt after a ring failure.
    pub ring_restarts: u64,
}

impl Counters {
    /// All drops, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Kiss-o'-death replies, whatever the code.
    pub fn kod_total(&self) -> u64 {
        self.kod.iter().sum()
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Field-wise sum (for totals over workers).
    pub fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.replied += other.replied;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        for (a, b) in self.kod.iter_mut().zip(other.kod) {
            *a += b;
        }
        self.missing_rx_stamp += other.missing_rx_stamp;
        self.send_errors += other.send_errors;
        self.kernel_drops += other.kernel_drops;
        self.rearms += other.rearms;
        self.receive_errors += other.receive_errors;
        self.ring_restarts += other.ring_restarts;
    }
}

impl std::fmt::Display for Counters {
    /// One log-friendly line: `received 10, replied 7, dropped 3
    /// (not_client_mode=3), missing rx stamps 1, send errors 2, …, KoD DENY
    /// 0, KoD RATE 2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, replied {}, dropped {}",
            self.received,
            self.replied,
            self.dropped_total()
        )?;
        let mut sep = " (";
        for reason in DropReason::ALL {
            let n = self.dropped(reason);
            if n > 0 {
                write!(f, "{sep}{}={n}", reason.name())?;
                sep = ", ";
            }
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        write!(
            f,
            ", missing rx stamps {}, send errors {}, receive errors {}, kernel drops {}, \
             re-arms {}, ring restarts {}, KoD DENY {}, KoD RATE {}",
            self.missing_rx_stamp,
            self.send_errors,
            self.receive_errors,
            self.kernel_drops,
            self.rearms,
            self.ring_restarts,
            self.kod[Kiss::Deny.index()],
            self.kod[Kiss::Rate.index()],
        )
    }
}

/// The published copy of one worker's [`Counters`] (all but
/// `kernel_drops`); written only by that worker, read by anyone.
#[repr(align(128))]
#[derive(Default)]
pub struct SharedCounters {
    received: AtomicU64,
    replied: AtomicU64,
    dropped: [AtomicU64; DROP_REASONS],
    kod: [AtomicU64; KISS_CODES],
    missing_rx_stamp: AtomicU64,
    send_errors: AtomicU64,
    rearms: AtomicU64,
    receive_errors: AtomicU64,
    ring_restarts: AtomicU64,
}

impl SharedCounters {
    /// Publishes the worker's current totals (called by the owning worker).
    pub fn publish(&self, c: &Counters) {
        let r = Ordering::Relaxed;
        self.received.store(c.received, r);
        self.replied.store(c.replied, r);
        for (slot, v) in self.dropped.iter().zip(c.dropped) {
            slot.store(v, r);
        }
        for (slot, v) in self.kod.iter().zip(c.kod) {
            slot.store(v, r);
        }
        self.missing_rx_stamp.store(c.missing_rx_stamp, r);
        self.send_errors.store(c.send_errors, r);
        self.rearms.store(c.rearms, r);
        self.receive_errors.store(c.receive_errors, r);
        self.ring_restarts.store(c.ring_restarts, r);
    }

    /// The last published totals.
    pub fn load(&self) -> Counters {
        let r = Ordering::Relaxed;
        Counters {
            received: self.received.load(r),
            replied: self.replied.load(r),
            dropped: std::array::from_fn(|i| self.dropped[i].load(r)),
            kod: std::array::from_fn(|i| self.kod[i].load(r)),
            missing_rx_stamp: self.missing_rx_stamp.load(r),
            send_errors: self.send_errors.load(r),
            kernel_drops: 0,
            rearms: self.rearms.load(r),
            receive_errors: self.receive_errors.load(r),
            ring_restarts: self.ring_restarts.load(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_load_round_trips_and_sums() {
        let mut c = Counters {
            received: 10,
            replied: 7,
            missing_rx_stamp: 1,
            send_errors: 2,
            kernel_drops: 4,
            rearms: 5,
            receive_errors: 6,
            ring_restarts: 7,
            ..Counters::default()
        };
        c.dropped[DropReason::NotClientMode.index()] = 3;
        c.kod[Kiss::Rate.index()] = 2;
        let shared = SharedCounters::default();
        shared.publish(&c);
        assert_eq!(
            shared.load(),
            Counters {
                kernel_drops: 0,
                ..c
            }
        );
        let mut total = Counters::default();
        total.add(&c);
        total.add(&c);
        assert_eq!(total.received, 20);
        assert_eq!(total.dropped(DropReason::NotClientMode), 6);
        assert_eq!(total.dropped_total(), 6);
        assert_eq!(total.kernel_drops, 8);
        assert_eq!(
            c.to_string(),
            "received 10, replied 7, dropped 3 (not_client_mode=3), missing rx stamps 1, \
             send errors 2, receive errors 6, kernel drops 4, re-arms 5, ring restarts 7, \
             KoD DENY 0, KoD RATE 2"
        );
        assert_eq!(total.kod[Kiss::Rate.index()], 4);
        assert_eq!(total.kod_total(), 4);
    }
}
