//! The reply pipeline's tests: replies field by field, drops by reason,
//! access lists and rate limits as a client sees them, and properties over
//! arbitrary bytes.

use super::*;
use crate::policy::{AccessRules, DenyAction, Protection, RateLimit};
use crate::proto::state::Correction;
use crate::proto::time::{secs_to_units, NtpShort};
use proptest::prelude::*;

const RX: UnixTime = UnixTime::new(1_800_000_000, 100_000_000);
const TX: UnixTime = UnixTime::new(1_800_000_000, 100_020_000);

fn request(version: u8, mode: u8) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = version << 3 | mode;
    r[2] = 10; // poll
    r[3] = 0xec; // precision -20: must not leak into the reply
    r[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    r
}

fn synced_state() -> ServerState {
    ServerState {
        leap: LeapIndicator::NoWarning,
        stratum: 2,
        precision: -24,
        reference_id: RefId::from_ipv4([192, 0, 2, 7].into()),
        reference_time: NtpTimestamp::from_unix(UnixTime::new(1_799_999_000, 0)),
        root_delay: NtpShort::from_secs_f64(0.010),
        root_dispersion: NtpShort::from_secs_f64(0.001),
        dispersion_base: NtpTimestamp::from_unix(UnixTime::new(1_799_999_000, 0)),
        correction: Correction::NONE,
    }
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// Answers `req` from CLIENT received at RX and stamps the reply for TX.
fn reply_to(req: &[u8], state: &ServerState, out: &mut [u8; 48]) -> Verdict {
    reply_with(req, CLIENT, RX, &mut Policy::default(), state, out)
}

fn reply_with(
    req: &[u8],
    from: IpAddr,
    rx: UnixTime,
    policy: &mut Policy,
    state: &ServerState,
    out: &mut [u8; 48],
) -> Verdict {
    let v = respond(req, from, rx, state, policy, out);
    if matches!(v, Verdict::Reply | Verdict::Kod(_)) {
        stamp_transmit(out, state, TX);
    }
    v
}

fn answer(req: &[u8], state: &ServerState) -> (Verdict, Header) {
    let mut out = [0u8; 48];
    let v = reply_to(req, state, &mut out);
    (v, Header::parse(&out).unwrap())
}

#[test]
fn v4_request_gets_a_complete_mode_4_reply() {
    let state = synced_state();
    let (v, h) = answer(&request(4, 3), &state);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(h.leap, LeapIndicator::NoWarning);
    assert_eq!(h.version, 4);
    assert_eq!(h.mode(), Mode::Server);
    assert_eq!(h.stratum, 2);
    assert_eq!(h.poll, 10);
    assert_eq!(h.precision, -24);
    assert_eq!(h.root_delay, state.root_delay);
    assert_eq!(h.reference_id, state.reference_id);
    assert_eq!(h.reference_ts, state.reference_time);
    assert_eq!(h.origin_ts.to_bits(), 0x1122_3344_5566_7788);
    assert_eq!(h.receive_ts, NtpTimestamp::from_unix(RX));
    assert_eq!(h.transmit_ts, NtpTimestamp::from_unix(TX));
    // 1000 s since the dispersion base: 1 ms + 15 ms.
    assert!((h.root_dispersion.as_secs_f64() - 0.016).abs() < 1e-4);
}

#[test]
fn reply_uses_the_request_version() {
    for version in 1..=4 {
        let (v, h) = answer(&request(version, 3), &synced_state());
        assert_eq!(v, Verdict::Reply);
        assert_eq!(h.version, version);
    }
}

#[test]
fn unsynchronized_reply_is_li3_stratum0_init() {
    let (v, h) = answer(&request(4, 3), &ServerState::unsynchronized(-24));
    assert_eq!(v, Verdict::Reply);
    assert_eq!(h.leap, LeapIndicator::Unsynchronized);
    assert_eq!(h.stratum, 0);
    assert_eq!(h.reference_id, RefId::INIT);
}

#[test]
fn only_client_mode_is_answered() {
    for mode in [0, 1, 2, 4, 5, 6, 7] {
        let mut out = [0u8; 48];
        let v = reply_to(&request(4, mode), &synced_state(), &mut out);
        assert_eq!(v, Verdict::Drop(DropReason::NotClientMode), "mode {mode}");
    }
}

#[test]
fn bad_framing_is_dropped_with_its_reason() {
    let state = synced_state();
    let mut out = [0u8; 48];
    let mut drop = |bytes: &[u8]| match reply_to(bytes, &state, &mut out) {
        Verdict::Drop(r) => r,
        v => panic!("{v:?} to {bytes:?}"),
    };
    assert_eq!(drop(&[]), DropReason::TooShort);
    assert_eq!(drop(&request(4, 3)[..47]), DropReason::TooShort);
    assert_eq!(drop(&request(0, 3)), DropReason::UnsupportedVersion);
    assert_eq!(drop(&request(5, 3)), DropReason::UnsupportedVersion);
    let mut long = request(4, 3).to_vec();
    long.resize(1000, 0);
    assert_eq!(drop(&long), DropReason::MalformedExtension);
    long.truncate(50);
    assert_eq!(drop(&long), DropReason::BadLength);
}

#[test]
fn request_with_extension_fields_gets_a_plain_48_byte_reply() {
    let mut req = request(4, 3).to_vec();
    req.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]);
    req.resize(48 + 36, 0xab);
    let (v, h) = answer(&req, &synced_state());
    assert_eq!(v, Verdict::Reply);
    assert_eq!(h.origin_ts.to_bits(), 0x1122_3344_5566_7788);
}

#[test]
fn transmit_never_precedes_receive() {
    let mut out = [0u8; 48];
    let early = UnixTime::new(RX.secs - 1, 0);
    let state = synced_state();
    respond(
        &request(4, 3),
        CLIENT,
        RX,
        &state,
        &mut Policy::default(),
        &mut out,
    );
    stamp_transmit(&mut out, &state, early);
    let h = Header::parse(&out).unwrap();
    assert_eq!(h.transmit_ts, h.receive_ts);
}

#[test]
fn correction_shifts_receive_and_transmit() {
    let mut state = synced_state();
    state.correction = Correction {
        base: NtpTimestamp::from_unix(RX),
        offset: secs_to_units(2.5),
        freq: 0.0,
        ..Correction::NONE
    };
    let (_, h) = answer(&request(4, 3), &state);
    assert!((h.receive_ts.diff_secs(NtpTimestamp::from_unix(RX)) - 2.5).abs() < 1e-9);
    assert!((h.transmit_ts.diff_secs(NtpTimestamp::from_unix(TX)) - 2.5).abs() < 1e-9);
}

#[test]
fn restamping_moves_only_transmit_and_dispersion() {
    let state = synced_state();
    let mut out = [0u8; 48];
    reply_to(&request(4, 3), &state, &mut out);
    let before = Header::parse(&out).unwrap();
    let later = UnixTime::new(TX.secs + 100, TX.nanos);
    stamp_transmit(&mut out, &state, later);
    let after = Header::parse(&out).unwrap();
    assert_eq!(after.transmit_ts, NtpTimestamp::from_unix(later));
    assert!(after.root_dispersion > before.root_dispersion);
    let same = Header {
        transmit_ts: before.transmit_ts,
        root_dispersion: before.root_dispersion,
        ..after
    };
    assert_eq!(same, before);
    stamp_transmit(&mut out, &state, UnixTime::new(RX.secs - 5, 0));
    let clamped = Header::parse(&out).unwrap();
    assert_eq!(clamped.transmit_ts, clamped.receive_ts);
}

fn protection(deny: &[&str], deny_action: DenyAction, limit: Option<RateLimit>) -> Policy {
    let rules = AccessRules {
        default: Access::Allow,
        allow: vec![],
        deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
    };
    Protection::new(&rules, deny_action, limit).for_worker(1)
}

fn limit(kod: bool) -> RateLimit {
    RateLimit {
        interval_nanos: 1_000_000_000,
        burst: 2,
        leak: 1,
        kod,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        clients: 64,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn denied_clients_get_nothing_or_a_kod_deny_that_says_nothing_of_the_time() {
    let state = synced_state();
    let req = request(4, 3);
    let mut out = [0u8; 48];
    let mut ignore = protection(&["192.0.2.0/24", "2001:db8::/32"], DenyAction::Ignore, None);
    for from in ["192.0.2.9", "::ffff:192.0.2.9", "2001:db8::1"] {
        let v = reply_with(&req, ip(from), RX, &mut ignore, &state, &mut out);
        assert_eq!(v, Verdict::Drop(DropReason::Denied), "{from}");
    }
    let v = reply_with(&req, ip("198.51.100.1"), RX, &mut ignore, &state, &mut out);
    assert_eq!(v, Verdict::Reply);

    let mut kod = protection(&["192.0.2.0/24"], DenyAction::Kod, None);
    for _ in 0..5 {
        let mut out = [0u8; 48];
        let v = reply_with(&req, ip("192.0.2.9"), RX, &mut kod, &state, &mut out);
        assert_eq!(v, Verdict::Kod(Kiss::Deny));
        let h = Header::parse(&out).unwrap();
        assert_eq!(
            (h.stratum, h.reference_id, h.leap),
            (0, RefId::DENY, LeapIndicator::Unsynchronized)
        );
        assert_eq!(h.mode(), Mode::Server);
        assert_eq!(h.origin_ts.to_bits(), 0x1122_3344_5566_7788);
        assert_eq!(h.receive_ts, NtpTimestamp::default());
        assert_eq!(h.transmit_ts, NtpTimestamp::default());
        assert_eq!(h.reference_ts, NtpTimestamp::default());
    }
    // Not a client request: no KoD either.
    let v = reply_with(
        &request(4, 1),
        ip("192.0.2.9"),
        RX,
        &mut kod,
        &state,
        &mut out,
    );
    assert_eq!(v, Verdict::Drop(DropReason::Denied));
}

#[test]
fn a_limited_client_gets_its_burst_then_one_in_2_pow_leak() {
    let state = synced_state();
    let req = request(4, 3);
    for kod in [false, true] {
        let mut policy = protection(&[], DenyAction::Ignore, Some(limit(kod)));
        let verdicts: Vec<Verdict> = (0..8)
            .map(|_| reply_with(&req, CLIENT, RX, &mut policy, &state, &mut [0; 48]))
            .collect();
        let leaked = if kod {
            Verdict::Kod(Kiss::Rate)
        } else {
            Verdict::Reply
        };
        let refused = Verdict::Drop(DropReason::RateLimited);
        assert_eq!(
            verdicts,
            [
                Verdict::Reply,
                Verdict::Reply,
                refused,
                leaked,
                refused,
                leaked,
                refused,
                leaked
            ]
        );
        // Another client has its own allowance; a second later one more.
        let other = reply_with(&req, ip("192.0.2.2"), RX, &mut policy, &state, &mut [0; 48]);
        assert_eq!(other, Verdict::Reply);
        let later = UnixTime::new(RX.secs + 1, RX.nanos);
        assert_eq!(
            reply_with(&req, CLIENT, later, &mut policy, &state, &mut [0; 48]),
            Verdict::Reply
        );
    }
}

#[test]
fn junk_from_anyone_is_not_counted_against_the_rate_limit() {
    let state = synced_state();
    let mut policy = protection(&[], DenyAction::Ignore, Some(limit(true)));
    let mut ask = |req: &[u8]| reply_with(req, CLIENT, RX, &mut policy, &state, &mut [0; 48]);
    for _ in 0..10 {
        assert_eq!(
            ask(&request(4, 4)),
            Verdict::Drop(DropReason::NotClientMode)
        );
    }
    assert_eq!(ask(&request(4, 3)), Verdict::Reply);
}

#[test]
fn denied_kods_are_rate_limited_too() {
    let state = synced_state();
    let mut policy = protection(&["0.0.0.0/0"], DenyAction::Kod, Some(limit(true)));
    let sent: Vec<Verdict> = (0..6)
        .map(|_| {
            reply_with(
                &request(4, 3),
                CLIENT,
                RX,
                &mut policy,
                &state,
                &mut [0; 48],
            )
        })
        .collect();
    let (k, d) = (Verdict::Kod(Kiss::Deny), Verdict::Drop(DropReason::Denied));
    assert_eq!(sent, [k, k, d, k, d, k]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_nor_grow(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let mut out = [0u8; 48];
        let v = reply_to(&bytes, &synced_state(), &mut out);
        if v == Verdict::Reply {
            prop_assert!(bytes.len() >= HEADER_LEN);
            prop_assert_eq!(bytes[0] & 7, 3);
        }
    }

    #[test]
    fn any_valid_header_is_answered_with_its_transmit_as_origin(
        mut header in proptest::array::uniform32(any::<u8>()),
        tail in proptest::array::uniform16(any::<u8>()),
        version in 1u8..=4,
    ) {
        header[0] = (header[0] & 0xc0) | version << 3 | 3;
        let req = [header.as_slice(), tail.as_slice()].concat();
        let (v, h) = answer(&req, &synced_state());
        prop_assert_eq!(v, Verdict::Reply);
        let origin = h.origin_ts.to_be_bytes();
        prop_assert_eq!(origin.as_slice(), &req[40..48]);
        prop_assert_eq!(h.version, version);
    }

    #[test]
    fn parse_then_write_is_identity(bytes in proptest::array::uniform32(any::<u8>()), more in proptest::array::uniform16(any::<u8>())) {
        let raw = [bytes.as_slice(), more.as_slice()].concat();
        let mut out = [0u8; 48];
        Header::parse(&raw).unwrap().write(&mut out);
        prop_assert_eq!(out.as_slice(), raw.as_slice());
    }
}
