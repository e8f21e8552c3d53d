//! `--junk`: a flood of bad datagrams from its own sockets beside (or, with
//! `--rate 0`, instead of) the measured requests. What it sends is counted
//! exactly (a counting sink agrees datagram for datagram, class by class),
//! every datagram that comes back on a junk socket is reported, a closed
//! port is survived, and fastntpd answers none of it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{free_udp_port, local_fastntpd, read_json, run_loadgen, text, Sink, TempDir};
use ntp_loadgen::junk;
use serde_json::Value;

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Runs ntp-loadgen against `target` with `args`; returns exit code,
/// stdout, stderr and the JSON.
fn flood(target: &str, args: &[&str]) -> (Option<i32>, String, String, Value) {
    let dir = TempDir::new("junk");
    let json = dir.join("junk.json");
    let mut all = vec![target];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--no-progress", "--json", json.to_str().unwrap()]);
    let out = run_loadgen(&all, Duration::from_secs(60));
    let (stdout, stderr) = text(&out);
    let j = if json.exists() {
        read_json(&json)
    } else {
        Value::Null
    };
    (out.status.code(), stdout, stderr, j)
}

#[test]
fn every_junk_datagram_sent_is_counted_class_by_class() {
    let sink = Sink::start(0, Duration::from_secs(60));
    let (code, stdout, stderr, j) = flood(
        &sink.addr.to_string(),
        &[
            "--rate",
            "0",
            "--junk",
            "all",
            "--junk-rate",
            "20k",
            "--duration",
            "1",
            "--timeout",
            "0.2",
        ],
    );
    let (by_len, answered) = sink.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(answered, 0);
    let junk = &j["junk"];
    let names: Vec<&str> = junk::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(junk["classes"], serde_json::json!(names));
    let sent = count(&junk["sent"]);
    assert!(sent > 0, "{stdout}");
    assert_eq!(
        sent,
        by_len.values().sum::<u64>(),
        "sink got {by_len:?}\n{stdout}"
    );
    // Class by class, grouped by datagram length (several classes share one).
    let mut want: HashMap<usize, u64> = HashMap::new();
    for c in junk::ALL {
        *want.entry(c.bytes().len()).or_default() += count(&junk["sent_by_class"][c.name()]);
    }
    assert_eq!(want, by_len);
    // Every class got its share (within a call's worth), however late
    // the flood thread ran on a busy host.
    let per_class: Vec<u64> = names
        .iter()
        .map(|n| count(&junk["sent_by_class"][n]))
        .collect();
    let (lo, hi) = (
        per_class.iter().min().unwrap(),
        per_class.iter().max().unwrap(),
    );
    assert!(hi - lo <= 256, "{per_class:?}");
    assert_eq!(count(&junk["replies"]), 0);
    assert!(junk["rate_achieved"].as_f64().unwrap() > 0.0);
    // The run total equals the one step's; no requests were measured.
    assert_eq!(j["steps"][0]["junk"]["sent"], junk["sent"]);
    assert_eq!(j["steps"][0]["requests"]["sent"], 0);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("junk  "))
        .expect("a junk line");
    assert!(line.contains("replies to junk 0"), "{line}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("junk  ")).count(),
        1
    );
    assert!(
        stdout.contains("no requests offered (--rate 0: junk flood only)"),
        "{stdout}"
    );
}

#[test]
fn replies_to_junk_are_counted() {
    // A "server" that answers every 10th datagram: an amplifier.
    let sink = Sink::start(10, Duration::from_secs(60));
    let (code, stdout, stderr, j) = flood(
        &sink.addr.to_string(),
        &[
            "--rate",
            "0",
            "--junk",
            "mode-6,mode-7",
            "--junk-rate",
            "5k",
            "--duration",
            "0.5",
            "--timeout",
            "0.5",
            "--junk-sockets",
            "4",
        ],
    );
    let (by_len, answered) = sink.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let junk = &j["junk"];
    assert_eq!(count(&junk["sent"]), by_len[&48]);
    assert!(answered > 0);
    assert_eq!(count(&junk["replies"]), answered, "{stdout}");
    assert_eq!(count(&junk["reply_bytes"]), 48 * answered);
    assert!(stdout.contains("THE SERVER ANSWERED JUNK"), "{stdout}");
    assert_eq!(j["config"]["junk_sockets"], 4);
}

#[test]
fn junk_to_a_closed_port_is_sent_and_counted() {
    let target = format!("127.0.0.1:{}", free_udp_port());
    let before = no_ports();
    let (code, stdout, stderr, j) = flood(
        &target,
        &[
            "--rate",
            "0",
            "--junk",
            "empty,short",
            "--junk-rate",
            "5k",
            "--duration",
            "0.5",
            "--timeout",
            "0.2",
            // One datagram per message, so the kernel counts each (a GSO
            // batch to a closed port is counted once).
            "--no-gso",
        ],
    );
    let after = no_ports();
    assert_eq!(
        code,
        Some(0),
        "nothing measured, nothing failed: {stdout}\n{stderr}"
    );
    let junk = &j["junk"];
    let sent = count(&junk["sent"]);
    assert!(sent > 0, "{stdout}");
    // The kernel answers with ICMP port unreachable, which the connected
    // sockets report; sending goes on.
    assert!(count(&junk["refused"]) > 0, "{stdout}");
    assert_eq!(count(&junk["replies"]), 0);
    assert_eq!(
        count(&junk["sent_by_class"]["empty"]) + count(&junk["sent_by_class"]["short"]),
        sent
    );
    // Host-wide counters: at least our datagrams found no port.
    if let (Some(b), Some(a)) = (before, after) {
        assert!(a - b >= sent, "NoPorts grew by {} for {sent} sent", a - b);
    }
}

#[test]
fn fastntpd_answers_no_junk_and_still_serves() {
    let Some(server) = local_fastntpd(2) else {
        return;
    };
    let (code, stdout, stderr, j) = flood(
        &server.addrs[0].to_string(),
        &[
            "--rate",
            "2000",
            "--junk",
            "all",
            "--junk-rate",
            "20k",
            "--duration",
            "1",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let junk = &j["junk"];
    assert!(count(&junk["sent"]) > 0, "{stdout}");
    assert_eq!(
        count(&junk["replies"]),
        0,
        "fastntpd answered junk:\n{stdout}"
    );
    assert!(count(&j["steps"][0]["requests"]["valid"]) > 0, "{stdout}");
    assert!(stdout.contains("replies to junk 0"), "{stdout}");
}

#[test]
fn junk_options_are_checked() {
    let out = run_loadgen(
        &["127.0.0.1:123", "--junk", "mode-3", "--junk-rate", "1k"],
        Duration::from_secs(20),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("`mode-3` is not a junk class"), "{stderr}");
    let out = run_loadgen(
        &["127.0.0.1:123", "--junk", "empty"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run_loadgen(&["127.0.0.1:123", "--rate", "0"], Duration::from_secs(20));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--rate 0 only with --junk"), "{stderr}");
}

/// The host's UDP NoPorts counter.
fn no_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "NoPorts")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[test]
fn a_shorter_junk_window_and_the_timeline_show_service_by_send_time() {
    // Answers requests, drops junk (mode 6), tallies both.
    let server = common::FakeServer::start(
        Box::new(|_, req| {
            if req.len() == 48 && req[0] & 7 == 3 {
                (
                    "request",
                    common::Action::Reply(common::good_reply(req), Duration::ZERO),
                )
            } else {
                ("junk", common::Action::Drop)
            }
        }),
        Duration::from_secs(60),
    );
    let (code, stdout, stderr, j) = flood(
        &server.addr.to_string(),
        &[
            "--rate",
            "1000",
            "--duration",
            "1",
            "--junk",
            "mode-6",
            "--junk-rate",
            "10k",
            "--junk-duration",
            "0.5",
            "--timeline",
            "0.25",
            "--timeout",
            "3",
        ],
    );
    let tally = server.stop();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let junk = &j["junk"];
    assert_eq!(junk["send_window_s"].as_f64(), Some(0.5));
    assert_eq!(count(&junk["sent"]), tally.by_label["junk"]);
    // 10k/s for 0.5 s (a little less if a busy host held the thread back
    // at the end: it catches up only so far, not past the window).
    let sent = count(&junk["sent"]);
    assert!((4_000..=5_000).contains(&sent), "{sent}");
    assert_eq!(j["config"]["junk_duration_s"].as_f64(), Some(0.5));
    let t = &j["steps"][0]["timeline"];
    assert_eq!(t["interval_s"].as_f64(), Some(0.25));
    let sent: Vec<u64> = t["sent"].as_array().unwrap().iter().map(count).collect();
    let valid: Vec<u64> = t["valid"].as_array().unwrap().iter().map(count).collect();
    assert_eq!(sent.len(), 4);
    assert_eq!(sent.iter().sum::<u64>(), tally.by_label["request"]);
    assert_eq!(valid, sent, "every request answered, in its interval");
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    assert!(
        stdout.contains("timeline       valid % per 0.25 s of send time: 100.0 100.0 100.0 100.0"),
        "{stdout}"
    );
}
