//! NTP packets for tests, written byte by byte (not with the codec under
//! test): client requests, and the one server-reply builder every fake
//! server and simulated upstream of both suites answers with.

/// Seconds from the NTP epoch (1900, era 0) to the Unix epoch.
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One second in 64-bit NTP timestamp units (32.32 fixed point).
pub const NTP_SECOND: u64 = 1 << 32;

/// The system clock now as a 64-bit NTP timestamp.
pub fn ntp_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// `secs` in the 16.16 NTP short format of root delay and dispersion
/// (rounded; saturating at 0 and the largest value).
pub fn short_from_secs(secs: f64) -> u32 {
    (secs * 65_536.0).round() as u32
}

/// A client request: LI 0, `version`, mode 3, poll 6, the given transmit
/// timestamp, everything else zero.
pub fn client_request(version: u8, transmit: u64) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = version << 3 | 3;
    r[2] = 6;
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    r
}

/// A server reply (mode 4), field by field. [`Reply::answering`] gives a
/// synchronized stratum-1 answer; change what a test needs with struct
/// update syntax (`Reply { stratum: 2, ..Reply::answering(req, now) }`) or
/// [`Reply::kiss`], then send [`Reply::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Leap indicator, 0..=3 (3: unsynchronized).
    pub leap: u8,
    /// Version, 1..=7 on the wire.
    pub version: u8,
    /// Stratum (0: kiss-o'-death).
    pub stratum: u8,
    /// Poll exponent.
    pub poll: i8,
    /// Precision exponent.
    pub precision: i8,
    /// Root delay, NTP short format (see [`short_from_secs`]).
    pub root_delay: u32,
    /// Root dispersion, NTP short format.
    pub root_dispersion: u32,
    /// Reference ID (or kiss code).
    pub refid: [u8; 4],
    /// Reference timestamp.
    pub reference: u64,
    /// Origin timestamp (the request's transmit timestamp).
    pub origin: u64,
    /// Receive timestamp.
    pub receive: u64,
    /// Transmit timestamp.
    pub transmit: u64,
}

impl Reply {
    /// A synchronized stratum-1 server's answer to `request` (a client
    /// datagram; missing bytes read as zero): its version and poll, origin
    /// = its transmit timestamp; LI 0, refid `GPS`, precision −20, no root
    /// delay or dispersion, reference, receive and transmit time `at`.
    pub fn answering(request: &[u8], at: u64) -> Reply {
        let mut req = [0u8; 48];
        let n = request.len().min(48);
        req[..n].copy_from_slice(&request[..n]);
        Reply {
            leap: 0,
            version: (req[0] >> 3) & 7,
            stratum: 1,
            poll: req[2] as i8,
            precision: -20,
            root_delay: 0,
            root_dispersion: 0,
            refid: *b"GPS\0",
            reference: at,
            origin: u64::from_be_bytes(req[40..48].try_into().expect("8 bytes")),
            receive: at,
            transmit: at,
        }
    }

    /// The same as a kiss-o'-death with `code` (stratum 0, the code as
    /// refid).
    pub fn kiss(self, code: [u8; 4]) -> Reply {
        Reply {
            stratum: 0,
            refid: code,
            ..self
        }
    }

    /// The 48 bytes on the wire.
    pub fn bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[0] = (self.leap & 3) << 6 | (self.version & 7) << 3 | 4;
        out[1] = self.stratum;
        out[2] = self.poll as u8;
        out[3] = self.precision as u8;
        out[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        out[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        out[12..16].copy_from_slice(&self.refid);
        out[16..24].copy_from_slice(&self.reference.to_be_bytes());
        out[24..32].copy_from_slice(&self.origin.to_be_bytes());
        out[32..40].copy_from_slice(&self.receive.to_be_bytes());
        out[40..48].copy_from_slice(&self.transmit.to_be_bytes());
        out
    }

    /// [`Reply::bytes`] as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_answers_the_request_field_by_field() {
        let req = client_request(3, 0x0102_0304_0506_0708);
        let at = 0xe000_0000_8000_0000;
        let r = Reply {
            leap: 3,
            root_dispersion: short_from_secs(0.5),
            ..Reply::answering(&req, at)
        }
        .kiss(*b"RATE");
        let b = r.bytes();
        assert_eq!(b[0], 3 << 6 | 3 << 3 | 4, "LI 3, v3, mode 4");
        assert_eq!((b[1], b[2], b[3]), (0, 6, 0xec));
        assert_eq!(&b[4..12], &[0, 0, 0, 0, 0, 0, 0x80, 0]);
        assert_eq!(&b[12..16], b"RATE");
        assert_eq!(&b[24..32], &req[40..48], "origin = request transmit");
        for at_bytes in [&b[16..24], &b[32..40], &b[40..48]] {
            assert_eq!(at_bytes, &at.to_be_bytes());
        }
    }

    #[test]
    fn a_short_request_reads_as_zeros() {
        let r = Reply::answering(&[0x23], 5);
        assert_eq!((r.version, r.poll, r.origin), (4, 0, 0));
    }

    #[test]
    fn ntp_now_is_past_2020() {
        assert!(ntp_now() >> 32 > NTP_UNIX_OFFSET + 1_577_836_800);
    }
}
