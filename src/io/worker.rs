//! The part of a worker that every I/O backend shares: for each batch, take
//! the current [`ServerState`] from the snapshot; for each datagram, pick
//! its receive time, run [`proto::respond`](crate::proto::respond) and
//! count the outcome; after the batch, publish the counters. Backends only
//! move bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::counters::{Counters, SharedCounters};
use super::txtime::{ChunkLength, Probe, TxSchedule};
use crate::clock;
use crate::proto::{self, DropReason, ServerState, UnixTime, Verdict, HEADER_LEN};
use crate::snapshot;

/// Protocol glue and counters of one worker thread.
pub struct Worker {
    snapshot: snapshot::Reader,
    state: ServerState,
    expect_stamps: bool,
    counters: Counters,
    shared: Arc<SharedCounters>,
    /// When a send failure was last logged.
    last_send_warning: Option<Instant>,
    /// Snapshot version `state` was loaded at.
    version: u64,
    /// The `t0` of the last chunk stamped (paces the transmit probes).
    last_t0: UnixTime,
    tx_schedule: TxSchedule,
    chunk_length: ChunkLength,
    /// When the next transmit-timestamp sample is due.
    next_tx_sample: UnixTime,
}

/// How often one reply is sampled for its kernel transmit timestamp.
const TX_SAMPLE_INTERVAL_NANOS: u32 = 100_000_000;

/// Send failures are logged at most this often (they are always counted).
const SEND_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// One received datagram, as a backend hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    /// The payload (possibly cut at the buffer size, see `truncated`).
    pub payload: &'a [u8],
    /// The datagram was larger than the receive buffer.
    pub truncated: bool,
    /// Kernel receive timestamp, if one came with it.
    pub rx_stamp: Option<UnixTime>,
}

impl Worker {
    /// A worker reading `snapshot`, publishing its counters to `shared`.
    /// `expect_stamps`: kernel timestamps were requested, so a missing one
    /// is counted.
    pub fn new(
        snapshot: snapshot::Reader,
        expect_stamps: bool,
        shared: Arc<SharedCounters>,
    ) -> Self {
        let version = snapshot.version();
        let state = snapshot.load();
        Worker {
            snapshot,
            state,
            expect_stamps,
            counters: Counters::default(),
            shared,
            last_send_warning: None,
            version,
            last_t0: UnixTime::default(),
            tx_schedule: TxSchedule::default(),
            chunk_length: ChunkLength::default(),
            next_tx_sample: UnixTime::default(),
        }
    }

    /// Starts a batch: picks up the latest published state, if a new one
    /// was published.
    pub fn begin_batch(&mut self) {
        let version = self.snapshot.version();
        if version != self.version {
            self.state = self.snapshot.load();
            self.version = version;
        }
    }

    /// Handles one datagram; returns whether `reply` holds a reply to send.
    pub fn handle(&mut self, dgram: Datagram<'_>, reply: &mut [u8; HEADER_LEN]) -> bool {
        self.counters.received += 1;
        if dgram.truncated {
            self.count_drop(DropReason::Oversize);
            return false;
        }
        let received = match dgram.rx_stamp {
            Some(t) => t,
            None => {
                if self.expect_stamps {
                    self.counters.missing_rx_stamp += 1;
                }
                clock::now()
            }
        };
        // The transmit time is a placeholder here: every reply is stamped
        // with its predicted departure before it is sent (stamp_transmit).
        match proto::respond(dgram.payload, received, &self.state, || received, reply) {
            Verdict::Reply => {
                self.counters.replied += 1;
                true
            }
            Verdict::Drop(reason) => {
                self.count_drop(reason);
                false
            }
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        self.counters.dropped[reason.index()] += 1;
    }

    /// Replies that were built but could not be sent (`errno` says why):
    /// they were counted as replied, so move them to send errors. Logged at
    /// most once a minute.
    #[inline]
    pub fn note_send_failures(&mut self, failed: u64, errno: i32) {
        // Called after every send; failures are rare.
        if failed != 0 {
            self.count_send_failures(failed, errno);
        }
    }

    #[cold]
    fn count_send_failures(&mut self, failed: u64, errno: i32) {
        self.counters.replied = self.counters.replied.saturating_sub(failed);
        self.counters.send_errors += failed;
        let due = self
            .last_send_warning
            .is_none_or(|t| t.elapsed() >= SEND_WARNING_INTERVAL);
        if due {
            self.last_send_warning = Some(Instant::now());
            let err = std::io::Error::from_raw_os_error(errno);
            warn!(
                "replies could not be sent ({err}); {} send errors so far (logged at most once a minute)",
                self.counters.send_errors
            );
        }
    }

    /// How many of a batch's `replies` to stamp and hand to the kernel at
    /// once (see [`ChunkLength`]; the clock is the last chunk's stamp time).
    pub fn send_chunk(&mut self, replies: usize) -> usize {
        self.chunk_length.for_batch(self.last_t0, replies)
    }

    /// Stamps the reply at `position` of a batch stamped at `t0` with its
    /// predicted departure (see [`TxSchedule`]). Every reply from
    /// [`Worker::handle`] must pass through here before it is sent.
    pub fn stamp_transmit(&mut self, reply: &mut [u8; HEADER_LEN], t0: UnixTime, position: usize) {
        self.last_t0 = t0;
        let departure = self.tx_schedule.departure(t0, position);
        proto::restamp_transmit(reply, &self.state, departure);
    }

    /// Which reply of a chunk of `len` replies should ask for its kernel
    /// transmit timestamp, if one should (a few times a second, when kernel
    /// timestamps are on).
    pub fn tx_probe_due(&mut self, len: usize) -> Option<Probe> {
        if len == 0 || !self.expect_stamps || self.last_t0 < self.next_tx_sample {
            return None;
        }
        let t = self.last_t0;
        self.next_tx_sample =
            UnixTime::new(t.secs, t.nanos.saturating_add(TX_SAMPLE_INTERVAL_NANOS));
        Some(self.tx_schedule.next_probe(len))
    }

    /// Learns from `probe`, the reply of a chunk stamped at `t0` that left
    /// at `departed`; `probe_cost` is what asking for the timestamp cost it
    /// (see [`SendProbe`](super::txtime::SendProbe)).
    pub fn observe_departure(
        &mut self,
        probe: Probe,
        t0: UnixTime,
        departed: UnixTime,
        probe_cost: Duration,
    ) {
        self.tx_schedule.observe(probe, t0, departed, probe_cost);
    }

    /// A multishot receive ended and is being re-armed.
    pub fn note_rearm(&mut self) {
        self.counters.rearms += 1;
    }

    /// Ends a batch: publishes the counters.
    pub fn end_batch(&self) {
        self.shared.publish(&self.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(expect_stamps: bool) -> (Worker, Arc<SharedCounters>) {
        let (_publisher, reader) = snapshot::new(&ServerState::unsynchronized(-20));
        let shared = Arc::new(SharedCounters::default());
        (
            Worker::new(reader, expect_stamps, Arc::clone(&shared)),
            shared,
        )
    }

    fn request() -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = 0x23;
        r
    }

    #[test]
    fn counts_replies_drops_and_missing_stamps() {
        let (mut w, shared) = worker(true);
        let mut out = [0u8; 48];
        w.begin_batch();
        let stamp = Some(clock::now());
        let req = request();
        let ok = Datagram {
            payload: &req,
            truncated: false,
            rx_stamp: stamp,
        };
        assert!(w.handle(ok, &mut out));
        assert!(w.handle(
            Datagram {
                rx_stamp: None,
                ..ok
            },
            &mut out
        ));
        assert!(!w.handle(
            Datagram {
                payload: &req[..40],
                ..ok
            },
            &mut out
        ));
        assert!(!w.handle(
            Datagram {
                truncated: true,
                ..ok
            },
            &mut out
        ));
        w.note_send_failures(1, libc::EAGAIN);
        w.note_send_failures(0, libc::EAGAIN);
        w.note_rearm();
        w.end_batch();
        let c = shared.load();
        assert_eq!(c.received, 4);
        assert_eq!(c.replied, 1);
        assert_eq!(c.send_errors, 1);
        assert_eq!(c.missing_rx_stamp, 1);
        assert_eq!(c.dropped(DropReason::TooShort), 1);
        assert_eq!(c.dropped(DropReason::Oversize), 1);
        assert_eq!(c.rearms, 1);
    }

    #[test]
    fn missing_stamps_are_not_counted_when_timestamping_is_off() {
        let (mut w, shared) = worker(false);
        let mut out = [0u8; 48];
        let req = request();
        w.handle(
            Datagram {
                payload: &req,
                truncated: false,
                rx_stamp: None,
            },
            &mut out,
        );
        w.end_batch();
        assert_eq!(shared.load().missing_rx_stamp, 0);
        assert_eq!(shared.load().replied, 1);
    }
}
