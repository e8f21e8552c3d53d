//! The real `fastntpd` (software discipline) following fake upstream
//! servers that run in this test process on loopback (issue 5, acceptance
//! 3): it serves their time, rejects a falseticker, and stops polling a
//! server that says DENY.

mod common;
mod fake_upstream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{client_for, client_request, exchange, Fastntpd};
use fake_upstream::{upstream_config, FakeUpstream};
use fastntp::proto::{Header, LeapIndicator, NtpTimestamp, RefId};

fn now_ntp() -> NtpTimestamp {
    NtpTimestamp::from_unix(fastntp::clock::now())
}

/// Median offset of `server`'s time from this host's clock, over `n`
/// exchanges, with the reply of the last one.
fn served_offset(server: SocketAddr, n: usize) -> (f64, Header) {
    let sock = client_for(server);
    let mut offsets = Vec::new();
    let mut last = None;
    for i in 0..n {
        let t1 = now_ntp();
        let Some(reply) = exchange(&sock, server, &client_request(4, 0x5eed_0000 + i as u64))
        else {
            continue;
        };
        let t4 = now_ntp();
        let h = Header::parse(&reply).expect("reply parses");
        offsets.push((h.receive_ts.diff_secs(t1) + h.transmit_ts.diff_secs(t4)) / 2.0);
        last = Some(h);
    }
    assert!(!offsets.is_empty(), "no replies from {server}");
    offsets.sort_by(f64::total_cmp);
    (offsets[offsets.len() / 2], last.expect("a reply"))
}

fn config(upstreams: &[SocketAddr]) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[clock]\ndiscipline = \"software\"\n{}",
        upstream_config(upstreams)
    )
}

#[test]
fn serves_the_upstreams_time_when_they_all_agree_2_5_s_ahead() {
    let ups: Vec<FakeUpstream> = (0..3).map(|_| FakeUpstream::ahead(2.5)).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut server = Fastntpd::start(&config(&addrs));
    let line = server.wait_for("synchronized to", Duration::from_secs(20));
    let took = server.spawned.elapsed();
    let (offset, h) = served_offset(server.addrs[0], 21);
    eprintln!("{line}\nsynchronized after {took:?}; served minus system time {offset:+.6} s");
    assert!(took < Duration::from_secs(20));
    assert!(
        (offset - 2.5).abs() < 0.005,
        "served time is {offset} s off the system clock"
    );
    assert_eq!(h.stratum, 2);
    assert_eq!(h.leap, LeapIndicator::NoWarning);
    assert_eq!(h.reference_id, RefId([127, 0, 0, 1]));
    server.stop();
}

#[test]
fn an_upstream_60_s_off_is_rejected() {
    let mut ups: Vec<FakeUpstream> = (0..3).map(|_| FakeUpstream::ahead(2.5)).collect();
    ups.push(FakeUpstream::ahead(60.0));
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut server = Fastntpd::start(&config(&addrs));
    server.wait_for("synchronized to", Duration::from_secs(20));
    let rejected = match server.log.iter().find(|l| l.contains("falseticker")) {
        Some(line) => line.clone(),
        None => server.wait_for("falseticker", Duration::from_secs(10)),
    };
    assert!(
        rejected.contains(&addrs[3].to_string()),
        "the wrong upstream was rejected: {rejected}"
    );
    // A while later the served time is still the majority's.
    std::thread::sleep(Duration::from_secs(2));
    let (offset, h) = served_offset(server.addrs[0], 21);
    eprintln!("{rejected}\nserved minus system time {offset:+.6} s");
    assert!(
        (offset - 2.5).abs() < 0.005,
        "served time is {offset} s off"
    );
    assert_eq!(h.stratum, 2);
    let log = server.log.join("\n");
    assert!(
        !log.contains(&format!("synchronized to {}", addrs[3])),
        "the falseticker was followed:\n{log}"
    );
    server.stop();
}

#[test]
fn a_server_that_says_deny_is_no_longer_polled() {
    let deny = FakeUpstream::kiss(*b"DENY");
    let mut server = Fastntpd::start(&config(&[deny.addr]));
    let line = server.wait_for("KoD DENY", Duration::from_secs(10));
    assert!(line.contains(&deny.addr.to_string()), "{line}");
    let after_deny = deny.requests();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Requests already in flight may still arrive; no new ones are sent.
    assert!(
        deny.requests() <= after_deny + 1,
        "still polled: {after_deny} then {}",
        deny.requests()
    );
    // Not synchronized to anything: clients are told so.
    let (_, h) = served_offset(server.addrs[0], 3);
    assert_eq!(h.leap, LeapIndicator::Unsynchronized);
    let log = server.log.join("\n");
    assert_eq!(log.matches("KoD DENY").count(), 1, "logged once:\n{log}");
    server.stop();
}

#[test]
fn a_pool_name_resolves_to_its_servers() {
    // `localhost` is resolved by the system resolver (hosts file), never
    // over the Internet.
    let up = FakeUpstream::ahead(2.5);
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[[upstream]]\naddress = \"localhost:{}\"\n\
         kind = \"pool\"\nmin-poll = -3\nmax-poll = 0\n",
        up.addr.port()
    );
    let mut server = Fastntpd::start(&config);
    let line = server.wait_for("synchronized to", Duration::from_secs(20));
    assert!(line.contains(&up.addr.to_string()), "{line}");
    let (offset, _) = served_offset(server.addrs[0], 5);
    assert!((offset - 2.5).abs() < 0.005, "{offset}");
    server.stop();
}
