//! Reply validation, sans-IO: what an upstream's reply must be to count —
//! a mode-4 header of 48 bytes or more, a known kiss code or a
//! synchronized server (LI ≠ 3, stratum ≤ 15, a reference time, a
//! precision of 1 s or finer, not synchronized to us), plausible
//! timestamps and delay, a root distance within 1.5 s — and what a valid
//! one measures (offset, delay, dispersion). The origin match against the
//! request in flight is the [`Source`](super::Source)'s, which owns it.

use std::net::IpAddr;

use md5::{Digest, Md5};

use crate::discipline::algo::{MAX_DISTANCE, PHI};
use crate::proto::{Header, LeapIndicator, Mode, NtpTimestamp, RefId, HEADER_LEN};

/// Longest plausible round trip, s.
const MAX_DELAY: f64 = 3.0;
/// Longest plausible time the upstream held our request, s.
const MAX_HOLD: f64 = 1.0;

/// What the upstream said about itself in its last valid reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upstream {
    /// Its stratum (1–15).
    pub stratum: u8,
    /// Its leap indicator.
    pub leap: LeapIndicator,
    /// Its reference id.
    pub refid: RefId,
    /// Its root delay, s.
    pub root_delay: f64,
    /// Its root dispersion, s.
    pub root_dispersion: f64,
    /// Its precision, log2 s.
    pub precision: i8,
}

/// Kiss-o'-death codes that change how a source is used (RFC 5905 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kiss {
    /// RATE: poll less often.
    Rate,
    /// DENY: access denied; never poll again.
    Deny,
    /// RSTR: access restricted; never poll again.
    Restricted,
}

impl Kiss {
    /// The four-letter code.
    pub const fn code(self) -> &'static str {
        match self {
            Kiss::Rate => "RATE",
            Kiss::Deny => "DENY",
            Kiss::Restricted => "RSTR",
        }
    }
}

/// Why a reply was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Shorter than an NTP header.
    #[error("shorter than 48 bytes")]
    TooShort,
    /// Not a mode-4 reply, or a version outside 1–4.
    #[error("not a server reply (mode/version)")]
    NotServerReply,
    /// Its origin timestamp is not our outstanding request's transmit
    /// timestamp (late, duplicate or forged).
    #[error("origin timestamp does not match any request")]
    OriginMismatch,
    /// LI 3, stratum 0 without a known kiss code, stratum 16 or more, or
    /// no reference time: the upstream is not synchronized.
    #[error("upstream is not synchronized")]
    Unsynchronized,
    /// A kiss-o'-death packet (handled, not a sample).
    #[error("kiss-o'-death {}", .0.code())]
    KissOfDeath(Kiss),
    /// Receive/transmit timestamps missing or inconsistent, or a delay
    /// that cannot be.
    #[error("implausible timestamps or delay")]
    BadTimestamps,
    /// The upstream's own root distance is beyond 1.5 s.
    #[error("upstream root distance too large")]
    TooFar,
    /// The upstream claims a precision coarser than 1 s: nothing it says
    /// about time can be trusted (and 2^127 s would swamp every sum).
    #[error("upstream precision coarser than 1 s")]
    ImplausiblePrecision,
    /// The upstream's refid is our own address: it is synchronized to us,
    /// and following it would close a timing loop.
    #[error("upstream is synchronized to us (timing loop)")]
    Loop,
    /// No source with that id (removed while its request was in flight).
    #[error("no such source")]
    UnknownSource,
}

/// A valid measurement, before it joins the filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Monotonic time of the middle of the exchange.
    pub mono: f64,
    /// True time minus kernel time, s.
    pub offset: f64,
    /// Round trip, s.
    pub delay: f64,
    /// Dispersion, s.
    pub dispersion: f64,
}

/// The refid that names `ip` when it is our system peer (RFC 5905): the
/// IPv4 address, or the first four octets of the MD5 digest of the IPv6
/// address.
pub fn refid_of(ip: IpAddr) -> RefId {
    match ip {
        IpAddr::V4(v4) => RefId::from_ipv4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => RefId::from_ipv4(v4),
            None => {
                let digest = Md5::digest(v6.octets());
                RefId([digest[0], digest[1], digest[2], digest[3]])
            }
        },
    }
}

/// What the timestamps of one exchange say.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Our round trip (T4 − T1), s.
    elapsed: f64,
    /// Their clock minus ours, s.
    offset: f64,
    /// Network round trip (without the upstream's hold), s.
    delay: f64,
    /// Precisions plus PHI over the round trip, s.
    dispersion: f64,
}

impl Timing {
    /// The measurement of an exchange whose reply came at monotonic time
    /// `mono`.
    pub fn measurement(&self, mono: f64) -> Measurement {
        Measurement {
            mono: mono - self.elapsed / 2.0,
            offset: self.offset,
            delay: self.delay,
            dispersion: self.dispersion,
        }
    }
}

/// A server reply's header: at least 48 bytes, mode 4, version 1–4.
pub fn parse(bytes: &[u8]) -> Result<Header, ReplyError> {
    if bytes.len() < HEADER_LEN {
        return Err(ReplyError::TooShort);
    }
    let h = Header::parse(bytes).map_err(|_| ReplyError::TooShort)?;
    if h.mode() != Mode::Server || !(1..=4).contains(&h.version) {
        return Err(ReplyError::NotServerReply);
    }
    Ok(h)
}

/// The kiss code of a stratum-0 reply; an unknown one is just
/// "unsynchronized".
pub fn kiss_code(h: &Header) -> Result<Kiss, ReplyError> {
    match &h.reference_id.0 {
        b"RATE" => Ok(Kiss::Rate),
        b"DENY" => Ok(Kiss::Deny),
        b"RSTR" => Ok(Kiss::Restricted),
        _ => Err(ReplyError::Unsynchronized),
    }
}

/// Checks a reply `h` that is not a kiss code, to our request sent at
/// kernel time `t1` from our address `local` (if known), received at `t4`;
/// `precision` is our clock's, s. What the upstream says about itself and
/// what the exchange measured, if it is fit to follow.
pub fn validate(
    h: &Header,
    t1: NtpTimestamp,
    t4: NtpTimestamp,
    local: Option<IpAddr>,
    precision: f64,
) -> Result<(Upstream, Timing), ReplyError> {
    check_synchronized(h, local)?;
    let timing = timing(h, t1, t4, precision)?;
    let root_delay = h.root_delay.as_secs_f64();
    let root_dispersion = h.root_dispersion.as_secs_f64();
    if root_delay / 2.0 + root_dispersion > MAX_DISTANCE {
        return Err(ReplyError::TooFar);
    }
    let upstream = Upstream {
        stratum: h.stratum,
        leap: h.leap,
        refid: h.reference_id,
        root_delay,
        root_dispersion,
        precision: h.precision,
    };
    Ok((upstream, timing))
}

/// Whether a (non-kiss) reply comes from a server fit to follow: LI ≠ 3,
/// stratum ≤ 15, a reference time, precision 1 s or finer, and not
/// synchronized to us (`local`: our address on the way to it).
fn check_synchronized(h: &Header, local: Option<IpAddr>) -> Result<(), ReplyError> {
    if h.leap == LeapIndicator::Unsynchronized
        || h.stratum > 15
        || h.reference_ts == NtpTimestamp::ZERO
    {
        return Err(ReplyError::Unsynchronized);
    }
    if h.precision > 0 {
        return Err(ReplyError::ImplausiblePrecision);
    }
    // A secondary server names its own system peer in its refid: our
    // address (IPv4) or its hash (IPv6) means it follows us.
    if h.stratum >= 2 && local.is_some_and(|ip| h.reference_id == refid_of(ip)) {
        return Err(ReplyError::Loop);
    }
    Ok(())
}

/// Round trip, offset, delay and dispersion of the exchange, if its
/// timestamps are plausible.
fn timing(
    h: &Header,
    t1: NtpTimestamp,
    t4: NtpTimestamp,
    precision: f64,
) -> Result<Timing, ReplyError> {
    let (t2, t3) = (h.receive_ts, h.transmit_ts);
    if t2 == NtpTimestamp::ZERO || t3 == NtpTimestamp::ZERO {
        return Err(ReplyError::BadTimestamps);
    }
    let elapsed = t4.diff_secs(t1);
    let held = t3.diff_secs(t2);
    let delay = elapsed - held;
    let tolerance = precision + (h.precision as f64).exp2();
    if !(0.0..=MAX_DELAY).contains(&elapsed)
        || !(0.0..=MAX_HOLD).contains(&held)
        || delay < -tolerance
        || delay > MAX_DELAY
    {
        return Err(ReplyError::BadTimestamps);
    }
    Ok(Timing {
        elapsed,
        offset: (t2.diff_secs(t1) + t3.diff_secs(t4)) / 2.0,
        delay: delay.max(tolerance),
        dispersion: tolerance + PHI * elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_refid_is_the_md5_prefix() {
        assert_eq!(
            refid_of("192.0.2.7".parse().unwrap()),
            RefId([192, 0, 2, 7])
        );
        assert_eq!(
            refid_of("::ffff:192.0.2.7".parse().unwrap()),
            RefId([192, 0, 2, 7])
        );
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d = Md5::digest(v6.octets());
        assert_eq!(refid_of(v6.into()), RefId([d[0], d[1], d[2], d[3]]));
        // A known vector: MD5 of sixteen zero bytes is 4ae71336e44bf9bf...
        assert_eq!(
            refid_of("::".parse().unwrap()),
            RefId([0x4a, 0xe7, 0x13, 0x36])
        );
    }
}
