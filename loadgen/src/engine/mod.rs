//! One load thread: its client sockets, its slot table, its batches, and
//! the step it runs — the [paced send loop](crate::send_loop) sending on
//! schedule while replies (and TX stamps) are read as they come, matched and
//! judged, then a wait of up to twice the timeout for stragglers.
//!
//! - this file: the thread's configuration, its state and a step;
//! - `send`: one batch of requests out on the next socket;
//! - `receive`: reading replies and TX stamps from ready sockets;
//! - `book`: what one reply changes (matching, judging, counting).
//!
//! Per packet the thread only writes a transmit timestamp, fills a slot,
//! parses control messages and a header from pre-allocated buffers, and
//! bumps integers and histogram buckets: no allocation, no lock, no log.
//! Batches rotate over the thread's sockets, so a reply burst lands on one
//! socket and is read back with one `recvmmsg`.

mod book;
mod receive;
mod send;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastntp::clock;
use fastntp::proto::{NtpTimestamp, UnixTime, HEADER_LEN};
use fastntp::sys::cmsg::{ERRQUEUE_CONTROL_LEN, RECV_CONTROL_LEN};

use crate::batch::{RecvBatch, SendBatch, GSO_MAX_SEGMENTS, RECV_SLOT};
use crate::clients::{kernel_drops, ClientSocket};
use crate::pacing::Schedule;
use crate::poller::Poller;
use crate::rng::Rng;
use crate::send_loop::{self, PacedSender, Round, MAX_WAIT_NS};
use crate::signals::Interrupt;
use crate::stats::{Counters, Histograms, Timeline};
use crate::timing::{elapsed_ns, nanos, wait_until};

use book::Book;

/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Batches sent before reading replies again when catching up.
const SEND_CHUNKS: usize = 4;
/// Gaps shorter than this until the next batch are spun, not slept.
const SLEEP_MIN_NS: u64 = 200_000;
/// Sleeps end this much before the next batch is due (then spin).
const WAKE_EARLY_NS: u64 = 40_000;
/// TX-stamp keys remembered per socket (a power of two).
const TX_RING: usize = 1024;
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
    /// Shortest gap slept through (0: never spin).
    sleep_min_ns: u64,
    /// How early a sleep ends before the next batch.
    wake_early_ns: u64,
    timeline_ns: Option<u64>,
    book: Book,
    live: Arc<Live>,
}

/// Nanoseconds since 1970 of `t`.
#[inline]
fn unix_ns(t: UnixTime) -> i64 {
    t.secs
        .saturating_mul(1_000_000_000)
        .saturating_add(t.nanos as i64)
}

/// The NTP timestamp of `ns` nanoseconds since 1970.
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
        let (sleep_min_ns, wake_early_ns) = if cfg.spin {
            (SLEEP_MIN_NS, WAKE_EARLY_NS)
        } else {
            (0, 0)
        };
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
            sleep_min_ns,
            wake_early_ns,
            timeline_ns: cfg.timeline.map(nanos),
            book: Book::new(cfg),
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
            Timeline::new(interval, now_u + ahead - behind, nanos(cmd.duration))
        });
        self.publish_live();
        for c in &mut self.clients {
            c.drops_base = kernel_drops(c.fd);
            c.drops_seen = c.drops_base;
        }
        if cmd.rate <= 0.0 {
            // --rate 0: only the junk flood sends; keep its time.
            return self.idle_step(cmd, interrupt);
        }
        let sched = Schedule::new(cmd.rate, nanos(cmd.duration), self.max_batch);
        let sent = send_loop::run(
            self,
            &sched,
            cmd.start,
            cmd.duration,
            SEND_CHUNKS,
            interrupt,
        );
        let c = &mut self.book.c;
        c.max_lag_ns = sent.max_lag_ns;
        c.cpu_ns = sent.cpu_ns;
        c.preempted = sent.preempted;
        c.scheduled = sent.scheduled;
        send_loop::linger(self, self.book.late_limit_ns as u64, interrupt);
        self.book.c.lost += self.book.table.give_up_all();
        self.publish_live();
        self.result(sent.send_window, sent.interrupted)
    }

    /// A step without requests: waits out its duration (or Ctrl-C), reading
    /// whatever arrives.
    fn idle_step(&mut self, cmd: &StepCmd, interrupt: &Interrupt) -> ThreadResult {
        wait_until(cmd.start);
        let duration_ns = nanos(cmd.duration);
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
            self.poll((duration_ns - el).min(MAX_WAIT_NS));
        }
        let send_window = if interrupted {
            Duration::from_nanos(elapsed_ns(cmd.start))
        } else {
            cmd.duration
        };
        self.result(send_window, interrupted)
    }

    /// The step's result, with the drops at our sockets counted now.
    fn result(&mut self, send_window: Duration, interrupted: bool) -> ThreadResult {
        self.book.c.own_drops = self.own_drops();
        ThreadResult {
            counters: self.book.c,
            hist: self.book.h.clone(),
            send_window,
            interrupted,
            timeline: self.book.timeline.take(),
        }
    }

    /// Publishes the step's requests sent and valid replies so far.
    fn publish_live(&self) {
        self.live.sent.store(self.book.c.sent, Ordering::Relaxed);
        self.live.valid.store(self.book.c.valid, Ordering::Relaxed);
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
}

impl PacedSender for Engine {
    fn send_call(&mut self, due: u64) -> u64 {
        self.send_batch(due.min(self.max_batch as u64) as usize)
    }

    /// Reads what is queued; with nothing read and nothing due, sleeps
    /// until shortly before the next batch (a short gap is spun instead).
    fn between_rounds(&mut self, round: &Round<'_>) {
        let got = self.poll(0);
        if got == 0 && round.due == 0 {
            if let Some(next) = round.sched.next_release(round.done) {
                let now = elapsed_ns(round.start);
                if next > now + self.sleep_min_ns {
                    self.poll(next - now - self.wake_early_ns);
                }
            }
        }
        self.publish_live();
    }

    fn await_replies(&mut self, timeout_ns: u64) {
        self.poll(timeout_ns);
    }

    fn expects_replies(&self) -> bool {
        self.book.table.outstanding() > 0
    }
}

#[cfg(test)]
mod tests;
