//! The `respond` target: one datagram through the reply pipeline as a
//! worker runs it (`respond`, then `stamp_transmit` on a reply or KoD),
//! under a server state, clock readings, a sender address and the
//! server's protection (access list, rate limit) taken from the input's
//! first bytes, so the fuzzer explores them too. The datagram is sent
//! `repeats` times at once from its sender, so the rate limiter's state
//! is exercised as well.
//!
//! Input layout ([`Case::split`]), then the datagram:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | scenario: the server state ([`Case::state`]) |
//! | 1–8 | receive time, seconds since 1970 (i64, big-endian) |
//! | 9–12 | receive time, nanoseconds (u32, big-endian; ≥ 10⁹ carries) |
//! | 13–14 | transmit − receive, µs (i16, big-endian; negative too) |
//! | 15 | the protection ([`Case::protection`]) |
//! | 16–31 | the sender's address, as IPv6 (IPv4-mapped = IPv4) |
//! | 32 | how many times the datagram is sent (0 counts as 1, at most 16) |
//!
//! A new part of the request path is one more field taken by
//! [`Case::split`] and written by [`Case::encode`].

use std::net::{IpAddr, Ipv6Addr};

use crate::input::Reader;
use fastntp::policy::cidr::to_bits;
use fastntp::policy::{Access, AccessRules, Cidr, DenyAction, Policy, Protection, RateLimit};
use fastntp::proto::{
    respond, stamp_transmit, Correction, Header, Kiss, LeapIndicator, Mode, NtpShort, NtpTimestamp,
    RefId, ServerState, UnixTime, Verdict, HEADER_LEN,
};

/// Bytes before the datagram.
pub const PREFIX_LEN: usize = 33;

/// Most sends of one datagram in a case.
pub const MAX_REPEATS: u8 = 16;

/// One fuzz case: the scenario and the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case<'a> {
    /// Server-state choices, bit by bit (see [`Case::state`]).
    pub scenario: u8,
    /// Kernel receive time of the datagram.
    pub received: UnixTime,
    /// How long after `received` the reply is stamped, µs.
    pub delay_us: i16,
    /// Protection choices, bit by bit (see [`Case::protection`]).
    pub protection: u8,
    /// The sender, as 128 bits.
    pub source: u128,
    /// Sends of the datagram (0 counts as 1, at most [`MAX_REPEATS`]).
    pub repeats: u8,
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
        let protection = r.byte()?;
        let source = u128::from_be_bytes(r.array()?);
        let repeats = r.byte()?;
        Some(Case {
            scenario,
            received: UnixTime::new(secs, nanos),
            delay_us,
            protection,
            source,
            repeats,
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
        out.push(self.protection);
        out.extend_from_slice(&self.source.to_be_bytes());
        out.push(self.repeats);
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

    /// The sender: IPv4 when the address is IPv4-mapped (as a worker on
    /// an IPv4 socket sees it), else IPv6.
    pub fn sender(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self.source)).to_canonical()
    }

    /// How many times the datagram is sent.
    pub fn sends(&self) -> usize {
        usize::from(self.repeats.clamp(1, MAX_REPEATS))
    }

    /// The access rules, from bits 0–1 of the protection byte: none; a deny
    /// list; default deny with an allow list; nested allow and deny
    /// prefixes in both families.
    pub fn rules(&self) -> AccessRules {
        let list = |l: &[&str]| -> Vec<Cidr> { l.iter().filter_map(|c| c.parse().ok()).collect() };
        match self.protection & 3 {
            0 => AccessRules::default(),
            1 => AccessRules {
                deny: list(&["192.0.2.0/24", "2001:db8::/32", "0.0.0.0/8"]),
                ..AccessRules::default()
            },
            2 => AccessRules {
                default: Access::Deny,
                allow: list(&["192.0.2.0/24", "2001:db8::/32", "::1"]),
                ..AccessRules::default()
            },
            _ => AccessRules {
                default: Access::Deny,
                allow: list(&["192.0.0.0/8", "192.0.2.128/25", "::/0", "2001:db8:1::/48"]),
                deny: list(&["192.0.2.0/24", "192.0.2.200", "2001:db8::/32", "::/0"]),
            },
        }
    }

    /// Bit 2: denied clients get a KoD DENY. Bit 3: rate limiting on, one
    /// request a second, burst 1 (bit 4 clear) or 4, leak bits 5–6 (0–3),
    /// KoD RATE with bit 7.
    pub fn limit(&self) -> Option<RateLimit> {
        let p = self.protection;
        (p & 8 != 0).then_some(RateLimit {
            interval_nanos: 1_000_000_000,
            burst: if p & 16 != 0 { 4 } else { 1 },
            leak: (p >> 5) & 3,
            kod: p & 128 != 0,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            clients: 64,
        })
    }

    /// The worker's policy for this case.
    pub fn protection(&self) -> Policy {
        let deny = if self.protection & 4 != 0 {
            DenyAction::Kod
        } else {
            DenyAction::Ignore
        };
        Protection::new(&self.rules(), deny, self.limit()).for_worker(1)
    }

    /// Runs the case as a worker does: per send, the verdict and, on a
    /// reply or KoD, the stamped datagram sent back.
    pub fn run(&self) -> Vec<(Verdict, [u8; HEADER_LEN])> {
        let state = self.state();
        let mut policy = self.protection();
        (0..self.sends())
            .map(|_| {
                let mut reply = [0u8; HEADER_LEN];
                let verdict = respond(
                    self.request,
                    self.sender(),
                    self.received,
                    &state,
                    &mut policy,
                    &mut reply,
                );
                if matches!(verdict, Verdict::Reply | Verdict::Kod(_)) {
                    stamp_transmit(&mut reply, &state, self.transmit());
                }
                (verdict, reply)
            })
            .collect()
    }

    /// Whether the rules deny the sender, found by a scan of every prefix
    /// (longest wins, deny wins a tie) rather than by the trie under test.
    pub fn denied(&self) -> bool {
        let rules = self.rules();
        let bits = to_bits(self.sender());
        let v4 = fastntp::policy::cidr::is_v4(bits);
        let mut best: Option<(u8, Access)> = None;
        let tagged = rules.allow.iter().map(|c| (c, Access::Allow));
        for (cidr, rule) in tagged.chain(rules.deny.iter().map(|c| (c, Access::Deny))) {
            // IPv6 prefixes never match IPv4 clients.
            let family_v4 = fastntp::policy::cidr::is_v4(cidr.bits()) && cidr.prefix_len() >= 96;
            if family_v4 != v4 || !cidr.contains(bits) {
                continue;
            }
            best = match best {
                Some((len, r))
                    if len > cidr.prefix_len()
                        || (len == cidr.prefix_len() && r == Access::Deny) =>
                {
                    Some((len, r))
                }
                _ => Some((cidr.prefix_len(), rule)),
            };
        }
        best.map_or(rules.default, |b| b.1) == Access::Deny
    }
}

/// Runs one input; panics when a rule is broken.
pub fn check(data: &[u8]) {
    let Some(case) = Case::split(data) else {
        return;
    };
    let outcomes = case.run();
    if let Err(broken) = verify_all(&case, &outcomes) {
        panic!("{broken}\ncase: {case:02x?}\noutcomes: {outcomes:02x?}");
    }
}

/// Checks every send of a case ([`verify`]) and what they add up to: the
/// rate limit's allowance at one instant (burst, then one in 2^leak of the
/// refused sends let through) and never more answers than sends.
pub fn verify_all(
    case: &Case<'_>,
    outcomes: &[(Verdict, [u8; HEADER_LEN])],
) -> Result<(), &'static str> {
    let state = case.state();
    let denied = case.denied();
    let limit = case.limit();
    for (verdict, reply) in outcomes {
        verify(case.request, &state, *verdict, reply)?;
        match verdict {
            Verdict::Reply if denied => return Err("answered a denied client"),
            Verdict::Kod(Kiss::Deny) if !denied || case.protection & 4 == 0 => {
                return Err("KoD DENY to a client not denied, or without deny-action kod")
            }
            Verdict::Kod(Kiss::Rate) if denied || !limit.is_some_and(|l| l.kod) => {
                return Err("KoD RATE without a rate limit with kod, or to a denied client")
            }
            Verdict::Drop(fastntp::proto::DropReason::Denied) if !denied => {
                return Err("dropped as denied a client the rules allow")
            }
            Verdict::Drop(fastntp::proto::DropReason::RateLimited) if limit.is_none() => {
                return Err("rate-limited without a rate limit")
            }
            _ => {}
        }
    }
    if let Some(l) = limit {
        let answered = outcomes
            .iter()
            .filter(|(v, _)| matches!(v, Verdict::Reply | Verdict::Kod(_)))
            .count();
        let sends = outcomes.len();
        let valid = outcomes
            .iter()
            .filter(|(v, _)| !matches!(v, Verdict::Drop(r) if *r != fastntp::proto::DropReason::RateLimited && *r != fastntp::proto::DropReason::Denied))
            .count();
        let burst = (l.burst as usize).min(valid);
        let leaked = (valid - burst) >> l.leak;
        if answered > burst + leaked {
            return Err("more answers than the rate limit allows at one instant");
        }
        if answered > sends {
            return Err("more answers than requests");
        }
    }
    Ok(())
}

/// Checks what a client (or a spoofed victim) would see: a reply or KoD
/// only to a well-formed client request, never longer than it, mode 4 in
/// the request's version, the request's transmit timestamp as origin; a
/// reply with transmit not before receive and the server's
/// synchronization stated as it is; a KoD with stratum 0, LI 3, its code
/// as refid and no timestamps of the server's. `Err` names the broken rule.
pub fn verify(
    request: &[u8],
    state: &ServerState,
    verdict: Verdict,
    reply: &[u8; HEADER_LEN],
) -> Result<(), &'static str> {
    let kiss = match verdict {
        Verdict::Reply => None,
        Verdict::Kod(k) => Some(k),
        Verdict::Drop(_) => return Ok(()),
    };
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
    if let Some(k) = kiss {
        let zero = NtpTimestamp::default();
        if (h.leap, h.stratum, h.reference_id) != (LeapIndicator::Unsynchronized, 0, k.code()) {
            return Err("KoD without LI 3, stratum 0 and its code as refid");
        }
        if (h.reference_ts, h.receive_ts, h.transmit_ts) != (zero, zero, zero) {
            return Err("KoD tells the server's time");
        }
        return Ok(());
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
            protection: 0,
            source: to_bits("192.0.2.1".parse().unwrap()),
            repeats: 1,
            request,
        }
    }

    #[test]
    fn split_undoes_encode() {
        let req = request(0x23);
        let c = Case {
            delay_us: -300,
            protection: 0x5a,
            repeats: 3,
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
            let (verdict, reply) = c.run()[0];
            assert_eq!(verdict, Verdict::Reply);
            assert_eq!(verify(&req, &c.state(), verdict, &reply), Ok(()));
            check(&c.encode());
        }
    }

    #[test]
    fn protection_bits_pick_the_policy_and_the_checks_hold() {
        let req = request(0x23);
        let at = |source: &str, protection: u8, repeats: u8| Case {
            source: to_bits(source.parse().unwrap()),
            protection,
            repeats,
            ..case(0, &req)
        };
        // Deny list, kod: a KoD DENY per send.
        let denied = at("192.0.2.9", 0b101, 3);
        assert!(denied.denied());
        let out = denied.run();
        assert!(out.iter().all(|(v, _)| *v == Verdict::Kod(Kiss::Deny)));
        assert_eq!(verify_all(&denied, &out), Ok(()));
        // Nested: the /25 inside the denied /24 is allowed, the /32 not.
        assert!(!at("192.0.2.130", 3, 1).denied());
        assert!(at("192.0.2.200", 3, 1).denied());
        assert!(at("::ffff:192.0.2.200", 3, 1).denied());
        assert!(!at("2001:db8:1::5", 3, 1).denied());
        assert!(at("2001:db8:2::5", 3, 1).denied());
        // Rate limit: burst 4, leak 1, KoD RATE; 12 sends at once.
        let limited = at("198.51.100.1", 0b1011_1000, 12);
        let out = limited.run();
        let normal = out.iter().filter(|(v, _)| *v == Verdict::Reply).count();
        let kods = out
            .iter()
            .filter(|(v, _)| *v == Verdict::Kod(Kiss::Rate))
            .count();
        assert_eq!((normal, kods), (4, 4));
        assert_eq!(verify_all(&limited, &out), Ok(()));
        check(&limited.encode());
        // A forged verdict is caught.
        let mut forged = out.clone();
        forged[11].0 = Verdict::Reply;
        assert!(verify_all(&limited, &forged).is_err());
        let mut to_denied = denied.run();
        to_denied[0].0 = Verdict::Reply;
        assert!(verify_all(&denied, &to_denied).is_err());
    }

    #[test]
    fn each_broken_rule_is_caught() {
        let req = request(0x23);
        let c = case(0, &req);
        let state = c.state();
        let (verdict, good) = c.run()[0];
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
