//! IPv6 targets: plain and with kernel TX timestamps (whose error-queue
//! messages carry IPV6_RECVERR instead of IP_RECVERR).

mod common;

use std::time::Duration;

use common::{good_reply, read_json, run_loadgen, skip, text, Action, FakeServer, TempDir};

#[test]
fn ipv6_targets_work_with_and_without_precise_tx() {
    let Some(server) = FakeServer::start_on(
        "[::1]:0",
        Box::new(|_, req| ("good", Action::Reply(good_reply(req), Duration::ZERO))),
        Duration::from_secs(60),
    ) else {
        skip("there is no IPv6 loopback (::1) here");
        return;
    };
    let dir = TempDir::new("ipv6");
    for extra in [&[][..], &["--precise-tx"][..]] {
        let json = dir.join("v6.json");
        let target = server.addr.to_string();
        let mut args = vec![target.as_str(), "--rate", "1000", "--duration", "0.5"];
        args.extend_from_slice(extra);
        let json_arg = json.to_str().unwrap().to_owned();
        args.extend_from_slice(&["--json", &json_arg]);
        let out = run_loadgen(&args, Duration::from_secs(30));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let j = read_json(&json);
        let st = &j["steps"][0];
        assert!(
            st["shares"]["valid_pct"].as_f64().unwrap() >= 99.0,
            "{stdout}"
        );
        assert!(j["target_addr"].as_str().unwrap().starts_with("[::1]:"));
        if !extra.is_empty() {
            let used = st["stamps"]["tx_used"].as_u64().unwrap();
            let valid = st["requests"]["valid"].as_u64().unwrap();
            assert!(
                used * 100 >= valid * 99,
                "TX stamps for {used} of {valid}:\n{stdout}"
            );
        }
    }
    server.stop();
}
