//! A deliberately faulty server in the test process: every request gets
//! one fault from a fixed rotation, the server tallies which, and the load
//! generator must count each fault in its own bucket — and never as a
//! valid reply.

mod common;

use std::time::Duration;

use common::{good, good_reply, read_json, run_loadgen, text, Action, FakeServer, TempDir};

/// The timeout given to ntp-loadgen; late replies come after 1.4× it (and
/// before twice it, when they would count as lost).
const TIMEOUT_S: f64 = 0.5;

const LABELS: [&str; 10] = [
    "good",
    "wrong_origin",
    "wrong_mode",
    "duplicate",
    "kod_rate",
    "silent_drop",
    "late",
    "wrong_version",
    "short",
    "other_port",
];

fn faulty(n: u64, req: &[u8]) -> (&'static str, Action) {
    let now = Duration::ZERO;
    let label = LABELS[(n % 10) as usize];
    let mut r = good_reply(req);
    let action = match label {
        "good" => Action::Reply(r, now),
        "wrong_origin" => {
            r[26] ^= 0x5a; // origin no longer ours
            Action::Reply(r, now)
        }
        "wrong_mode" => {
            r[0] = (r[0] & !7) | 5; // broadcast
            Action::Reply(r, now)
        }
        "duplicate" => Action::ReplyTwice(r),
        "kod_rate" => Action::Reply(good(req).kiss(*b"RATE").to_vec(), now),
        "silent_drop" => Action::Drop,
        "late" => Action::Reply(r, Duration::from_secs_f64(TIMEOUT_S * 1.4)),
        "wrong_version" => {
            r[0] = (r[0] & !0x38) | 3 << 3; // v3 answer to a v4 request
            Action::Reply(r, now)
        }
        "short" => Action::Reply(r[..40].to_vec(), now),
        _ => Action::ReplyFromElsewhere(r), // another port: not the target
    };
    (label, action)
}

#[test]
fn every_fault_lands_in_its_bucket_and_never_counts_as_valid() {
    let dir = TempDir::new("faults");
    let json = dir.join("faults.json");
    let server = FakeServer::start(Box::new(faulty), Duration::from_secs(30));
    let out = run_loadgen(
        &[
            &server.addr.to_string(),
            "--rate",
            "500",
            "--duration",
            "1",
            "--clients",
            "4",
            "--timeout",
            &TIMEOUT_S.to_string(),
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let tally = server.stop();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    eprintln!("server tally: {:?}\n{stdout}", tally.by_label);
    let j = read_json(&json);
    let step = &j["steps"][0];
    let r = &step["requests"];
    let n = |label: &str| *tally.by_label.get(label).unwrap_or(&0);
    let get = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));

    for label in LABELS {
        assert!(n(label) > 0, "fault {label} never exercised: {tally:?}");
    }
    assert_eq!(
        get(&r["sent"]),
        tally.requests,
        "every request reached the server"
    );
    assert_eq!(get(&r["valid"]), n("good") + n("duplicate"), "valid");
    assert_eq!(get(&step["other_datagrams"]["duplicates"]), n("duplicate"));
    assert_eq!(
        get(&step["other_datagrams"]["unmatched"]),
        n("wrong_origin")
    );
    assert_eq!(get(&step["invalid_by_reason"]["bad_mode"]), n("wrong_mode"));
    assert_eq!(
        get(&step["invalid_by_reason"]["bad_version"]),
        n("wrong_version")
    );
    assert_eq!(get(&r["invalid"]), n("wrong_mode") + n("wrong_version"));
    assert_eq!(get(&step["kod_by_code"]["RATE"]), n("kod_rate"));
    assert_eq!(get(&r["kod"]), n("kod_rate"));
    assert_eq!(get(&r["late"]), n("late"));
    assert_eq!(get(&step["other_datagrams"]["malformed"]), n("short"));
    assert_eq!(
        get(&r["lost"]),
        n("wrong_origin") + n("silent_drop") + n("short") + n("other_port"),
        "lost"
    );
    assert_eq!(get(&step["other_datagrams"]["stale"]), 0);
    assert_eq!(
        get(&step["other_datagrams"]["wrong_source"]),
        0,
        "connected sockets never see them"
    );
    // Every request ends in exactly one bucket.
    let buckets = ["valid", "late", "lost", "invalid", "kod"].map(|k| get(&r[k]));
    assert_eq!(buckets.iter().sum::<u64>(), get(&r["sent"]));
    // Only valid replies feed the histograms.
    assert_eq!(get(&step["theta_us"]["count"]), get(&r["valid"]));
    assert!(stdout.contains("RATE"), "{stdout}");
}
