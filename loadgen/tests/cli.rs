//! The command line as an operator meets it: clear errors with exit code 2
//! for bad arguments, and Ctrl-C stopping a run early that still reports
//! what it measured.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    loadgen_bin, output_within, read_json, run_loadgen, send_signal, text, FakeServer, TempDir,
};

fn expect_usage_error(args: &[&str], needle: &str) {
    let out = run_loadgen(args, Duration::from_secs(20));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert!(stdout.is_empty(), "{args:?}: printed {stdout}");
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    expect_usage_error(&["no-such-host.invalid:123"], "cannot resolve host");
    expect_usage_error(&["127.0.0.1:123", "--rate", "0"], "must be more than 0");
    expect_usage_error(&["127.0.0.1:123", "--rate", "lots"], "not a rate");
    expect_usage_error(
        &["127.0.0.1:123", "--source-range", "127.0.0.0/33"],
        "not a source range",
    );
    expect_usage_error(
        &["127.0.0.1:123", "--source-range", "127.0.0.0"],
        "not a source range",
    );
    expect_usage_error(
        &["127.0.0.1:123", "--source-range", "127.0.0.300/16"],
        "not a source range",
    );
    expect_usage_error(&["127.0.0.1:0"], "expected HOST");
    expect_usage_error(&["127.0.0.1:123", "--duration", "0"], "at least 1 ms");
    expect_usage_error(
        &["[::1]:123", "--source-range", "127.0.0.0/16"],
        "is IPv4 but the target",
    );
    expect_usage_error(
        &["127.0.0.1:123", "--threads", "2", "--clients", "1"],
        "fewer than --threads",
    );
    expect_usage_error(
        &["127.0.0.1:123", "--json", "/nonexistent-dir/x.json"],
        "--json",
    );
    expect_usage_error(&["127.0.0.1:123", "--start-rate", "5k"], "--sweep");
    expect_usage_error(&[], "TARGET");
}

#[test]
fn help_exits_0() {
    let out = run_loadgen(&["--help"], Duration::from_secs(20));
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(
        stdout.contains("--precise-tx") && stdout.contains("--source-range"),
        "{stdout}"
    );
}

#[test]
fn ctrl_c_stops_early_and_still_reports() {
    let server = FakeServer::good(Duration::from_secs(60));
    let dir = TempDir::new("ctrlc");
    let json = dir.join("ctrlc.json");
    let child = Command::new(loadgen_bin())
        .args([
            &server.addr.to_string(),
            "--rate",
            "2000",
            "--duration",
            "60",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Let it send for a while (bounded: the server counts requests).
    let began = Instant::now();
    while Instant::now() - began < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(pid, libc::SIGINT).expect("SIGINT");
    let stopped = Instant::now();
    let out = output_within(child, Duration::from_secs(20));
    let took = stopped.elapsed();
    let tally = server.stop();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?} to stop");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(stdout.contains("requests sent"), "{stdout}");
    let j = read_json(&json);
    assert_eq!(j["interrupted"], true);
    let step = &j["steps"][0];
    assert_eq!(step["interrupted"], true);
    let sent = step["requests"]["sent"].as_u64().unwrap();
    assert!(
        sent > 0 && sent == tally.requests,
        "sent {sent}, server saw {}",
        tally.requests
    );
    assert!(sent < 2000 * 30, "stopped early: {sent}");
    assert!(step["send_window_s"].as_f64().unwrap() < 30.0);
    // Interrupted, not limited: the offered rate held while it ran.
    assert_eq!(step["limited"], false, "{stdout}");
}
