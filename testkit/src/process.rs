//! Child processes a test starts: signals by PID, runs bounded in time,
//! stops that escalate from SIGTERM to SIGKILL, and the binaries of this
//! workspace's build.

use std::path::PathBuf;
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ci::require;

/// Sends `signal` to `pid` (a process this test started).
pub fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is one of
    // our own children.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Stops a child we started: SIGTERM, then SIGKILL if it still runs after
/// `grace`; reaps it either way.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
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

/// Waits for `child` at most `limit` and returns its output; past the
/// limit it is killed (by its PID) and the test fails.
pub fn output_within(mut child: Child, limit: Duration) -> Output {
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
            send_signal(pid, libc::SIGKILL).is_ok()
        })
    };
    let _ = child.stdin.take();
    let out = child.wait_with_output().expect("wait for the child");
    done.store(true, Ordering::Relaxed);
    let killed = watchdog.join().unwrap_or(false);
    assert!(!killed, "the child ran longer than {limit:?}");
    out
}

/// The binary `name` of this workspace's build (beside the test binary's
/// `deps` directory: `cargo test --workspace` builds every one), or `None`
/// after saying why the test skips.
pub fn built_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .filter(|bin| bin.is_file())
        .ok_or_else(|| {
            format!(
                "{name} is not built beside {} (cargo test --workspace builds it)",
                exe.display()
            )
        });
    require(bin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_running_child_stops_on_sigterm() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let started = Instant::now();
        stop_child(&mut child, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(child.try_wait().expect("reaped").is_some());
    }

    #[test]
    fn output_within_returns_what_the_child_printed() {
        let child = Command::new("echo")
            .arg("hello")
            .stdout(Stdio::piped())
            .spawn()
            .expect("echo");
        let out = output_within(child, Duration::from_secs(20));
        assert_eq!(out.stdout, b"hello\n");
    }
}
