//! `--source-range`: the server sees the clients' many source addresses.
//! The fake server has a deep receive queue, and the figures are checked
//! against what it counted itself, so a loaded host that starves its
//! thread for a while slows the test down but does not fail it.

mod common;

use std::time::Duration;

use common::{read_json, run_loadgen, text, FakeServer, TempDir};

#[test]
fn source_range_spreads_4096_clients_over_4096_loopback_addresses() {
    let dir = TempDir::new("sources");
    let json = dir.join("sources.json");
    let server = FakeServer::good(Duration::from_secs(60));
    let out = run_loadgen(
        &[
            &server.addr.to_string(),
            "--source-range",
            "127.0.0.0/16",
            "--clients",
            "4096",
            "--rate",
            "10000",
            "--duration",
            "1",
            // One request per send call, each on the next client's socket:
            // a thread that catches up after a stall still spreads its
            // requests over every client instead of bunching them on a few.
            "--max-batch",
            "1",
            // A starved server thread answers late, not never.
            "--timeout",
            "5",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    );
    let tally = server.stop();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        tally.sources.len() >= 4000,
        "the server saw only {} distinct sources",
        tally.sources.len()
    );
    assert!(tally.sources.iter().all(|ip| ip.is_loopback()));
    let j = read_json(&json);
    assert_eq!(j["config"]["source_addresses"], 4096);
    assert_eq!(j["config"]["source_range"], "127.0.0.0/16");
    // Every request reached the server and every reply it sent came back
    // valid (counted on both sides; a full queue would show here first).
    let r = &j["steps"][0]["requests"];
    let count = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(count("sent"), tally.requests, "{stdout}");
    assert_eq!(tally.replies, tally.requests);
    assert!(count("valid") * 100 >= tally.replies * 99, "{stdout}");
    assert!(
        stdout.contains("from 4,096 addresses of 127.0.0.0/16"),
        "{stdout}"
    );
}

#[test]
fn a_range_that_is_not_local_is_refused_with_exit_2() {
    let out = run_loadgen(
        &[
            "127.0.0.1:9",
            "--source-range",
            "192.0.2.0/24",
            "--duration",
            "1",
        ],
        Duration::from_secs(20),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not an address of this host"), "{stderr}");
}
