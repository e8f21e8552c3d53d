//! The `respond` target: one datagram through the reply pipeline as a
//! worker runs it (`respond`, then `stamp_transmit` on a reply), under a
//! server state and clock readings taken from the input's first bytes, so
//! the fuzzer explores them too.
//!
//! Input layout ([`Case::split`]), then the datagram:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | scenario: the server state ([`Case::state`]) |
//! | 1–8 | receive time, seconds since 1970 (i64, big-endian) |
//! | 9–12 | receive time, nanoseconds (u32, big-endian; ≥ 10⁹ carries) |
//! | 13–14 | transmit − receive, µs (i16, big-endian; negative too) |
//!
//! A new part of the request path (a source address, a policy) is one more
//! field taken by [`Case::split`] and written by [`Case::encode`].

use crate::input::Reader;
use fastntp::proto::{
    respond, stamp_transmit, Correction, Header, LeapIndicator, Mode, NtpShort, NtpTimestamp,
    RefId, ServerState, UnixTime, Verdict, HEADER_LEN,
};

/// Bytes before the datagram.
pub const PREFIX_LEN: usize = 15;

/// One fuzz case: the scenario and the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case<'a> {
    /// Server-state choices, bit by bit (see [`Case::state`]).
    pub scenario: u8,
    /// Kernel receive time of the datagram.
    pub received: UnixTime,
    /// How long after `received` the reply is stamped, µs.
    pub delay_us: i16,
    /// The datagram as received.
    pub request: &'a [u8],
}

impl<'a> Case<'a> {
    /// Splits an input; `None` when it is shorter than [`PREFIX_LEN`].
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(data);
        let scenario = r.byte()?;
        let secs = i64::from_be_bytes(r.array()?);
        let nanos = u32::from_be_bytes(r.array()?);
        let delay_us = i16::from_be_bytes(r.array()?);
        Some(Case {
            scenario,
            received: UnixTime::new(secs, nanos),
            delay_us,
            request: r.rest(),
        })
    }

    /// The input that [`Case::split`] turns into this case (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREFIX_LEN + self.request.len());
        out.push(self.scenario);
        out.extend_from_slice(&self.received.secs.to_be_bytes());
        out.extend_from_slice(&self.received.nanos.to_be_bytes());
        out.extend_from_slice(&self.delay_us.to_be_bytes());
        out.extend_from_slice(self.request);
        out
    }

    /// When the reply is stamped.
    pub fn transmit(&self) -> UnixTime {
        let nanos = i64::from(self.received.nanos) + i64::from(self.delay_us) * 1000;
        UnixTime::new(
            self.received
                .secs
                .saturating_add(nanos.div_euclid(1_000_000_000)),
            nanos.rem_euclid(1_000_000_000) as u32,
        )
    }

    /// The server state, from the scenario's bits:
    /// - bit 0 set: unsynchronized (LI 3, stratum 0, refid `INIT`); the
    ///   other bits are then unused;
    /// - bits 1–2: the correction: none, an offset with a frequency, or a
    ///   leap second inserted / deleted half-way between receive and
    ///   transmit;
    /// - bits 3–4: the leap indicator (3 means none);
    /// - bits 5–7: stratum − 1.
    pub fn state(&self) -> ServerState {
        let s = self.scenario;
        if s & 1 != 0 {
            return ServerState::unsynchronized(-24);
        }
        let received = NtpTimestamp::from_unix(self.received);
        let half_delay = i64::from(self.delay_us) * (1 << 32) / 2_000_000;
        let correction = match (s >> 1) & 3 {
            0 => Correction::NONE,
            1 => Correction {
                base: received.add_units(-(1000 << 32)),
                offset: -(3 << 31),
                freq: -12.5e-6,
                ..Correction::NONE
            },
            step => Correction {
                leap_at: received.add_units(half_delay),
                leap_step: if step == 2 { -1 } else { 1 },
                ..Correction::NONE
            },
        };
        let leap = match (s >> 3) & 3 {
            1 => LeapIndicator::InsertSecond,
            2 => LeapIndicator::DeleteSecond,
            _ => LeapIndicator::NoWarning,
        };
        let updated = received.add_units(-(1000 << 32));
        ServerState {
            leap,
            stratum: (s >> 5) + 1,
            precision: -24,
            reference_id: RefId::from_ipv4([192, 0, 2, 7].into()),
            reference_time: updated,
            root_delay: NtpShort::from_secs_f64(0.010),
            root_dispersion: NtpShort::from_secs_f64(0.001),
            dispersion_base: updated,
            correction,
        }
    }

    /// Runs the case as a worker does: the verdict and, on a reply, the
    /// stamped reply.
    pub fn run(&self) -> (Verdict, [u8; HEADER_LEN]) {
        let state = self.state();
        let mut reply = [0u8; HEADER_LEN];
        let verdict = respond(self.request, self.received, &state, &mut reply);
        if verdict == Verdict::Reply {
            stamp_transmit(&mut reply, &state, self.transmit());
        }
        (verdict, reply)
    }
}

/// Runs one input; panics when a rule is broken.
pub fn check(data: &[u8]) {
    let Some(case) = Case::split(data) else {
        return;
    };
    let (verdict, reply) = case.run();
    if let Err(broken) = verify(case.request, &case.state(), verdict, &reply) {
        panic!("{broken}\ncase: {case:02x?}\nreply: {reply:02x?}");
    }
}

/// Checks what a client (or a spoofed victim) would see: a reply only to a
/// well-formed client request, never longer than it, mode 4 in the
/// request's version, the request's transmit timestamp as origin, transmit
/// not before receive, and the server's synchronization stated as it is.
/// `Err` names the broken rule.
pub fn verify(
    request: &[u8],
    state: &ServerState,
    verdict: Verdict,
    reply: &[u8; HEADER_LEN],
) -> Result<(), &'static str> {
    if verdict != Verdict::Reply {
        return Ok(());
    }
    if request.len() < reply.len() {
        return Err("reply longer than its request (amplification)");
    }
    let version = (request[0] >> 3) & 7;
    if request[0] & 7 != 3 {
        return Err("answered a request that is not mode 3 (client)");
    }
    if !(1..=4).contains(&version) {
        return Err("answered an unsupported version");
    }
    let h = Header::parse(reply).map_err(|_| "reply shorter than a header")?;
    if h.mode() != Mode::Server {
        return Err("reply is not mode 4 (server)");
    }
    if h.version != version {
        return Err("reply version differs from the request's");
    }
    if reply[24..32] != request[40..48] {
        return Err("origin timestamp is not the request's transmit timestamp");
    }
    if h.transmit_ts.diff_units(h.receive_ts) < 0 {
        return Err("transmit timestamp before receive timestamp");
    }
    if (h.leap, h.stratum, h.reference_id) != (state.leap, state.stratum, state.reference_id) {
        return Err("reply misstates the server's synchronization (LI, stratum, refid)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(first: u8) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = first;
        r[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        r
    }

    fn case(scenario: u8, request: &[u8]) -> Case<'_> {
        Case {
            scenario,
            received: UnixTime::new(1_800_000_000, 999_990_000),
            delay_us: 20,
            request,
        }
    }

    #[test]
    fn split_undoes_encode() {
        let req = request(0x23);
        let c = Case {
            delay_us: -300,
            ..case(0b1010_0110, &req)
        };
        let bytes = c.encode();
        assert_eq!(bytes.len(), PREFIX_LEN + 48);
        assert_eq!(Case::split(&bytes), Some(c));
        assert_eq!(Case::split(&bytes[..PREFIX_LEN - 1]), None);
        assert_eq!(Case::split(&bytes[..PREFIX_LEN]).unwrap().request, &[]);
    }

    #[test]
    fn transmit_is_receive_plus_the_delay() {
        let c = case(0, &[]);
        assert_eq!(c.transmit(), UnixTime::new(1_800_000_001, 10_000));
        let back = Case {
            delay_us: -1000,
            ..c
        };
        assert_eq!(back.transmit(), UnixTime::new(1_800_000_000, 998_990_000));
    }

    #[test]
    fn scenario_bits_pick_the_state() {
        let unsynced = case(0xff, &[]).state();
        assert!(!unsynced.is_synchronized());
        let synced = case(0b1110_1000, &[]).state();
        assert_eq!(synced.leap, LeapIndicator::InsertSecond);
        assert_eq!(synced.stratum, 8);
        assert_eq!(case(0b100, &[]).state().correction.leap_step, -1);
        assert_eq!(case(0b110, &[]).state().correction.leap_step, 1);
    }

    #[test]
    fn a_client_request_passes_in_every_scenario() {
        let req = request(0x23);
        for scenario in 0..=255 {
            let c = case(scenario, &req);
            let (verdict, reply) = c.run();
            assert_eq!(verdict, Verdict::Reply);
            assert_eq!(verify(&req, &c.state(), verdict, &reply), Ok(()));
            check(&c.encode());
        }
    }

    #[test]
    fn each_broken_rule_is_caught() {
        let req = request(0x23);
        let c = case(0, &req);
        let state = c.state();
        let (verdict, good) = c.run();
        let broken = |reply: [u8; 48], req: &[u8]| verify(req, &state, verdict, &reply);
        assert!(broken(good, &req[..47]).is_err());
        assert!(broken(good, &request(0x21)).is_err());
        assert!(broken(good, &request(0x2b)).is_err());
        let mut reply = good;
        reply[0] = (reply[0] & !7) | 3;
        assert!(broken(reply, &req).is_err());
        reply = good;
        reply[0] ^= 0b0000_1000;
        assert!(broken(reply, &req).is_err());
        reply = good;
        reply[31] ^= 1;
        assert!(broken(reply, &req).is_err());
        reply = good;
        let receive = u64::from_be_bytes(good[32..40].try_into().unwrap());
        reply[40..48].copy_from_slice(&(receive - 1).to_be_bytes());
        assert!(broken(reply, &req).is_err());
        reply = good;
        reply[1] = 0;
        assert!(broken(reply, &req).is_err());
        // Dropping is always allowed.
        let dropped = verify(
            &[],
            &state,
            Verdict::Drop(fastntp::proto::DropReason::TooShort),
            &good,
        );
        assert_eq!(dropped, Ok(()));
    }
}
