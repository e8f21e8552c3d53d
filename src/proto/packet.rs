//! The NTP packet: the 48-byte header (RFC 5905 §7.3) and the data that may
//! follow it — RFC 7822 extension fields and legacy MACs — which this server
//! recognises and skips but never echoes.

use super::time::{NtpShort, NtpTimestamp};

/// Length of the fixed NTP header, and of every reply this server sends.
pub const HEADER_LEN: usize = 48;

/// Smallest valid extension field (RFC 7822 §3).
const MIN_EXTENSION_LEN: usize = 16;
/// A crypto-NAK: a MAC of a zero key id and no digest.
const CRYPTO_NAK_LEN: usize = 4;
/// Shortest legacy MAC: key id + 128-bit digest (MD5, AES-CMAC).
const MIN_MAC_LEN: usize = 4 + 16;
/// Longest MAC an NTPv4 packet with extension fields may end in (RFC 7822:
/// key id + 160-bit SHA-1 digest), which makes parsing deterministic.
const MAX_V4_MAC_LEN: usize = 4 + 20;
/// Longest legacy MAC of NTPv1–3 packets: key id + 512-bit digest; MS-SNTP's
/// extended authenticator (72 bytes) is allowed too.
const MAX_MAC_LEN: usize = 4 + 64;
const MS_SNTP_EXT_LEN: usize = 72;

/// The leap indicator: a warning of a leap second at the end of the current
/// UTC day, or the "clock unsynchronized" alarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LeapIndicator {
    /// No leap second pending.
    #[default]
    NoWarning = 0,
    /// The last minute of the day has 61 seconds.
    InsertSecond = 1,
    /// The last minute of the day has 59 seconds.
    DeleteSecond = 2,
    /// The clock is not synchronized; clients must not use its time.
    Unsynchronized = 3,
}

impl LeapIndicator {
    /// Decodes the two leap bits (higher bits are ignored).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => LeapIndicator::NoWarning,
            1 => LeapIndicator::InsertSecond,
            2 => LeapIndicator::DeleteSecond,
            _ => LeapIndicator::Unsynchronized,
        }
    }

    /// The two leap bits.
    pub const fn to_bits(self) -> u8 {
        self as u8
    }
}

/// The association mode of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 0: reserved (NTPv1 clients used it for requests).
    Reserved = 0,
    /// 1: symmetric active.
    SymmetricActive = 1,
    /// 2: symmetric passive.
    SymmetricPassive = 2,
    /// 3: client request — the only mode this server answers.
    Client = 3,
    /// 4: server reply.
    Server = 4,
    /// 5: broadcast.
    Broadcast = 5,
    /// 6: control messages (ntpq); never answered.
    Control = 6,
    /// 7: private (ntpdc); never answered.
    Private = 7,
}

impl Mode {
    /// Decodes the three mode bits (higher bits are ignored).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Mode::Reserved,
            1 => Mode::SymmetricActive,
            2 => Mode::SymmetricPassive,
            3 => Mode::Client,
            4 => Mode::Server,
            5 => Mode::Broadcast,
            6 => Mode::Control,
            _ => Mode::Private,
        }
    }

    /// The three mode bits.
    pub const fn to_bits(self) -> u8 {
        self as u8
    }
}

/// The 32-bit reference identifier: an IPv4 address, a hash of an IPv6
/// address, or four ASCII characters (a kiss code or a clock name such as
/// `LOCL`), depending on the stratum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefId(pub [u8; 4]);

impl RefId {
    /// Kiss code / refid of an unsynchronized server.
    pub const INIT: RefId = RefId(*b"INIT");
    /// Refid of a server running from its undisciplined local clock.
    pub const LOCL: RefId = RefId(*b"LOCL");
    /// Kiss code: the client is sending too fast.
    pub const RATE: RefId = RefId(*b"RATE");
    /// Kiss code: access denied.
    pub const DENY: RefId = RefId(*b"DENY");
    /// Kiss code: access restricted.
    pub const RSTR: RefId = RefId(*b"RSTR");

    /// The refid of an IPv4 upstream: its address.
    pub const fn from_ipv4(addr: std::net::Ipv4Addr) -> Self {
        RefId(addr.octets())
    }

    /// The refid as a 32-bit number (network byte order decoded).
    pub const fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

/// Why bytes are not an acceptable NTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketError {
    /// Shorter than the 48-byte header.
    TooShort,
    /// Length is not a multiple of 4 bytes.
    BadLength,
    /// Version number outside 1–4.
    UnsupportedVersion,
    /// Data after the header is neither valid extension fields nor a MAC.
    MalformedExtension,
}

/// A decoded NTP header. Field names follow RFC 5905 §7.3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Leap indicator.
    pub leap: LeapIndicator,
    /// Version number, 0–7 on the wire (1–4 valid).
    pub version: u8,
    /// Association mode; stored as raw bits so any byte round-trips.
    pub mode: u8,
    /// Stratum (0 = unspecified / kiss-o'-death, 1 = primary, 2–15 secondary).
    pub stratum: u8,
    /// Poll interval, log2 seconds.
    pub poll: i8,
    /// Clock precision, log2 seconds.
    pub precision: i8,
    /// Round-trip delay to the reference clock.
    pub root_delay: NtpShort,
    /// Maximum error relative to the reference clock.
    pub root_dispersion: NtpShort,
    /// Reference identifier.
    pub reference_id: RefId,
    /// When the clock was last set or corrected.
    pub reference_ts: NtpTimestamp,
    /// Origin timestamp (T1: the request's transmit time, echoed).
    pub origin_ts: NtpTimestamp,
    /// Receive timestamp (T2).
    pub receive_ts: NtpTimestamp,
    /// Transmit timestamp (T3).
    pub transmit_ts: NtpTimestamp,
}

fn be_u32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    (be_u32(b, at) as u64) << 32 | be_u32(b, at + 4) as u64
}

impl Header {
    /// The mode as an enum.
    pub const fn mode(&self) -> Mode {
        Mode::from_bits(self.mode)
    }

    /// Decodes the first 48 bytes of `buf` without judging them (any 48 bytes
    /// are a header; [`validate_request`] judges). Returns `TooShort` for
    /// fewer than 48 bytes.
    pub fn parse(buf: &[u8]) -> Result<Header, PacketError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(PacketError::TooShort)?;
        Ok(Header {
            leap: LeapIndicator::from_bits(b[0] >> 6),
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: NtpShort::from_bits(be_u32(b, 4)),
            root_dispersion: NtpShort::from_bits(be_u32(b, 8)),
            reference_id: RefId([b[12], b[13], b[14], b[15]]),
            reference_ts: NtpTimestamp::from_bits(be_u64(b, 16)),
            origin_ts: NtpTimestamp::from_bits(be_u64(b, 24)),
            receive_ts: NtpTimestamp::from_bits(be_u64(b, 32)),
            transmit_ts: NtpTimestamp::from_bits(be_u64(b, 40)),
        })
    }

    /// Encodes the header into exactly 48 bytes.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = self.leap.to_bits() << 6 | (self.version & 7) << 3 | (self.mode & 7);
        out[1] = self.stratum;
        out[2] = self.poll as u8;
        out[3] = self.precision as u8;
        out[4..8].copy_from_slice(&self.root_delay.to_bits().to_be_bytes());
        out[8..12].copy_from_slice(&self.root_dispersion.to_bits().to_be_bytes());
        out[12..16].copy_from_slice(&self.reference_id.0);
        out[16..24].copy_from_slice(&self.reference_ts.to_be_bytes());
        out[24..32].copy_from_slice(&self.origin_ts.to_be_bytes());
        out[32..40].copy_from_slice(&self.receive_ts.to_be_bytes());
        out[40..48].copy_from_slice(&self.transmit_ts.to_be_bytes());
    }
}

/// Checks the framing of a whole datagram: length, version and whatever
/// follows the header. Extension fields (RFC 7822) and legacy MACs are
/// accepted and skipped; anything else is malformed. The mode is not judged
/// here.
pub fn validate_request(buf: &[u8]) -> Result<(), PacketError> {
    if buf.len() < HEADER_LEN {
        return Err(PacketError::TooShort);
    }
    if buf.len() % 4 != 0 {
        return Err(PacketError::BadLength);
    }
    let version = (buf[0] >> 3) & 7;
    if !(1..=4).contains(&version) {
        return Err(PacketError::UnsupportedVersion);
    }
    validate_trailer(version, &buf[HEADER_LEN..])
}

/// Judges the bytes after the header (a multiple of 4 long).
fn validate_trailer(version: u8, trailer: &[u8]) -> Result<(), PacketError> {
    let len = trailer.len();
    if len == 0 || is_crypto_nak(trailer) {
        return Ok(());
    }
    if version < 4 {
        // No extension fields before NTPv4: the rest must be one MAC.
        return if (MIN_MAC_LEN..=MAX_MAC_LEN).contains(&len) || len == MS_SNTP_EXT_LEN {
            Ok(())
        } else {
            Err(PacketError::MalformedExtension)
        };
    }
    let mut rest = trailer;
    while !rest.is_empty() {
        // RFC 7822: a remainder of MAC size is a MAC, never an extension field.
        if (MIN_MAC_LEN..=MAX_V4_MAC_LEN).contains(&rest.len()) {
            return Ok(());
        }
        // Longer MACs are only legal without extension fields in NTPv4 and
        // only an authenticating server could tell them apart: drop them.
        let ef_len = extension_field_len(rest).ok_or(PacketError::MalformedExtension)?;
        rest = &rest[ef_len..];
    }
    Ok(())
}

fn is_crypto_nak(trailer: &[u8]) -> bool {
    trailer.len() == CRYPTO_NAK_LEN && trailer.iter().all(|&b| b == 0)
}

/// Length of the extension field at the start of `data`, if it is a valid
/// one: at least 16 bytes, a multiple of 4, and within `data`.
fn extension_field_len(data: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes([*data.get(2)?, *data.get(3)?]) as usize;
    (len >= MIN_EXTENSION_LEN && len % 4 == 0 && len <= data.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client request as chronyd 4.3 sends it (captured on loopback):
    /// LI 0, VN 4, mode 3, stratum 0, poll 6, precision 0x20 (32), root delay
    /// and dispersion 1.0, zero refid and timestamps but a random transmit.
    const CHRONY_REQUEST: [u8; 48] = [
        0x23, 0x00, 0x06, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x3b, 0x41, 0x0e, 0x5a,
        0x8d, 0x7f, 0x21,
    ];

    /// A server reply: LI 0, VN 4, mode 4, stratum 2, poll 6, precision -24,
    /// root delay 0x0000_0a3d, root dispersion 0x0000_1a2b, refid 192.0.2.1,
    /// and four distinct timestamps.
    const SERVER_REPLY: [u8; 48] = [
        0x24, 0x02, 0x06, 0xe8, 0x00, 0x00, 0x0a, 0x3d, 0x00, 0x00, 0x1a, 0x2b, 0xc0, 0x00, 0x02,
        0x01, 0xec, 0xb4, 0x1c, 0x00, 0x10, 0x00, 0x00, 0x00, 0x9c, 0x3b, 0x41, 0x0e, 0x5a, 0x8d,
        0x7f, 0x21, 0xec, 0xb4, 0x1c, 0x40, 0x80, 0x00, 0x00, 0x00, 0xec, 0xb4, 0x1c, 0x40, 0x80,
        0x01, 0x00, 0x00,
    ];

    #[test]
    fn golden_client_request_decodes() {
        let h = Header::parse(&CHRONY_REQUEST).unwrap();
        assert_eq!(h.leap, LeapIndicator::NoWarning);
        assert_eq!(h.version, 4);
        assert_eq!(h.mode(), Mode::Client);
        assert_eq!(h.stratum, 0);
        assert_eq!(h.poll, 6);
        assert_eq!(h.precision, 32);
        assert_eq!(h.root_delay.as_secs_f64(), 1.0);
        assert_eq!(h.root_dispersion.as_secs_f64(), 1.0);
        assert_eq!(h.reference_id, RefId([0; 4]));
        assert_eq!(h.origin_ts, NtpTimestamp::ZERO);
        assert_eq!(h.transmit_ts.to_bits(), 0x9c3b_410e_5a8d_7f21);
    }

    #[test]
    fn golden_server_reply_decodes_and_reencodes_byte_for_byte() {
        let h = Header::parse(&SERVER_REPLY).unwrap();
        assert_eq!(h.version, 4);
        assert_eq!(h.mode(), Mode::Server);
        assert_eq!(h.stratum, 2);
        assert_eq!(h.precision, -24);
        assert_eq!(h.root_delay.to_bits(), 0x0a3d);
        assert_eq!(h.root_dispersion.to_bits(), 0x1a2b);
        assert_eq!(h.reference_id, RefId::from_ipv4([192, 0, 2, 1].into()));
        assert_eq!(h.reference_ts.to_bits(), 0xecb4_1c00_1000_0000);
        assert_eq!(h.origin_ts.to_bits(), 0x9c3b_410e_5a8d_7f21);
        assert_eq!(h.receive_ts.to_bits(), 0xecb4_1c40_8000_0000);
        assert_eq!(h.transmit_ts.to_bits(), 0xecb4_1c40_8001_0000);
        let mut out = [0u8; 48];
        h.write(&mut out);
        assert_eq!(out, SERVER_REPLY);
    }

    #[test]
    fn unsynchronized_kiss_header_encodes() {
        let h = Header {
            leap: LeapIndicator::Unsynchronized,
            version: 3,
            mode: Mode::Server.to_bits(),
            reference_id: RefId::INIT,
            ..Header::default()
        };
        let mut out = [0u8; 48];
        h.write(&mut out);
        assert_eq!(out[0], 0xdc); // 11 011 100
        assert_eq!(&out[12..16], b"INIT");
        assert!(out[1..12].iter().all(|&b| b == 0));
    }

    #[test]
    fn short_input_is_rejected() {
        assert_eq!(Header::parse(&[0x23; 47]), Err(PacketError::TooShort));
        assert_eq!(validate_request(&[]), Err(PacketError::TooShort));
    }

    fn request_with(trailer: &[u8], version: u8) -> Vec<u8> {
        let mut v = CHRONY_REQUEST.to_vec();
        v[0] = version << 3 | 3;
        v.extend_from_slice(trailer);
        v
    }

    fn ef(kind: u16, len: u16) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        v[..2].copy_from_slice(&kind.to_be_bytes());
        v[2..4].copy_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn versions_outside_one_to_four_are_rejected() {
        for v in [0, 5, 6, 7] {
            assert_eq!(
                validate_request(&request_with(&[], v)),
                Err(PacketError::UnsupportedVersion)
            );
        }
        for v in 1..=4 {
            assert_eq!(validate_request(&request_with(&[], v)), Ok(()));
        }
    }

    #[test]
    fn lengths_not_a_multiple_of_four_are_rejected() {
        assert_eq!(
            validate_request(&request_with(&[0; 2], 4)),
            Err(PacketError::BadLength)
        );
    }

    #[test]
    fn extension_fields_and_macs_are_accepted() {
        let mut two_efs = ef(0x0104, 36); // NTS unique identifier
        two_efs.extend(ef(0x0204, 104)); // NTS cookie
        for (what, trailer) in [
            ("one ef", ef(0x0104, 36)),
            ("two efs", two_efs),
            ("ef + md5 mac", [ef(0x2005, 16), vec![0; 20]].concat()),
            ("md5 mac", vec![0; 20]),
            ("sha1 mac", vec![0; 24]),
            ("crypto nak", vec![0; 4]),
        ] {
            assert_eq!(
                validate_request(&request_with(&trailer, 4)),
                Ok(()),
                "{what}"
            );
        }
        assert_eq!(validate_request(&request_with(&[0; 20], 3)), Ok(()));
        assert_eq!(validate_request(&request_with(&[0; 72], 3)), Ok(()));
    }

    #[test]
    fn malformed_trailers_are_rejected() {
        for (what, trailer, version) in [
            ("ef length 0", [ef(1, 16), vec![0; 32]].concat(), 4),
            (
                "ef length beyond datagram",
                ef(0x0104, 36)[..32].to_vec(),
                4,
            ),
            (
                "ef length not multiple of 4",
                [ef(1, 16), ef(2, 30), vec![0; 2]].concat(),
                4,
            ),
            (
                "ef too short",
                [ef(1, 16), ef(2, 8), vec![0; 24]].concat(),
                4,
            ),
            ("8 stray bytes", vec![0; 8], 4),
            ("nonzero 4 bytes", vec![1, 2, 3, 4], 4),
            ("v3 with extension field", ef(0x0204, 104), 3),
            ("v4 long mac", vec![0xff; 68], 4),
            ("952 zero bytes", vec![0; 952], 4),
        ] {
            assert_eq!(
                validate_request(&request_with(&trailer, version)),
                Err(PacketError::MalformedExtension),
                "{what}"
            );
        }
    }
}
