//! Floods of bad input (issue 10): every class of datagram the wire suite
//! checks is dropped is also sent as a flood, at 150k datagrams/s offered
//! (`ntp-loadgen --junk`), at the real `fastntpd` with two workers, once
//! per I/O backend, while good clients ask 5k times a second. The good
//! clients must keep ≥ 99 % of their requests answered during the flood
//! and right after it, and no junk datagram may be answered. (An empty
//! datagram used to end io_uring's multishot receive each time: a flood
//! of them left good clients 0–44 % served.)

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Fastntpd, Io};

/// Junk offered per second.
const FLOOD_RATE: &str = "150k";
/// Below this the load generator did not really flood (a host too busy to
/// send): the run proves nothing and fails.
const MIN_FLOOD_RATE: f64 = 75_000.0;
/// Good requests per second, and the share that must be answered.
const GOOD_RATE: &str = "5000";
const MIN_VALID_PCT: f64 = 99.0;

/// Every junk class `ntp-loadgen --junk` knows (those of wire.rs).
const CLASSES: [&str; 20] = [
    "empty",
    "short",
    "bad-length",
    "zero-trailer",
    "overlong-extension",
    "short-extension",
    "unaligned-extension",
    "stray-bytes",
    "oversize",
    "mode-0",
    "mode-1",
    "mode-2",
    "mode-4",
    "mode-5",
    "mode-6",
    "mode-7",
    "version-0",
    "version-5",
    "version-6",
    "version-7",
];

/// One ntp-loadgen run against `target`; returns its JSON report.
fn run(loadgen: &Path, target: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!(
        "fastntp-flood-{}-{}.json",
        std::process::id(),
        target.port()
    ));
    let out = Command::new(loadgen)
        .arg(target.to_string())
        .args(["--rate", GOOD_RATE, "--clients", "4", "--json"])
        .arg(&json)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run ntp-loadgen");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from ntp-loadgen ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("JSON report")
}

fn valid_pct(report: &serde_json::Value) -> f64 {
    report["steps"][0]["shares"]["valid_pct"]
        .as_f64()
        .expect("valid_pct")
}

fn flood_every_class(io: Io) {
    // From this workspace's build (`cargo test --workspace` builds it).
    let Some(loadgen) = testkit::built_binary("ntp-loadgen") else {
        return;
    };
    let server = Fastntpd::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nio = \"{io}\"\n\
         [clock]\nlocal-stratum = 10\n"
    ));
    let target = server.addrs[0];
    let mut failures = Vec::new();
    for class in CLASSES {
        let during = run(
            &loadgen,
            target,
            &[
                "--duration",
                "1500ms",
                "--junk",
                class,
                "--junk-rate",
                FLOOD_RATE,
            ],
        );
        let after = run(&loadgen, target, &["--duration", "1s"]);
        let junk = &during["junk"];
        let flood_rate = junk["rate_achieved"].as_f64().unwrap_or(0.0);
        let replies = junk["replies"].as_u64().unwrap_or(u64::MAX);
        let (v_during, v_after) = (valid_pct(&during), valid_pct(&after));
        eprintln!(
            "{io} {class:>20}: flood {flood_rate:>8.0}/s, good clients {v_during:.2} % \
             during, {v_after:.2} % after, {replies} replies to junk"
        );
        if flood_rate < MIN_FLOOD_RATE
            || replies != 0
            || v_during < MIN_VALID_PCT
            || v_after < MIN_VALID_PCT
        {
            failures.push(format!(
                "{class}: flood {flood_rate:.0}/s, valid {v_during:.2} % / {v_after:.2} %, \
                 {replies} junk replies"
            ));
        }
    }
    server.stop();
    assert!(
        failures.is_empty(),
        "{io}: {} of {} floods failed (need ≥ {MIN_FLOOD_RATE}/s of junk, no reply to \
         it, ≥ {MIN_VALID_PCT} % of good requests answered during and after):\n{}",
        failures.len(),
        CLASSES.len(),
        failures.join("\n")
    );
}

/// One test, both backends in turn: two floods at once would measure the
/// host, not the server.
#[test]
fn good_clients_are_served_through_every_flood() {
    flood_every_class(Io::Mmsg);
    if let Some(io) = Io::uring_or_skip() {
        flood_every_class(io);
    }
}
