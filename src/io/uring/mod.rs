//! The io_uring backend: one ring per worker (single issuer, deferred task
//! running), one multishot `RecvMsg` per listen socket drawing from a
//! registered provided-buffer ring, and replies queued as `SendMsg` entries
//! that go out with the next `io_uring_enter`, which also waits for the
//! next completions. At steady load that is one system call per batch.
//!
//! - Receive: each completion names a buffer holding the kernel's
//!   `io_uring_recvmsg_out` header, the peer address, control messages
//!   (receive timestamp, packet info) and the payload. The completions of
//!   one wait are lent to [`Worker::serve_batch`] as one [`Batch`]; the
//!   buffers go back to the ring once their requests are answered.
//! - A multishot receive ends when the buffer ring runs dry (`ENOBUFS`) or
//!   on any other error; it is re-armed after the batch and counted.
//! - Replies are stamped by the worker with their predicted departure (see
//!   [`super::txtime`]) and queued chunk by chunk; all but the last chunk
//!   are submitted at once, the last goes with the next wait. Send slots
//!   (message header, reply, peer address, packet info) are owned until
//!   their completion arrives; failures are counted.
//!
//! [`probe`] checks that all of this works on the running kernel (container
//! seccomp profiles often refuse io_uring) before a worker relies on it.

mod batch;
mod buffers;
mod probe;

pub use probe::probe;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring};

use super::errors::{self, Backoff, ErrorAction, RingFailures};
use super::mmsg::{self, MmsgBatch};
use super::socket::ListenSocket;
use super::txtime::{Departures, SEND_CHUNK};
use super::worker::{Batch, Worker};
use crate::proto::{UnixTime, HEADER_LEN};
use crate::sys::cmsg::{LocalAddr, RECV_CONTROL_LEN};
use crate::sys::txstamp::{self, ProbeKeys};
use buffers::{recv_template, BufRing, SendSlots};

/// Provided receive buffers per worker (a power of two). Buffers go back to
/// the ring within the batch that used them, so this bounds one batch.
const RECV_BUFFERS: u16 = 2048;
/// Peer address space in each receive buffer: a `sockaddr_in6`.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Largest datagram read whole (as in the mmsg backend).
const PAYLOAD_LEN: usize = super::mmsg::RECV_SLOT;
/// Where the payload starts in a receive buffer: after the recvmsg_out
/// header, the name and the control fields.
const PAYLOAD_AT: usize = 16 + NAME_LEN + RECV_CONTROL_LEN;
/// One receive buffer: recvmsg_out header, name, control, payload.
const RECV_BUF_LEN: usize = PAYLOAD_AT + PAYLOAD_LEN;
/// Replies that may be in flight at once.
const SEND_SLOTS: usize = RECV_BUFFERS as usize;
/// At most two chunks of sends (the one being built and the last one of the
/// previous batch, which goes with the wait) plus one re-arm per listen
/// socket are queued at once; the margin keeps a chunk from ever meeting a
/// full queue, which would submit its sends before their stamps are written.
const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 8192;
/// Completions to wait for before returning early…
const WAIT_BATCH: usize = 32;
/// …unless this long has passed since the first one (kernels ≥ 6.12;
/// older ones return on the first completion).
const MIN_WAIT_USEC: u32 = 50;
/// A batch of at least this many completions means "busy": the next wait
/// returns as soon as anything is ready.
const BUSY_COMPLETIONS: usize = 16;
/// Longest wait before re-checking the stop flag.
const IDLE_WAIT_NSEC: u32 = 100_000_000;
/// Most `recvmmsg` batches that read a socket's backlog after its
/// multishot receive ended early (see `UringWorker::sweep`).
const SWEEP_BATCHES: usize = 16;
const BUFFER_GROUP: u16 = 0;

/// `user_data` tags: the kind in the top bits, an index below.
const TAG_RECV: u64 = 1 << 32;
const TAG_SEND: u64 = 2 << 32;
const INDEX_MASK: u64 = 0xFFFF_FFFF;

/// Why the io_uring backend cannot run here.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is not usable here: {0}")]
pub struct Unavailable(pub String);

fn new_ring(entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(cq_entries)
        .build(entries)
}

/// Why a ring stopped serving.
#[derive(Debug)]
enum Failure {
    /// The ring is unusable; a new one may work.
    Ring(io::Error),
    /// Nothing a new ring can fix (see [`errors::on_receive`]).
    Fatal(io::Error),
}

/// How [`serve`] ended badly.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// io_uring keeps failing on this worker (or cannot be set up again):
    /// serve with the portable backend instead.
    #[error("io_uring keeps failing: {0}")]
    Unusable(io::Error),
    /// The sockets are unusable: the worker must stop.
    #[error(transparent)]
    Fatal(io::Error),
}

/// What the ring loop keeps per listen socket.
#[derive(Debug, Default)]
struct SocketState {
    /// Its multishot receive ended and must be armed again.
    rearm: bool,
    /// It ended on an error: not armed again before this.
    resume_at: Option<Instant>,
    /// Its receive ended (other than for lack of buffers): read what is
    /// queued with `recvmmsg` before arming again.
    sweep: bool,
    backoff: Backoff,
    keys: ProbeKeys,
}

/// A chunk of replies sent with kernel transmit timestamps on (see
/// [`super::txtime`]), until its stamps are read.
#[derive(Clone, Copy, Debug)]
struct TxSample {
    /// Its stamping time.
    t0: UnixTime,
    /// Its socket (index); transmit stamps are on for it until `stamping`
    /// is cleared.
    sock: usize,
    /// Its replies.
    len: usize,
    /// The `OPT_ID` number of its first reply (see [`ProbeKeys`]).
    first: u32,
    /// Transmit stamps are still on for its socket (its chunk goes out
    /// with the next wait).
    stamping: bool,
    /// The send slots of its replies, until their sends complete: a failed
    /// send gives its number back.
    slots: [Option<u32>; SEND_CHUNK],
}

/// Everything one worker's ring needs. Field order matters: the ring is
/// dropped first, so the kernel stops using the buffers, templates and
/// slots before they are freed.
struct UringWorker<'a> {
    ring: IoUring,
    buffers: BufRing,
    templates: Box<[libc::msghdr]>,
    slots: SendSlots,
    sockets: &'a [ListenSocket],
    state: Vec<SocketState>,
    /// Reads a socket's backlog when its multishot receive ended early
    /// (an empty datagram ends it, see [`UringWorker::on_receive`]).
    sweeper: MmsgBatch,
    can_min_wait: bool,
    /// How `io_uring_enter` waits: for completions, with the extended
    /// argument (timeout, minimum wait), and where the kernel allows (6.15+)
    /// without counting the wait as I/O wait. The multishot receive is
    /// always pending, so an idle worker would otherwise show its core as
    /// 100 % iowait in `top` and alarm whoever watches it.
    enter_flags: EnterFlags,
    /// Completions copied out of the ring (capacity = CQ size, so no
    /// allocation after start): user data, result, flags.
    cqes: Vec<(u64, i32, u32)>,
    /// Datagrams received in this batch, in order: (socket index, buffer
    /// id, length).
    received: Vec<(u32, u16, u32)>,
    /// The send slot the request being answered writes its reply into
    /// (taken from the free list; back there unless the reply is kept),
    /// and where that request was sent to (wildcard sockets).
    current: Option<u32>,
    current_local: Option<LocalAddr>,
    /// Where a reply goes when every send slot is in flight (it is then
    /// counted as a send error).
    scratch: [u8; HEADER_LEN],
    /// Replies kept in this batch, in order: (send slot, socket index).
    pending: Vec<(u32, u32)>,
    /// The socket of the chunk being probed, between `probe` and `send`.
    probing: Option<usize>,
    /// The departures of the last probed chunk, read after the wait that
    /// sent it, until the worker takes them.
    departed: Option<Departures>,
    /// A ring failure met while the worker drove the batch.
    failure: Option<Failure>,
    /// The last batch was big, or receives were re-armed: do not linger
    /// waiting for the next.
    busy: bool,
    /// The last probed chunk, until its stamps are read and its sends
    /// complete.
    tx_sample: Option<TxSample>,
}

/// Pushes an entry, submitting first if the queue is full.
fn push(ring: &mut IoUring, entry: &squeue::Entry) -> Result<(), Failure> {
    loop {
        // SAFETY: every entry built in this module points at memory owned by
        // the `UringWorker` (receive templates, send slots) that outlives its
        // operation: templates live as long as the ring; a send slot returns
        // to the free list only on its completion.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        submit(ring)?;
    }
}

/// Submits what is queued without waiting.
fn submit(ring: &mut IoUring) -> Result<(), Failure> {
    match ring.submit() {
        Ok(_) => Ok(()),
        Err(e) => enter_failed(e),
    }
}

/// An `io_uring_enter` failed: carry on, or give the ring up.
fn enter_failed(e: io::Error) -> Result<(), Failure> {
    match errors::on_ring_enter(e.raw_os_error().unwrap_or(0)) {
        ErrorAction::Continue => Ok(()),
        _ => Err(Failure::Ring(e)),
    }
}

impl<'a> UringWorker<'a> {
    fn new(sockets: &'a [ListenSocket]) -> io::Result<Self> {
        let ring = new_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        let buffers = BufRing::new(RECV_BUFFERS)?;
        buffers.register(&ring)?;
        // Registered descriptors (index = socket index) spare the kernel a
        // file lookup per operation.
        let fds: Vec<i32> = sockets.iter().map(ListenSocket::fd).collect();
        ring.submitter().register_files(&fds)?;
        let can_min_wait = ring.params().is_feature_min_timeout();
        let mut enter_flags = EnterFlags::GETEVENTS | EnterFlags::EXT_ARG;
        if ring.params().is_feature_no_iowait() {
            enter_flags |= EnterFlags::NO_IOWAIT;
        }
        Ok(UringWorker {
            ring,
            buffers,
            templates: sockets.iter().map(|_| recv_template()).collect(),
            slots: SendSlots::new(SEND_SLOTS),
            sockets,
            state: sockets
                .iter()
                .map(|_| SocketState {
                    rearm: true,
                    ..SocketState::default()
                })
                .collect(),
            sweeper: MmsgBatch::new(),
            can_min_wait,
            enter_flags,
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            received: Vec::with_capacity(CQ_ENTRIES as usize),
            current: None,
            current_local: None,
            scratch: [0; HEADER_LEN],
            pending: Vec::with_capacity(SEND_SLOTS),
            probing: None,
            departed: None,
            failure: None,
            busy: false,
            tx_sample: None,
        })
    }

    /// Serves until `stop` is set or the ring fails.
    fn run(&mut self, worker: &mut Worker, stop: &AtomicBool) -> Result<(), Failure> {
        self.arm_receives(worker, true)?;
        worker.ready();
        while !stop.load(Ordering::Relaxed) {
            self.submit_and_wait()?;
            self.take_tx_sample();
            self.drain(worker)?;
            self.sweep(worker)?;
            self.arm_receives(worker, false)?;
        }
        Ok(())
    }

    /// Arms a multishot receive on every socket that needs one (and whose
    /// pause after failing receives is over).
    fn arm_receives(&mut self, worker: &mut Worker, first: bool) -> Result<(), Failure> {
        let now = Instant::now();
        for i in 0..self.sockets.len() {
            let st = &mut self.state[i];
            if !st.rearm || st.resume_at.is_some_and(|t| t > now) {
                continue;
            }
            st.rearm = false;
            st.resume_at = None;
            if !first {
                worker.note_rearm();
                // The new receive may find datagrams at once: look at its
                // completions without lingering.
                self.busy = true;
            }
            let entry =
                opcode::RecvMsgMulti::new(Fixed(i as u32), &self.templates[i], BUFFER_GROUP)
                    .build()
                    .user_data(TAG_RECV | i as u64);
            push(&mut self.ring, &entry)?;
        }
        Ok(())
    }

    /// Reads, with `recvmmsg`, what waits on each socket whose multishot
    /// receive ended early, before it is armed again: each empty datagram
    /// ends a multishot receive (the kernel takes a zero-length read for
    /// end of stream), so a flood of them would otherwise cost a re-arm
    /// and a wait each and starve everyone else. Bounded to
    /// [`SWEEP_BATCHES`] batches per socket.
    fn sweep(&mut self, worker: &mut Worker) -> Result<(), Failure> {
        for i in 0..self.sockets.len() {
            if !std::mem::take(&mut self.state[i].sweep) {
                continue;
            }
            let sock = &self.sockets[i];
            for _ in 0..SWEEP_BATCHES {
                match self.sweeper.serve(worker, sock, None, self.sockets) {
                    Ok(n) if n < mmsg::BATCH => break,
                    Ok(_) => {}
                    Err(errno) => {
                        self.receive_failed(worker, i, errno)?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// A receive on socket `i` failed with `errno`: count it and pause that
    /// socket if failures repeat, or stop on a broken socket.
    fn receive_failed(&mut self, worker: &mut Worker, i: usize, errno: i32) -> Result<(), Failure> {
        if errors::on_receive(errno) == ErrorAction::Stop {
            return Err(Failure::Fatal(io::Error::from_raw_os_error(errno)));
        }
        worker.note_receive_error(self.sockets[i].local, errno);
        let st = &mut self.state[i];
        let pause = st.backoff.failed();
        if !pause.is_zero() {
            st.resume_at = Some(Instant::now() + pause);
        }
        Ok(())
    }

    /// Switches the transmit stamps of the probed chunk's socket off again,
    /// once its sends were submitted.
    fn stop_tx_stamping(&mut self) {
        if let Some(s) = &mut self.tx_sample {
            if std::mem::take(&mut s.stamping) {
                let _ = txstamp::set_tx_stamping(self.sockets[s.sock].fd(), false);
            }
        }
    }

    /// Once the probed chunk has gone out (with the wait just made), learns
    /// from its kernel transmit timestamps (matched by number, so a late
    /// stamp of an earlier chunk is never taken for one of its own).
    fn take_tx_sample(&mut self) {
        self.stop_tx_stamping();
        let Some(s) = self.tx_sample else {
            return;
        };
        if s.len > 0 {
            let mut d = Departures::new(s.t0, s.len);
            let fd = self.sockets[s.sock].fd();
            let keys = &mut self.state[s.sock].keys;
            txstamp::take_probe_timestamps(fd, keys, s.first, d.stamps_mut());
            self.departed = Some(d);
        }
        // Its send completions may still be due: keep it (stamps read)
        // until they are in.
        self.tx_sample = s
            .slots
            .iter()
            .any(Option::is_some)
            .then_some(TxSample { len: 0, ..s });
    }

    /// Submits queued entries and waits for completions (or the idle
    /// timeout, shortened while a failing socket waits to be re-armed).
    fn submit_and_wait(&mut self) -> Result<(), Failure> {
        let timeout = self.wait_timeout();
        let args = SubmitArgs::new().timespec(&timeout);
        // One multishot receive is one task-work item however many
        // datagrams wait, so arrivals do not count towards `want`: while
        // busy, wait for one completion (work is surely queued); only when
        // quiet, gather a batch for up to MIN_WAIT_USEC.
        let (want, args) = if self.can_min_wait && !self.busy {
            (WAIT_BATCH, args.min_wait_usec(MIN_WAIT_USEC))
        } else {
            (1, args)
        };
        let to_submit = self.ring.submission().len() as u32;
        // SAFETY: `args` is a live `SubmitArgs`, a transparent wrapper of the
        // kernel's `io_uring_getevents_arg`, passed with EXT_ARG exactly as
        // the crate's own `submit_with_args` does; the timespec it points to
        // outlives the call. Every queued entry's memory is owned by `self`
        // (see `push`).
        let entered = unsafe {
            self.ring.submitter().enter(
                to_submit,
                want as u32,
                self.enter_flags.bits(),
                Some(&args),
            )
        };
        match entered {
            Ok(_) => Ok(()),
            Err(e) => enter_failed(e),
        }
    }

    /// The idle wait, or less if a paused socket is due to be re-armed.
    fn wait_timeout(&self) -> Timespec {
        let idle = Duration::from_nanos(IDLE_WAIT_NSEC as u64);
        let now = Instant::now();
        let wait = self
            .state
            .iter()
            .filter_map(|st| st.resume_at)
            .map(|t| t.saturating_duration_since(now))
            .fold(idle, Duration::min);
        Timespec::new()
            .sec(wait.as_secs())
            .nsec(wait.subsec_nanos())
    }

    /// Handles every completion available: the datagrams received are
    /// served as one batch.
    fn drain(&mut self, worker: &mut Worker) -> Result<(), Failure> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        self.busy = cqes.len() >= BUSY_COMPLETIONS;
        let mut outcome = Ok(());
        for &(user_data, result, flags) in &cqes {
            let index = (user_data & INDEX_MASK) as usize;
            match user_data & !INDEX_MASK {
                TAG_RECV => {
                    if let Err(f) = self.on_receive(worker, index, result, flags) {
                        outcome = Err(f);
                        break;
                    }
                }
                TAG_SEND => self.on_send(worker, index as u32, result),
                _ => {}
            }
        }
        self.cqes = cqes;
        if outcome.is_ok() {
            worker.serve_batch(self);
        }
        // Buffers of a batch cut short by a failure go back too.
        self.answered();
        self.pending.clear();
        match self.failure.take() {
            Some(f) => Err(f),
            None => outcome,
        }
    }

    /// The send of slot `slot` completed with `result`.
    fn on_send(&mut self, worker: &mut Worker, slot: u32, result: i32) {
        if result < 0 {
            worker.note_send_failures(1, -result);
        }
        if let Some(s) = &mut self.tx_sample {
            if let Some(pending) = s.slots.iter_mut().find(|p| **p == Some(slot)) {
                *pending = None;
                if result < 0 {
                    // It never left: its number was not used.
                    self.state[s.sock].keys.unsent();
                }
                if s.len == 0 && s.slots.iter().all(Option::is_none) {
                    self.tx_sample = None;
                }
            }
        }
        self.slots.free.push(slot);
    }

    fn on_receive(
        &mut self,
        worker: &mut Worker,
        sock: usize,
        result: i32,
        flags: u32,
    ) -> Result<(), Failure> {
        if !cqueue::more(flags) {
            let st = &mut self.state[sock];
            st.rearm = true;
            // Out of buffers: they are back after this batch and the queue
            // is read by the next receive. Any other end (an empty
            // datagram, an error): read the queue now (see `sweep`).
            st.sweep = result != -libc::ENOBUFS;
        }
        if result < 0 {
            return match -result {
                // Buffer ring ran dry, or the receive was cancelled: armed
                // again after this batch, once the buffers are back.
                libc::ENOBUFS | libc::ECANCELED => Ok(()),
                errno => {
                    self.state[sock].sweep = false;
                    self.receive_failed(worker, sock, errno)
                }
            };
        }
        self.state[sock].backoff.succeeded();
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.received.push((sock as u32, bid, result as u32));
        }
        Ok(())
    }
}

/// Serves `sockets` from an io_uring until `stop` is set. A ring that fails
/// is replaced by a new one (counted and logged); if rings keep failing
/// ([`RingFailures`]) or a new one cannot be set up, returns
/// [`UringError::Unusable`] so the worker can go on with the portable
/// backend. [`UringError::Fatal`] means the sockets themselves are broken.
pub fn serve(
    worker: &mut Worker,
    sockets: &[ListenSocket],
    stop: &AtomicBool,
) -> Result<(), UringError> {
    let mut failures = RingFailures::default();
    loop {
        let mut uw = UringWorker::new(sockets).map_err(UringError::Unusable)?;
        match uw.run(worker, stop) {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(UringError::Fatal(e)),
            Err(Failure::Ring(e)) => {
                // The old ring goes first: its receives end with it.
                drop(uw);
                if failures.give_up(Instant::now()) {
                    return Err(UringError::Unusable(e));
                }
                worker.note_ring_restart(&e);
            }
        }
    }
}
