//! Helpers of the ntp-loadgen integration tests on top of the shared
//! [`testkit`] (temporary directories, chronyd and fastntpd as real
//! servers, the reply builder, skipping outside CI): run the binary with a
//! time limit, a scriptable fake NTP server in the test process (bounded
//! in time and packets, loopback only, with a receive queue deep enough
//! that a busy host starving its thread for a while loses nothing) and a
//! counting UDP sink.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::Background;
pub use testkit::Reply;
#[allow(unused_imports)] // not every test binary uses all of them
pub use testkit::{
    free_udp_port, output_within, require, send_signal, skip, Chronyd, Fastntpd, TempDir,
};

/// The ntp-loadgen binary under test.
pub fn loadgen_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ntp-loadgen")
}

/// Runs ntp-loadgen with `args`, killing it after `limit`.
pub fn run_loadgen(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ntp-loadgen");
    output_within(child, limit)
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads a `--json` file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read json");
    serde_json::from_str(&text).expect("json parses")
}

/// What the fake server does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send these bytes back after this delay.
    Reply(Vec<u8>, Duration),
    /// Send these bytes back twice.
    ReplyTwice(Vec<u8>),
    /// Send these bytes back from another socket (another port).
    ReplyFromElsewhere(Vec<u8>),
    /// Send nothing.
    Drop,
}

/// A correct reply to `req`: mode 4, its version, stratum 2 (refid
/// 127.0.0.1), origin = its transmit timestamp, receive/transmit = now.
pub fn good_reply(req: &[u8]) -> Vec<u8> {
    good(req).to_vec()
}

/// [`good_reply`] before it is written out, to change a field.
pub fn good(req: &[u8]) -> Reply {
    Reply {
        stratum: 2,
        refid: [127, 0, 0, 1],
        ..Reply::answering(req, testkit::ntp_now())
    }
}

/// Receive queue of the test's servers and sinks: a few seconds of their
/// traffic, so a thread starved by a loaded host catches up instead of
/// losing datagrams (forced past `rmem_max` when root, as in CI).
pub const DEEP_QUEUE: i32 = 64 << 20;

/// Gives `sock` a [`DEEP_QUEUE`] (or as much as an unprivileged process
/// may ask for).
pub fn deepen(sock: &UdpSocket) {
    use fastntp::sys::socket::setsockopt_int;
    let _ = [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF]
        .into_iter()
        .any(|opt| setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, opt, DEEP_QUEUE).is_ok());
}

/// What the fake server saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests received.
    pub requests: u64,
    /// Datagrams sent back (replies, duplicates included).
    pub replies: u64,
    /// Requests per fault label.
    pub by_label: HashMap<&'static str, u64>,
    /// Distinct client addresses.
    pub sources: HashSet<IpAddr>,
}

type Script = Box<dyn FnMut(u64, &[u8]) -> (&'static str, Action) + Send>;

/// A fake NTP server on 127.0.0.1 run by a script: for request number n
/// the script returns a label (tallied) and what to do.
pub struct FakeServer {
    /// Its address.
    pub addr: SocketAddr,
    thread: Background<Tally>,
}

impl FakeServer {
    /// Starts a server on 127.0.0.1 that stops by itself after `limit` or
    /// 2 M requests.
    pub fn start(script: Script, limit: Duration) -> FakeServer {
        FakeServer::start_on("127.0.0.1:0", script, limit).expect("bind fake server")
    }

    /// Like [`FakeServer::start`] on `bind` (e.g. `[::1]:0`); `None` if it
    /// cannot bind there.
    pub fn start_on(bind: &str, mut script: Script, limit: Duration) -> Option<FakeServer> {
        let sock = UdpSocket::bind(bind).ok()?;
        let other = UdpSocket::bind(bind).ok()?;
        deepen(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let thread = Background::spawn(move |stop| {
            let deadline = Instant::now() + limit;
            let mut t = Tally::default();
            let mut delayed: Vec<(Instant, Vec<u8>, SocketAddr)> = Vec::new();
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 2_000_000 {
                let now = Instant::now();
                delayed.retain(|(due, bytes, to)| {
                    if *due <= now {
                        let _ = sock.send_to(bytes, to);
                        false
                    } else {
                        true
                    }
                });
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let (label, action) = script(n, &buf[..len]);
                n += 1;
                let replies = match action {
                    Action::Reply(bytes, d) if d.is_zero() => {
                        sock.send_to(&bytes, from).is_ok() as u64
                    }
                    Action::Reply(bytes, d) => {
                        delayed.push((Instant::now() + d, bytes, from));
                        1
                    }
                    Action::ReplyTwice(bytes) => {
                        sock.send_to(&bytes, from).is_ok() as u64
                            + sock.send_to(&bytes, from).is_ok() as u64
                    }
                    Action::ReplyFromElsewhere(bytes) => other.send_to(&bytes, from).is_ok() as u64,
                    Action::Drop => 0,
                };
                t.requests += 1;
                t.replies += replies;
                *t.by_label.entry(label).or_default() += 1;
                t.sources.insert(from.ip());
            }
            t
        });
        Some(FakeServer { addr, thread })
    }

    /// A well-behaved server.
    pub fn good(limit: Duration) -> FakeServer {
        FakeServer::start(
            Box::new(|_, req| ("good", Action::Reply(good_reply(req), Duration::ZERO))),
            limit,
        )
    }

    /// Stops it and returns what it saw.
    pub fn stop(mut self) -> Tally {
        self.thread
            .stop()
            .expect("the fake server's thread panicked")
    }
}

/// A UDP socket on 127.0.0.1 that counts what it receives, by datagram
/// length, and answers every `answer_every`-th datagram (0: none) with a
/// 48-byte datagram. Bounded: stops after `limit`.
pub struct Sink {
    /// Its address.
    pub addr: SocketAddr,
    counts: Arc<Mutex<(HashMap<usize, u64>, u64)>>,
    thread: Background<()>,
}

impl Sink {
    /// Starts one.
    pub fn start(answer_every: u64, limit: Duration) -> Sink {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        deepen(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let counts = Arc::new(Mutex::new((HashMap::new(), 0)));
        let counts2 = Arc::clone(&counts);
        let thread = Background::spawn(move |stop| {
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                n += 1;
                let answered = answer_every > 0
                    && n % answer_every == 0
                    && sock.send_to(&[0x24; 48], from).is_ok();
                let mut c = counts2.lock().expect("counts");
                *c.0.entry(len).or_default() += 1;
                c.1 += answered as u64;
            }
        });
        Sink {
            addr,
            counts,
            thread,
        }
    }

    /// Datagrams received so far, in total.
    pub fn received(&self) -> u64 {
        self.counts.lock().expect("counts").0.values().sum()
    }

    /// Waits until the count stops changing (at most `limit`), stops, and
    /// returns the datagrams received by length and the answers sent.
    pub fn finish(mut self, limit: Duration) -> (HashMap<usize, u64>, u64) {
        let deadline = Instant::now() + limit;
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            let now = self.received();
            if now == last {
                break;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(200));
        }
        self.thread.stop();
        std::mem::take(&mut *self.counts.lock().expect("counts"))
    }
}

/// fastntpd on an ephemeral loopback port serving the local clock at
/// stratum 10 with `workers` workers, once it serves it; `None` (after
/// "SKIPPED: …", a failure in CI) when it is not built.
pub fn local_fastntpd(workers: usize) -> Option<Fastntpd> {
    testkit::fastntpd_bin()?;
    let mut server = Fastntpd::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n[clock]\nlocal-stratum = 10\n"
    ));
    server.logged_or_wait("serving ", Duration::from_secs(10));
    Some(server)
}
