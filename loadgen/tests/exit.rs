//! The exit status says whether anything was measured: a run in which
//! requests went out and not one valid reply came back (nothing listening,
//! a server that says it is unsynchronized, …) prints its report, writes
//! its files and exits 1 with one line on stderr saying why; sweeps too.
//! `--accept-unsynchronized` counts an unsynchronized server's otherwise
//! valid replies, and says so.

mod common;

use std::time::Duration;

use common::{
    free_udp_port, good_reply, read_json, run_loadgen, text, Action, FakeServer, TempDir,
};
use testkit::{ntp_now, Reply};

/// A reply like ntpd-rs 1.9's without a source: LI 3 at its local stratum.
fn unsynchronized_reply(req: &[u8]) -> Vec<u8> {
    Reply {
        leap: 3,
        stratum: 10,
        refid: *b"XNON",
        ..Reply::answering(req, ntp_now())
    }
    .to_vec()
}

/// fastntpd's unsynchronized reply: LI 3, stratum 0, refid INIT.
fn init_reply(req: &[u8]) -> Vec<u8> {
    unsynchronized_kiss(req, *b"INIT")
}

/// LI 3 and kiss code `code` (stratum 0).
fn unsynchronized_kiss(req: &[u8], code: [u8; 4]) -> Vec<u8> {
    Reply {
        leap: 3,
        ..Reply::answering(req, ntp_now()).kiss(code)
    }
    .to_vec()
}

/// What a run against a closed port printed and wrote.
struct ClosedRun {
    target: String,
    stdout: String,
    stderr: String,
    json: serde_json::Value,
}

/// Runs ntp-loadgen with `args` against a closed loopback port (replies
/// time out after 0.2 s; a JSON report) and checks that it exits 1.
fn run_against_a_closed_port(args: &[&str]) -> ClosedRun {
    let dir = TempDir::new("closed");
    let json = dir.join("closed.json");
    let target = format!("127.0.0.1:{}", free_udp_port());
    let mut all = vec![target.as_str()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout", "0.2", "--json", json.to_str().unwrap()]);
    let out = run_loadgen(&all, Duration::from_secs(30));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    ClosedRun {
        json: read_json(&json),
        target,
        stdout,
        stderr,
    }
}

#[test]
fn a_closed_port_exits_1_after_the_report_and_says_why() {
    let ClosedRun {
        target,
        stdout,
        stderr,
        json: j,
    } = run_against_a_closed_port(&["--rate", "500", "--duration", "0.5"]);
    // The report came first, and the JSON was written.
    assert!(
        stdout.contains("requests sent") && stdout.contains("result:"),
        "{stdout}"
    );
    let sent = j["steps"][0]["requests"]["sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(j["steps"][0]["requests"]["lost"].as_u64(), Some(sent));
    // One line, naming the target, the count and the likely cause.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let want = format!("ntp-loadgen: no valid reply from {target} ({sent} sent, all lost): ");
    assert!(lines[0].starts_with(&want), "{stderr}");
    assert!(lines[0].contains("nothing listens there"), "{stderr}");
}

#[test]
fn a_sweep_without_a_valid_reply_exits_1_too() {
    let run = run_against_a_closed_port(&[
        "--sweep",
        "--start-rate",
        "200",
        "--max-rate",
        "400",
        "--step-factor",
        "2",
        "--duration",
        "0.3",
    ]);
    let (target, stdout, stderr) = (&run.target, &run.stdout, &run.stderr);
    assert!(
        stdout.contains("max rate with ≥ 99 % valid replies: none"),
        "{stdout}"
    );
    assert!(
        stderr.starts_with(&format!("ntp-loadgen: no valid reply from {target}")),
        "{stderr}"
    );
    assert!(run.json["sweep"]["stop_reason"].is_string());
}

#[test]
fn some_valid_replies_exit_0() {
    // Half the requests are dropped: not a failure of the run.
    let server = FakeServer::start(
        Box::new(|n, req| {
            if n % 2 == 0 {
                ("good", Action::Reply(good_reply(req), Duration::ZERO))
            } else {
                ("drop", Action::Drop)
            }
        }),
        Duration::from_secs(30),
    );
    let out = run_loadgen(
        &[
            &server.addr.to_string(),
            "--rate",
            "200",
            "--duration",
            "0.5",
            "--timeout",
            "0.3",
        ],
        Duration::from_secs(30),
    );
    server.stop();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn unsynchronized_replies_fail_the_run_unless_accepted_and_then_are_counted_apart() {
    for (name, reply) in [
        ("ntpd-rs-like", unsynchronized_reply as fn(&[u8]) -> Vec<u8>),
        ("fastntpd-like", init_reply),
    ] {
        let dir = TempDir::new("unsync");
        let json = dir.join("unsync.json");
        let server = FakeServer::start(
            Box::new(move |_, req| ("unsync", Action::Reply(reply(req), Duration::ZERO))),
            Duration::from_secs(60),
        );
        let target = server.addr.to_string();
        let base = [
            "--rate",
            "500",
            "--duration",
            "0.5",
            "--json",
            json.to_str().unwrap(),
        ];

        let mut args = vec![target.as_str()];
        args.extend_from_slice(&base);
        let out = run_loadgen(&args, Duration::from_secs(30));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("--accept-unsynchronized"),
            "{name}: {stderr}"
        );
        assert!(
            !stdout.contains("--accept-unsynchronized:"),
            "{name}: {stdout}"
        );
        let j = read_json(&json);
        assert_eq!(j["config"]["accept_unsynchronized"], false);
        assert_eq!(j["steps"][0]["requests"]["valid"], 0);

        args.push("--accept-unsynchronized");
        let out = run_loadgen(&args, Duration::from_secs(30));
        let tally = server.stop();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}\n{stderr}");
        let j = read_json(&json);
        assert_eq!(j["config"]["accept_unsynchronized"], true);
        let st = &j["steps"][0];
        let r = &st["requests"];
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent > 0, "{name}");
        assert_eq!(
            tally.requests,
            2 * sent,
            "{name}: both runs reached the server"
        );
        assert_eq!(r["valid"].as_u64(), Some(sent), "{name}: {stdout}");
        assert_eq!(r["valid_unsynchronized"].as_u64(), Some(sent), "{name}");
        assert_eq!(r["kod"], 0, "{name}");
        assert_eq!(st["theta_us"]["count"].as_u64(), Some(sent), "{name}");
        // The header says the option was on; the valid line says how many.
        assert!(
            stdout.contains("--accept-unsynchronized: replies whose only fault"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "(of which {sent} unsynchronized, counted by --accept-unsynchronized)"
            )),
            "{stdout}"
        );
    }
}

#[test]
fn accepting_unsynchronized_replies_keeps_kiss_o_death_refusals_apart() {
    let server = FakeServer::start(
        Box::new(|_, req| {
            let kod = unsynchronized_kiss(req, *b"RATE");
            ("kod", Action::Reply(kod, Duration::ZERO))
        }),
        Duration::from_secs(30),
    );
    let dir = TempDir::new("kod");
    let json = dir.join("kod.json");
    let out = run_loadgen(
        &[
            &server.addr.to_string(),
            "--rate",
            "200",
            "--duration",
            "0.5",
            "--accept-unsynchronized",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    server.stop();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("KoD: RATE"), "{stderr}");
    let r = &read_json(&json)["steps"][0]["requests"];
    assert_eq!(r["kod"], r["sent"]);
    assert_eq!(r["valid_unsynchronized"], 0);
}
