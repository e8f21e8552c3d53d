//! The load thread end to end against a sink that never answers, and its
//! request template and time conversions.

use super::*;

/// An engine whose sockets point at a local sink.
fn engine_to(sink: &std::net::UdpSocket) -> Engine {
    let target = sink.local_addr().unwrap();
    let setup = crate::clients::ClientSetup {
        target,
        clients: 2,
        sources: None,
        precise_tx: false,
        gso: true,
    };
    let (sockets, info) = crate::clients::open(&setup).unwrap();
    let cfg = EngineConfig {
        target,
        version: 4,
        timeout: Duration::from_millis(50),
        precise_tx: false,
        max_batch: 64,
        table_slots: 1 << 12,
        gso: info.gso,
        accept_unsynchronized: false,
        timeline: None,
        spin: true,
    };
    Engine::new(&cfg, sockets, Arc::new(Live::default())).unwrap()
}

#[test]
fn a_thread_that_wakes_after_the_end_still_sends_the_whole_schedule() {
    // A loaded host can wake the thread after the step's end; the
    // schedule's tail is due by then and goes out (before, the loop
    // ended first and a short run looked generator-limited).
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut e = engine_to(&sink);
    let cmd = StepCmd {
        rate: 1000.0,
        duration: Duration::from_millis(100),
        start: Instant::now() - Duration::from_millis(150),
    };
    let r = e.run_step(&cmd, &Interrupt::default());
    assert_eq!(r.counters.scheduled, 100);
    assert_eq!(r.counters.sent, 100, "{:?}", r.counters);
    assert_eq!(r.counters.lost, 100, "the sink answers nothing");
}

#[test]
fn rate_zero_sends_nothing_and_keeps_the_time() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut e = engine_to(&sink);
    let began = Instant::now();
    let cmd = StepCmd {
        rate: 0.0,
        duration: Duration::from_millis(100),
        start: began,
    };
    let r = e.run_step(&cmd, &Interrupt::default());
    assert_eq!((r.counters.sent, r.counters.scheduled), (0, 0));
    assert_eq!(r.send_window, Duration::from_millis(100));
    assert!(began.elapsed() >= Duration::from_millis(100));
}

#[test]
fn template_is_a_minimal_client_request() {
    let t = request_template(4);
    assert_eq!(t[0], 0x23);
    assert!(t[1..].iter().all(|&b| b == 0));
    assert_eq!(request_template(3)[0], 0x1b);
}

#[test]
fn nanoseconds_round_trip_through_ntp() {
    let t = UnixTime::new(1_800_000_000, 123_456_789);
    let ns = unix_ns(t);
    assert_eq!(ntp_of_ns(ns), NtpTimestamp::from_unix(t));
    assert_eq!(unix_ns(UnixTime::new(-1, 500_000_000)), -500_000_000);
    assert_eq!(
        ntp_of_ns(-500_000_000),
        NtpTimestamp::from_unix(UnixTime::new(-1, 500_000_000))
    );
}
