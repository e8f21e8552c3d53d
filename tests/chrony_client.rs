//! A real NTP client, Debian's chronyd in one-shot `-Q` mode (it measures
//! but never sets the clock; run with CAP_SYS_TIME dropped besides), against
//! the real `fastntpd`: it accepts the time of a synchronized server with a
//! sub-millisecond offset and refuses an unsynchronized one.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_for, client_request, exchange, require_tool, total, write_temp, Fastntpd};

/// chronyd in one-shot `-Q` mode, run under capsh without CAP_SYS_TIME.
struct ChronydQuery {
    chronyd: String,
    capsh: String,
}

impl ChronydQuery {
    /// Both tools, or `None` after "SKIPPED: …" (a failure in CI).
    fn find() -> Option<ChronydQuery> {
        Some(ChronydQuery {
            chronyd: require_tool("chronyd")?,
            capsh: require_tool("capsh")?,
        })
    }

    /// Runs `chronyd -Q` against `server` and returns everything it
    /// printed.
    fn run(&self, server: SocketAddr, timeout_s: u32) -> String {
        let pidfile = write_temp("chronyd.pid", "");
        let directive = format!(
            "server {} port {} iburst maxsamples 4",
            server.ip(),
            server.port()
        );
        let script = format!(
            "exec {} -Q -t {timeout_s} 'pidfile {}' 'cmdport 0' '{directive}'",
            self.chronyd,
            pidfile.display()
        );
        let out = Command::new(&self.capsh)
            .args(["--drop=cap_sys_time", "--", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("run chronyd -Q");
        let _ = std::fs::remove_file(pidfile);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The offset from "System clock wrong by X seconds (ignored)".
fn reported_offset(output: &str) -> Option<f64> {
    output
        .split("System clock wrong by ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn quickstart_server_answers_within_a_second_and_chronyd_accepts_its_time() {
    let Some(chronyd) = ChronydQuery::find() else {
        return;
    };
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.toml"
    ))
    .expect("examples/quickstart.toml");
    // The example as shipped, on free ports (the README's quick-start
    // server may be running on the fixed one).
    assert!(config.contains(":11123"), "the quick start's port moved");
    let server = Fastntpd::start(&config.replace(":11123", ":0"));
    let addr = server.addrs[0];

    // Answers within 1 s of start-up (see wire.rs).
    let sock = client_for(addr);
    let deadline = server.ready_at + Duration::from_secs(1);
    let mut answered = false;
    while Instant::now() < deadline && !answered {
        answered = exchange(&sock, addr, &client_request(4, 7)).is_some();
    }
    assert!(answered, "no reply within 1 s of start");

    for addr in server.addrs.clone() {
        let output = chronyd.run(addr, 20);
        let offset = reported_offset(&output)
            .unwrap_or_else(|| panic!("chronyd did not accept {addr}:\n{output}"));
        assert!(
            offset.abs() < 1e-3,
            "chronyd measured {offset} s against {addr}"
        );
        eprintln!("chronyd -Q via {addr}: offset {offset} s");
    }
    server.stop();
}

#[test]
fn chronyd_refuses_an_unsynchronized_server() {
    let Some(chronyd) = ChronydQuery::find() else {
        return;
    };
    let server = Fastntpd::start(
        r#"
        [server]
        listen = ["127.0.0.1:0"]
        workers = 1
        "#,
    );
    let output = chronyd.run(server.addrs[0], 5);
    assert_eq!(
        reported_offset(&output),
        None,
        "chronyd accepted an unsynchronized server:\n{output}"
    );
    let stats = total(&server.stop());
    assert!(
        stats.replied >= 1,
        "chronyd was answered (and refused the answers): {stats:?}"
    );
}
