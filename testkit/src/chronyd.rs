//! Debian's chronyd as a loopback NTP server for tests: its local clock at
//! a chosen stratum on a free port, started with `-x` under capsh without
//! CAP_SYS_TIME (it never touches the clock), rate limiting and client log
//! off; stopped by PID on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ci::require_tool;
use crate::packet::client_request;
use crate::process::stop_child;
use crate::temp::TempDir;
use crate::udp::{client_for, exchange, free_udp_port};

/// How long chronyd may take to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running chronyd.
pub struct Chronyd {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Chronyd {
    /// Starts it serving its local clock at `stratum` and waits until it
    /// answers as such; `None` (after "SKIPPED: …", a failure in CI) when
    /// chronyd or capsh is missing.
    pub fn start(stratum: u8) -> Option<Chronyd> {
        let chronyd = require_tool("chronyd")?;
        let capsh = require_tool("capsh")?;
        let dir = TempDir::new("chronyd");
        let port = free_udp_port();
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nbindcmdaddress /\n\
                 local stratum {stratum}\nallow 127.0.0.0/8\nnoclientlog\n\
                 pidfile {}\ndriftfile {}\n",
                dir.join("chronyd.pid").display(),
                dir.join("drift").display()
            ),
        )
        .expect("write chrony.conf");
        let script = format!("exec {chronyd} -x -d -u root -f {}", conf.display());
        let child = Command::new(capsh)
            .args(["--drop=cap_sys_time", "--", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chronyd");
        let mut chronyd = Chronyd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        chronyd.wait_ready();
        // Drain its log so a full pipe never blocks it.
        if let Some(e) = chronyd.child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines().map_while(Result::ok) {});
        }
        Some(chronyd)
    }

    /// Waits (bounded) until it answers a client request at a stratum
    /// (not 0: unsynchronized or a kiss code); fails the test with its log
    /// if it exits first.
    fn wait_ready(&mut self) {
        let probe = client_for(self.addr);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err: Vec<String> = self
                    .child
                    .stderr
                    .take()
                    .map(|e| BufReader::new(e).lines().map_while(Result::ok).collect())
                    .unwrap_or_default();
                panic!("chronyd exited with {status}: {}", err.join("\n"));
            }
            let reply = exchange(&probe, self.addr, &client_request(4, 0x1234_5678_9abc_def0));
            if reply.is_some_and(|r| r.len() >= 48 && r[0] & 7 == 4 && r[1] != 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chronyd did not answer on {}",
                self.addr
            );
        }
    }

    /// Kills it (SIGKILL to its own PID, no clean-up: a dead upstream) and
    /// waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}
