//! Shared helpers for the ntp-loadgen integration tests: run the binary
//! with a time limit, a scriptable fake NTP server in the test process
//! (bounded in time and packets, loopback only, with a receive queue deep
//! enough that a busy host starving its thread for a while loses nothing),
//! a counting UDP sink, and chronyd / fastntpd as real servers on ephemeral
//! loopback ports (skipped with "SKIPPED: …" when missing, unless
//! FASTNTP_CI is set).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "../../../tests/support/tools.rs"]
mod tools;
#[allow(unused_imports)] // not every test binary uses both
pub use tools::{in_ci, require_tool};

/// The ntp-loadgen binary under test.
pub fn loadgen_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ntp-loadgen")
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates one.
    pub fn new(stem: &str) -> TempDir {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ntp-loadgen-test-{}-{}-{stem}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    wait_output(child, limit)
}

/// Waits for `child` at most `limit` (then kills it, by its PID) and
/// returns its output.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            send_signal(pid, libc::SIGKILL);
            true
        })
    };
    let _ = child.stdin.take();
    let out = child.wait_with_output().expect("wait for ntp-loadgen");
    done.store(true, Ordering::Relaxed);
    let killed = watchdog.join().unwrap_or(false);
    assert!(!killed, "ntp-loadgen ran longer than {limit:?}");
    out
}

/// Sends `signal` to `pid` (a process this test started).
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is one of
    // our own children.
    unsafe {
        libc::kill(pid as i32, signal);
    }
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

/// A correct reply to `req`: mode 4, its version, stratum 2, origin = its
/// transmit timestamp, receive/transmit = now.
pub fn good_reply(req: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    let version = (req[0] >> 3) & 7;
    r[0] = version << 3 | 4;
    r[1] = 2;
    r[2] = req[2];
    r[3] = 0xec; // precision −20
    r[12..16].copy_from_slice(&[127, 0, 0, 1]);
    let now = ntp_now();
    r[16..24].copy_from_slice(&now.to_be_bytes());
    r[24..32].copy_from_slice(&req[40..48]);
    r[32..40].copy_from_slice(&now.to_be_bytes());
    r[40..48].copy_from_slice(&now.to_be_bytes());
    r
}

/// The current time as a 64-bit NTP timestamp.
pub fn ntp_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let secs = d.as_secs() + 2_208_988_800;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Receive queue of the test's servers and sinks: a few seconds of their
/// traffic, so a thread starved by a loaded host catches up instead of
/// losing datagrams (forced past `rmem_max` when root, as in CI).
pub const DEEP_QUEUE: i32 = 64 << 20;

/// Gives `sock` a [`DEEP_QUEUE`] (or as much as an unprivileged process
/// may ask for).
pub fn deepen(sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        let v: libc::c_int = DEEP_QUEUE;
        // SAFETY: `v` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
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
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop2, tally2) = (Arc::clone(&stop), Arc::clone(&tally));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut delayed: Vec<(Instant, Vec<u8>, SocketAddr)> = Vec::new();
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline && n < 2_000_000 {
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
                let mut t = tally2.lock().expect("tally");
                t.requests += 1;
                t.replies += replies;
                *t.by_label.entry(label).or_default() += 1;
                t.sources.insert(from.ip());
            }
        });
        Some(FakeServer {
            addr,
            stop,
            tally,
            thread: Some(thread),
        })
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.tally.lock().expect("tally"))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket on 127.0.0.1 that counts what it receives, by datagram
/// length, and answers every `answer_every`-th datagram (0: none) with a
/// 48-byte datagram. Bounded: stops after `limit`.
pub struct Sink {
    /// Its address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<(HashMap<usize, u64>, u64)>>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts one.
    pub fn start(answer_every: u64, limit: Duration) -> Sink {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        deepen(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new((HashMap::new(), 0)));
        let (stop2, counts2) = (Arc::clone(&stop), Arc::clone(&counts));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
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
            stop,
            counts,
            thread: Some(thread),
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.counts.lock().expect("counts"))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free UDP port on 127.0.0.1 (free when this returns).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("ephemeral port")
        .port()
}

/// chronyd serving on loopback without touching the clock (-x, no
/// CAP_SYS_TIME), rate limiting off, no client log. Killed by PID on drop.
pub struct Chronyd {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Chronyd {
    /// Starts it, or returns `None` (after "SKIPPED: …") when chronyd or
    /// capsh is missing outside CI.
    pub fn start() -> Option<Chronyd> {
        let chronyd = require_tool("chronyd")?;
        let capsh = require_tool("capsh")?;
        let dir = TempDir::new("chronyd");
        let port = free_udp_port();
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nbindcmdaddress /\n\
                 local stratum 10\nallow 127.0.0.0/8\nnoclientlog\n\
                 pidfile {}\ndriftfile {}\n",
                dir.join("chronyd.pid").display(),
                dir.join("drift").display()
            ),
        )
        .expect("write chrony.conf");
        let script = format!("exec {chronyd} -x -d -u root -f {}", conf.display());
        let mut child = Command::new(capsh)
            .args(["--drop=cap_sys_time", "--", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chronyd");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // Wait until it answers.
        let probe = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut req = [0u8; 48];
        req[0] = 0x23;
        req[40..48].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(e) = child.stderr.take() {
                    for line in BufReader::new(e).lines().map_while(Result::ok) {
                        err.push_str(&line);
                        err.push('\n');
                    }
                }
                panic!("chronyd exited with {status}: {err}");
            }
            let _ = probe.send_to(&req, addr);
            let mut buf = [0u8; 128];
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if n >= 48 && buf[0] & 7 == 4 && buf[1] != 0 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chronyd did not answer on {addr}"
            );
        }
        // Drain its log so a full pipe never blocks it.
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines().map_while(Result::ok) {});
        }
        Some(Chronyd {
            child,
            addr,
            _dir: dir,
        })
    }
}

/// Stops a child we started: SIGTERM, then SIGKILL if it is still running
/// after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// fastntpd from this workspace's target directory (built by `cargo test
/// --workspace`), or `None` after "SKIPPED: …" outside CI.
pub fn fastntpd_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> → target/<profile>/fastntpd
    let bin = exe.parent()?.parent()?.join("fastntpd");
    if bin.is_file() {
        return Some(bin);
    }
    if in_ci() {
        panic!(
            "fastntpd not built at {} (run cargo test --workspace)",
            bin.display()
        );
    }
    eprintln!(
        "SKIPPED: fastntpd is not built at {} (cargo test --workspace builds it)",
        bin.display()
    );
    None
}

/// fastntpd on an ephemeral loopback port serving the local clock.
pub struct Fastntpd {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Fastntpd {
    /// Starts it with `workers` workers, or `None` when not built.
    pub fn start(workers: usize) -> Option<Fastntpd> {
        let bin = fastntpd_bin()?;
        let dir = TempDir::new("fastntpd");
        let conf = dir.join("fastntpd.toml");
        std::fs::write(
            &conf,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n[clock]\nlocal-stratum = 10\n"
            ),
        )
        .expect("write config");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fastntpd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut addr = None;
        let mut log = Vec::new();
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            let serving = line.contains("serving ");
            log.push(line);
            if serving && addr.is_some() {
                break;
            }
        }
        // Keep draining its log.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fastntpd did not start: {log:#?}");
        };
        Some(Fastntpd {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Fastntpd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}
