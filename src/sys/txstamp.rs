//! Kernel transmit timestamps: switching them on for a socket, numbering
//! the datagrams that carry them ([`ProbeKeys`], `SOF_TIMESTAMPING_OPT_ID`),
//! and reading them back from the socket's error queue without blocking
//! (which also keeps a stale stamp from waking `poll` forever).

use std::io;
use std::os::fd::RawFd;

use super::cmsg::{self, AnyControl};
use super::socket::{recv_with_control, setsockopt_int};
use crate::proto::UnixTime;

/// Timestamping of a listen socket: software receive stamps on every
/// datagram; transmit stamps (when switched on, see [`set_tx_stamping`])
/// returned without the packet and numbered (see [`ProbeKeys`]).
pub const STAMPING: u32 = libc::SOF_TIMESTAMPING_RX_SOFTWARE
    | libc::SOF_TIMESTAMPING_SOFTWARE
    | libc::SOF_TIMESTAMPING_OPT_TSONLY
    | libc::SOF_TIMESTAMPING_OPT_ID;

/// Switches software transmit timestamps of every datagram `fd` sends on
/// or off (receive stamps stay on): on for the one chunk of replies a
/// worker probes now and then (see `crate::io::txtime`).
pub fn set_tx_stamping(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on {
        STAMPING | libc::SOF_TIMESTAMPING_TX_SOFTWARE
    } else {
        STAMPING
    };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags as i32)
}

/// Most error-queue messages read at once (transmit timestamps come one
/// per probe, and ICMP errors only if asked for; more than this means a
/// backlog that the next call drains further).
const ERRQUEUE_BATCH: usize = 64;

/// Drains the error queue of `fd` without blocking (so that nothing left
/// there keeps waking `poll`) and puts the kernel transmit timestamps of
/// the probed chunk whose first reply was numbered `first` into
/// `departed` (one slot per reply of the chunk; see [`ProbeKeys`]); every
/// other stamp is read and discarded.
pub fn take_probe_timestamps(
    fd: RawFd,
    keys: &mut ProbeKeys,
    first: u32,
    departed: &mut [Option<UnixTime>],
) {
    departed.fill(None);
    let len = departed.len();
    drain_error_queue(fd, |tx| {
        if let Some(position) = keys.observed(tx.id, first, len) {
            departed[position] = Some(tx.stamp);
        }
    });
}

/// Drains the error queue of `fd` without blocking, keeping `keys` in step
/// with the stamps found there (no chunk is waiting for them).
pub fn drain_probe_timestamps(fd: RawFd, keys: &mut ProbeKeys) {
    take_probe_timestamps(fd, keys, keys.next(), &mut []);
}

/// Drains the error queue of `fd` without blocking and returns the last
/// kernel transmit timestamp found there: for a socket that sent one
/// datagram asking for one (an upstream request).
pub fn take_tx_timestamp(fd: RawFd) -> Option<UnixTime> {
    let mut stamp = None;
    drain_error_queue(fd, |tx| stamp = Some(tx.stamp));
    stamp
}

/// Reads up to [`ERRQUEUE_BATCH`] error-queue messages of `fd` without
/// blocking and hands each transmit timestamp among them to `stamp`.
fn drain_error_queue(fd: RawFd, mut stamp: impl FnMut(cmsg::TxTimestamp)) {
    let mut data = [0u8; 64];
    let mut control = AnyControl::default();
    for _ in 0..ERRQUEUE_BATCH {
        let flags = libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT;
        let Ok(Some((_, bytes))) = recv_with_control(fd, &mut data, &mut control, flags) else {
            break;
        };
        if let Some(tx) = cmsg::parse_tx_timestamp(bytes) {
            stamp(tx);
        }
    }
}

/// Which kernel transmit timestamp answers which probed reply. Sockets are
/// set up with `SOF_TIMESTAMPING_OPT_ID`, so the kernel numbers the
/// datagrams sent with a timestamp request (only the replies of probed
/// chunks), from 0, and returns the number with the stamp. A stamp that
/// comes late (after its chunk was given up, or from a chunk that partly
/// failed) then cannot be taken for a later chunk's.
///
/// The numbering is predicted: each probed reply that was sent takes the
/// next number; one whose send failed is assumed not to have taken one
/// (true for a full send buffer; a firewall refusal takes one, which the
/// next stamp reveals: numbering resumes after any stamp seen beyond the
/// prediction, so a sample is lost, never misattributed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeKeys {
    next: u32,
}

impl ProbeKeys {
    /// The number the next probed reply sent on this socket will carry.
    pub fn next(&self) -> u32 {
        self.next
    }

    /// `n` probed replies went out, numbered from [`Self::next`] on.
    pub fn sent(&mut self, n: usize) {
        self.next = self.next.wrapping_add(n as u32);
    }

    /// A probed reply counted by [`Self::sent`] failed after all (io_uring
    /// reports the outcome after the chunk is counted).
    pub fn unsent(&mut self) {
        self.next = self.next.wrapping_sub(1);
    }

    /// A stamp numbered `id` was read: its position in the chunk whose
    /// first reply carried `first` and that had `len` replies, if it is
    /// one of them. A number beyond the prediction resynchronizes it.
    pub fn observed(&mut self, id: u32, first: u32, len: usize) -> Option<usize> {
        if id.wrapping_sub(self.next) as i32 >= 0 {
            self.next = id.wrapping_add(1);
        }
        let position = id.wrapping_sub(first) as usize;
        (position < len).then_some(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn probe_keys_match_their_own_stamp_and_resynchronize() {
        let mut k = ProbeKeys::default();
        // A chunk of 3 goes out; its stamps come late, after the next chunk
        // of 2 was sent.
        let first = k.next();
        k.sent(3);
        let second = k.next();
        k.sent(2);
        assert_eq!(k.observed(first + 2, second, 2), None, "a late stamp");
        assert_eq!(k.observed(second, second, 2), Some(0));
        assert_eq!(k.observed(second + 1, second, 2), Some(1));
        // A reply whose send failed gave its number back.
        let third = k.next();
        k.sent(1);
        k.unsent();
        assert_eq!(k.next(), third);
        // A refused send that used a number anyway: the next stamp shows
        // it, that sample is lost, and numbering resumes after it.
        let expected = k.next();
        k.sent(1);
        assert_eq!(k.observed(expected + 1, expected, 1), None);
        assert_eq!(k.next(), expected + 2);
        let next = k.next();
        k.sent(1);
        assert_eq!(k.observed(next, next, 1), Some(0));
        // Numbers wrap past u32::MAX.
        let mut k = ProbeKeys { next: u32::MAX };
        let first = k.next();
        k.sent(2);
        assert_eq!(k.next(), 1);
        assert_eq!(k.observed(0, first, 2), Some(1));
    }

    #[test]
    fn requested_transmit_timestamps_come_back() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_tx_stamping(sock.as_raw_fd(), false).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut control = [0u8; cmsg::SEND_CONTROL_LEN];
        let len = cmsg::append_tx_timestamp_request(&mut control, 0);
        let before = crate::clock::now();
        let dest: socket2::SockAddr = peer.local_addr().unwrap().into();
        let payload = [7u8; 48];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        // SAFETY: all-zero is a valid msghdr; pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = dest.as_ptr() as *mut _;
        msg.msg_namelen = dest.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        for _ in 0..3 {
            // SAFETY: `msg` describes buffers of this frame.
            assert_eq!(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) }, 48);
        }
        let last = take_tx_timestamp(sock.as_raw_fd()).expect("transmit timestamps");
        let after = crate::clock::now();
        assert!(
            before <= last && last <= after,
            "{before:?} {last:?} {after:?}"
        );
        // Every requested timestamp was read.
        assert_eq!(take_tx_timestamp(sock.as_raw_fd()), None);
    }
}
