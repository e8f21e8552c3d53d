//! A real upstream (issue 5, acceptance 2): Debian's chronyd serving its
//! local clock at stratum 1 on a loopback port (`-x`, CAP_SYS_TIME dropped:
//! it never touches the clock) is the only upstream of `fastntpd` in
//! software mode, which must reach stratum 2 with refid 127.0.0.1 within
//! 20 s and then serve this host's time to within 50 µs (median).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{client_for, client_request, exchange, Chronyd, Fastntpd};
use fastntp::proto::{Header, LeapIndicator, NtpTimestamp, RefId};

fn now_ntp() -> NtpTimestamp {
    NtpTimestamp::from_unix(fastntp::clock::now())
}

#[test]
fn fastntpd_follows_chronyd_at_stratum_2_and_serves_the_system_time() {
    let Some(upstream) = Chronyd::start(1) else {
        return;
    };
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[clock]\ndiscipline = \"software\"\n\
         [[upstream]]\naddress = \"{}\"\niburst = true\nmin-poll = -2\nmax-poll = 0\n",
        upstream.addr
    );
    let mut server = Fastntpd::start(&config);
    let line = server.wait_for("synchronized to", Duration::from_secs(20));
    let took = server.spawned.elapsed();
    assert!(line.contains(&upstream.addr.to_string()), "{line}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // Let a few more samples in, then measure served time against the
    // system clock (they share the host clock: the true offset is 0).
    std::thread::sleep(Duration::from_secs(3));
    let sock = client_for(server.addrs[0]);
    let mut offsets = Vec::new();
    let mut last = None;
    for i in 0..200u64 {
        let t1 = now_ntp();
        let Some(reply) = exchange(&sock, server.addrs[0], &client_request(4, 0xabc0_0000 + i))
        else {
            continue;
        };
        let t4 = now_ntp();
        let h = Header::parse(&reply).unwrap();
        offsets.push((h.receive_ts.diff_secs(t1) + h.transmit_ts.diff_secs(t4)) / 2.0);
        last = Some(h);
    }
    let h = last.expect("fastntpd answered");
    assert_eq!(h.stratum, 2);
    assert_eq!(h.reference_id, RefId([127, 0, 0, 1]));
    assert_eq!(h.leap, LeapIndicator::NoWarning);
    offsets.sort_by(f64::total_cmp);
    let p50 = offsets[offsets.len() / 2];
    let p90 = offsets[offsets.len() * 9 / 10];
    eprintln!(
        "{line}\nstratum 2 after {took:?}; served minus system time over {} exchanges: \
         p50 {:+.2} µs, p90 {:+.2} µs",
        offsets.len(),
        p50 * 1e6,
        p90 * 1e6
    );
    assert!(
        p50.abs() < 50e-6,
        "served time is {p50} s off the system clock (median)"
    );
    server.stop();
}

/// One reply from `server` (a few tries).
fn served_header(server: SocketAddr) -> Option<Header> {
    let sock = client_for(server);
    (0..5u64).find_map(|i| {
        let reply = exchange(&sock, server, &client_request(4, 0xdead_0000 + i))?;
        Header::parse(&reply).ok()
    })
}

#[test]
fn a_dead_chronyd_upstream_is_unreachable_and_the_other_keeps_serving() {
    let Some(mut upstreams) = (0..2)
        .map(|_| Chronyd::start(1))
        .collect::<Option<Vec<Chronyd>>>()
    else {
        return;
    };
    let entries: String = upstreams
        .iter()
        .map(|u| {
            format!(
                "[[upstream]]\naddress = \"{}\"\niburst = true\nmin-poll = -2\nmax-poll = 0\n",
                u.addr
            )
        })
        .collect();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[clock]\ndiscipline = \"software\"\n\
         local-stratum = 10\n{entries}"
    );
    let mut server = Fastntpd::start(&config);
    let line = server.wait_for("synchronized to", Duration::from_secs(30));
    // Kill the system peer: the harder case.
    let dead = upstreams
        .iter()
        .position(|u| line.contains(&format!("synchronized to {} ", u.addr)))
        .unwrap_or_else(|| panic!("synchronized to neither upstream: {line}"));
    let dead_addr = upstreams[dead].addr;
    let killed_at_line = server.log.len();
    upstreams[dead].kill();
    // Watch for longer than the dead one's last estimate could last, while
    // asking the server for the time twice a second.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut served = Vec::new();
    while Instant::now() < deadline {
        server.read_for(Duration::from_millis(500));
        if let Some(h) = served_header(server.addrs[0]) {
            served.push((h.stratum, h.leap, h.reference_id));
        }
    }
    let after_kill = &server.log[killed_at_line..];
    let bad: Vec<&String> = after_kill
        .iter()
        .filter(|l| {
            l.contains("falseticker") || l.contains("holdover") || l.contains("local clock")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{bad:#?}\nlog after the kill: {after_kill:#?}"
    );
    let unreachable: Vec<&String> = after_kill
        .iter()
        .filter(|l| l.contains("unreachable"))
        .collect();
    assert!(
        unreachable.len() == 1
            && unreachable[0].contains(&format!("upstream {dead_addr} unreachable")),
        "the dead upstream must be logged unreachable, once: {after_kill:#?}"
    );
    // Stratum 2 (following the survivor) all along.
    assert!(served.len() > 20, "only {} replies", served.len());
    let wrong: Vec<_> = served
        .iter()
        .filter(|s| **s != (2, LeapIndicator::NoWarning, RefId([127, 0, 0, 1])))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    eprintln!("{line}\n{}", unreachable[0]);
    server.stop();
}
