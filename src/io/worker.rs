//! The part of a worker that every I/O backend shares, and the one contract
//! between them: a backend receives a batch of datagrams and lends it to
//! [`Worker::serve_batch`] as a [`Batch`]. For each batch the worker takes
//! the current [`ServerState`] from the snapshot; for each datagram it picks
//! the receive time, drops it if it waited too long ([`QueueBound`]), runs
//! [`proto::respond()`] and counts the outcome; then it cuts the kept replies
//! into chunks, has the batch switch transmit stamps on for a probed chunk
//! now and then, stamps each chunk with its predicted departures
//! ([`TxSchedule`]) right before the batch sends it, learns from the
//! departures the batch reports, publishes the counters and bounds the
//! receive queues. Backends only move bytes: they never see a reply's
//! contents nor decide when to probe.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use tracing::warn;

use super::counters::{Counters, SharedCounters};
use super::errors::RateLimitedLog;
use super::queue::QueueBound;
use super::socket::ListenSocket;
use super::txtime::{ChunkLength, Departures, TxSchedule};
use crate::clock;
use crate::policy::Policy;
use crate::proto::{self, DropReason, ServerState, UnixTime, Verdict, HEADER_LEN};
use crate::snapshot;
use crate::sys;

/// A batch of received datagrams as a backend lends it to
/// [`Worker::serve_batch`], which calls, in this order: [`Batch::request`]
/// for each datagram and [`Batch::keep`] for each one answered, then
/// [`Batch::answered`] once; then per chunk of kept replies
/// [`Batch::probe`] (sometimes), [`Batch::reply`] for each of its replies
/// (to stamp them) and [`Batch::send`]; at last [`Batch::departures`] and
/// [`Batch::sockets`].
pub trait Batch {
    /// How many datagrams were received.
    fn received(&self) -> usize;
    /// Datagram `i` (of `0..received()`) and the buffer its reply is
    /// written into if it gets one.
    fn request(&mut self, i: usize) -> (Datagram<'_>, &mut [u8; HEADER_LEN]);
    /// The reply just written for datagram `i` goes back to its sender,
    /// after the replies kept before it (it is kept reply number "replies
    /// kept so far"). `Err(errno)`: it cannot be sent (no room); the worker
    /// counts it as a send error.
    fn keep(&mut self, i: usize) -> Result<(), i32>;
    /// Every request has been read: their receive buffers may be reused.
    fn answered(&mut self) {}
    /// Kept reply `k`, to be stamped before it is sent.
    fn reply(&mut self, k: usize) -> &mut [u8; HEADER_LEN];
    /// Kept replies `chunk` are to go out with kernel transmit timestamps
    /// on, to learn when replies leave (see [`super::txtime`]); called
    /// before they are stamped. Returns whether they will (a backend may
    /// decline, e.g. while an earlier probe is in flight).
    fn probe(&mut self, chunk: Range<usize>) -> bool;
    /// Hands kept replies `chunk`, stamped at `t0`, to the kernel (now, or
    /// with the backend's next system call); says what failed at once.
    fn send(&mut self, chunk: Range<usize>, t0: UnixTime) -> Sent;
    /// When the replies of a probed chunk left, once the backend has read
    /// their kernel transmit timestamps (after this batch's sends, or a
    /// batch later).
    fn departures(&mut self) -> Option<Departures>;
    /// The sockets the batch came from, whose receive queues the worker
    /// bounds.
    fn sockets(&self) -> &[ListenSocket];
}

/// What [`Batch::send`] did with a chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Replies that could not be sent.
    pub failed: u64,
    /// Why (the last error), when `failed` is not zero.
    pub errno: i32,
}

/// Protocol glue and counters of one worker thread.
pub struct Worker {
    snapshot: snapshot::Reader,
    state: ServerState,
    /// Access list and this worker's rate limiter.
    policy: Policy,
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
    /// The sender's address ([`UNKNOWN_SOURCE`] if the kernel gave none
    /// that could be read).
    pub source: IpAddr,
}

/// The source of a datagram whose sender address could not be read (never
/// seen on UDP): the unspecified IPv6 address, which access lists treat as
/// any other IPv6 address.
pub const UNKNOWN_SOURCE: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

impl Worker {
    /// A worker reading `snapshot`, publishing its counters to `shared`.
    /// `expect_stamps`: kernel timestamps were requested, so a missing one
    /// is counted; `queue`: how long a request may wait in the receive
    /// queue (it needs those timestamps); `policy`: who gets an answer.
    pub fn new(
        snapshot: snapshot::Reader,
        expect_stamps: bool,
        shared: Arc<SharedCounters>,
        queue: QueueBound,
        policy: Policy,
    ) -> Self {
        let version = snapshot.version();
        let state = snapshot.load();
        Worker {
            snapshot,
            state,
            policy,
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

    /// Serves one batch (see [`Batch`] for the order of the calls): answers
    /// every request, then stamps and sends the replies chunk by chunk.
    pub fn serve_batch(&mut self, batch: &mut impl Batch) {
        self.begin_batch();
        let mut kept = 0;
        for i in 0..batch.received() {
            let (dgram, reply) = batch.request(i);
            if self.handle(dgram, reply) {
                match batch.keep(i) {
                    Ok(()) => kept += 1,
                    Err(errno) => self.note_send_failures(1, errno),
                }
            }
        }
        batch.answered();
        let chunk = self.chunk_length.for_batch(self.last_t0, kept);
        let mut start = 0;
        while start < kept {
            let end = (start + chunk).min(kept);
            let probed = self.probe_due() && batch.probe(start..end);
            // The stamps go in last, in a tight loop right before the send.
            let t0 = clock::now();
            self.last_t0 = t0;
            if probed {
                self.next_tx_sample =
                    UnixTime::new(t0.secs, t0.nanos.saturating_add(TX_SAMPLE_INTERVAL_NANOS));
            }
            for (position, k) in (start..end).enumerate() {
                let departure = self.tx_schedule.departure(t0, position);
                proto::stamp_transmit(batch.reply(k), &self.state, departure);
            }
            let sent = batch.send(start..end, t0);
            self.note_send_failures(sent.failed, sent.errno);
            start = end;
        }
        if let Some(d) = batch.departures() {
            self.tx_schedule.observe(d.t0, d.stamps());
        }
        self.end_batch(batch.sockets());
    }

    /// Starts a batch: reads the clock (the age of the batch's requests is
    /// taken against it) and picks up the latest published state, if a new
    /// one was published.
    fn begin_batch(&mut self) {
        self.batch_now = clock::now();
        let version = self.snapshot.version();
        if version != self.version {
            self.state = self.snapshot.load();
            self.version = version;
        }
    }

    /// Handles one datagram; returns whether `reply` holds a reply to send
    /// (still to be stamped).
    fn handle(&mut self, dgram: Datagram<'_>, reply: &mut [u8; HEADER_LEN]) -> bool {
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
        let verdict = proto::respond(
            dgram.payload,
            dgram.source,
            received,
            &self.state,
            &mut self.policy,
            reply,
        );
        match verdict {
            Verdict::Reply => {
                self.counters.replied += 1;
                true
            }
            Verdict::Kod(kiss) => {
                self.counters.kod[kiss.index()] += 1;
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

    /// Whether the next chunk should be probed: sent with kernel transmit
    /// timestamps on, to learn when replies leave (a few times a second,
    /// when kernel timestamps are on; the clock is the last chunk's stamp
    /// time).
    fn probe_due(&self) -> bool {
        self.expect_stamps && self.last_t0 >= self.next_tx_sample
    }

    /// A multishot receive ended and is being re-armed.
    pub fn note_rearm(&mut self) {
        self.counters.rearms += 1;
    }

    /// Ends a batch on `sockets`: publishes the counters and, a few times a
    /// second, resizes their receive queues if the [`QueueBound`] says so.
    fn end_batch(&mut self, sockets: &[ListenSocket]) {
        self.shared.publish(&self.counters);
        if self.expect_stamps && self.queue.due(self.batch_now) {
            self.bound_queues(sockets);
        }
    }

    #[cold]
    fn bound_queues(&mut self, sockets: &[ListenSocket]) {
        let drops = sockets
            .iter()
            .filter_map(|s| sys::socket::kernel_drops(&s.socket).ok())
            .map(u64::from)
            .sum();
        if let Some(bytes) = self.queue.adjust(self.batch_now, drops) {
            for s in sockets {
                // Best effort: a refusal leaves the queue as it was.
                let _ = sys::socket::set_receive_queue(&s.socket, bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Header, NtpTimestamp};

    fn worker(expect_stamps: bool) -> (Worker, Arc<SharedCounters>) {
        let (_publisher, reader) = snapshot::new(&ServerState::unsynchronized(-20));
        let shared = Arc::new(SharedCounters::default());
        (
            Worker::new(
                reader,
                expect_stamps,
                Arc::clone(&shared),
                QueueBound::new(crate::io::queue::DEFAULT_MAX_DELAY),
                Policy::default(),
            ),
            shared,
        )
    }

    fn request() -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = 0x23;
        r
    }

    /// A backend in memory: records what the worker asks of it.
    struct TestBatch<'a> {
        requests: Vec<Datagram<'a>>,
        /// One reply slot per request; kept replies are moved to `kept`.
        scratch: [u8; HEADER_LEN],
        kept: Vec<(usize, [u8; HEADER_LEN])>,
        /// Replies that find no room from this many kept on.
        room: Option<usize>,
        /// What `send` reports.
        send_result: Sent,
        chunks: Vec<Range<usize>>,
        probes: usize,
        departures: Option<Departures>,
    }

    impl<'a> TestBatch<'a> {
        fn new(requests: Vec<Datagram<'a>>) -> Self {
            TestBatch {
                requests,
                scratch: [0; HEADER_LEN],
                kept: Vec::new(),
                room: None,
                send_result: Sent::default(),
                chunks: Vec::new(),
                probes: 0,
                departures: None,
            }
        }
    }

    impl Batch for TestBatch<'_> {
        fn received(&self) -> usize {
            self.requests.len()
        }
        fn request(&mut self, i: usize) -> (Datagram<'_>, &mut [u8; HEADER_LEN]) {
            self.scratch = [0; HEADER_LEN];
            (self.requests[i], &mut self.scratch)
        }
        fn keep(&mut self, i: usize) -> Result<(), i32> {
            if self.room.is_some_and(|r| self.kept.len() >= r) {
                return Err(libc::ENOBUFS);
            }
            self.kept.push((i, self.scratch));
            Ok(())
        }
        fn reply(&mut self, k: usize) -> &mut [u8; HEADER_LEN] {
            &mut self.kept[k].1
        }
        fn probe(&mut self, _chunk: Range<usize>) -> bool {
            self.probes += 1;
            true
        }
        fn send(&mut self, chunk: Range<usize>, _t0: UnixTime) -> Sent {
            self.chunks.push(chunk);
            self.send_result
        }
        fn departures(&mut self) -> Option<Departures> {
            self.departures.take()
        }
        fn sockets(&self) -> &[ListenSocket] {
            &[]
        }
    }

    #[test]
    fn counts_replies_drops_and_missing_stamps() {
        let (mut w, shared) = worker(true);
        let stamp = Some(clock::now());
        let req = request();
        let ok = Datagram {
            payload: &req,
            truncated: false,
            rx_stamp: stamp,
            source: UNKNOWN_SOURCE,
        };
        // Waited two seconds in the queue (past a client's timeout):
        // dropped as stale, unanswered.
        let old = stamp.map(|t| UnixTime::new(t.secs - 2, t.nanos));
        let mut batch = TestBatch::new(vec![
            ok,
            Datagram {
                rx_stamp: None,
                ..ok
            },
            Datagram {
                payload: &req[..40],
                ..ok
            },
            Datagram {
                truncated: true,
                ..ok
            },
            Datagram {
                rx_stamp: old,
                ..ok
            },
        ]);
        batch.send_result = Sent {
            failed: 1,
            errno: libc::EAGAIN,
        };
        w.note_rearm();
        w.serve_batch(&mut batch);
        let kept: Vec<usize> = batch.kept.iter().map(|k| k.0).collect();
        assert_eq!(kept, [0, 1]);
        let c = shared.load();
        assert_eq!(c.received, 5);
        assert_eq!(c.dropped(DropReason::Stale), 1);
        assert_eq!(c.replied, 2 - batch.chunks.len() as u64);
        assert_eq!(c.send_errors, batch.chunks.len() as u64);
        assert_eq!(c.missing_rx_stamp, 1);
        assert_eq!(c.dropped(DropReason::TooShort), 1);
        assert_eq!(c.dropped(DropReason::Oversize), 1);
        assert_eq!(c.rearms, 1);
    }

    #[test]
    fn every_kept_reply_is_stamped_and_sent_once_in_order() {
        let (mut w, shared) = worker(true);
        let req = request();
        let rx = clock::now();
        let dgram = Datagram {
            payload: &req,
            truncated: false,
            rx_stamp: Some(rx),
            source: UNKNOWN_SOURCE,
        };
        let mut batch = TestBatch::new(vec![dgram; 10]);
        w.serve_batch(&mut batch);
        // Chunks cover the kept replies once, in order.
        assert_eq!(batch.chunks.first().map(|c| c.start), Some(0));
        assert_eq!(batch.chunks.last().map(|c| c.end), Some(10));
        assert!(batch.chunks.windows(2).all(|w| w[0].end == w[1].start));
        for (_, reply) in &batch.kept {
            let h = Header::parse(reply).unwrap();
            assert_eq!(h.receive_ts, NtpTimestamp::from_unix(rx));
            assert!(h.transmit_ts.diff_units(h.receive_ts) >= 0);
            assert!(h.transmit_ts.diff_secs(h.receive_ts) < 1.0);
        }
        // Kernel stamps on: the first chunk is probed, then not again
        // within the probe interval.
        assert_eq!(batch.probes, 1);
        let mut again = TestBatch::new(vec![dgram; 3]);
        w.serve_batch(&mut again);
        assert_eq!(again.probes, 0);
        assert_eq!(shared.load().replied, 13);
    }

    #[test]
    fn a_reply_without_room_is_a_send_error() {
        let (mut w, shared) = worker(true);
        let req = request();
        let dgram = Datagram {
            payload: &req,
            truncated: false,
            rx_stamp: Some(clock::now()),
            source: UNKNOWN_SOURCE,
        };
        let mut batch = TestBatch::new(vec![dgram; 4]);
        batch.room = Some(3);
        w.serve_batch(&mut batch);
        assert_eq!(batch.kept.len(), 3);
        assert_eq!(batch.chunks.last().map(|c| c.end), Some(3));
        let c = shared.load();
        assert_eq!((c.replied, c.send_errors), (3, 1));
    }

    #[test]
    fn missing_stamps_are_not_counted_when_timestamping_is_off() {
        let (mut w, shared) = worker(false);
        let req = request();
        let mut batch = TestBatch::new(vec![Datagram {
            payload: &req,
            truncated: false,
            rx_stamp: None,
            source: UNKNOWN_SOURCE,
        }]);
        w.serve_batch(&mut batch);
        assert_eq!(shared.load().missing_rx_stamp, 0);
        assert_eq!(shared.load().replied, 1);
        // Without kernel stamps nothing is probed.
        assert_eq!(batch.probes, 0);
    }
}
