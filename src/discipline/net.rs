//! Upstream polling sockets: one fresh UDP socket per request, bound to a
//! port the kernel picks at random and connected to the upstream (so only
//! its replies get in), with kernel receive and transmit timestamps. The
//! transmit time is first a clock read just before the send; the kernel's
//! software transmit stamp, read from the socket's error queue, replaces it
//! when it comes. Plus waiting on several of them at once.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::clock;
use crate::proto::{NtpTimestamp, UnixTime};
use crate::sys::cmsg::{self, AnyControl};
use crate::sys::socket::{recv_with_control, setsockopt_int};
use crate::sys::txstamp::take_tx_timestamp;

/// Largest datagram read from an upstream (anything longer is not a reply
/// we want, but reading it whole keeps the socket clean).
pub const MAX_REPLY: usize = 1024;

/// A request in flight.
#[derive(Debug)]
pub struct Pending {
    socket: UdpSocket,
}

/// Opens a socket for `addr` and sends `packet`; returns the socket and the
/// kernel time just before the send (T1, until [`Pending::tx_stamp`] gives
/// the kernel's).
pub fn send(addr: SocketAddr, packet: &[u8]) -> io::Result<(Pending, NtpTimestamp)> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // Port 0: Linux picks an ephemeral port at random for each socket.
    let socket = UdpSocket::bind(bind)?;
    let flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE
        | libc::SOF_TIMESTAMPING_TX_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_TSONLY
        | libc::SOF_TIMESTAMPING_SOFTWARE;
    // Without stamps we fall back to clock reads around the send and at
    // receive time.
    let _ = setsockopt_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        flags as i32,
    );
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let t1 = NtpTimestamp::from_unix(clock::now());
    socket.send(packet)?;
    Ok((Pending { socket }, t1))
}

impl Pending {
    /// Our address on the way to the upstream (the connected socket's
    /// local address), if the kernel has picked one.
    pub fn local_ip(&self) -> Option<IpAddr> {
        let ip = self.socket.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    }

    /// The kernel's software transmit timestamp of the request, if it has
    /// come back on the error queue. Drains the queue (bounded), so that a
    /// waiting `poll` is not woken by it again.
    pub fn tx_stamp(&self) -> Option<UnixTime> {
        take_tx_timestamp(self.fd())
    }

    /// Reads one datagram if there is one: its length and kernel receive
    /// time (a clock read stands in for a missing stamp). `Ok(None)` when
    /// nothing is queued.
    pub fn recv(&self, buf: &mut [u8; MAX_REPLY]) -> io::Result<Option<(usize, UnixTime)>> {
        let mut control = AnyControl::default();
        let Some((n, bytes)) = recv_with_control(self.fd(), buf, &mut control, libc::MSG_DONTWAIT)?
        else {
            return Ok(None);
        };
        let stamp = cmsg::parse(bytes).rx_stamp.unwrap_or_else(clock::now);
        Ok(Some((n, stamp)))
    }

    fn fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }
}

/// Waits until one of `pending` is readable or `timeout` passes.
pub fn wait<'a>(pending: impl Iterator<Item = &'a Pending>, timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = pending
        .map(|p| libc::pollfd {
            fd: p.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return;
    }
    // SAFETY: `fds` is a live, exclusively borrowed array of pollfd with
    // its true length. The result only says whether to look; every socket
    // is read non-blocking afterwards.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_leaves_from_a_fresh_port_and_the_reply_is_stamped() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (a, t1) = send(addr, &[1u8; 48]).unwrap();
        let (b, _) = send(addr, &[2u8; 48]).unwrap();
        let mut buf = [0u8; 64];
        let (_, from_a) = server.recv_from(&mut buf).unwrap();
        let (_, from_b) = server.recv_from(&mut buf).unwrap();
        assert_ne!(from_a.port(), from_b.port(), "one port per request");
        server.send_to(&[9u8; 48], from_a).unwrap();
        wait([&a, &b].into_iter(), Duration::from_secs(2));
        let mut reply = [0u8; MAX_REPLY];
        let (n, stamp) = a.recv(&mut reply).unwrap().expect("reply queued");
        assert_eq!(n, 48);
        assert_eq!(reply[0], 9);
        let t4 = NtpTimestamp::from_unix(stamp);
        assert!(t4.diff_secs(t1) >= 0.0 && t4.diff_secs(t1) < 2.0);
        assert!(b.recv(&mut reply).unwrap().is_none());
        // The kernel stamped the request as it left: after the clock read
        // that stood in for it, before the reply came back.
        let tx = NtpTimestamp::from_unix(a.tx_stamp().expect("software transmit stamp"));
        assert!(tx.diff_secs(t1) >= 0.0, "{}", tx.diff_secs(t1));
        assert!(t4.diff_secs(tx) >= 0.0, "{}", t4.diff_secs(tx));
        // Read once: the queue is empty afterwards.
        assert_eq!(a.tx_stamp(), None);
        assert_eq!(a.local_ip(), Some("127.0.0.1".parse().unwrap()));
    }
}
