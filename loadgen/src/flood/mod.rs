//! The junk flood of `--junk`: its own thread and its own connected
//! sockets (several, so that a server's `SO_REUSEPORT` hash spreads them
//! over its workers), sending the datagrams of [`crate::junk`] at a paced
//! rate for the step's duration, beside the measured requests, and counting
//! every datagram that comes back on those sockets — an answer to junk is
//! an amplification bug.
//!
//! Sending is batched for speed: each call is one `sendmmsg` on one socket
//! carrying one class: the class furthest behind in datagrams sent, so every
//! class's share stays within one call of the others' however uneven the
//! calls (a late thread catches up with full calls); sockets rotate call by
//! call. With UDP
//! GSO a message carries up to 64 datagrams of its class (a `UDP_SEGMENT`
//! control message per message; the kernel cuts them into ordinary
//! datagrams before any socket sees them); empty datagrams, and every class
//! with `--no-gso` or where the kernel refuses GSO, go one per message.
//! Per call only lengths and counters change: no allocation.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use fastntp::sys::buffers::zeroed_slice;
use fastntp::sys::cmsg::{self, ControlBuf};

use crate::batch::{send_messages, RecvBatch, GSO_MAX_SEGMENTS};
use crate::clients::{kernel_drops, ClientSocket};
use crate::junk::JunkClass;
use crate::pacing::Schedule;
use crate::poller::Poller;
use crate::send_loop::{self, PacedSender, Round};
use crate::signals::Interrupt;
use crate::timing::{elapsed_ns, nanos};

/// Most datagrams per send call.
pub const CALL_MAX: usize = 256;
/// Pacing granularity: a call carries about this much of the schedule.
const TICK_NS: u64 = 1_000_000;
/// Largest GSO message (bytes of payload), below the UDP limit for both
/// address families.
const GSO_MAX_BYTES: usize = 65_000;
/// Calls made back to back when behind schedule, before looking for
/// replies again.
const CATCH_UP_CALLS: usize = 8;
/// Receive buffer of each junk socket (replies are not expected; a large
/// buffer keeps an amplifying server's answers countable).
pub const JUNK_RECV_BUFFER: usize = 1 << 20;
/// Bytes kept of a reply to junk (only counted).
const REPLY_SLOT: usize = 64;

/// Control-message room for one `UDP_SEGMENT` (a u16).
const SEGMENT_CONTROL_LEN: usize = cmsg::space(std::mem::size_of::<u16>());
/// The control buffer of one GSO message.
type SegmentControl = ControlBuf<SEGMENT_CONTROL_LEN>;

/// One class, ready to send: its bytes repeated for a GSO message.
struct ClassBuf {
    class: JunkClass,
    /// `len` bytes of the class repeated `per_message` times.
    bytes: Box<[u8]>,
    len: usize,
    /// Datagrams per message: up to 64 with GSO, else 1.
    per_message: usize,
}

impl ClassBuf {
    fn new(class: JunkClass, gso: bool) -> ClassBuf {
        let one = class.bytes();
        let len = one.len();
        let per_message = if gso && len > 0 {
            (GSO_MAX_BYTES / len).clamp(1, GSO_MAX_SEGMENTS)
        } else {
            1
        };
        let bytes = one.repeat(per_message.max(1)).into_boxed_slice();
        ClassBuf {
            class,
            bytes,
            len,
            per_message,
        }
    }
}

/// What the flood thread needs for every step.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    /// Where the junk goes (the measured server).
    pub target: SocketAddr,
    /// The classes, sent in turn.
    pub classes: Vec<JunkClass>,
    /// Try UDP GSO.
    pub gso: bool,
    /// How long to keep counting replies after sending stops.
    pub linger: Duration,
}

/// One step for the flood thread.
#[derive(Clone, Copy, Debug)]
pub struct FloodCmd {
    /// Junk datagrams per second (all classes together).
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// When to start (the same instant as the load threads).
    pub start: Instant,
}

/// What the flood thread did in one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloodResult {
    /// Junk datagrams the kernel accepted, in total.
    pub sent: u64,
    /// The same per class, in the order of the configuration.
    pub sent_by_class: Vec<u64>,
    /// Datagrams due by the schedule when sending stopped.
    pub scheduled: u64,
    /// Send calls that sent something.
    pub calls: u64,
    /// Messages the kernel accepted (a GSO message carries several
    /// datagrams; the kernel's OutDatagrams counts it once).
    pub messages: u64,
    /// Send calls that found the socket buffer full.
    pub buffer_full: u64,
    /// ICMP errors reported on the junk sockets (nothing listening at the
    /// target), on a send call or while reading.
    pub refused: u64,
    /// Datagrams that failed to send for another reason.
    pub send_errors: u64,
    /// Datagrams that came back on the junk sockets (read, or dropped at
    /// their full receive buffers).
    pub replies: u64,
    /// Bytes of the replies read.
    pub reply_bytes: u64,
    /// Largest lag behind the schedule, nanoseconds.
    pub max_lag_ns: u64,
    /// CPU time the flood thread used while sending, nanoseconds.
    pub cpu_ns: u64,
    /// Times the flood thread was preempted while sending.
    pub preempted: u64,
    /// How long it sent.
    pub send_window: Duration,
    /// Whether every class went out as GSO batches (empty datagrams never
    /// do).
    pub gso_classes: usize,
    /// Sending stopped early on Ctrl-C.
    pub interrupted: bool,
}

impl FloodResult {
    /// Adds another step's result (windows add up, maxima take the larger).
    pub fn merge(&mut self, o: &FloodResult) {
        self.sent += o.sent;
        for (a, b) in self.sent_by_class.iter_mut().zip(&o.sent_by_class) {
            *a += b;
        }
        self.scheduled += o.scheduled;
        self.calls += o.calls;
        self.messages += o.messages;
        self.buffer_full += o.buffer_full;
        self.refused += o.refused;
        self.send_errors += o.send_errors;
        self.replies += o.replies;
        self.reply_bytes += o.reply_bytes;
        self.max_lag_ns = self.max_lag_ns.max(o.max_lag_ns);
        self.cpu_ns += o.cpu_ns;
        self.preempted += o.preempted;
        self.send_window += o.send_window;
        self.gso_classes = self.gso_classes.min(o.gso_classes);
        self.interrupted |= o.interrupted;
    }
}

/// The flood thread's state (lives and dies on its thread: its message
/// headers hold raw pointers into its own buffers).
pub struct Flood {
    sockets: Vec<ClientSocket>,
    poller: Poller,
    classes: Vec<ClassBuf>,
    iov: Box<[libc::iovec]>,
    hdr: Box<[libc::mmsghdr]>,
    control: Box<[SegmentControl]>,
    /// Datagrams in each message of the call being built.
    segs: Box<[usize]>,
    replies: RecvBatch<REPLY_SLOT, 0>,
    drops_base: Vec<u32>,
    /// Datagrams of each class dealt with in this step (sent, or lost to a
    /// send error): the class furthest behind goes next.
    dealt_by_class: Vec<u64>,
    next_socket: usize,
    linger: Duration,
    r: FloodResult,
}

impl Flood {
    /// A flood over `sockets` (connected to the target) sending `cfg`'s
    /// classes.
    pub fn new(cfg: &FloodConfig, sockets: Vec<ClientSocket>) -> std::io::Result<Flood> {
        let mut poller = Poller::new(sockets.len())?;
        for (i, s) in sockets.iter().enumerate() {
            poller.add(s.fd(), i as u64)?;
        }
        Ok(Flood {
            drops_base: vec![0; sockets.len()],
            dealt_by_class: vec![0; cfg.classes.len()],
            sockets,
            poller,
            classes: cfg
                .classes
                .iter()
                .map(|&c| ClassBuf::new(c, cfg.gso))
                .collect(),
            // SAFETY: all-zero is a valid iovec (null pointer, length 0).
            iov: unsafe { zeroed_slice(CALL_MAX) },
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero
            // lengths).
            hdr: unsafe { zeroed_slice(CALL_MAX) },
            control: vec![SegmentControl::default(); CALL_MAX].into_boxed_slice(),
            segs: vec![0; CALL_MAX].into_boxed_slice(),
            replies: RecvBatch::new(64),
            next_socket: 0,
            linger: cfg.linger,
            r: FloodResult::default(),
        })
    }

    /// Runs one step: junk at `cmd.rate` from `cmd.start` for
    /// `cmd.duration` (or until `interrupt`), then counts replies for the
    /// linger time.
    pub fn run_step(&mut self, cmd: &FloodCmd, interrupt: &Interrupt) -> FloodResult {
        self.r = FloodResult {
            sent_by_class: vec![0; self.classes.len()],
            gso_classes: self.classes.iter().filter(|c| c.per_message > 1).count(),
            ..FloodResult::default()
        };
        self.dealt_by_class.iter_mut().for_each(|d| *d = 0);
        for (base, s) in self.drops_base.iter_mut().zip(&self.sockets) {
            *base = kernel_drops(s.fd()).unwrap_or(0);
        }
        let sched = Schedule::with_tick(cmd.rate, nanos(cmd.duration), CALL_MAX, TICK_NS);
        let sent = send_loop::run(
            self,
            &sched,
            cmd.start,
            cmd.duration,
            CATCH_UP_CALLS,
            interrupt,
        );
        self.r.interrupted = sent.interrupted;
        self.r.max_lag_ns = sent.max_lag_ns;
        self.r.cpu_ns = sent.cpu_ns;
        self.r.preempted = sent.preempted;
        self.r.scheduled = sent.scheduled;
        self.r.send_window = sent.send_window;
        // Replies to the last datagrams may still be on their way.
        send_loop::linger(self, nanos(self.linger), interrupt);
        for (base, s) in self.drops_base.iter().zip(&self.sockets) {
            let now = kernel_drops(s.fd()).unwrap_or(*base);
            self.r.replies += now.wrapping_sub(*base) as u64;
        }
        std::mem::take(&mut self.r)
    }

    /// One `sendmmsg` of `k` datagrams of the class furthest behind on the
    /// next socket; returns how many datagrams of the schedule are dealt
    /// with (0: retry later).
    fn send_class(&mut self, k: usize) -> u64 {
        let ci = self.next_class();
        let s = self.next_socket;
        let fd = self.sockets[s].fd();
        let messages = self.build(ci, k);
        // SAFETY: `build` pointed every header at an iovec and (for GSO) a
        // control buffer owned by the flood, and the iovecs at its class
        // buffers; nothing of it moves during the call.
        let result = unsafe { send_messages(fd, &mut self.hdr[..messages]) };
        match result {
            Ok(sent_msgs) => {
                let sent: usize = self.segs[..sent_msgs].iter().sum();
                self.r.calls += 1;
                self.r.messages += sent_msgs as u64;
                self.r.sent += sent as u64;
                self.r.sent_by_class[ci] += sent as u64;
                self.dealt_by_class[ci] += sent as u64;
                self.advance();
                sent as u64
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM) => {
                    self.r.buffer_full += 1;
                    self.next_socket = (s + 1) % self.sockets.len();
                    0
                }
                Some(libc::ECONNREFUSED) => {
                    // An ICMP error from an earlier datagram, now cleared.
                    self.r.refused += 1;
                    0
                }
                Some(libc::EINVAL | libc::EIO | libc::EOPNOTSUPP)
                    if self.classes[ci].per_message > 1 =>
                {
                    // The route cannot take GSO: this class goes one
                    // datagram per message from now on.
                    let class = self.classes[ci].class;
                    self.classes[ci] = ClassBuf::new(class, false);
                    self.r.gso_classes = self.r.gso_classes.saturating_sub(1);
                    0
                }
                _ => {
                    self.r.send_errors += k as u64;
                    self.dealt_by_class[ci] += k as u64;
                    self.advance();
                    k as u64
                }
            },
        }
    }

    /// The class with the fewest datagrams dealt with in this step (the
    /// first of equals): sending a call of at most [`CALL_MAX`] to it keeps
    /// the most- and least-sent classes within one call of each other.
    fn next_class(&self) -> usize {
        let dealt = &self.dealt_by_class;
        (0..dealt.len()).min_by_key(|&i| dealt[i]).unwrap_or(0)
    }

    fn advance(&mut self) {
        self.next_socket = (self.next_socket + 1) % self.sockets.len();
    }

    /// Fills the message headers for `k` datagrams of class `ci`; returns
    /// the number of messages.
    fn build(&mut self, ci: usize, k: usize) -> usize {
        let c = &self.classes[ci];
        let base = c.bytes.as_ptr() as *mut libc::c_void;
        let mut left = k;
        let mut m = 0;
        while left > 0 && m < CALL_MAX {
            let n = left.min(c.per_message);
            self.iov[m] = libc::iovec {
                iov_base: base,
                iov_len: n * c.len,
            };
            let h = &mut self.hdr[m].msg_hdr;
            h.msg_iov = &mut self.iov[m];
            h.msg_iovlen = 1;
            if c.per_message > 1 {
                let len = write_segment_control(&mut self.control[m], c.len as u16);
                h.msg_control = self.control[m].0.as_mut_ptr().cast();
                h.msg_controllen = len as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            self.hdr[m].msg_len = 0;
            self.segs[m] = n;
            left -= n;
            m += 1;
        }
        m
    }

    /// Waits up to `timeout_ns` and counts what came back on the sockets.
    fn poll(&mut self, timeout_ns: u64) {
        let Ok(n) = self.poller.wait(timeout_ns) else {
            return;
        };
        for i in 0..n {
            let fd = self.sockets[self.poller.ready(i).token as usize].fd();
            self.read(fd);
        }
    }

    fn read(&mut self, fd: RawFd) {
        loop {
            match self.replies.recv(fd, 0) {
                Ok(0) => return,
                Ok(n) => {
                    self.r.replies += n as u64;
                    self.r.reply_bytes += (0..n).map(|i| self.replies.len(i) as u64).sum::<u64>();
                    if n < self.replies.capacity() {
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // The ICMP error of a datagram to a closed port: reading
                    // it clears it; the next send goes through.
                    self.r.refused += 1;
                    continue;
                }
                Err(_) => return,
            }
        }
    }
}

impl PacedSender for Flood {
    fn send_call(&mut self, due: u64) -> u64 {
        self.send_class(due.min(CALL_MAX as u64) as usize)
    }

    /// Reads what came back and, with nothing left due, sleeps until the
    /// next call is due (never past the end of sending).
    fn between_rounds(&mut self, round: &Round<'_>) {
        let wait = match round.sched.next_release(round.done) {
            Some(next) if round.left == 0 => next.saturating_sub(elapsed_ns(round.start)),
            _ => 0,
        };
        self.poll(wait.min(round.duration_ns.saturating_sub(elapsed_ns(round.start))));
    }

    fn await_replies(&mut self, timeout_ns: u64) {
        self.poll(timeout_ns);
    }
}

/// Writes a `UDP_SEGMENT` control message of segment size `size` into
/// `out`; returns its length (all of `out`).
fn write_segment_control(out: &mut SegmentControl, size: u16) -> usize {
    let data = std::mem::size_of::<u16>();
    // CMSG_LEN(0): the header, aligned; the data follows it.
    let hlen = cmsg::space(0);
    let header = libc::cmsghdr {
        cmsg_len: (hlen + data) as _,
        cmsg_level: libc::SOL_UDP,
        cmsg_type: libc::UDP_SEGMENT,
    };
    // SAFETY: `out` is aligned as a cmsghdr and longer than one, so the
    // header fits at its start; cmsghdr is plain old data.
    unsafe {
        std::ptr::write(out.0.as_mut_ptr().cast::<libc::cmsghdr>(), header);
    }
    out.0[hlen..hlen + data].copy_from_slice(&size.to_ne_bytes());
    SEGMENT_CONTROL_LEN
}

#[cfg(test)]
mod tests;
