//! The real `fastntpd` as a child of the test: spawned with a TOML config
//! (in a temporary directory), waited for until it logs that it serves,
//! its log kept line by line, stopped with a signal and its final
//! per-worker counters read back; killed by PID if the test ends first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::process::{built_binary, send_signal, stop_child};
use crate::stats::WorkerStats;
use crate::temp::TempDir;

/// How long a start may take before the test fails (a busy host is slow).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `fastntpd` under test: the one `FASTNTPD_BIN` names (to show what a
/// test finds in another build, e.g. an older one), else this workspace's
/// build; `None` after saying why the test skips when it is not built.
pub fn fastntpd_bin() -> Option<PathBuf> {
    match std::env::var_os("FASTNTPD_BIN") {
        Some(bin) => Some(bin.into()),
        None => built_binary("fastntpd"),
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
    _dir: TempDir,
}

impl Fastntpd {
    /// Starts `fastntpd --config` with `config` (TOML) and waits until it
    /// logs that it serves.
    pub fn start(config: &str) -> Fastntpd {
        Self::start_with(config, |_| {})
    }

    /// Like [`Fastntpd::start`], letting `setup` adjust the command first.
    pub fn start_with(config: &str, setup: impl FnOnce(&mut Command)) -> Fastntpd {
        let bin = fastntpd_bin().expect("fastntpd is built");
        let dir = TempDir::new("fastntpd");
        let path = dir.join("fastntpd.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(bin);
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
            _dir: dir,
        };
        // The last line `Server::start` logs: every socket is bound and
        // every worker ready by then.
        d.wait_for("clock precision", START_TIMEOUT);
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

    /// The first line logged so far that contains `needle`, else
    /// [`Fastntpd::wait_for`] it.
    pub fn logged_or_wait(&mut self, needle: &str, timeout: Duration) -> String {
        match self.log.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle, timeout),
        }
    }

    /// Reads log lines (into [`Fastntpd::log`]) for `duration`, or until
    /// it exits.
    pub fn read_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal).expect("signal fastntpd");
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

    /// Sends SIGTERM, waits for a clean exit and returns the final counters
    /// of each worker, parsed from the log.
    pub fn stop(self) -> Vec<WorkerStats> {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Fastntpd::stop`] with another signal.
    pub fn stop_with(mut self, signal: i32) -> Vec<WorkerStats> {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "fastntpd did not stop on signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.read_for(Duration::from_secs(2));
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
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}
