//! Pre-allocated `sendmmsg` / `recvmmsg` batches. Buffers and message
//! headers are allocated once per thread; the headers point into boxed
//! buffers that never move (the raw pointers also keep these types on their
//! thread). Per call only the lengths the kernel overwrote are reset. Also
//! the one `sendmmsg` call (for the junk flood's own messages too) and the
//! sender-address check of a received datagram ([`PeerName`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use fastntp::proto::HEADER_LEN;
use fastntp::sys::buffers::zeroed_slice;
use fastntp::sys::cmsg::ControlBuf;

/// Bytes read per reply: any NTP header fits, and longer replies (with
/// extension fields) are cut here — only the header is judged.
pub const RECV_SLOT: usize = 256;
/// Most datagrams per UDP GSO send (`UDP_MAX_SEGMENTS` was 64 before
/// Linux 5.x raised it).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Runs `call`, a system call that returns a count or -1, again while a
/// signal interrupts it.
#[inline]
fn restarting(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = call();
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `sendmmsg` of `hdr` on connected socket `fd`, without blocking: the
/// number of messages sent, or the error if none was.
///
/// # Safety
/// Every header must point at live iovecs (and control buffers, if any)
/// that point at live buffers of the lengths given, none of which move
/// during the call.
#[inline]
pub unsafe fn send_messages(fd: RawFd, hdr: &mut [libc::mmsghdr]) -> io::Result<usize> {
    let n = hdr.len() as u32;
    restarting(|| {
        // SAFETY: the caller vouches for what the headers point at; the
        // socket is connected, so no names are needed.
        unsafe { libc::sendmmsg(fd, hdr.as_mut_ptr(), n, libc::MSG_DONTWAIT) as isize }
    })
}

/// Requests to send with one `sendmmsg` on a connected socket.
pub struct SendBatch {
    payload: Box<[[u8; HEADER_LEN]]>,
    iov: Box<[libc::iovec]>,
    hdr: Box<[libc::mmsghdr]>,
}

impl SendBatch {
    /// A batch of up to `max` copies of `template` (whose transmit
    /// timestamp is overwritten per request).
    pub fn new(max: usize, template: [u8; HEADER_LEN]) -> SendBatch {
        let mut b = SendBatch {
            payload: vec![template; max].into_boxed_slice(),
            // SAFETY: all-zero is a valid iovec (null pointer, length 0).
            iov: unsafe { zeroed_slice(max) },
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero
            // lengths).
            hdr: unsafe { zeroed_slice(max) },
        };
        for i in 0..max {
            b.iov[i] = libc::iovec {
                iov_base: b.payload[i].as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            };
            let h = &mut b.hdr[i].msg_hdr;
            h.msg_iov = &mut b.iov[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.payload.len()
    }

    /// Sets the transmit timestamp of request `i`.
    #[inline]
    pub fn set_transmit(&mut self, i: usize, tx: u64) {
        self.payload[i][40..48].copy_from_slice(&tx.to_be_bytes());
    }

    /// Sends requests `0..n` on connected socket `fd`; returns how many the
    /// kernel took (an error only if it took none).
    pub fn send(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.hdr.len());
        // SAFETY: headers 0..n point at iovecs and payloads owned by `self`,
        // which stay put during the call.
        unsafe { send_messages(fd, &mut self.hdr[..n]) }
    }

    /// Sends requests `0..n` as one UDP GSO buffer on connected socket `fd`
    /// (which has `UDP_SEGMENT` set to the request size): the kernel cuts
    /// it into `n` ordinary datagrams. All or nothing.
    pub fn send_gso(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.payload.len());
        let bytes = restarting(|| {
            // SAFETY: the payloads are one contiguous allocation of
            // `payload.len()` × HEADER_LEN bytes owned by `self`, and
            // `n × HEADER_LEN` bytes of it are passed.
            unsafe {
                libc::send(
                    fd,
                    self.payload.as_ptr().cast(),
                    n * HEADER_LEN,
                    libc::MSG_DONTWAIT,
                )
            }
        })?;
        Ok(bytes / HEADER_LEN)
    }
}

/// Datagrams read with one `recvmmsg`: payload slots of `SLOT` bytes,
/// control buffers of `CTRL` bytes, and the sender's address.
pub struct RecvBatch<const SLOT: usize, const CTRL: usize> {
    payload: Box<[[u8; SLOT]]>,
    names: Box<[libc::sockaddr_storage]>,
    control: Box<[ControlBuf<CTRL>]>,
    iov: Box<[libc::iovec]>,
    hdr: Box<[libc::mmsghdr]>,
    used: usize,
}

impl<const SLOT: usize, const CTRL: usize> RecvBatch<SLOT, CTRL> {
    /// A batch of `max` datagrams.
    pub fn new(max: usize) -> Self {
        let mut b = RecvBatch {
            payload: vec![[0u8; SLOT]; max].into_boxed_slice(),
            // SAFETY: all-zero is a valid sockaddr_storage (family 0).
            names: unsafe { zeroed_slice(max) },
            control: vec![ControlBuf::default(); max].into_boxed_slice(),
            // SAFETY: all-zero is a valid iovec (null pointer, length 0).
            iov: unsafe { zeroed_slice(max) },
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero
            // lengths).
            hdr: unsafe { zeroed_slice(max) },
            used: max,
        };
        for i in 0..max {
            b.iov[i] = libc::iovec {
                iov_base: b.payload[i].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let h = &mut b.hdr[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = b.control[i].0.as_mut_ptr().cast();
        }
        b
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.hdr.len()
    }

    /// Reads up to a batch without blocking (`extra_flags`: e.g.
    /// `MSG_ERRQUEUE`). `Ok(0)` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd, extra_flags: i32) -> io::Result<usize> {
        for h in &mut self.hdr[..self.used] {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_controllen = CTRL as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        self.used = 0;
        let max = self.hdr.len() as u32;
        let hdr = self.hdr.as_mut_ptr();
        let read = restarting(|| {
            // SAFETY: every header points at buffers owned by `self` with
            // the lengths just reset; the kernel writes only within them.
            unsafe {
                libc::recvmmsg(
                    fd,
                    hdr,
                    max,
                    libc::MSG_DONTWAIT | extra_flags,
                    std::ptr::null_mut(),
                ) as isize
            }
        });
        match read {
            Ok(n) => {
                self.used = n;
                Ok(n)
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Length of datagram `i` as sent (may exceed the slot).
    #[inline]
    pub fn len(&self, i: usize) -> usize {
        self.hdr[i].msg_len as usize
    }

    /// Whether nothing was read by the last call.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The bytes of datagram `i` that fit the slot.
    #[inline]
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.payload[i][..self.len(i).min(SLOT)]
    }

    /// The control messages of datagram `i`.
    #[inline]
    pub fn control(&self, i: usize) -> &[u8] {
        // msg_controllen is size_t on glibc but socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let len = (self.hdr[i].msg_hdr.msg_controllen as usize).min(CTRL);
        &self.control[i].0[..len]
    }

    /// Whether datagram `i` came from `peer`.
    #[inline]
    pub fn from_peer(&self, i: usize, peer: &PeerName) -> bool {
        peer.matches(&self.names[i], self.hdr[i].msg_hdr.msg_namelen)
    }
}

/// A target address in the form the kernel reports senders, for a cheap
/// comparison per datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerName {
    /// IPv4: port and address in network byte order.
    V4 {
        /// `sin_port`.
        port_be: u16,
        /// `sin_addr.s_addr`.
        addr_be: u32,
    },
    /// IPv6: port in network byte order and the address.
    V6 {
        /// `sin6_port`.
        port_be: u16,
        /// `sin6_addr`.
        addr: [u8; 16],
    },
}

impl PeerName {
    /// The name of `addr`.
    pub fn of(addr: SocketAddr) -> PeerName {
        match addr {
            SocketAddr::V4(a) => PeerName::V4 {
                port_be: a.port().to_be(),
                addr_be: u32::from_ne_bytes(a.ip().octets()),
            },
            SocketAddr::V6(a) => PeerName::V6 {
                port_be: a.port().to_be(),
                addr: a.ip().octets(),
            },
        }
    }

    /// Whether a received `name` (of `len` bytes) is this address.
    #[inline]
    pub fn matches(&self, name: &libc::sockaddr_storage, len: libc::socklen_t) -> bool {
        match *self {
            PeerName::V4 { port_be, addr_be } => view::<libc::sockaddr_in>(name, len)
                .is_some_and(|sin| sin.sin_port == port_be && sin.sin_addr.s_addr == addr_be),
            PeerName::V6 { port_be, addr } => view::<libc::sockaddr_in6>(name, len)
                .is_some_and(|sin6| sin6.sin6_port == port_be && sin6.sin6_addr.s6_addr == addr),
        }
    }
}

/// A socket address type of one family, as a `sockaddr_storage` holds it.
trait SockAddrOf {
    /// Its address family.
    const FAMILY: libc::c_int;
}

impl SockAddrOf for libc::sockaddr_in {
    const FAMILY: libc::c_int = libc::AF_INET;
}

impl SockAddrOf for libc::sockaddr_in6 {
    const FAMILY: libc::c_int = libc::AF_INET6;
}

/// `name` (of `len` bytes) as a `T`, if it holds one.
#[inline]
fn view<T: SockAddrOf>(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<&T> {
    if name.ss_family != T::FAMILY as libc::sa_family_t || (len as usize) < std::mem::size_of::<T>()
    {
        return None;
    }
    // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr
    // (the only types `SockAddrOf` is implemented for), and the family says
    // it holds a `T`.
    Some(unsafe { &*(name as *const libc::sockaddr_storage).cast::<T>() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_with_names() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let mut template = [0u8; HEADER_LEN];
        template[0] = 0x23;
        let mut out = SendBatch::new(8, template);
        for i in 0..5 {
            out.set_transmit(i, 0x1000 + i as u64);
        }
        assert_eq!(out.send(client.as_raw_fd(), 5).unwrap(), 5);
        let mut inb: RecvBatch<RECV_SLOT, 64> = RecvBatch::new(8);
        server.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = inb.recv(server.as_raw_fd(), 0).unwrap();
            for i in 0..n {
                assert_eq!(inb.len(i), 48);
                assert!(inb.from_peer(i, &PeerName::of(client.local_addr().unwrap())));
                assert!(!inb.from_peer(i, &PeerName::of(server.local_addr().unwrap())));
                got.push(u64::from_be_bytes(
                    inb.payload(i)[40..48].try_into().unwrap(),
                ));
            }
            if got.len() == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, (0x1000..0x1005).collect::<Vec<u64>>());
        assert_eq!(inb.recv(server.as_raw_fd(), 0).unwrap(), 0);
        assert!(inb.is_empty());
    }

    #[test]
    fn a_gso_send_arrives_as_separate_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        fastntp::sys::socket::setsockopt_int(
            client.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            HEADER_LEN as i32,
        )
        .expect("UDP_SEGMENT (Linux 4.18+)");
        let mut out = SendBatch::new(8, [0x23; HEADER_LEN]);
        for i in 0..6 {
            out.set_transmit(i, 0x2000 + i as u64);
        }
        assert_eq!(out.send_gso(client.as_raw_fd(), 6).unwrap(), 6);
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 512];
        for i in 0..6u64 {
            let n = server.recv(&mut buf).unwrap();
            assert_eq!(n, HEADER_LEN, "one request per datagram");
            assert_eq!(
                u64::from_be_bytes(buf[40..48].try_into().unwrap()),
                0x2000 + i
            );
        }
    }

    #[test]
    fn ipv6_names_compare() {
        let a: SocketAddr = "[::1]:123".parse().unwrap();
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: writing a sockaddr_in6 into zeroed sockaddr_storage.
        let sin6 = unsafe {
            &mut *(&mut name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
        };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = 123u16.to_be();
        sin6.sin6_addr.s6_addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        assert!(PeerName::of(a).matches(&name, len));
        assert!(!PeerName::of("[::1]:124".parse().unwrap()).matches(&name, len));
        assert!(!PeerName::of("127.0.0.1:123".parse().unwrap()).matches(&name, len));
    }
}
