//! The real `fastntpd` on ephemeral loopback ports (IPv4 and IPv6), once
//! per I/O backend (`mmsg` and `io-uring`, the same suite): every reply
//! field checked against the wire contract of DESIGN.md, bad input dropped
//! and counted by reason while valid requests keep being answered, and
//! traffic spread over pinned workers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    client_for, client_request, exchange, recv_stamped, skip, stamped_client_for, total, Fastntpd,
    Io,
};
use fastntp::proto::{Header, LeapIndicator, Mode, NtpTimestamp, RefId};

/// Every test below runs once per backend.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod mmsg {
            $(#[test] fn $name() { super::$name(super::Io::Mmsg) })*
        }
        mod io_uring {
            $(#[test] fn $name() {
                if let Some(io) = super::Io::uring_or_skip() { super::$name(io) }
            })*
        }
    };
}

for_each_backend!(
    synchronized_replies_carry_every_field_on_ipv4_and_ipv6,
    unsynchronized_replies_say_li3_stratum0_init,
    first_reply_comes_within_a_second_of_start,
    bad_input_is_dropped_counted_and_never_stops_service,
    two_workers_share_the_traffic_each_on_its_own_core,
    every_request_carries_a_kernel_receive_timestamp,
    batched_replies_never_claim_to_leave_after_they_arrive,
);

fn local_v4_v6(io: Io) -> String {
    format!(
        r#"
        [server]
        listen = ["127.0.0.1:0", "[::1]:0"]
        workers = 1
        io = "{io}"
        [clock]
        local-stratum = 10
        "#
    )
}

/// Starts the server and checks it runs the backend under test.
fn start(io: Io, config: &str) -> Fastntpd {
    let server = Fastntpd::start(config);
    let backend = format!("{io} backend");
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("listening on") && l.contains(&backend)),
        "not running the {io} backend: {:#?}",
        server.log
    );
    server
}

fn now_ntp() -> NtpTimestamp {
    NtpTimestamp::from_unix(fastntp::clock::now())
}

/// Sends a request and checks everything that does not depend on the
/// server's synchronization state; returns the decoded reply.
fn ask(server: SocketAddr, version: u8) -> Header {
    let sock = client_for(server);
    let transmit = 0x0123_4567_89ab_cdefu64 ^ (version as u64) << 20 ^ server.port() as u64;
    let t1 = now_ntp();
    let reply = exchange(&sock, server, &client_request(version, transmit))
        .unwrap_or_else(|| panic!("no reply from {server} to a v{version} request"));
    let t4 = now_ntp();
    assert_eq!(reply.len(), 48, "reply must be exactly the 48-byte header");
    let h = Header::parse(&reply).unwrap();
    assert_eq!(h.version, version, "version echoed");
    assert_eq!(h.mode(), Mode::Server);
    assert_eq!(h.poll, 6, "poll echoed");
    assert!(
        (-30..=-6).contains(&h.precision),
        "precision {}",
        h.precision
    );
    assert_eq!(
        h.origin_ts.to_bits(),
        transmit,
        "origin = request transmit, verbatim"
    );
    // Client and server share one clock: t1 <= T2 <= T3 <= t4.
    assert!(
        h.receive_ts.diff_units(t1) >= 0,
        "receive before the request was sent"
    );
    assert!(
        h.transmit_ts.diff_units(h.receive_ts) >= 0,
        "transmit before receive"
    );
    assert!(
        t4.diff_units(h.transmit_ts) >= 0,
        "transmit after the reply arrived"
    );
    assert!(t4.diff_secs(t1) < 0.3);
    h
}

fn synchronized_replies_carry_every_field_on_ipv4_and_ipv6(io: Io) {
    let server = start(io, &local_v4_v6(io));
    assert_eq!(server.addrs.len(), 2);
    assert!(server.addrs[0].is_ipv4() && server.addrs[1].is_ipv6());
    let mut precisions = Vec::new();
    for &addr in &server.addrs {
        for version in [4, 3] {
            let h = ask(addr, version);
            assert_eq!(h.leap, LeapIndicator::NoWarning);
            assert_eq!(h.stratum, 10, "local-stratum");
            assert_eq!(h.reference_id, RefId::LOCL);
            assert_eq!(h.root_delay.as_secs_f64(), 0.0);
            assert!(
                h.root_dispersion.as_secs_f64() < 0.01,
                "{:?}",
                h.root_dispersion
            );
            let age = h.transmit_ts.diff_secs(h.reference_ts);
            assert!((0.0..30.0).contains(&age), "reference time {age} s old");
            precisions.push(h.precision);
        }
    }
    assert!(
        precisions.windows(2).all(|w| w[0] == w[1]),
        "precision is measured once"
    );
    let stats = total(&server.stop());
    assert_eq!(stats.replied, 4);
    assert_eq!(stats.dropped, 0);
}

fn unsynchronized_replies_say_li3_stratum0_init(io: Io) {
    let server = start(
        io,
        &format!(
            r#"
            [server]
            listen = ["127.0.0.1:0", "[::1]:0"]
            workers = 1
            io = "{io}"
            "#
        ),
    );
    for &addr in &server.addrs {
        for version in [4, 3] {
            let h = ask(addr, version);
            assert_eq!(h.leap, LeapIndicator::Unsynchronized);
            assert_eq!(h.stratum, 0);
            assert_eq!(h.reference_id, RefId::INIT);
        }
    }
    server.stop();
}

/// Serving does not wait for anything (upstreams, a first sync): the
/// first request after start-up is answered at once. Measured from the
/// moment the server says it serves, not from the spawn, whose length a
/// busy host decides.
fn first_reply_comes_within_a_second_of_start(io: Io) {
    let server = start(io, &local_v4_v6(io));
    let sock = client_for(server.addrs[0]);
    let reply = exchange(&sock, server.addrs[0], &client_request(4, 1));
    let elapsed = server.ready_at.elapsed();
    assert!(reply.is_some());
    assert!(
        elapsed < Duration::from_secs(1),
        "first reply {elapsed:?} after start-up"
    );
    server.stop();
}

/// Datagrams that must never be answered, with the reason they are counted
/// under.
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let valid = client_request(4, 42);
    let with_mode = |mode: u8| {
        let mut r = valid;
        r[0] = 4 << 3 | mode;
        r.to_vec()
    };
    let with_version = |version: u8| {
        let mut r = valid;
        r[0] = version << 3 | 3;
        r.to_vec()
    };
    let with_trailer = |trailer: &[u8]| [valid.as_slice(), trailer].concat();
    let mut v = vec![
        ("empty datagram", vec![], "too_short"),
        ("47 bytes", valid[..47].to_vec(), "too_short"),
        ("50 bytes", with_trailer(&[0, 0]), "bad_length"),
        (
            "1000 bytes: header + zeros",
            with_trailer(&[0; 952]),
            "malformed_extension",
        ),
        (
            "ef longer than the datagram",
            with_trailer(&[
                0, 1, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0,
            ]),
            "malformed_extension",
        ),
        (
            "ef length 8",
            with_trailer(&[[0u8, 1, 0, 8].as_slice(), &[0; 28]].concat()),
            "malformed_extension",
        ),
        (
            "ef length not a multiple of 4",
            with_trailer(&[[0u8, 1, 0, 30].as_slice(), &[0; 28]].concat()),
            "malformed_extension",
        ),
        (
            "8 stray bytes",
            with_trailer(&[1; 8]),
            "malformed_extension",
        ),
        (
            "1400 bytes (beyond the receive buffer)",
            with_trailer(&[0; 1352]),
            "oversize",
        ),
    ];
    for mode in [0, 1, 2, 4, 5, 6, 7] {
        v.push(("mode", with_mode(mode), "not_client_mode"));
    }
    for version in [0, 5, 6, 7] {
        v.push(("version", with_version(version), "bad_version"));
    }
    v
}

fn bad_input_is_dropped_counted_and_never_stops_service(io: Io) {
    let server = start(io, &local_v4_v6(io));
    let addr = server.addrs[0];
    let sock = client_for(addr);
    let inputs = bad_inputs();
    for (round, (what, bytes, _)) in inputs.iter().enumerate() {
        sock.send_to(bytes, addr).unwrap();
        // A valid request right behind it: its reply must be the next thing
        // we receive (same socket, same worker, in order).
        let probe = 0xfeed_0000 + round as u64;
        let reply = exchange(&sock, addr, &client_request(4, probe))
            .unwrap_or_else(|| panic!("no reply to the valid request after {what}"));
        let h = Header::parse(&reply).unwrap();
        assert_eq!(h.origin_ts.to_bits(), probe, "got a reply to {what}");
    }
    // Nothing else arrives late.
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a bad datagram was answered"
    );

    // A v6 request still works too.
    ask(server.addrs[1], 4);

    let stats = total(&server.stop());
    assert_eq!(stats.replied, inputs.len() as u64 + 1);
    assert_eq!(stats.dropped, inputs.len() as u64);
    for reason in [
        "too_short",
        "bad_length",
        "malformed_extension",
        "oversize",
        "not_client_mode",
        "bad_version",
    ] {
        let expected = inputs.iter().filter(|(_, _, r)| *r == reason).count() as u64;
        assert_eq!(
            stats.dropped_for(reason),
            expected,
            "drops counted as {reason}: {stats:?}"
        );
    }
}

fn two_workers_share_the_traffic_each_on_its_own_core(io: Io) {
    let cores = fastntp::sys::cpu::usable_cores();
    if cores.len() < 2 {
        skip(format!(
            "it needs 2 usable cores, this host has {}",
            cores.len()
        ));
        return;
    }
    let server = start(
        io,
        &format!(
            r#"
            [server]
            listen = ["127.0.0.1:0"]
            workers = 2
            io = "{io}"
            [clock]
            local-stratum = 10
            "#
        ),
    );
    let addr = server.addrs[0];

    // Each worker thread is pinned to exactly one core, a different one.
    // A thread names and pins itself once it runs: give both a moment.
    let mut pinned = Vec::new();
    for _ in 0..100 {
        pinned = worker_affinities(server.pid());
        if pinned.len() == 2 && pinned.iter().all(|(_, cpus)| !cpus.contains(['-', ','])) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pinned.sort();
    assert_eq!(
        pinned,
        vec![
            ("fastntp-w0".to_owned(), cores[0].to_string()),
            ("fastntp-w1".to_owned(), cores[1].to_string())
        ]
    );

    // Many clients (addresses and ports): they spread over both sockets,
    // whether the kernel hashes the 4-tuple or steers by address.
    const CLIENTS: u64 = 64;
    for i in 0..CLIENTS {
        let sock =
            std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 2 + (i % 32) as u8], 0)))
                .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let reply = exchange(&sock, addr, &client_request(4, i)).expect("reply");
        assert_eq!(Header::parse(&reply).unwrap().origin_ts.to_bits(), i);
    }
    let stats = server.stop();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats.iter().map(|s| s.replied).sum::<u64>(), CLIENTS);
    for s in &stats {
        assert!(s.received > 0, "worker {} got no traffic: {stats:?}", s.id);
        assert_eq!(s.core, Some(cores[s.id]));
    }
}

fn every_request_carries_a_kernel_receive_timestamp(io: Io) {
    let server = start(io, &local_v4_v6(io));
    let addr = server.addrs[0];
    // Give the kernel's deferred timestamp enabling time, then expect
    // every request to carry a kernel stamp.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..20 {
        ask(addr, 4);
    }
    let stats = total(&server.stop());
    assert_eq!(stats.replied, 20);
    assert_eq!(
        stats.missing_rx_stamps, 0,
        "a request was stamped by a clock read"
    );
}

/// (thread name, allowed cores) of every worker thread of process `pid`.
fn worker_affinities(pid: u32) -> Vec<(String, String)> {
    let mut pinned = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        if comm.trim().starts_with("fastntp-w") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned();
            pinned.push((comm.trim().to_owned(), allowed));
        }
    }
    pinned
}

/// Bursts of back-to-back requests make the server answer in batches, whose
/// replies leave one after another; each reply's transmit timestamp must
/// still not be later than its kernel-stamped arrival at the client (on
/// loopback both stamps read the same clock), or clients would see
/// negative round trips.
fn batched_replies_never_claim_to_leave_after_they_arrive(io: Io) {
    const BURSTS: u64 = 20;
    const BURST: u64 = 64;
    /// Scheduling slack tolerated (a preempted send, a coarse estimate).
    const SLACK_SECS: f64 = 5e-6;
    let server = start(io, &local_v4_v6(io));
    let addr = server.addrs[0];
    let sock = stamped_client_for(addr);
    let mut worst = f64::NEG_INFINITY;
    let mut replies = 0;
    for burst in 0..BURSTS {
        for i in 0..BURST {
            sock.send_to(&client_request(4, burst << 32 | i), addr)
                .unwrap();
        }
        for _ in 0..BURST {
            let Some((reply, arrival)) = recv_stamped(&sock) else {
                break;
            };
            let h = Header::parse(&reply).unwrap();
            let late = h.transmit_ts.diff_secs(NtpTimestamp::from_unix(arrival));
            worst = worst.max(late);
            replies += 1;
        }
    }
    assert!(replies >= BURSTS * BURST * 9 / 10, "only {replies} replies");
    assert!(
        worst < SLACK_SECS,
        "a reply was stamped {:.1} µs after it arrived",
        worst * 1e6
    );
    server.stop();
}
