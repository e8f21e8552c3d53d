//! Real servers on loopback: chronyd (started with -x under capsh without
//! CAP_SYS_TIME, so it never touches the clock; rate limiting off) and this
//! workspace's fastntpd. At rates they handle, nearly every request gets a
//! valid reply, and the kernel counted at least every datagram we did.
//! Behaviour only: no timing is asserted.

mod common;

use std::time::Duration;

use common::{local_fastntpd, read_json, run_loadgen, text, Chronyd, TempDir};
use serde_json::Value;

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Runs a short fixed-rate load and returns the step of its JSON.
fn load(target: &str, extra: &[&str]) -> (Value, String) {
    let dir = TempDir::new("servers");
    let json = dir.join("run.json");
    let mut args = vec![
        target,
        "--rate",
        "2000",
        "--duration",
        "1",
        "--clients",
        "8",
    ];
    let json_arg = json.to_str().unwrap().to_owned();
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--json", &json_arg]);
    let out = run_loadgen(&args, Duration::from_secs(60));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let j = read_json(&json);
    (j["steps"][0].clone(), stdout)
}

fn check_step(step: &Value, stdout: &str) {
    let r = &step["requests"];
    assert!(count(&r["sent"]) > 0, "{stdout}");
    let valid = step["shares"]["valid_pct"].as_f64().unwrap();
    assert!(valid >= 99.0, "only {valid} % valid:\n{stdout}");
    assert_eq!(count(&r["invalid"]), 0, "{stdout}");
    assert_eq!(count(&step["other_datagrams"]["unmatched"]), 0, "{stdout}");
    assert!(count(&step["theta_us"]["count"]) == count(&r["valid"]));
    // The kernel's host-wide counters include every datagram we account
    // for (other tests may add traffic, never remove it).
    let k = &step["kernel"];
    assert!(
        count(&k["delta"]["out_datagrams"]) >= count(&k["expected_out"]),
        "{stdout}"
    );
    assert!(
        count(&k["delta"]["in_datagrams"]) + count(&k["delta"]["rcvbuf_errors"])
            >= count(&k["expected_in"]),
        "{stdout}"
    );
}

#[test]
fn chronyd_answers_nearly_every_request_validly() {
    let Some(chronyd) = Chronyd::start(10) else {
        return;
    };
    let (step, stdout) = load(&chronyd.addr.to_string(), &[]);
    check_step(&step, &stdout);
    assert_eq!(count(&step["stamps"]["rx_missing"]), 0, "{stdout}");
}

#[test]
fn precise_tx_takes_t1_from_kernel_tx_stamps() {
    let Some(chronyd) = Chronyd::start(10) else {
        return;
    };
    let (step, stdout) = load(&chronyd.addr.to_string(), &["--precise-tx"]);
    check_step(&step, &stdout);
    let used = count(&step["stamps"]["tx_used"]);
    let valid = count(&step["requests"]["valid"]);
    // Every matched reply had its TX stamp (or is counted as missing).
    assert_eq!(
        used + count(&step["stamps"]["tx_missing"]),
        valid + count(&step["requests"]["kod"]) + count(&step["requests"]["late"]),
        "{stdout}"
    );
    assert!(
        used * 100 >= valid * 99,
        "TX stamps for only {used} of {valid}:\n{stdout}"
    );
    assert!(stdout.contains("kernel TX software timestamp"), "{stdout}");
}

#[test]
fn a_sweep_against_fastntpd_completes_and_reports_a_maximum() {
    let Some(server) = local_fastntpd(1) else {
        return;
    };
    let dir = TempDir::new("sweep");
    let json = dir.join("sweep.json");
    let out = run_loadgen(
        &[
            &server.addrs[0].to_string(),
            "--sweep",
            "--start-rate",
            "1000",
            "--step-factor",
            "2",
            "--max-rate",
            "4000",
            "--duration",
            "0.5",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let j = read_json(&json);
    assert_eq!(j["steps"].as_array().map(Vec::len), Some(3), "{stdout}");
    assert_eq!(j["sweep"]["max_rate_ok"], 4000.0, "{stdout}");
    assert!(
        stdout.contains("max rate with ≥ 99 % valid replies"),
        "{stdout}"
    );
    for st in j["steps"].as_array().unwrap() {
        check_step(st, &stdout);
    }
}
