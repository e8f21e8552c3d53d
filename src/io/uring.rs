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

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring};

use super::errors::{self, Backoff, ErrorAction, RingFailures};
use super::mmsg::{self, MmsgBatch};
use super::socket::ListenSocket;
use super::txtime::{Departures, SEND_CHUNK};
use super::worker::{Batch, Datagram, Sent, Worker};
use crate::proto::{UnixTime, HEADER_LEN};
use crate::sys::buffers::zeroed_slice;
use crate::sys::cmsg::{self, ControlBuf, LocalAddr, RECV_CONTROL_LEN, SEND_CONTROL_LEN};
use crate::sys::txstamp::{self, ProbeKeys};

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

/// The page-aligned ring of provided-buffer descriptors plus the buffers it
/// hands out. Owned by one worker thread.
struct BufRing {
    entries: *mut BufRingEntry,
    layout: Layout,
    slab: Box<[u8]>,
    count: u16,
    /// Local producer position, published to the kernel by [`Self::publish`].
    tail: u16,
}

impl BufRing {
    fn new(count: u16) -> io::Result<Self> {
        let layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (count > 0).
        let entries = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufRing {
            entries,
            layout,
            slab: vec![0u8; count as usize * RECV_BUF_LEN].into_boxed_slice(),
            count,
            tail: 0,
        };
        for bid in 0..count {
            ring.give(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with `uring` as [`BUFFER_GROUP`].
    fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the descriptor array and the slab live as long as `self`,
        // and `self` is dropped only after the ring (see `UringWorker`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.entries as u64,
                self.count,
                BUFFER_GROUP,
                0,
            )
        }
    }

    /// Hands buffer `bid` (back) to the kernel; visible after `publish`.
    fn give(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.slab[bid as usize * RECV_BUF_LEN..].as_ptr() as u64;
        // SAFETY: slot < count, inside the allocation; only this thread
        // writes entries, and the kernel reads an entry only once the tail
        // published by `publish` covers it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: `entries` points at the initialised first entry of the
        // ring; the tail field overlays its reserved word and is shared with
        // the kernel, so it is accessed atomically with release ordering
        // (entries written before, tail after).
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = (bid as usize % self.count as usize) * RECV_BUF_LEN;
        &self.slab[start..start + len.min(RECV_BUF_LEN)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the kernel no longer
        // uses it because the ring was dropped first.
        unsafe { dealloc(self.entries.cast(), self.layout) }
    }
}

/// Reply slots: header, payload, destination and packet info of each reply
/// in flight. Headers point into the boxed arrays, which never move.
struct SendSlots {
    hdr: Box<[libc::msghdr]>,
    iov: Box<[libc::iovec]>,
    reply: Box<[[u8; HEADER_LEN]]>,
    name: Box<[[u8; NAME_LEN]]>,
    control: Box<[ControlBuf<SEND_CONTROL_LEN>]>,
    free: Vec<u32>,
}

impl SendSlots {
    fn new(n: usize) -> Self {
        let mut s = SendSlots {
            // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
            hdr: unsafe { zeroed_slice(n) },
            // SAFETY: all-zero is a valid iovec.
            iov: unsafe { zeroed_slice(n) },
            reply: vec![[0u8; HEADER_LEN]; n].into_boxed_slice(),
            name: vec![[0u8; NAME_LEN]; n].into_boxed_slice(),
            control: vec![ControlBuf::default(); n].into_boxed_slice(),
            free: (0..n as u32).rev().collect(),
        };
        for i in 0..n {
            s.iov[i] = libc::iovec {
                iov_base: s.reply[i].as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            };
            s.hdr[i].msg_iov = &mut s.iov[i];
            s.hdr[i].msg_iovlen = 1;
            s.hdr[i].msg_name = s.name[i].as_mut_ptr().cast();
        }
        s
    }
}

/// A receive template per socket: only its name and control lengths matter
/// to the kernel (they lay out each buffer).
fn recv_template() -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_namelen = NAME_LEN as u32;
    m.msg_controllen = RECV_CONTROL_LEN as _;
    m
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

    /// Queues the send of the reply in `slot` through socket `sock`.
    fn push_send(&mut self, slot: u32, sock: u32) -> Result<(), Failure> {
        let s = slot as usize;
        let hdr = &self.slots.hdr[s];
        // Packet info needs a message header; otherwise a plain send with a
        // destination spares the kernel copying one in.
        let entry = if hdr.msg_controllen == 0 {
            opcode::Send::new(Fixed(sock), self.slots.reply[s].as_ptr(), HEADER_LEN as u32)
                .dest_addr(self.slots.name[s].as_ptr().cast())
                .dest_addr_len(hdr.msg_namelen)
                .flags(libc::MSG_DONTWAIT)
                .build()
        } else {
            opcode::SendMsg::new(Fixed(sock), hdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        };
        push(&mut self.ring, &entry.user_data(TAG_SEND | slot as u64))
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

    /// The receive buffer of datagram `i` of the batch, parsed.
    fn message(&self, i: usize) -> Option<RecvMsgOut<'_>> {
        let (sock, bid, len) = self.received[i];
        let buffer = self.buffers.buffer(bid, len as usize);
        RecvMsgOut::parse(buffer, &self.templates[sock as usize]).ok()
    }

    /// Takes a send slot for the next reply, unless one is already taken.
    fn take_slot(&mut self) -> Option<u32> {
        if self.current.is_none() {
            self.current = self.slots.free.pop();
        }
        self.current
    }
}

impl Batch for UringWorker<'_> {
    fn received(&self) -> usize {
        self.received.len()
    }

    fn request(&mut self, i: usize) -> (Datagram<'_>, &mut [u8; HEADER_LEN]) {
        let slot = self.take_slot();
        let (sock, bid, len) = self.received[i];
        let buffer = self.buffers.buffer(bid, len as usize);
        let reply = match slot {
            Some(s) => &mut self.slots.reply[s as usize],
            None => &mut self.scratch,
        };
        let Ok(msg) = RecvMsgOut::parse(buffer, &self.templates[sock as usize]) else {
            // Shorter than the header the kernel writes: never seen, but
            // counted (as oversize) rather than trusted.
            let dgram = Datagram {
                payload: &[],
                truncated: true,
                rx_stamp: None,
            };
            return (dgram, reply);
        };
        let info = cmsg::parse(msg.control_data());
        let (len, truncated) = (msg.payload_data().len(), msg.is_payload_truncated());
        // The payload follows the name and control fields the template
        // lays out (`parse` checked that it lies within the buffer).
        let payload = buffer.get(PAYLOAD_AT..PAYLOAD_AT + len).unwrap_or_default();
        self.current_local = if self.sockets[sock as usize].wildcard {
            info.local
        } else {
            None
        };
        let dgram = Datagram {
            payload,
            truncated,
            rx_stamp: info.rx_stamp,
        };
        (dgram, reply)
    }

    fn keep(&mut self, i: usize) -> Result<(), i32> {
        // Every slot in flight: the reply went to scratch.
        let slot = self.current.take().ok_or(libc::ENOBUFS)?;
        let s = slot as usize;
        let mut name = [0u8; NAME_LEN];
        let n = match self.message(i) {
            Some(msg) => {
                let from = msg.name_data();
                let n = from.len().min(NAME_LEN);
                name[..n].copy_from_slice(&from[..n]);
                n
            }
            None => 0,
        };
        self.slots.name[s] = name;
        let control = &mut self.slots.control[s].0;
        let (control_ptr, control_len) = match &self.current_local {
            Some(local) => (control.as_mut_ptr(), cmsg::write_source(control, local)),
            None => (std::ptr::null_mut(), 0),
        };
        let hdr = &mut self.slots.hdr[s];
        hdr.msg_namelen = n as u32;
        hdr.msg_control = control_ptr.cast();
        hdr.msg_controllen = control_len as _;
        self.pending.push((slot, self.received[i].0));
        Ok(())
    }

    fn answered(&mut self) {
        if let Some(slot) = self.current.take() {
            self.slots.free.push(slot);
        }
        if self.received.is_empty() {
            return;
        }
        for &(_, bid, _) in &self.received {
            self.buffers.give(bid);
        }
        self.received.clear();
        self.buffers.publish();
    }

    fn reply(&mut self, k: usize) -> &mut [u8; HEADER_LEN] {
        &mut self.slots.reply[self.pending[k].0 as usize]
    }

    /// One probed chunk at a time, all on one socket (transmit stamps are
    /// switched on per socket).
    fn probe(&mut self, chunk: Range<usize>) -> bool {
        let sock = self.pending[chunk.start].1 as usize;
        let ok = self.tx_sample.is_none()
            && self.pending[chunk].iter().all(|p| p.1 as usize == sock)
            && txstamp::set_tx_stamping(self.sockets[sock].fd(), true).is_ok();
        self.probing = ok.then_some(sock);
        ok
    }

    /// Queues the chunk's sends; all but the batch's last chunk are
    /// submitted at once, the last goes out with the next wait. A batch
    /// of one chunk costs no system call of its own.
    fn send(&mut self, chunk: Range<usize>, t0: UnixTime) -> Sent {
        if self.failure.is_some() {
            // The ring is being given up; its replies are lost with it.
            return Sent::default();
        }
        for i in chunk.clone() {
            let (slot, sock) = self.pending[i];
            if let Err(f) = self.push_send(slot, sock) {
                self.failure = Some(f);
                return Sent::default();
            }
        }
        if let Some(sock) = self.probing.take() {
            let keys = &mut self.state[sock].keys;
            let first = keys.next();
            let len = chunk.len().min(SEND_CHUNK);
            keys.sent(len);
            let mut slots = [None; SEND_CHUNK];
            for (k, p) in self.pending[chunk.start..chunk.start + len]
                .iter()
                .enumerate()
            {
                slots[k] = Some(p.0);
            }
            self.tx_sample = Some(TxSample {
                t0,
                sock,
                len,
                first,
                stamping: true,
                slots,
            });
        }
        if chunk.end < self.pending.len() {
            if let Err(f) = submit(&mut self.ring) {
                self.failure = Some(f);
            }
            self.stop_tx_stamping();
        }
        Sent::default()
    }

    fn departures(&mut self) -> Option<Departures> {
        self.departed.take()
    }

    fn sockets(&self) -> &[ListenSocket] {
        self.sockets
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

/// Checks that this kernel (and any seccomp policy around us) lets a worker
/// do everything [`serve`] does: set up a single-issuer deferred-taskrun
/// ring, register a provided-buffer ring, and receive a datagram through a
/// multishot `RecvMsg` on a UDP socket. Takes about a millisecond.
pub fn probe() -> Result<(), Unavailable> {
    let fail = |what: &str, e: io::Error| Unavailable(format!("{what}: {e}"));
    // Declared before the ring, so dropped after it.
    let template = recv_template();
    let buffers = BufRing::new(2).map_err(|e| fail("buffer ring", e))?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| fail("probe socket", e))?;
    let addr = sock.local_addr().map_err(|e| fail("probe socket", e))?;
    let mut ring = new_ring(8, 16).map_err(|e| fail("ring setup refused", e))?;
    buffers.register(&ring).map_err(|e| {
        fail(
            "provided-buffer ring registration refused (kernel < 5.19?)",
            e,
        )
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let entry = opcode::RecvMsgMulti::new(Fd(fd), &template, BUFFER_GROUP)
        .build()
        .user_data(TAG_RECV);
    // SAFETY: `template`, `buffers` and `sock` are declared before `ring`
    // and so outlive every operation on it.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| Unavailable("submission queue full".into()))?;
    ring.submit().map_err(|e| fail("submit", e))?;
    sock.send_to(b"probe", addr)
        .map_err(|e| fail("probe send", e))?;
    let timeout = Timespec::new().nsec(200_000_000);
    let args = SubmitArgs::new().timespec(&timeout);
    let waited = ring.submitter().submit_with_args(1, &args);
    let cqe = ring.completion().next();
    match (waited, cqe) {
        (_, Some(cqe)) if cqe.result() > 0 && cqueue::more(cqe.flags()) => Ok(()),
        (_, Some(cqe)) if cqe.result() < 0 => Err(fail(
            "multishot recvmsg (kernel < 6.0?)",
            io::Error::from_raw_os_error(-cqe.result()),
        )),
        (_, Some(_)) => Err(Unavailable("multishot recvmsg ended at once".into())),
        (Err(e), None) => Err(fail("waiting for the probe datagram", e)),
        (Ok(_), None) => Err(Unavailable("no completion for the probe datagram".into())),
    }
}
