//! Judging a reply whose origin timestamp matched one of our requests, the
//! way a careful client would (RFC 5905 §8, RFC 4330 §5): mode 4, our
//! version echoed, a kiss-o'-death recognised by its code, a synchronized
//! and sane server, non-zero timestamps in order, a bounded root distance.
//! A server that says it is unsynchronized (LI 3, stratum 16, or stratum 0
//! with the status code `INIT` or `STEP`) is invalid, unless the caller
//! accepts such replies for throughput (`--accept-unsynchronized`): then an
//! otherwise valid one is [`Verdict::Unsynchronized`], counted as answered.
//! Pure: header and times in, verdict (with the sample) out.

use fastntp::proto::{Header, LeapIndicator, Mode, NtpTimestamp, RefId};

/// Root distance (delay/2 + dispersion) at which a server's time is
/// useless (RFC 5905 MAXDIST is 1 s, MAXDISP 16 s; we use the latter).
const MAX_ROOT_DISTANCE_S: f64 = 16.0;

/// Why a matched reply is not a valid one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Mode other than 4 (server).
    BadMode,
    /// Version differs from the request's.
    BadVersion,
    /// LI 3 or stratum 16: the server says it is not synchronized.
    Unsynchronized,
    /// Stratum above 16.
    BadStratum,
    /// Receive or transmit timestamp zero, or transmit before receive.
    BadTimestamps,
    /// Root delay / 2 + root dispersion of 16 s or more.
    RootDistance,
}

impl Invalid {
    /// Every reason, in counter order.
    pub const ALL: [Invalid; 6] = [
        Invalid::BadMode,
        Invalid::BadVersion,
        Invalid::Unsynchronized,
        Invalid::BadStratum,
        Invalid::BadTimestamps,
        Invalid::RootDistance,
    ];

    /// Position in [`Invalid::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// snake_case name for the table and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Invalid::BadMode => "bad_mode",
            Invalid::BadVersion => "bad_version",
            Invalid::Unsynchronized => "unsynchronized",
            Invalid::BadStratum => "bad_stratum",
            Invalid::BadTimestamps => "bad_timestamps",
            Invalid::RootDistance => "root_distance",
        }
    }
}

/// The four timestamps of one exchange turned into what we measure, in
/// nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Round-trip delay δ = (T4 − T1) − (T3 − T2).
    pub rtt_ns: i64,
    /// Offset θ = ((T2 − T1) + (T3 − T4)) / 2; pure timestamp error when
    /// client and server share a clock.
    pub theta_ns: i64,
    /// Server residence time T3 − T2.
    pub residence_ns: i64,
    /// How long the client waited for the reply, T4 − T1: the round trip
    /// plus the server's residence (queueing included, when the server's
    /// T2 is its kernel receive stamp).
    pub wait_ns: i64,
}

/// The verdict on a matched reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A usable reply and what it measured.
    Valid(Sample),
    /// A reply that would be valid but for the server saying it is not
    /// synchronized; only given when such replies are accepted.
    Unsynchronized(Sample),
    /// A kiss-o'-death with its code.
    Kod(RefId),
    /// Not usable, and why.
    Invalid(Invalid),
}

/// 2^-32 s units to nanoseconds, rounded.
#[inline]
pub fn units_to_ns(units: i64) -> i64 {
    ((units as i128 * 1_000_000_000 + (1 << 31)) >> 32) as i64
}

/// Kiss codes that report a server's own state rather than ask the client
/// to act (RFC 5905 §7.4): a stratum-0 reply with one of them is an
/// unsynchronized server's answer, not a refusal.
pub const STATUS_CODES: [RefId; 2] = [RefId::INIT, RefId(*b"STEP")];

/// Judges reply header `h` to a request of `version`, sent at `t1` and
/// received at `t4`. With `accept_unsynchronized`, a reply whose only fault
/// is that the server says it is unsynchronized is
/// [`Verdict::Unsynchronized`] instead of invalid (or, for stratum 0 with a
/// status code, instead of a kiss-o'-death).
#[inline]
pub fn judge(
    h: &Header,
    version: u8,
    t1: NtpTimestamp,
    t4: NtpTimestamp,
    accept_unsynchronized: bool,
) -> Verdict {
    if h.mode() != Mode::Server {
        return Verdict::Invalid(Invalid::BadMode);
    }
    if h.version != version {
        return Verdict::Invalid(Invalid::BadVersion);
    }
    if h.stratum == 0 && !(accept_unsynchronized && STATUS_CODES.contains(&h.reference_id)) {
        return Verdict::Kod(h.reference_id);
    }
    let unsynchronized =
        h.stratum == 0 || h.leap == LeapIndicator::Unsynchronized || h.stratum == 16;
    if unsynchronized && !accept_unsynchronized {
        return Verdict::Invalid(Invalid::Unsynchronized);
    }
    if h.stratum > 16 {
        return Verdict::Invalid(Invalid::BadStratum);
    }
    let (t2, t3) = (h.receive_ts, h.transmit_ts);
    let residence = t3.diff_units(t2);
    if t2 == NtpTimestamp::ZERO || t3 == NtpTimestamp::ZERO || residence < 0 {
        return Verdict::Invalid(Invalid::BadTimestamps);
    }
    let distance = h.root_delay.as_secs_f64() / 2.0 + h.root_dispersion.as_secs_f64();
    if distance >= MAX_ROOT_DISTANCE_S {
        return Verdict::Invalid(Invalid::RootDistance);
    }
    let rtt = t4.diff_units(t1) - residence;
    let theta = (t2.diff_units(t1) / 2).saturating_add(t3.diff_units(t4) / 2);
    let sample = Sample {
        rtt_ns: units_to_ns(rtt),
        theta_ns: units_to_ns(theta),
        residence_ns: units_to_ns(residence),
        wait_ns: units_to_ns(t4.diff_units(t1)),
    };
    if unsynchronized {
        Verdict::Unsynchronized(sample)
    } else {
        Verdict::Valid(sample)
    }
}

/// Counts of kiss codes seen, without allocating: up to 15 distinct codes
/// by name, the rest lumped together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KissCounts {
    codes: [([u8; 4], u64); 15],
    used: usize,
    /// Codes beyond the 15 tracked by name.
    pub other: u64,
}

impl KissCounts {
    /// Counts one kiss code.
    #[inline]
    pub fn add(&mut self, code: RefId) {
        self.add_n(code.0, 1);
    }

    fn add_n(&mut self, code: [u8; 4], n: u64) {
        if let Some(entry) = self.codes[..self.used].iter_mut().find(|(c, _)| *c == code) {
            entry.1 += n;
        } else if self.used < self.codes.len() {
            self.codes[self.used] = (code, n);
            self.used += 1;
        } else {
            self.other += n;
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &KissCounts) {
        for &(code, n) in other.iter_raw() {
            self.add_n(code, n);
        }
        self.other += other.other;
    }

    fn iter_raw(&self) -> impl Iterator<Item = &([u8; 4], u64)> {
        self.codes[..self.used].iter()
    }

    /// Total KoD replies.
    pub fn total(&self) -> u64 {
        self.iter_raw().map(|(_, n)| n).sum::<u64>() + self.other
    }

    /// Count of one code.
    pub fn get(&self, code: RefId) -> u64 {
        self.iter_raw()
            .find(|(c, _)| *c == code.0)
            .map_or(0, |(_, n)| *n)
    }

    /// (printable code, count) pairs; non-printable codes shown as hex.
    pub fn named(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.iter_raw().map(|(c, n)| (kiss_name(*c), *n)).collect();
        if self.other > 0 {
            v.push(("other".to_owned(), self.other));
        }
        v
    }
}

/// A kiss code as text: its ASCII letters, or `0x…` when not printable.
pub fn kiss_name(code: [u8; 4]) -> String {
    if code.iter().all(|b| b.is_ascii_alphanumeric()) {
        code.iter().map(|&b| b as char).collect()
    } else {
        format!("0x{:08x}", u32::from_be_bytes(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastntp::proto::{NtpShort, UnixTime};

    fn ts(secs: i64, nanos: u32) -> NtpTimestamp {
        NtpTimestamp::from_unix(UnixTime::new(secs, nanos))
    }

    fn good() -> Header {
        Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: 4,
            stratum: 2,
            receive_ts: ts(1_800_000_000, 12_000),
            transmit_ts: ts(1_800_000_000, 15_000),
            reference_id: RefId::LOCL,
            ..Header::default()
        }
    }

    #[test]
    fn a_good_reply_gives_rtt_offset_and_residence() {
        // T1 = 10 µs, T2 = 12 µs, T3 = 15 µs, T4 = 21 µs: δ = 11 − 3 = 8 µs,
        // θ = (2 + (−6)) / 2 = −2 µs.
        let v = judge(
            &good(),
            4,
            ts(1_800_000_000, 10_000),
            ts(1_800_000_000, 21_000),
            false,
        );
        let Verdict::Valid(s) = v else {
            panic!("{v:?}")
        };
        assert!((s.rtt_ns - 8_000).abs() <= 1, "{s:?}");
        assert!((s.theta_ns + 2_000).abs() <= 1, "{s:?}");
        assert!((s.residence_ns - 3_000).abs() <= 1, "{s:?}");
        assert!((s.wait_ns - 11_000).abs() <= 1, "{s:?}");
    }

    #[test]
    fn every_fault_has_its_verdict() {
        let t1 = ts(1_800_000_000, 10_000);
        let t4 = ts(1_800_000_000, 21_000);
        let cases: Vec<(Header, Verdict)> = vec![
            (
                Header { mode: 3, ..good() },
                Verdict::Invalid(Invalid::BadMode),
            ),
            (
                Header { mode: 5, ..good() },
                Verdict::Invalid(Invalid::BadMode),
            ),
            (
                Header {
                    version: 3,
                    ..good()
                },
                Verdict::Invalid(Invalid::BadVersion),
            ),
            (
                Header {
                    stratum: 0,
                    reference_id: RefId::RATE,
                    ..good()
                },
                Verdict::Kod(RefId::RATE),
            ),
            (
                Header {
                    leap: LeapIndicator::Unsynchronized,
                    ..good()
                },
                Verdict::Invalid(Invalid::Unsynchronized),
            ),
            (
                Header {
                    stratum: 16,
                    ..good()
                },
                Verdict::Invalid(Invalid::Unsynchronized),
            ),
            (
                Header {
                    stratum: 200,
                    ..good()
                },
                Verdict::Invalid(Invalid::BadStratum),
            ),
            (
                Header {
                    transmit_ts: NtpTimestamp::ZERO,
                    ..good()
                },
                Verdict::Invalid(Invalid::BadTimestamps),
            ),
            (
                Header {
                    receive_ts: ts(1_800_000_000, 16_000),
                    ..good()
                },
                Verdict::Invalid(Invalid::BadTimestamps),
            ),
            (
                Header {
                    root_dispersion: NtpShort::from_secs_f64(20.0),
                    ..good()
                },
                Verdict::Invalid(Invalid::RootDistance),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(judge(&h, 4, t1, t4, false), want, "{h:?}");
        }
    }

    #[test]
    fn unsynchronized_replies_count_only_when_accepted() {
        let t1 = ts(1_800_000_000, 10_000);
        let t4 = ts(1_800_000_000, 21_000);
        let Verdict::Valid(sample) = judge(&good(), 4, t1, t4, false) else {
            panic!("good reply")
        };
        // ntpd-rs 1.9 without a source: LI 3 at its local stratum.
        let ntpd_rs = Header {
            leap: LeapIndicator::Unsynchronized,
            stratum: 10,
            reference_id: RefId(*b"XNON"),
            ..good()
        };
        // fastntpd without a usable source: LI 3, stratum 0, INIT.
        let init = Header {
            leap: LeapIndicator::Unsynchronized,
            stratum: 0,
            reference_id: RefId::INIT,
            ..good()
        };
        let sixteen = Header {
            stratum: 16,
            ..good()
        };
        for h in [ntpd_rs, sixteen] {
            assert_eq!(
                judge(&h, 4, t1, t4, false),
                Verdict::Invalid(Invalid::Unsynchronized)
            );
            assert_eq!(judge(&h, 4, t1, t4, true), Verdict::Unsynchronized(sample));
        }
        assert_eq!(judge(&init, 4, t1, t4, false), Verdict::Kod(RefId::INIT));
        assert_eq!(
            judge(&init, 4, t1, t4, true),
            Verdict::Unsynchronized(sample)
        );
        // Still a refusal: KoD RATE / DENY with LI 3.
        for code in [RefId::RATE, RefId::DENY] {
            let kod = Header {
                reference_id: code,
                ..init
            };
            assert_eq!(judge(&kod, 4, t1, t4, true), Verdict::Kod(code));
        }
        // Otherwise valid means otherwise valid.
        let broken = Header {
            transmit_ts: NtpTimestamp::ZERO,
            ..ntpd_rs
        };
        assert_eq!(
            judge(&broken, 4, t1, t4, true),
            Verdict::Invalid(Invalid::BadTimestamps)
        );
        let wrong_mode = Header { mode: 5, ..ntpd_rs };
        assert_eq!(
            judge(&wrong_mode, 4, t1, t4, true),
            Verdict::Invalid(Invalid::BadMode)
        );
        // A synchronized reply stays plainly valid with the option on.
        assert_eq!(judge(&good(), 4, t1, t4, true), Verdict::Valid(sample));
    }

    #[test]
    fn kiss_codes_are_counted_by_name() {
        let mut k = KissCounts::default();
        k.add(RefId::RATE);
        k.add(RefId::RATE);
        k.add(RefId::DENY);
        k.add(RefId([0, 1, 2, 3]));
        assert_eq!(k.get(RefId::RATE), 2);
        assert_eq!(k.total(), 4);
        let mut m = KissCounts::default();
        m.merge(&k);
        m.merge(&k);
        assert_eq!(m.get(RefId::DENY), 2);
        assert_eq!(
            m.named(),
            vec![
                ("RATE".to_owned(), 4),
                ("DENY".to_owned(), 2),
                ("0x00010203".to_owned(), 2)
            ]
        );
        for i in 0..20u8 {
            m.add(RefId([b'A', b'A', b'A', b'A' + i]));
        }
        assert_eq!(m.total(), 28);
        assert!(m.other > 0);
    }

    #[test]
    fn units_convert_to_nanoseconds() {
        assert_eq!(units_to_ns(1 << 32), 1_000_000_000);
        assert_eq!(units_to_ns(-(1 << 32)), -1_000_000_000);
        assert_eq!(units_to_ns(0), 0);
    }
}
