//! The part of a worker that every I/O backend shares: for each batch, take
//! the current [`ServerState`] from the snapshot; for each datagram, pick
//! its receive time, drop it if it waited too long ([`QueueBound`]), run
//! [`proto::respond`](crate::proto::respond) and count the outcome; after
//! the batch, publish the counters and resize the receive queues when the
//! bound says so. Backends only move bytes.

use std::sync::Arc;

use tracing::warn;

use super::counters::{Counters, SharedCounters};
use super::errors::RateLimitedLog;
use super::queue::QueueBound;
use super::socket::{self, ListenSocket};
use super::txtime::{ChunkLength, TxSchedule};
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
    send_log: RateLimitedLog,
    receive_log: RateLimitedLog,
    /// The clock when the current batch began.
    batch_now: UnixTime,
    queue: QueueBound,
    /// Told once, when the backend is set up and about to serve.
    ready: Option<std::sync::mpsc::Sender<()>>,
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
    /// is counted; `queue`: how long a request may wait in the receive
    /// queue (it needs those timestamps).
    pub fn new(
        snapshot: snapshot::Reader,
        expect_stamps: bool,
        shared: Arc<SharedCounters>,
        queue: QueueBound,
    ) -> Self {
        let version = snapshot.version();
        let state = snapshot.load();
        Worker {
            snapshot,
            state,
            expect_stamps,
            counters: Counters::default(),
            shared,
            send_log: RateLimitedLog::default(),
            receive_log: RateLimitedLog::default(),
            batch_now: UnixTime::default(),
            queue,
            ready: None,
            version,
            last_t0: UnixTime::default(),
            tx_schedule: TxSchedule::default(),
            chunk_length: ChunkLength::default(),
            next_tx_sample: UnixTime::default(),
        }
    }

    /// Has [`Worker::ready`] tell `signal` when the backend is set up.
    pub fn set_ready_signal(&mut self, signal: std::sync::mpsc::Sender<()>) {
        self.ready = Some(signal);
    }

    /// The backend is set up (buffers allocated, receives armed): requests
    /// are read from now on. Called by the backends before their loop; says
    /// so once.
    pub fn ready(&mut self) {
        if let Some(signal) = self.ready.take() {
            // The receiver is gone only if start-up was abandoned.
            let _ = signal.send(());
        }
    }

    /// Starts a batch: reads the clock (the age of the batch's requests is
    /// taken against it) and picks up the latest published state, if a new
    /// one was published.
    pub fn begin_batch(&mut self) {
        self.batch_now = clock::now();
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
            Some(t) => {
                if self.queue.is_stale(t, self.batch_now) {
                    self.count_drop(DropReason::Stale);
                    return false;
                }
                t
            }
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
        if self.send_log.due() {
            let err = std::io::Error::from_raw_os_error(errno);
            warn!(
                "replies could not be sent ({err}); {} send errors so far (logged at most once a minute)",
                self.counters.send_errors
            );
        }
    }

    /// A receive on socket `local` failed with `errno`, which the worker
    /// survives (see [`super::errors::on_receive`]): counted, logged at
    /// most once a minute.
    #[cold]
    pub fn note_receive_error(&mut self, local: std::net::SocketAddr, errno: i32) {
        self.counters.receive_errors += 1;
        if self.receive_log.due() {
            let err = std::io::Error::from_raw_os_error(errno);
            warn!(
                "receive on {local} failed ({err}); serving on. {} receive errors so far \
                 (logged at most once a minute)",
                self.counters.receive_errors
            );
        }
        self.shared.publish(&self.counters);
    }

    /// The io_uring instance failed with `err` and is being rebuilt.
    #[cold]
    pub fn note_ring_restart(&mut self, err: &std::io::Error) {
        self.counters.ring_restarts += 1;
        warn!(
            "io_uring failed ({err}); building a new ring ({} so far)",
            self.counters.ring_restarts
        );
        self.shared.publish(&self.counters);
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

    /// Whether the next chunk should be probed: sent with kernel transmit
    /// timestamps on, to learn when replies leave (a few times a second,
    /// when kernel timestamps are on).
    pub fn tx_probe_due(&mut self) -> bool {
        if !self.expect_stamps || self.last_t0 < self.next_tx_sample {
            return false;
        }
        let t = self.last_t0;
        self.next_tx_sample =
            UnixTime::new(t.secs, t.nanos.saturating_add(TX_SAMPLE_INTERVAL_NANOS));
        true
    }

    /// Learns from a probed chunk stamped at `t0`: `departed[k]` is when its
    /// k-th reply left (kernel transmit timestamp), where one came back.
    pub fn observe_departures(&mut self, t0: UnixTime, departed: &[Option<UnixTime>]) {
        self.tx_schedule.observe(t0, departed);
    }

    /// A multishot receive ended and is being re-armed.
    pub fn note_rearm(&mut self) {
        self.counters.rearms += 1;
    }

    /// Ends a batch on `sockets`: publishes the counters and, a few times a
    /// second, resizes their receive queues if the [`QueueBound`] says so.
    pub fn end_batch(&mut self, sockets: &[ListenSocket]) {
        self.shared.publish(&self.counters);
        if self.expect_stamps && self.queue.due(self.batch_now) {
            self.bound_queues(sockets);
        }
    }

    #[cold]
    fn bound_queues(&mut self, sockets: &[ListenSocket]) {
        let drops = sockets
            .iter()
            .filter_map(|s| socket::kernel_drops(&s.socket).ok())
            .map(u64::from)
            .sum();
        if let Some(bytes) = self.queue.adjust(self.batch_now, drops) {
            for s in sockets {
                // Best effort: a refusal leaves the queue as it was.
                let _ = socket::set_receive_queue(&s.socket, bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(expect_stamps: bool) -> (Worker, Arc<SharedCounters>) {
        let (_publisher, reader) = snapshot::new(&ServerState::unsynchronized(-20));
        let shared = Arc::new(SharedCounters::default());
        (
            Worker::new(
                reader,
                expect_stamps,
                Arc::clone(&shared),
                QueueBound::new(crate::io::queue::DEFAULT_MAX_DELAY),
            ),
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
        // Waited two seconds in the queue (past a client's timeout):
        // dropped as stale, unanswered.
        let old = stamp.map(|t| UnixTime::new(t.secs - 2, t.nanos));
        assert!(!w.handle(
            Datagram {
                rx_stamp: old,
                ..ok
            },
            &mut out
        ));
        w.note_send_failures(1, libc::EAGAIN);
        w.note_send_failures(0, libc::EAGAIN);
        w.note_rearm();
        w.end_batch(&[]);
        let c = shared.load();
        assert_eq!(c.received, 5);
        assert_eq!(c.dropped(DropReason::Stale), 1);
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
        w.end_batch(&[]);
        assert_eq!(shared.load().missing_rx_stamp, 0);
        assert_eq!(shared.load().replied, 1);
    }
}
