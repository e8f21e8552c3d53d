//! One load thread: its client sockets, its slot table, its batches, and
//! the loop that, for one step, sends on schedule, reads replies (and TX
//! stamps) as they come, matches and judges them, and finally waits up to
//! twice the timeout for stragglers.
//!
//! Per packet the loop only writes a transmit timestamp, fills a slot,
//! parses control messages and a header from pre-allocated buffers, and
//! bumps integers and histogram buckets: no allocation, no lock, no log.
//! Batches rotate over the thread's sockets, so a reply burst lands on one
//! socket and is read back with one `recvmmsg`.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastntp::clock;
use fastntp::proto::{Header, NtpTimestamp, UnixTime, HEADER_LEN};
use fastntp::sys::cmsg::{self, ERRQUEUE_CONTROL_LEN, RECV_CONTROL_LEN};

use crate::batch::{PeerName, RecvBatch, SendBatch, GSO_MAX_SEGMENTS, RECV_SLOT};
use crate::clients::{kernel_drops, ClientSocket};
use crate::matching::{Lookup, SlotTable};
use crate::pacing::Schedule;
use crate::poller::Poller;
use crate::rng::Rng;
use crate::signals::Interrupt;
use crate::stats::{Counters, Histograms, Timeline};
use crate::validate::{judge, Sample, Verdict};

/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Batches read from one ready socket before looking at the others.
const RECV_ROUNDS: usize = 8;
/// Batches sent before reading replies again when catching up.
const SEND_CHUNKS: usize = 4;
/// Gaps shorter than this until the next batch are spun, not slept.
const SLEEP_MIN_NS: u64 = 200_000;
/// Sleeps end this much before the next batch is due (then spin).
const WAKE_EARLY_NS: u64 = 40_000;
/// Longest single wait while draining.
const DRAIN_WAIT_NS: u64 = 20_000_000;
/// TX-stamp keys remembered per socket (a power of two).
const TX_RING: usize = 1024;
/// `SCM_TSTAMP_SND`: stamped when the datagram left for the device.
const TSTAMP_SND: u32 = 0;
/// Payload room of an error-queue read (`OPT_TSONLY`: none is returned).
const ERR_SLOT: usize = 16;

/// What a thread needs to know for every step.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where the requests go.
    pub target: SocketAddr,
    /// NTP version of the requests.
    pub version: u8,
    /// Late threshold; lost after twice this.
    pub timeout: Duration,
    /// T1 from kernel TX stamps.
    pub precise_tx: bool,
    /// Largest send batch.
    pub max_batch: usize,
    /// Slot table size.
    pub table_slots: u64,
    /// Send each batch as one UDP GSO buffer (the sockets have
    /// `UDP_SEGMENT` set) instead of `sendmmsg`.
    pub gso: bool,
    /// Count unsynchronized but otherwise valid replies as valid.
    pub accept_unsynchronized: bool,
    /// `--timeline`: count sends and valid replies per interval of this
    /// width.
    pub timeline: Option<Duration>,
    /// Spin through short gaps between batches for precise send times;
    /// off when another busy thread of ours (the junk flood) shares the
    /// core, which spinning would starve.
    pub spin: bool,
}

/// One step for one thread.
#[derive(Clone, Copy, Debug)]
pub struct StepCmd {
    /// This thread's share of the offered rate (requests per second).
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// When to send the first request (the same for every thread).
    pub start: Instant,
}

/// What one thread measured in one step.
#[derive(Clone, Debug, Default)]
pub struct ThreadResult {
    /// Counters.
    pub counters: Counters,
    /// Histograms of the valid replies.
    pub hist: Histograms,
    /// How long it sent (the step's duration unless interrupted).
    pub send_window: Duration,
    /// Sending stopped early on Ctrl-C.
    pub interrupted: bool,
    /// Sends and valid replies per interval (with `--timeline`).
    pub timeline: Option<Timeline>,
}

/// Counters a thread publishes while running, for the progress bar.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Live {
    /// Requests sent this step.
    pub sent: AtomicU64,
    /// Valid replies this step.
    pub valid: AtomicU64,
}

struct Client {
    fd: RawFd,
    /// `OPT_ID` key of the next datagram sent.
    next_tskey: u32,
    /// Kernel drop count at the start of the step (`SO_MEMINFO`).
    drops_base: Option<u32>,
    /// Latest drop count reported by `SO_RXQ_OVFL`.
    drops_seen: Option<u32>,
}

/// The bookkeeping side of a thread: everything a reply updates.
struct Book {
    table: SlotTable,
    c: Counters,
    h: Histograms,
    timeline: Option<Timeline>,
    version: u8,
    timeout_ns: i64,
    late_limit_ns: i64,
    precise: bool,
    accept_unsynchronized: bool,
    peer: PeerName,
}

/// One load thread's state. Lives and dies on its thread (its batches hold
/// raw pointers into their own buffers).
pub struct Engine {
    _sockets: Vec<ClientSocket>,
    clients: Vec<Client>,
    poller: Poller,
    out: SendBatch,
    inb: RecvBatch<RECV_SLOT, RECV_CONTROL_LEN>,
    errq: Option<RecvBatch<ERR_SLOT, ERRQUEUE_CONTROL_LEN>>,
    tx_ring: Vec<u32>,
    rng: Rng,
    seq: u64,
    next_socket: usize,
    max_batch: usize,
    gso: bool,
    spin: bool,
    timeline_ns: Option<u64>,
    book: Book,
    live: Arc<Live>,
}

#[inline]
fn unix_ns(t: UnixTime) -> i64 {
    t.secs
        .saturating_mul(1_000_000_000)
        .saturating_add(t.nanos as i64)
}

#[inline]
fn ntp_of_ns(ns: i64) -> NtpTimestamp {
    NtpTimestamp::from_unix(UnixTime::new(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    ))
}

/// The request every client sends (transmit timestamp filled per
/// request): LI 0, the version, mode 3, everything else zero, as the
/// data-minimization draft asks of clients.
pub fn request_template(version: u8) -> [u8; HEADER_LEN] {
    let mut r = [0u8; HEADER_LEN];
    r[0] = (version & 7) << 3 | 3;
    r
}

impl Engine {
    /// A thread's engine over `sockets` (at most 65 535).
    pub fn new(
        cfg: &EngineConfig,
        sockets: Vec<ClientSocket>,
        live: Arc<Live>,
    ) -> std::io::Result<Engine> {
        let mut poller = Poller::new(sockets.len())?;
        for (i, s) in sockets.iter().enumerate() {
            poller.add(s.fd(), i as u64)?;
        }
        // Nothing is queued yet; this also probes epoll_pwait2.
        poller.wait(1)?;
        let clients = sockets
            .iter()
            .map(|s| Client {
                fd: s.fd(),
                next_tskey: 0,
                drops_base: None,
                drops_seen: None,
            })
            .collect();
        // Linux takes at most 64 segments per GSO send on older kernels.
        let max_batch = if cfg.gso {
            cfg.max_batch.clamp(1, GSO_MAX_SEGMENTS)
        } else {
            cfg.max_batch.max(1)
        };
        let timeout_ns = cfg.timeout.as_nanos().min(i64::MAX as u128 / 4) as i64;
        Ok(Engine {
            tx_ring: if cfg.precise_tx {
                vec![0; sockets.len() * TX_RING]
            } else {
                Vec::new()
            },
            errq: cfg.precise_tx.then(|| RecvBatch::new(RECV_BATCH)),
            _sockets: sockets,
            clients,
            poller,
            out: SendBatch::new(max_batch, request_template(cfg.version)),
            inb: RecvBatch::new(RECV_BATCH),
            rng: Rng::from_os(),
            seq: 0,
            next_socket: 0,
            max_batch,
            gso: cfg.gso,
            spin: cfg.spin,
            timeline_ns: cfg
                .timeline
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64),
            book: Book {
                table: SlotTable::new(cfg.table_slots),
                c: Counters::default(),
                h: Histograms::default(),
                timeline: None,
                version: cfg.version,
                timeout_ns,
                late_limit_ns: 2 * timeout_ns,
                precise: cfg.precise_tx,
                accept_unsynchronized: cfg.accept_unsynchronized,
                peer: PeerName::of(cfg.target),
            },
            live,
        })
    }

    /// Whether waits have nanosecond resolution (`epoll_pwait2`).
    pub fn fine_timeouts(&self) -> bool {
        self.poller.fine_timeouts()
    }

    /// How the thread waits for replies: "ppoll" or "epoll".
    pub fn wait_method(&self) -> &'static str {
        self.poller.name()
    }

    /// Runs one step: sends on schedule from `cmd.start` for
    /// `cmd.duration` (or until `interrupt`), then waits up to twice the
    /// timeout for the replies still outstanding.
    pub fn run_step(&mut self, cmd: &StepCmd, interrupt: &Interrupt) -> ThreadResult {
        self.book.c = Counters::default();
        self.book.h.reset();
        self.book.timeline = self.timeline_ns.map(|interval| {
            // The step's start on the clock T1 is read from.
            let (now_i, now_u) = (Instant::now(), unix_ns(clock::now()));
            let ahead = cmd.start.saturating_duration_since(now_i).as_nanos() as i64;
            let behind = now_i.saturating_duration_since(cmd.start).as_nanos() as i64;
            let duration_ns = cmd.duration.as_nanos().min(u64::MAX as u128) as u64;
            Timeline::new(interval, now_u + ahead - behind, duration_ns)
        });
        self.live.sent.store(0, Ordering::Relaxed);
        self.live.valid.store(0, Ordering::Relaxed);
        for c in &mut self.clients {
            c.drops_base = kernel_drops(c.fd);
            c.drops_seen = c.drops_base;
        }
        if cmd.rate <= 0.0 {
            // --rate 0: only the junk flood sends; keep its time.
            return self.idle_step(cmd, interrupt);
        }
        let duration_ns = cmd.duration.as_nanos().min(u64::MAX as u128) as u64;
        let sched = Schedule::new(cmd.rate, duration_ns, self.max_batch);
        let (sleep_min, wake_early) = if self.spin {
            (SLEEP_MIN_NS, WAKE_EARLY_NS)
        } else {
            (0, 0)
        };
        wait_until(cmd.start);
        let usage_before = thread_usage();
        let start = cmd.start;
        let mut done = 0u64; // requests of the schedule dealt with
        let mut interrupted = false;
        loop {
            if interrupt.stop_requested() {
                interrupted = true;
                break;
            }
            // Past the end everything is due: the tail goes out before the
            // loop ends, however late this thread woke up (a busy host
            // must not turn a late wake-up into a short run).
            let el = elapsed_ns(start);
            let want = sched.to_send(done, el);
            if want > 0 {
                let lag = sched.lag(done, el);
                self.book.c.max_lag_ns = self.book.c.max_lag_ns.max(lag);
                let mut left = want;
                for _ in 0..SEND_CHUNKS {
                    if left == 0 {
                        break;
                    }
                    let k = left.min(self.max_batch as u64) as usize;
                    let consumed = self.send_batch(k);
                    if consumed == 0 {
                        break;
                    }
                    done += consumed;
                    left -= consumed;
                }
            }
            if done >= sched.total() || el >= duration_ns {
                break;
            }
            let got = self.poll(0);
            if got == 0 && want == 0 {
                if let Some(next) = sched.next_release(done) {
                    let now = elapsed_ns(start);
                    if next > now + sleep_min {
                        self.poll(next - now - wake_early);
                    }
                }
            }
            self.live.sent.store(self.book.c.sent, Ordering::Relaxed);
            self.live.valid.store(self.book.c.valid, Ordering::Relaxed);
        }
        let send_end = Duration::from_nanos(elapsed_ns(start));
        let usage_after = thread_usage();
        self.book.c.cpu_ns = usage_after.cpu_ns.saturating_sub(usage_before.cpu_ns);
        self.book.c.preempted = usage_after.preempted.saturating_sub(usage_before.preempted);
        self.book.c.scheduled = if interrupted {
            sched.due_by(send_end.as_nanos() as u64)
        } else {
            sched.total()
        };
        let send_window = if interrupted { send_end } else { cmd.duration };
        self.drain(interrupt);
        self.book.c.lost += self.book.table.give_up_all();
        self.book.c.own_drops = self.own_drops();
        self.live.sent.store(self.book.c.sent, Ordering::Relaxed);
        self.live.valid.store(self.book.c.valid, Ordering::Relaxed);
        ThreadResult {
            counters: self.book.c,
            hist: self.book.h.clone(),
            send_window,
            interrupted,
            timeline: self.book.timeline.take(),
        }
    }

    /// A step without requests: waits out its duration (or Ctrl-C), reading
    /// whatever arrives.
    fn idle_step(&mut self, cmd: &StepCmd, interrupt: &Interrupt) -> ThreadResult {
        wait_until(cmd.start);
        let duration_ns = cmd.duration.as_nanos().min(u64::MAX as u128) as u64;
        let mut interrupted = false;
        loop {
            let el = elapsed_ns(cmd.start);
            if el >= duration_ns {
                break;
            }
            if interrupt.stop_requested() {
                interrupted = true;
                break;
            }
            self.poll((duration_ns - el).min(DRAIN_WAIT_NS));
        }
        self.book.c.own_drops = self.own_drops();
        ThreadResult {
            counters: self.book.c,
            hist: self.book.h.clone(),
            send_window: if interrupted {
                Duration::from_nanos(elapsed_ns(cmd.start))
            } else {
                cmd.duration
            },
            interrupted,
            timeline: self.book.timeline.take(),
        }
    }

    /// Waits for outstanding replies, at most twice the timeout.
    fn drain(&mut self, interrupt: &Interrupt) {
        let began = Instant::now();
        let limit = self.book.late_limit_ns as u64;
        while self.book.table.outstanding() > 0 && !interrupt.hurry() {
            let el = elapsed_ns(began);
            if el >= limit {
                break;
            }
            self.poll((limit - el).min(DRAIN_WAIT_NS));
        }
        // Whatever is already queued still counts (it may be duplicates).
        self.poll(0);
    }

    /// Datagrams dropped at our sockets during the step.
    fn own_drops(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| {
                let base = c.drops_base.or(c.drops_seen).unwrap_or(0);
                let from_cmsg = c.drops_seen.map_or(0, |d| d.wrapping_sub(base));
                let from_meminfo = kernel_drops(c.fd).map_or(0, |d| d.wrapping_sub(base));
                from_cmsg.max(from_meminfo) as u64
            })
            .sum()
    }

    /// Sends `k` requests as one batch on the next socket; returns how many
    /// requests of the schedule are dealt with (0: retry later).
    fn send_batch(&mut self, k: usize) -> u64 {
        let s = self.next_socket;
        self.next_socket = if s + 1 == self.clients.len() {
            0
        } else {
            s + 1
        };
        let key0 = self.clients[s].next_tskey;
        let book = &mut self.book;
        for i in 0..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            let tx = book.table.encode(idx, self.rng.next_u64());
            let key = key0.wrapping_add(i as u32);
            if book.table.claim(idx, tx, s as u16, key) {
                book.c.lost += 1;
            }
            self.out.set_transmit(i, tx);
            if book.precise {
                self.tx_ring[s * TX_RING + (key as usize & (TX_RING - 1))] = idx as u32;
            }
        }
        // T1: read as close to the send call as we can without kernel help.
        let t1 = unix_ns(clock::now());
        for i in 0..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            book.table.set_t1(idx, t1);
        }
        let fd = self.clients[s].fd;
        let result = if self.gso {
            self.out.send_gso(fd, k)
        } else {
            self.out.send(fd, k)
        };
        let sent = *result.as_ref().unwrap_or(&0);
        for i in sent..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            book.table.release_unsent(idx);
        }
        self.seq += sent as u64;
        self.clients[s].next_tskey = key0.wrapping_add(sent as u32);
        book.c.sent += sent as u64;
        if let Some(t) = &mut book.timeline {
            t.sent_at(t1, sent as u64);
        }
        match result {
            Ok(0) => {
                book.c.send_would_block += 1;
                0
            }
            Ok(n) => {
                book.c.send_calls += 1;
                n as u64
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM) => {
                    book.c.send_would_block += 1;
                    0
                }
                Some(libc::ECONNREFUSED) => {
                    // An ICMP error from an earlier datagram; it is cleared
                    // now, so the batch goes out on the next try.
                    book.c.refused += 1;
                    0
                }
                _ => {
                    // Anything else (e.g. a firewall's EPERM) fails this
                    // request for good.
                    book.c.send_errors += 1;
                    1
                }
            },
        }
    }

    /// Waits up to `timeout_ns` for ready sockets and reads them; returns
    /// the datagrams read.
    fn poll(&mut self, timeout_ns: u64) -> usize {
        let n = match self.poller.wait(timeout_ns) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let mut total = 0;
        for i in 0..n {
            let r = self.poller.ready(i);
            let s = r.token as usize;
            if r.error && self.errq.is_some() {
                self.read_tx_stamps(s);
            }
            if r.readable || r.error {
                total += self.read_replies(s);
            }
        }
        total
    }

    /// Reads the TX stamps queued on socket `s`.
    fn read_tx_stamps(&mut self, s: usize) {
        let Some(errq) = self.errq.as_mut() else {
            return;
        };
        let fd = self.clients[s].fd;
        for _ in 0..RECV_ROUNDS {
            // An error here (none is expected) just ends this read.
            let n: usize = errq.recv(fd, libc::MSG_ERRQUEUE).unwrap_or_default();
            for i in 0..n {
                let Some(tx) = cmsg::parse_tx_timestamp(errq.control(i)) else {
                    continue;
                };
                if tx.kind != TSTAMP_SND {
                    continue;
                }
                let idx = self.tx_ring[s * TX_RING + (tx.id as usize & (TX_RING - 1))] as usize;
                if !self
                    .book
                    .table
                    .set_precise_t1(idx, s as u16, tx.id, unix_ns(tx.stamp))
                {
                    self.book.c.tx_stamps_unmatched += 1;
                }
            }
            if n < errq.capacity() {
                break;
            }
        }
    }

    /// Reads the replies queued on socket `s`.
    fn read_replies(&mut self, s: usize) -> usize {
        let fd = self.clients[s].fd;
        let mut total = 0;
        for _ in 0..RECV_ROUNDS {
            let n = match self.inb.recv(fd, 0) {
                Ok(n) => n,
                Err(e) => {
                    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                        self.book.c.refused += 1;
                        continue;
                    }
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.book.c.recv_calls += 1;
            for i in 0..n {
                let drops = self.book.on_datagram(s, &self.inb, i);
                if drops.is_some() {
                    self.clients[s].drops_seen = drops;
                }
            }
            total += n;
            if n < self.inb.capacity() {
                break;
            }
        }
        total
    }
}

impl Book {
    /// Counts a valid reply (`unsynchronized`: accepted as such) to a
    /// request sent at `t1_ns`.
    #[inline]
    fn valid(&mut self, sample: &Sample, t1_ns: i64, unsynchronized: bool) {
        let c = &mut self.c;
        c.valid += 1;
        c.valid_unsynchronized += unsynchronized as u64;
        c.negative_rtt += (sample.rtt_ns < 0) as u64;
        self.h.record(sample);
        if let Some(t) = &mut self.timeline {
            t.valid_at(t1_ns);
        }
    }

    /// Accounts for datagram `i` of `batch`, read from socket `s`. Returns
    /// the socket's drop count if the kernel reported one.
    #[inline]
    fn on_datagram(
        &mut self,
        s: usize,
        batch: &RecvBatch<RECV_SLOT, RECV_CONTROL_LEN>,
        i: usize,
    ) -> Option<u32> {
        let c = &mut self.c;
        c.other.received += 1;
        let info = cmsg::parse(batch.control(i));
        let payload = batch.payload(i);
        if payload.len() < HEADER_LEN {
            c.other.malformed += 1;
            return info.rxq_dropped;
        }
        if !batch.from_peer(i, &self.peer) {
            c.other.wrong_source += 1;
            return info.rxq_dropped;
        }
        let mut origin = [0u8; 8];
        origin.copy_from_slice(&payload[24..32]);
        let idx = match self.table.lookup(u64::from_be_bytes(origin), s as u16) {
            Lookup::Outstanding(idx) => idx,
            Lookup::NoMatch => {
                c.other.unmatched += 1;
                return info.rxq_dropped;
            }
            Lookup::Answered => {
                c.other.duplicates += 1;
                return info.rxq_dropped;
            }
            Lookup::Lost => {
                c.other.stale += 1;
                return info.rxq_dropped;
            }
        };
        let t4 = match info.rx_stamp {
            Some(t) => t,
            None => {
                c.missing_rx_stamps += 1;
                clock::now()
            }
        };
        let slot = *self.table.slot(idx);
        if self.precise {
            if slot.precise {
                c.tx_stamps_used += 1;
            } else {
                c.tx_stamps_missing += 1;
            }
        }
        let age = unix_ns(t4) - slot.t1_ns;
        if age > self.late_limit_ns {
            self.table.give_up(idx);
            c.lost += 1;
            c.other.stale += 1;
            return info.rxq_dropped;
        }
        self.table.answer(idx);
        if age > self.timeout_ns {
            c.late += 1;
            return info.rxq_dropped;
        }
        let Ok(h) = Header::parse(payload) else {
            c.other.malformed += 1;
            return info.rxq_dropped;
        };
        match judge(
            &h,
            self.version,
            ntp_of_ns(slot.t1_ns),
            NtpTimestamp::from_unix(t4),
            self.accept_unsynchronized,
        ) {
            Verdict::Valid(sample) => self.valid(&sample, slot.t1_ns, false),
            Verdict::Unsynchronized(sample) => self.valid(&sample, slot.t1_ns, true),
            Verdict::Kod(code) => c.kod.add(code),
            Verdict::Invalid(why) => c.invalid[why.index()] += 1,
        }
        info.rxq_dropped
    }
}

/// Nanoseconds since `since`.
#[inline]
pub fn elapsed_ns(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

/// Sleeps until shortly before `at`, then spins to it.
pub fn wait_until(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > Duration::from_millis(2) {
            std::thread::sleep(left - Duration::from_millis(1));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// CPU time and involuntary context switches of the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User + system CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Involuntary context switches.
    pub preempted: u64,
}

/// The calling thread's [`Usage`] so far.
pub fn thread_usage() -> Usage {
    // SAFETY: all-zero bytes are a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live rusage the kernel fills in.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Usage::default();
    }
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    Usage {
        cpu_ns: ns(ru.ru_utime) + ns(ru.ru_stime),
        preempted: ru.ru_nivcsw as u64,
    }
}

/// Sets the calling thread's timer slack to 1 ns so short sleeps end on
/// time (the default slack is 50 µs).
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine whose sockets point at a local sink.
    fn engine_to(sink: &std::net::UdpSocket) -> Engine {
        let target = sink.local_addr().unwrap();
        let setup = crate::clients::ClientSetup {
            target,
            clients: 2,
            sources: None,
            precise_tx: false,
            gso: true,
        };
        let (sockets, info) = crate::clients::open(&setup).unwrap();
        let cfg = EngineConfig {
            target,
            version: 4,
            timeout: Duration::from_millis(50),
            precise_tx: false,
            max_batch: 64,
            table_slots: 1 << 12,
            gso: info.gso,
            accept_unsynchronized: false,
            timeline: None,
            spin: true,
        };
        Engine::new(&cfg, sockets, Arc::new(Live::default())).unwrap()
    }

    #[test]
    fn a_thread_that_wakes_after_the_end_still_sends_the_whole_schedule() {
        // A loaded host can wake the thread after the step's end; the
        // schedule's tail is due by then and goes out (before, the loop
        // ended first and a short run looked generator-limited).
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut e = engine_to(&sink);
        let cmd = StepCmd {
            rate: 1000.0,
            duration: Duration::from_millis(100),
            start: Instant::now() - Duration::from_millis(150),
        };
        let r = e.run_step(&cmd, &Interrupt::default());
        assert_eq!(r.counters.scheduled, 100);
        assert_eq!(r.counters.sent, 100, "{:?}", r.counters);
        assert_eq!(r.counters.lost, 100, "the sink answers nothing");
    }

    #[test]
    fn rate_zero_sends_nothing_and_keeps_the_time() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut e = engine_to(&sink);
        let began = Instant::now();
        let cmd = StepCmd {
            rate: 0.0,
            duration: Duration::from_millis(100),
            start: began,
        };
        let r = e.run_step(&cmd, &Interrupt::default());
        assert_eq!((r.counters.sent, r.counters.scheduled), (0, 0));
        assert_eq!(r.send_window, Duration::from_millis(100));
        assert!(began.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn template_is_a_minimal_client_request() {
        let t = request_template(4);
        assert_eq!(t[0], 0x23);
        assert!(t[1..].iter().all(|&b| b == 0));
        assert_eq!(request_template(3)[0], 0x1b);
    }

    #[test]
    fn nanoseconds_round_trip_through_ntp() {
        let t = UnixTime::new(1_800_000_000, 123_456_789);
        let ns = unix_ns(t);
        assert_eq!(ntp_of_ns(ns), NtpTimestamp::from_unix(t));
        assert_eq!(unix_ns(UnixTime::new(-1, 500_000_000)), -500_000_000);
        assert_eq!(
            ntp_of_ns(-500_000_000),
            NtpTimestamp::from_unix(UnixTime::new(-1, 500_000_000))
        );
    }
}
