//! Shared helpers for the integration tests: start the real `fastntpd` on
//! ephemeral loopback ports, talk NTP to it, stop it with SIGTERM and read
//! its final per-worker counters from its log, and find external tools
//! (skipping outside CI when they are missing, failing in CI).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

#[path = "../support/tools.rs"]
mod tools;
#[allow(unused_imports)] // not every test binary uses both
pub use tools::{in_ci, require_tool};

/// The I/O backends the integration suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// recvmmsg/sendmmsg.
    Mmsg,
    /// io_uring.
    IoUring,
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Mmsg => "mmsg",
            Io::IoUring => "io-uring",
        })
    }
}

impl Io {
    /// `Some(Io::IoUring)` if this kernel runs the io_uring backend; else
    /// prints why the test is skipped (and fails in CI, where it must run).
    pub fn uring_or_skip() -> Option<Io> {
        match fastntp::io::uring::probe() {
            Ok(()) => Some(Io::IoUring),
            Err(e) if in_ci() => panic!("io_uring must work in CI: {e}"),
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                None
            }
        }
    }
}

/// Makes `cmd`'s process fail `io_uring_setup` with EPERM, as a container
/// seccomp profile that refuses io_uring does.
pub fn deny_io_uring(cmd: &mut Command) {
    seccomp_errno(
        cmd,
        &[SyscallFault {
            nr: libc::SYS_io_uring_setup,
            arg_bits: None,
            errno: libc::EPERM,
        }],
    );
}

/// One system call a seccomp filter makes fail.
#[derive(Clone, Copy, Debug)]
pub struct SyscallFault {
    /// The system call number.
    pub nr: libc::c_long,
    /// Only calls whose argument `.0` (low 32 bits) has a bit of `.1` set.
    pub arg_bits: Option<(u32, u32)>,
    /// The error it returns.
    pub errno: i32,
}

/// Makes `cmd`'s process fail the system calls `faults` describe, with
/// their errno (a seccomp filter installed between fork and exec, after
/// `PR_SET_NO_NEW_PRIVS`): the kernel errors a server must survive, on
/// demand.
pub fn seccomp_errno(cmd: &mut Command, faults: &[SyscallFault]) {
    use std::os::unix::process::CommandExt;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    /// `offsetof(struct seccomp_data, args)` (nr, arch, instruction pointer).
    const ARGS_AT: u32 = 16;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut filter = Vec::new();
    for f in faults {
        let ret = insn(RET_K, 0, 0, RET_ERRNO | f.errno as u32);
        filter.push(insn(LD_W_ABS, 0, 0, 0));
        match f.arg_bits {
            None => {
                filter.push(insn(JEQ_K, 0, 1, f.nr as u32));
                filter.push(ret);
            }
            Some((arg, bits)) => {
                filter.push(insn(JEQ_K, 0, 3, f.nr as u32));
                filter.push(insn(LD_W_ABS, 0, 0, ARGS_AT + 8 * arg));
                filter.push(insn(JSET_K, 0, 1, bits));
                filter.push(ret);
            }
        }
    }
    filter.push(insn(RET_K, 0, 0, RET_ALLOW));
    // SAFETY: the closure runs between fork and exec and only makes two
    // prctl system calls (async-signal-safe) on data owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running `fastntpd` child.
pub struct Fastntpd {
    child: Child,
    lines: Receiver<String>,
    /// Everything it logged so far.
    pub log: Vec<String>,
    /// Its bound addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// When it was spawned.
    pub spawned: Instant,
    /// When it said it serves (every worker ready, every socket bound).
    pub ready_at: Instant,
    _config: tempfile_path::TempFile,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempFile(pub std::path::PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn unique_path(stem: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "fastntp-test-{}-{}-{stem}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `text` to a fresh temporary file.
pub fn write_temp(stem: &str, text: &str) -> std::path::PathBuf {
    let path = unique_path(stem);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// The `fastntpd` under test: this build's, or the one `FASTNTPD_BIN`
/// names (to show what a test finds in another build, e.g. an older one).
pub fn fastntpd_bin() -> String {
    std::env::var("FASTNTPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fastntpd").to_owned())
}

impl Fastntpd {
    /// Starts `fastntpd --config` with `config` (TOML) and waits until it
    /// logs that it serves.
    pub fn start(config: &str) -> Fastntpd {
        Self::start_with(config, |_| {})
    }

    /// Like [`Fastntpd::start`], letting `setup` adjust the command first.
    pub fn start_with(config: &str, setup: impl FnOnce(&mut Command)) -> Fastntpd {
        let path = write_temp("config.toml", config);
        let mut cmd = Command::new(fastntpd_bin());
        setup(&mut cmd);
        let spawned = Instant::now();
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fastntpd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Fastntpd {
            child,
            lines,
            log: Vec::new(),
            addrs: Vec::new(),
            spawned,
            ready_at: spawned,
            _config: tempfile_path::TempFile(path),
        };
        // The last line `Server::start` logs: every socket is bound and
        // every worker ready by then.
        d.wait_for("clock precision", Duration::from_secs(10));
        d.ready_at = Instant::now();
        d.addrs = d
            .log
            .iter()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect();
        assert!(!d.addrs.is_empty(), "no listening line in {:#?}", d.log);
        d
    }

    /// Reads log lines until one contains `needle`; panics on timeout or
    /// exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "fastntpd never logged {needle:?}; log so far: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// Reads log lines for `duration` (into [`Fastntpd::log`]).
    pub fn read_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => return,
            }
        }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends it with SIGKILL (no clean-up of any kind) and waits for it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// CPU time its threads have used so far (from the scheduler's
    /// per-thread accounting, nanoseconds, not clock ticks).
    pub fn cpu_time(&self) -> Duration {
        let mut total = 0u64;
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).expect("task list").flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue; // a thread that just ended
            };
            total += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Duration::from_nanos(total)
    }

    /// Reads what it logged until `timeout` passes or it exits.
    pub fn collect_log(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
    }

    /// Sends SIGTERM, waits for a clean exit and returns the final counters
    /// of each worker, parsed from the log.
    pub fn stop(self) -> Vec<WorkerStats> {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Fastntpd::stop`] with another signal.
    pub fn stop_with(mut self, signal: i32) -> Vec<WorkerStats> {
        send_signal(self.child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "fastntpd did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push(line);
        }
        assert!(
            status.success(),
            "fastntpd exited with {status}; log: {:#?}",
            self.log
        );
        let stats: Vec<WorkerStats> = self
            .log
            .iter()
            .filter_map(|l| WorkerStats::parse(l))
            .collect();
        assert!(!stats.is_empty(), "no worker statistics in {:#?}", self.log);
        assert!(
            self.log.last().is_some_and(|l| l.ends_with("stopped")),
            "{:#?}",
            self.log
        );
        stats
    }
}

impl Drop for Fastntpd {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to `pid` (a process this test started).
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is our
    // own child's.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// One worker's final counters, from the `worker N (core C): received …`
/// log line.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub id: usize,
    pub core: Option<usize>,
    pub received: u64,
    pub replied: u64,
    pub dropped: u64,
    pub reasons: Vec<(String, u64)>,
    pub missing_rx_stamps: u64,
    pub receive_errors: u64,
    pub ring_restarts: u64,
}

impl WorkerStats {
    fn parse(line: &str) -> Option<WorkerStats> {
        let rest = line.split("worker ").nth(1)?;
        let (id, rest) = rest.split_once(" (")?;
        let (core, rest) = rest.split_once("): ")?;
        let mut s = WorkerStats {
            id: id.parse().ok()?,
            core: core.strip_prefix("core ").and_then(|c| c.parse().ok()),
            ..WorkerStats::default()
        };
        let number = |key: &str| -> Option<u64> {
            rest.split(key)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        s.received = number("received ")?;
        s.replied = number("replied ")?;
        s.dropped = number("dropped ")?;
        s.missing_rx_stamps = number("missing rx stamps ")?;
        s.receive_errors = number("receive errors ").unwrap_or(0);
        s.ring_restarts = number("ring restarts ").unwrap_or(0);
        if let Some(inner) = rest.split_once(" (").and_then(|(_, r)| r.split_once(')')) {
            for pair in inner.0.split(", ") {
                let (k, v) = pair.split_once('=')?;
                s.reasons.push((k.to_owned(), v.parse().ok()?));
            }
        }
        Some(s)
    }

    /// Drops counted for `reason` (0 if none).
    pub fn dropped_for(&self, reason: &str) -> u64 {
        self.reasons
            .iter()
            .filter(|(k, _)| k == reason)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Sums the statistics of all workers.
pub fn total(stats: &[WorkerStats]) -> WorkerStats {
    let mut t = WorkerStats::default();
    for s in stats {
        t.received += s.received;
        t.replied += s.replied;
        t.dropped += s.dropped;
        t.missing_rx_stamps += s.missing_rx_stamps;
        t.receive_errors += s.receive_errors;
        t.ring_restarts += s.ring_restarts;
        for (k, v) in &s.reasons {
            match t.reasons.iter_mut().find(|(tk, _)| tk == k) {
                Some((_, tv)) => *tv += v,
                None => t.reasons.push((k.clone(), *v)),
            }
        }
    }
    t
}

/// A client socket bound to the loopback of `server`'s family.
pub fn client_for(server: SocketAddr) -> UdpSocket {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(bind).expect("bind client");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends `request` and returns the reply, if one comes within 300 ms.
pub fn exchange(sock: &UdpSocket, server: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(request, server).expect("send");
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, server, "reply from the wrong address");
            Some(buf[..n].to_vec())
        }
        Err(_) => None,
    }
}

/// A client socket with kernel receive timestamps on (see
/// [`recv_stamped`]).
pub fn stamped_client_for(server: SocketAddr) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let sock = client_for(server);
    let flags = (libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE) as i32;
    fastntp::sys::socket::setsockopt_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        flags,
    )
    .expect("SO_TIMESTAMPING");
    sock
}

/// Receives one datagram with its kernel receive timestamp (within the
/// socket's read timeout).
pub fn recv_stamped(sock: &UdpSocket) -> Option<(Vec<u8>, fastntp::proto::UnixTime)> {
    use fastntp::sys::cmsg::AnyControl;
    use fastntp::sys::socket::recv_with_control;
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 2048];
    let mut control = AnyControl::default();
    let (n, bytes) = recv_with_control(sock.as_raw_fd(), &mut buf, &mut control, 0).ok()??;
    let stamp = fastntp::sys::cmsg::parse(bytes).rx_stamp?;
    Some((buf[..n].to_vec(), stamp))
}

/// A client request: LI 0, `version`, mode 3, poll 6, the given transmit
/// timestamp.
pub fn client_request(version: u8, transmit: u64) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = version << 3 | 3;
    r[2] = 6;
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    r
}
