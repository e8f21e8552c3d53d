//! Socket control messages, read and written as plain byte slices (no
//! pointer walking, so it works on unaligned buffers such as io_uring's
//! multishot buffers):
//!
//! - received: `SCM_TIMESTAMPING` (kernel receive stamp), `IP_PKTINFO` /
//!   `IPV6_PKTINFO` (the address a request was sent to), `SO_RXQ_OVFL`
//!   (datagrams the kernel dropped for lack of buffer space);
//! - error queue (`MSG_ERRQUEUE`): kernel transmit timestamps with their
//!   `OPT_ID` key ([`parse_tx_timestamp`]);
//! - sent: `IP_PKTINFO` / `IPV6_PKTINFO`, so a reply leaves from the address
//!   its request arrived at.
//!
//! The header layout is taken from `libc::cmsghdr` (length word, level,
//! type), aligned to `size_t` as `CMSG_ALIGN` does on Linux.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::proto::UnixTime;

const HDR_LEN: usize = size_of::<libc::cmsghdr>();
const LEVEL_AT: usize = offset_of!(libc::cmsghdr, cmsg_level);
const TYPE_AT: usize = offset_of!(libc::cmsghdr, cmsg_type);
const ALIGN: usize = size_of::<usize>();
const TIMESPEC_LEN: usize = size_of::<libc::timespec>();
/// `struct in_pktinfo`: ifindex, spec_dst, addr.
const IN_PKTINFO_LEN: usize = 12;
/// `struct in6_pktinfo`: addr, ifindex.
const IN6_PKTINFO_LEN: usize = 20;

const fn align(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// `CMSG_SPACE(len)`: bytes a message with `len` bytes of data takes.
pub const fn space(len: usize) -> usize {
    align(HDR_LEN) + align(len)
}

/// Control buffer size that holds everything we ask the kernel for on
/// receive (timestamps, packet info, overflow count) with room to spare.
pub const RECV_CONTROL_LEN: usize =
    space(3 * TIMESPEC_LEN) + space(IN6_PKTINFO_LEN) + space(4) + 64;

/// Data of an `SO_TIMESTAMPING` request on one datagram: the flags (u32).
const TSFLAGS_LEN: usize = 4;

/// Control buffer size of a reply: a packet-info message and, on a sampled
/// reply, a request for its transmit timestamp.
pub const SEND_CONTROL_LEN: usize = space(IN6_PKTINFO_LEN) + space(TSFLAGS_LEN);

/// A control-message buffer of `N` bytes, aligned as the kernel's
/// `cmsghdr`s (message headers point into it).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct ControlBuf<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for ControlBuf<N> {
    fn default() -> Self {
        ControlBuf([0; N])
    }
}

/// Room for everything this crate asks the kernel for on one datagram or
/// one error-queue message.
pub const ANY_CONTROL_LEN: usize = if RECV_CONTROL_LEN > ERRQUEUE_CONTROL_LEN {
    RECV_CONTROL_LEN
} else {
    ERRQUEUE_CONTROL_LEN
};

/// A buffer for any one message's control data (see [`ANY_CONTROL_LEN`]).
pub type AnyControl = ControlBuf<ANY_CONTROL_LEN>;

/// The local end of a request, as packet info reports it; used as the
/// source of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAddr {
    /// IPv4: the address the kernel would answer from (`ipi_spec_dst`).
    V4(Ipv4Addr),
    /// IPv6: the destination address and the interface it came in on.
    V6 {
        /// Destination address of the request.
        addr: Ipv6Addr,
        /// Receiving interface.
        ifindex: u32,
    },
}

/// What the control messages of one received datagram told us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvInfo {
    /// Kernel software receive timestamp, if present and non-zero.
    pub rx_stamp: Option<UnixTime>,
    /// Where the request was sent to, if packet info was on.
    pub local: Option<LocalAddr>,
    /// The socket's running count of datagrams dropped by the kernel.
    pub rxq_dropped: Option<u32>,
}

fn ne_uint(bytes: &[u8]) -> u64 {
    match bytes.len() {
        4 => u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64,
        8 => u64::from_ne_bytes(bytes.try_into().unwrap_or([0; 8])),
        _ => 0,
    }
}

fn ne_i32(bytes: &[u8], at: usize) -> i32 {
    match bytes.get(at..at + 4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Reads one `struct timespec`; `None` when zero (no stamp) or out of range.
fn read_timespec(bytes: &[u8]) -> Option<UnixTime> {
    let half = TIMESPEC_LEN / 2;
    let secs = ne_uint(bytes.get(..half)?) as i64;
    let nanos = ne_uint(bytes.get(half..TIMESPEC_LEN)?);
    let (secs, nanos) = if half == 4 {
        (secs as i32 as i64, nanos as u32 as u64)
    } else {
        (secs, nanos)
    };
    if (secs == 0 && nanos == 0) || nanos >= 1_000_000_000 {
        return None;
    }
    Some(UnixTime::new(secs, nanos as u32))
}

/// Parses the control messages of one received datagram. Unknown or
/// truncated messages are ignored.
pub fn parse(mut control: &[u8]) -> RecvInfo {
    let mut info = RecvInfo::default();
    while control.len() >= HDR_LEN {
        let len = ne_uint(&control[..LEVEL_AT]) as usize;
        if len < HDR_LEN || len > control.len() {
            break;
        }
        let level = ne_i32(control, LEVEL_AT);
        let kind = ne_i32(control, TYPE_AT);
        let data = &control[align(HDR_LEN)..len.max(align(HDR_LEN))];
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPING) => {
                // ts[0] is the software stamp; ts[1] is deprecated, ts[2] hardware.
                info.rx_stamp = read_timespec(data);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= IN_PKTINFO_LEN => {
                let spec_dst: [u8; 4] = [data[4], data[5], data[6], data[7]];
                info.local = Some(LocalAddr::V4(Ipv4Addr::from(spec_dst)));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= IN6_PKTINFO_LEN => {
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&data[..16]);
                let ifindex = u32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
                info.local = Some(LocalAddr::V6 {
                    addr: Ipv6Addr::from(addr),
                    ifindex,
                });
            }
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) if data.len() >= 4 => {
                info.rxq_dropped = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
            }
            _ => {}
        }
        control = control.get(align(len)..).unwrap_or(&[]);
    }
    info
}

/// Bytes of `struct sock_extended_err`: errno (u32); origin, type, code,
/// pad (u8 each); info (u32); data (u32).
const EXTENDED_ERR_LEN: usize = 16;
/// `SO_EE_ORIGIN_TIMESTAMPING`: the extended error carries a timestamp's
/// identity, not an error.
const EE_ORIGIN_TIMESTAMPING: u8 = 4;
/// Largest socket address the kernel appends to an extended error
/// (`sockaddr_in6`).
const OFFENDER_LEN: usize = 28;

/// Control buffer size that holds one error-queue message of a transmit
/// timestamp (the stamps and the extended error with its address), with
/// room to spare.
pub const ERRQUEUE_CONTROL_LEN: usize =
    space(3 * TIMESPEC_LEN) + space(EXTENDED_ERR_LEN + OFFENDER_LEN) + 64;

/// A kernel transmit timestamp, as read from a socket's error queue
/// (`MSG_ERRQUEUE`) after sending with `SO_TIMESTAMPING` TX flags and
/// `SOF_TIMESTAMPING_OPT_ID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxTimestamp {
    /// The software timestamp (`ts[0]` of `SCM_TIMESTAMPING`).
    pub stamp: UnixTime,
    /// The datagram's `OPT_ID` key (`ee_data`): the socket's count of
    /// datagrams sent with timestamping on before this one.
    pub id: u32,
    /// Which point of the transmit path was stamped (`ee_info`:
    /// `SCM_TSTAMP_SND` = 0, `SCM_TSTAMP_SCHED` = 1, `SCM_TSTAMP_ACK` = 2).
    pub kind: u32,
}

/// Walks the control messages of a buffer: (level, type, data) of each
/// complete one; stops at the first truncated or malformed header.
fn messages(mut control: &[u8]) -> impl Iterator<Item = (i32, i32, &[u8])> {
    std::iter::from_fn(move || {
        if control.len() < HDR_LEN {
            return None;
        }
        let len = ne_uint(&control[..LEVEL_AT]) as usize;
        if len < HDR_LEN || len > control.len() {
            return None;
        }
        let level = ne_i32(control, LEVEL_AT);
        let kind = ne_i32(control, TYPE_AT);
        let data = &control[align(HDR_LEN)..len.max(align(HDR_LEN))];
        control = control.get(align(len)..).unwrap_or(&[]);
        Some((level, kind, data))
    })
}

/// Parses the control messages of one error-queue message. Returns the
/// transmit timestamp when it carries both a non-zero software stamp and an
/// extended error (`IP_RECVERR` / `IPV6_RECVERR`) of timestamping origin;
/// anything else (a real ICMP error, garbage, a truncated buffer) gives
/// `None`.
pub fn parse_tx_timestamp(control: &[u8]) -> Option<TxTimestamp> {
    let mut stamp = None;
    let mut ident = None;
    for (level, kind, data) in messages(control) {
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPING) => stamp = read_timespec(data),
            (libc::IPPROTO_IP, libc::IP_RECVERR) | (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
                if data.len() >= EXTENDED_ERR_LEN && data[4] == EE_ORIGIN_TIMESTAMPING =>
            {
                let info = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
                let id = u32::from_ne_bytes([data[12], data[13], data[14], data[15]]);
                ident = Some((id, info));
            }
            _ => {}
        }
    }
    let (id, kind) = ident?;
    Some(TxTimestamp {
        stamp: stamp?,
        id,
        kind,
    })
}

/// Appends, after the `len` bytes already in `out`, a request for a kernel
/// software transmit timestamp of this one datagram (it comes back on the
/// socket's error queue; see [`parse_tx_timestamp`]). Returns the new
/// length.
pub fn append_tx_timestamp_request(out: &mut [u8; SEND_CONTROL_LEN], len: usize) -> usize {
    let at = len.min(SEND_CONTROL_LEN - space(TSFLAGS_LEN));
    write_header(
        &mut out[at..],
        TSFLAGS_LEN,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
    );
    let data = at + align(HDR_LEN);
    let flags = libc::SOF_TIMESTAMPING_TX_SOFTWARE;
    out[data..data + TSFLAGS_LEN].copy_from_slice(&flags.to_ne_bytes());
    at + space(TSFLAGS_LEN)
}

fn write_header(out: &mut [u8], data_len: usize, level: i32, kind: i32) {
    let len = HDR_LEN + data_len;
    match LEVEL_AT {
        4 => out[..4].copy_from_slice(&(len as u32).to_ne_bytes()),
        _ => out[..8].copy_from_slice(&(len as u64).to_ne_bytes()),
    }
    out[LEVEL_AT..LEVEL_AT + 4].copy_from_slice(&level.to_ne_bytes());
    out[TYPE_AT..TYPE_AT + 4].copy_from_slice(&kind.to_ne_bytes());
}

/// Writes the packet-info message that makes a reply leave from `local`
/// into `out` (at least [`SEND_CONTROL_LEN`] bytes, zeroed by this call)
/// and returns its length.
pub fn write_source(out: &mut [u8; SEND_CONTROL_LEN], local: &LocalAddr) -> usize {
    out.fill(0);
    let data_at = align(HDR_LEN);
    match *local {
        LocalAddr::V4(spec_dst) => {
            write_header(out, IN_PKTINFO_LEN, libc::IPPROTO_IP, libc::IP_PKTINFO);
            // ipi_ifindex stays 0: let routing pick the interface.
            out[data_at + 4..data_at + 8].copy_from_slice(&spec_dst.octets());
            space(IN_PKTINFO_LEN)
        }
        LocalAddr::V6 { addr, ifindex } => {
            write_header(out, IN6_PKTINFO_LEN, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO);
            // Multicast cannot be a source: let the kernel choose.
            let source = if addr.is_multicast() {
                Ipv6Addr::UNSPECIFIED
            } else {
                addr
            };
            out[data_at..data_at + 16].copy_from_slice(&source.octets());
            // Link-local addresses only mean something with their interface.
            let scoped = source.is_unicast_link_local();
            let ifindex = if scoped { ifindex } else { 0 };
            out[data_at + 16..data_at + 20].copy_from_slice(&ifindex.to_ne_bytes());
            space(IN6_PKTINFO_LEN)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; space(data.len())];
        write_header(&mut v, data.len(), level, kind);
        v[align(HDR_LEN)..align(HDR_LEN) + data.len()].copy_from_slice(data);
        v
    }

    fn timespecs(secs: i64, nanos: i64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&secs.to_ne_bytes());
        v.extend_from_slice(&nanos.to_ne_bytes());
        v.extend_from_slice(&[0; 32]);
        v
    }

    #[test]
    fn timestamp_pktinfo_and_overflow_are_read() {
        let mut control = message(
            libc::SOL_SOCKET,
            libc::SCM_TIMESTAMPING,
            &timespecs(1_800_000_000, 42),
        );
        let mut pktinfo = vec![0u8; 12];
        pktinfo[4..8].copy_from_slice(&[127, 0, 0, 9]);
        pktinfo[8..12].copy_from_slice(&[127, 0, 0, 10]);
        control.extend(message(libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo));
        control.extend(message(
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &7u32.to_ne_bytes(),
        ));
        let info = parse(&control);
        assert_eq!(info.rx_stamp, Some(UnixTime::new(1_800_000_000, 42)));
        assert_eq!(info.local, Some(LocalAddr::V4(Ipv4Addr::new(127, 0, 0, 9))));
        assert_eq!(info.rxq_dropped, Some(7));
    }

    #[test]
    fn unaligned_control_data_parses() {
        let control = message(libc::SOL_SOCKET, libc::SCM_TIMESTAMPING, &timespecs(5, 6));
        let mut shifted = vec![0u8; 3];
        shifted.extend(&control);
        assert_eq!(parse(&shifted[3..]).rx_stamp, Some(UnixTime::new(5, 6)));
    }

    #[test]
    fn zero_stamp_and_garbage_give_nothing() {
        let control = message(libc::SOL_SOCKET, libc::SCM_TIMESTAMPING, &timespecs(0, 0));
        assert_eq!(parse(&control), RecvInfo::default());
        assert_eq!(parse(&[0xff; 40]), RecvInfo::default());
        assert_eq!(parse(&[1, 2, 3]), RecvInfo::default());
        let mut short = control.clone();
        short.truncate(20);
        assert_eq!(parse(&short), RecvInfo::default());
    }

    #[test]
    fn ipv6_source_round_trips_through_write_and_parse() {
        let local = LocalAddr::V6 {
            addr: "fe80::1".parse().unwrap(),
            ifindex: 3,
        };
        let mut out = [0u8; SEND_CONTROL_LEN];
        let n = write_source(&mut out, &local);
        assert_eq!(parse(&out[..n]).local, Some(local));
        let global = LocalAddr::V6 {
            addr: "2001:db8::1".parse().unwrap(),
            ifindex: 3,
        };
        let n = write_source(&mut out, &global);
        let expected = LocalAddr::V6 {
            addr: "2001:db8::1".parse().unwrap(),
            ifindex: 0,
        };
        assert_eq!(parse(&out[..n]).local, Some(expected));
    }

    fn extended_err(origin: u8, info: u32, id: u32) -> Vec<u8> {
        let mut e = vec![0u8; EXTENDED_ERR_LEN + 16];
        e[..4].copy_from_slice(&(libc::ENOMSG as u32).to_ne_bytes());
        e[4] = origin;
        e[8..12].copy_from_slice(&info.to_ne_bytes());
        e[12..16].copy_from_slice(&id.to_ne_bytes());
        e
    }

    #[test]
    fn tx_timestamp_of_an_error_queue_message_is_read() {
        for (level, kind) in [
            (libc::IPPROTO_IP, libc::IP_RECVERR),
            (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        ] {
            let mut control = message(
                libc::SOL_SOCKET,
                libc::SCM_TIMESTAMPING,
                &timespecs(1_800_000_000, 7),
            );
            control.extend(message(level, kind, &extended_err(4, 0, 41)));
            assert_eq!(
                parse_tx_timestamp(&control),
                Some(TxTimestamp {
                    stamp: UnixTime::new(1_800_000_000, 7),
                    id: 41,
                    kind: 0,
                })
            );
            // Unaligned buffers parse too.
            let mut shifted = vec![0u8; 5];
            shifted.extend(&control);
            assert_eq!(parse_tx_timestamp(&shifted[5..]).map(|t| t.id), Some(41));
        }
    }

    #[test]
    fn icmp_errors_missing_stamps_and_garbage_are_not_tx_timestamps() {
        let stamp = message(libc::SOL_SOCKET, libc::SCM_TIMESTAMPING, &timespecs(5, 6));
        // An ICMP error (origin 2) with a stamp is not a timestamp report.
        let mut icmp = stamp.clone();
        icmp.extend(message(
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            &extended_err(2, 0, 1),
        ));
        assert_eq!(parse_tx_timestamp(&icmp), None);
        // An identity without a stamp, or a zero stamp, gives nothing.
        let ident = message(libc::IPPROTO_IP, libc::IP_RECVERR, &extended_err(4, 0, 1));
        assert_eq!(parse_tx_timestamp(&ident), None);
        let mut zero = message(libc::SOL_SOCKET, libc::SCM_TIMESTAMPING, &timespecs(0, 0));
        zero.extend(&ident);
        assert_eq!(parse_tx_timestamp(&zero), None);
        // A truncated extended error or plain garbage gives nothing.
        let mut short = stamp.clone();
        short.extend(message(libc::IPPROTO_IP, libc::IP_RECVERR, &[4; 8]));
        assert_eq!(parse_tx_timestamp(&short), None);
        assert_eq!(parse_tx_timestamp(&[0xff; 64]), None);
        assert_eq!(parse_tx_timestamp(&[]), None);
    }

    #[test]
    fn a_timestamp_request_follows_the_source() {
        let mut out = [0u8; SEND_CONTROL_LEN];
        let n = write_source(&mut out, &LocalAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let total = append_tx_timestamp_request(&mut out, n);
        assert_eq!(total, n + space(TSFLAGS_LEN));
        let found: Vec<_> = messages(&out[..total])
            .map(|(l, t, d)| (l, t, d.len()))
            .collect();
        assert_eq!(
            found,
            vec![
                (libc::IPPROTO_IP, libc::IP_PKTINFO, IN_PKTINFO_LEN),
                (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, TSFLAGS_LEN)
            ]
        );
        // Alone, it starts the buffer.
        assert_eq!(append_tx_timestamp_request(&mut out, 0), space(TSFLAGS_LEN));
    }

    #[test]
    fn ipv4_source_round_trips() {
        let local = LocalAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let mut out = [0u8; SEND_CONTROL_LEN];
        let n = write_source(&mut out, &local);
        assert_eq!(n, space(IN_PKTINFO_LEN));
        assert_eq!(parse(&out[..n]).local, Some(local));
    }
}
