//! The source state machine: requests, reply checks, polling and
//! reachability, exchange by exchange.

use super::*;
use crate::discipline::test_support::primary_reply;
use crate::proto::{LeapIndicator, NtpShort, RefId};

fn config(iburst: bool) -> SourceParams {
    SourceParams {
        name: "test".into(),
        addr: "127.0.0.1:123".parse().unwrap(),
        pool: false,
        poll: PollParams {
            iburst,
            min_poll: 6,
            max_poll: 10,
        },
    }
}

fn ts(secs: f64) -> NtpTimestamp {
    NtpTimestamp::from_bits(0xE000_0000_0000_0000).add_secs(secs)
}

/// A reply to `request`, from a server whose clock is `ahead` of ours,
/// for a request sent at our `t1` with `delay` round trip.
fn reply(
    request: &[u8; 48],
    t1: f64,
    delay: f64,
    ahead: f64,
    edit: impl FnOnce(&mut Header),
) -> [u8; 48] {
    primary_reply(request, ts(t1 + delay / 2.0 + ahead), edit)
}

fn exchange(
    s: &mut Source,
    mono: f64,
    edit: impl FnOnce(&mut Header),
) -> Result<Measurement, ReplyError> {
    let req = s
        .transmit(mono, 0x1234_5678_9abc_def0 ^ mono.to_bits())
        .expect("due");
    s.sent_at(ts(mono), Some("192.0.2.200".parse().unwrap()));
    let rep = reply(&req, mono, 0.010, 0.5, edit);
    s.receive(&rep, ts(mono + 0.010 + 0.00001), mono + 0.010)
}

/// An exchange at 0 s whose reply names `stratum` and `refid` (a kiss
/// code at stratum 0).
fn exchange_from(s: &mut Source, stratum: u8, refid: RefId) -> Result<Measurement, ReplyError> {
    exchange(s, 0.0, |h| {
        h.stratum = stratum;
        h.reference_id = refid;
    })
}

#[test]
fn a_valid_reply_gives_offset_and_delay() {
    let mut s = Source::new(config(false), 100.0, -20);
    let m = exchange(&mut s, 100.0, |_| {}).unwrap();
    assert!((m.offset - 0.5).abs() < 1e-5, "{m:?}");
    assert!((m.delay - 0.010).abs() < 1e-5);
    assert!((m.mono - 100.005).abs() < 1e-4);
    assert_eq!(s.reach(), 1);
    assert_eq!(s.upstream().unwrap().stratum, 1);
}

#[test]
fn requests_carry_a_random_transmit_timestamp_and_nothing_else() {
    let mut s = Source::new(config(false), 0.0, -20);
    let req = s.transmit(0.0, 0xdead_beef_0000_0001).unwrap();
    let h = Header::parse(&req).unwrap();
    assert_eq!(h.mode(), Mode::Client);
    assert_eq!(h.version, 4);
    assert_eq!(h.transmit_ts.to_bits(), 0xdead_beef_0000_0001);
    assert_eq!(
        &req[1..40].iter().filter(|b| **b != 0).count(),
        &1,
        "only the poll byte is set: {req:?}"
    );
}

#[test]
fn replies_are_checked_strictly() {
    type Edit = Box<dyn Fn(&mut Header)>;
    let cases: Vec<(Edit, ReplyError)> = vec![
        (
            Box::new(|h| h.origin_ts = ts(1.0)),
            ReplyError::OriginMismatch,
        ),
        (Box::new(|h| h.mode = 3), ReplyError::NotServerReply),
        (Box::new(|h| h.version = 5), ReplyError::NotServerReply),
        (
            Box::new(|h| h.leap = LeapIndicator::Unsynchronized),
            ReplyError::Unsynchronized,
        ),
        (Box::new(|h| h.stratum = 16), ReplyError::Unsynchronized),
        (
            Box::new(|h| h.reference_ts = NtpTimestamp::ZERO),
            ReplyError::Unsynchronized,
        ),
        (
            Box::new(|h| h.transmit_ts = NtpTimestamp::ZERO),
            ReplyError::BadTimestamps,
        ),
        (
            Box::new(|h| h.transmit_ts = h.receive_ts.add_secs(-0.5)),
            ReplyError::BadTimestamps,
        ),
        (
            Box::new(|h| h.receive_ts = h.receive_ts.add_secs(-0.1)),
            ReplyError::BadTimestamps,
        ),
        (
            Box::new(|h| h.root_dispersion = NtpShort::from_secs_f64(2.0)),
            ReplyError::TooFar,
        ),
        (
            Box::new(|h| {
                h.stratum = 0;
                h.reference_id = RefId(*b"INIT");
            }),
            ReplyError::Unsynchronized,
        ),
        (
            Box::new(|h| h.precision = 5),
            ReplyError::ImplausiblePrecision,
        ),
        (
            Box::new(|h| h.precision = 127),
            ReplyError::ImplausiblePrecision,
        ),
        // Synchronized to us: its refid is the address we polled from.
        (
            Box::new(|h| {
                h.stratum = 3;
                h.reference_id = RefId([192, 0, 2, 200]);
            }),
            ReplyError::Loop,
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let mut s = Source::new(config(false), 0.0, -20);
        assert_eq!(exchange(&mut s, 0.0, edit), Err(want), "case {i}");
        assert_eq!(
            s.reach(),
            0,
            "case {i}: a bad reply does not count as reached"
        );
    }
    let mut s = Source::new(config(false), 0.0, -20);
    assert_eq!(
        s.receive(&[0u8; 20], ts(0.0), 0.0),
        Err(ReplyError::TooShort)
    );
}

#[test]
fn a_reply_is_used_once() {
    let mut s = Source::new(config(false), 0.0, -20);
    let req = s.transmit(0.0, 77).unwrap();
    s.sent_at(ts(0.0), None);
    let rep = reply(&req, 0.0, 0.01, 0.0, |_| {});
    assert!(s.receive(&rep, ts(0.01), 0.01).is_ok());
    assert_eq!(
        s.receive(&rep, ts(0.02), 0.02),
        Err(ReplyError::OriginMismatch)
    );
}

#[test]
fn burst_then_regular_polls_and_reach_register() {
    let mut s = Source::new(config(true), 0.0, -20);
    let mut times = Vec::new();
    let mut t = 0.0;
    while times.len() < 10 {
        if s.transmit(t, 1).is_some() {
            times.push(t);
        }
        t += 0.5;
    }
    assert_eq!(&times[..8], &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]);
    assert_eq!(times[8], 16.0);
    // Never answered: backing off already.
    assert_eq!(times[9], 16.0 + 128.0);
    assert_eq!(s.reach(), 0);
    assert!(!s.in_initial_burst());
}

#[test]
fn kod_rate_backs_off_and_deny_stops_polling() {
    let mut s = Source::new(config(true), 0.0, -20);
    let r = exchange_from(&mut s, 0, RefId::RATE);
    assert_eq!(r, Err(ReplyError::KissOfDeath(Kiss::Rate)));
    assert_eq!(s.poll(), 7);
    assert!(s.next_send() >= 128.0, "no more burst, longer interval");

    let mut s = Source::new(config(false), 0.0, -20);
    let r = exchange_from(&mut s, 0, RefId::DENY);
    assert_eq!(r, Err(ReplyError::KissOfDeath(Kiss::Deny)));
    assert_eq!(s.refused(), Some(Kiss::Deny));
    assert_eq!(s.transmit(1e6, 1), None);
    assert_eq!(s.next_send(), f64::INFINITY);
}

#[test]
fn unreachable_sources_back_off_to_max_poll() {
    let mut s = Source::new(config(false), 0.0, -20);
    let mut t = 0.0;
    for _ in 0..40 {
        t = s.next_send();
        s.transmit(t, 1).unwrap();
    }
    assert!(t > 0.0);
    assert_eq!(s.poll(), 10);
    assert!(!s.reachable());
}

#[test]
fn a_secondary_server_with_another_peer_is_not_a_loop() {
    let mut s = Source::new(config(false), 0.0, -20);
    let r = exchange_from(&mut s, 2, RefId([192, 0, 2, 201]));
    assert!(r.is_ok(), "{r:?}");
    // IPv6: the refid is the MD5 prefix of our address.
    let ours: IpAddr = "2001:db8::5".parse().unwrap();
    let mut s = Source::new(config(false), 0.0, -20);
    let req = s.transmit(0.0, 99).unwrap();
    s.sent_at(ts(0.0), Some(ours));
    let rep = reply(&req, 0.0, 0.01, 0.0, |h| {
        h.stratum = 2;
        h.reference_id = refid_of(ours);
    });
    assert_eq!(s.receive(&rep, ts(0.01), 0.01), Err(ReplyError::Loop));
}

#[test]
fn a_request_in_flight_is_not_counted_as_lost() {
    let mut s = Source::new(config(false), 0.0, -20);
    let mut t = 0.0;
    // Answered once, then two requests lost.
    exchange(&mut s, t, |_| {}).unwrap();
    for _ in 0..2 {
        t = s.next_send();
        s.transmit(t, 7).unwrap();
    }
    // The third request is on its way: two of the last three completed
    // polls were lost, one answered.
    t = s.next_send();
    s.transmit(t, 8).unwrap();
    assert!(s.awaiting_reply());
    assert!(s.usable(), "reach {:08b}", s.reach());
    // Lost too: now three in a row.
    t = s.next_send();
    s.transmit(t, 9).unwrap();
    assert!(!s.usable(), "reach {:08b}", s.reach());
}

#[test]
fn the_kernel_transmit_stamp_replaces_the_clock_read() {
    let mut s = Source::new(config(false), 100.0, -20);
    let req = s.transmit(100.0, 5).unwrap();
    s.sent_at(ts(100.0), None);
    // The kernel stamped the request 200 µs after the clock read.
    s.refine_t1(ts(100.0002));
    let rep = reply(&req, 100.0002, 0.010, 0.5, |_| {});
    let m = s.receive(&rep, ts(100.01021), 100.0102).unwrap();
    assert!((m.delay - 0.010).abs() < 2e-6, "{m:?}");
    assert!((m.offset - 0.5).abs() < 2e-6, "{m:?}");
}
