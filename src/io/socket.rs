//! Listening sockets and thread placement: one `SO_REUSEPORT` socket per
//! worker and listen address (the kernel spreads clients over them by
//! hash), each with kernel receive timestamps, packet info when bound to a
//! wildcard address and large buffers; and reading the kernel's drop count. Bind failures are
//! turned into messages that tell an operator what to change.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::txtime::ProbeKeys;
use crate::proto::UnixTime;

/// Send buffer asked for.
const SEND_BUFFER: usize = 1 << 20;
/// How long a bind waits for an address that a process which just ended
/// still holds (see [`wait_until_unused`]).
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How often the address is tried again meanwhile.
const RELEASE_POLL: Duration = Duration::from_millis(5);

/// A bound socket of one worker.
#[derive(Debug)]
pub struct ListenSocket {
    /// The socket (blocking: backends pass `MSG_DONTWAIT` where they must
    /// not block; io_uring arms its own polling).
    pub socket: UdpSocket,
    /// The address it is bound to (with the real port when 0 was asked).
    pub local: SocketAddr,
    /// Bound to 0.0.0.0 or `::`: replies need packet info to leave from the
    /// address the request was sent to.
    pub wildcard: bool,
}

impl ListenSocket {
    /// The file descriptor.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Why a listen address could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Privileged port without the privilege.
    #[error(
        "cannot bind {addr}: permission denied. Ports below 1024 need root or the \
         CAP_NET_BIND_SERVICE capability (e.g. `setcap cap_net_bind_service=+ep \
         /usr/sbin/fastntpd`, or AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd \
         unit); or pick a port of 1024 or more in `[server] listen`"
    )]
    PermissionDenied {
        /// The listen address.
        addr: SocketAddr,
    },
    /// Someone else holds the port.
    #[error(
        "cannot bind {addr}: address already in use. Is another NTP server (chronyd, ntpd, fastntpd) \
         running? Stop it or change `[server] listen`"
    )]
    AddressInUse {
        /// The listen address.
        addr: SocketAddr,
    },
    /// The address is not one of this host's.
    #[error("cannot bind {addr}: no such local address; check `[server] listen`")]
    AddressNotAvailable {
        /// The listen address.
        addr: SocketAddr,
    },
    /// The address family is not available (e.g. IPv6 disabled).
    #[error("cannot open a socket for {addr}: address family not supported by this host")]
    FamilyNotSupported {
        /// The listen address.
        addr: SocketAddr,
    },
    /// Any other failure.
    #[error("cannot set up {addr}: {what}: {source}")]
    Other {
        /// The listen address.
        addr: SocketAddr,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// How the sockets of a group are set up.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    /// Ask for kernel software receive timestamps.
    pub timestamps: bool,
    /// Receive queue size, bytes of kernel memory (see
    /// [`super::queue::QueueBound`]).
    pub receive_queue: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            timestamps: true,
            receive_queue: super::queue::MAX_BYTES,
        }
    }
}

/// Binds `count` sockets to `addr`, one per worker, sharing the port with
/// `SO_REUSEPORT`. Port 0 picks a free port once; every socket of the group
/// then binds to it.
pub fn bind_group(
    addr: SocketAddr,
    count: usize,
    opts: SocketOptions,
) -> Result<Vec<ListenSocket>, SocketError> {
    if addr.port() != 0 {
        wait_until_unused(addr)?;
    }
    let mut group = Vec::with_capacity(count);
    let mut target = addr;
    for _ in 0..count {
        let sock = bind_one(target, opts)?;
        target = sock.local;
        group.push(sock);
    }
    Ok(group)
}

/// [`ensure_unused`], tried again for up to [`RELEASE_WAIT`] while the
/// address is in use: after an unclean exit (kill -9) the kernel tears a
/// dead process's io_uring down in the background, and the sockets
/// registered with it stay bound for some tens of milliseconds. A restart
/// in that window (systemd `RestartSec=0`, a script) must still bind; a
/// live server holding the address is still reported, a moment later.
fn wait_until_unused(addr: SocketAddr) -> Result<(), SocketError> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match ensure_unused(addr) {
            Err(SocketError::AddressInUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(RELEASE_POLL)
            }
            other => return other,
        }
    }
}

/// `SO_REUSEPORT` would let this process join sockets another process
/// (of the same user) already has on `addr` and silently split the traffic
/// with it, e.g. a second fastntpd started by mistake. A plain bind, which
/// the kernel refuses while anything holds the address, rules that out.
fn ensure_unused(addr: SocketAddr) -> Result<(), SocketError> {
    let probe =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => SocketError::FamilyNotSupported { addr },
                _ => SocketError::Other {
                    addr,
                    what: "socket",
                    source: e,
                },
            }
        })?;
    if addr.is_ipv6() {
        probe
            .set_only_v6(true)
            .map_err(|source| SocketError::Other {
                addr,
                what: "IPV6_V6ONLY",
                source,
            })?;
    }
    probe.bind(&addr.into()).map_err(|e| bind_error(addr, e))
}

fn bind_one(addr: SocketAddr, opts: SocketOptions) -> Result<ListenSocket, SocketError> {
    let step =
        |what: &'static str| move |source: io::Error| SocketError::Other { addr, what, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => SocketError::FamilyNotSupported { addr },
                _ => step("socket")(e),
            }
        })?;
    let wildcard = addr.ip().is_unspecified();
    let fd = socket.as_raw_fd();
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(step("IPV6_V6ONLY"))?;
    }
    socket.set_reuse_port(true).map_err(step("SO_REUSEPORT"))?;
    set_buffer(fd, libc::SO_RCVBUFFORCE, opts.receive_queue / 2).map_err(step("SO_RCVBUF"))?;
    set_buffer(fd, libc::SO_SNDBUFFORCE, SEND_BUFFER).map_err(step("SO_SNDBUF"))?;
    if opts.timestamps {
        set_tx_stamping(fd, false).map_err(step("SO_TIMESTAMPING"))?;
    }
    if wildcard {
        let (level, name) = match addr {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        };
        setsockopt_int(fd, level, name, 1).map_err(step("packet info"))?;
    }
    socket.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    let local = socket
        .local_addr()
        .map_err(step("getsockname"))?
        .as_socket()
        .unwrap_or(addr);
    Ok(ListenSocket {
        socket: socket.into(),
        local,
        wildcard,
    })
}

/// Maps a failed `bind` to the error an operator can act on.
fn bind_error(addr: SocketAddr, e: io::Error) -> SocketError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => SocketError::PermissionDenied { addr },
        Some(libc::EADDRINUSE) => SocketError::AddressInUse { addr },
        Some(libc::EADDRNOTAVAIL) => SocketError::AddressNotAvailable { addr },
        _ => SocketError::Other {
            addr,
            what: "bind",
            source: e,
        },
    }
}

/// Sets the receive queue of `socket` to `bytes` of kernel memory (the
/// kernel doubles what it is given, so half is asked for), past
/// `net.core.rmem_max` where the process has `CAP_NET_ADMIN`.
pub fn set_receive_queue(socket: &UdpSocket, bytes: usize) -> io::Result<()> {
    set_buffer(socket.as_raw_fd(), libc::SO_RCVBUFFORCE, bytes / 2)
}

/// Sets a buffer size, forcing past `rmem_max`/`wmem_max` when privileged.
fn set_buffer(fd: RawFd, force_opt: libc::c_int, size: usize) -> io::Result<()> {
    let size = size.min(i32::MAX as usize) as i32;
    if setsockopt_int(fd, libc::SOL_SOCKET, force_opt, size).is_ok() {
        return Ok(());
    }
    let plain = if force_opt == libc::SO_RCVBUFFORCE {
        libc::SO_RCVBUF
    } else {
        libc::SO_SNDBUF
    };
    setsockopt_int(fd, libc::SOL_SOCKET, plain, size)
}

/// `setsockopt` with an `int` value.
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the duration of the call and the
    // length passed is its size; the kernel validates `fd`, level and name.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A control-message buffer for [`recv_with_control`]: room for everything
/// this crate asks the kernel for on one datagram or one error-queue
/// message, aligned as the kernel's `cmsghdr`s.
#[repr(C, align(8))]
pub struct ControlBuf(pub [u8; CONTROL_BUF_LEN]);

const CONTROL_BUF_LEN: usize = if super::cmsg::RECV_CONTROL_LEN > super::cmsg::ERRQUEUE_CONTROL_LEN
{
    super::cmsg::RECV_CONTROL_LEN
} else {
    super::cmsg::ERRQUEUE_CONTROL_LEN
};

impl Default for ControlBuf {
    fn default() -> Self {
        ControlBuf([0; CONTROL_BUF_LEN])
    }
}

/// One `recvmsg` on `fd` with `flags` (`MSG_DONTWAIT` for non-blocking):
/// the payload goes to `data`, the control messages to `control`. Returns
/// the payload length and the control bytes, or `Ok(None)` when nothing is
/// queued (`EAGAIN`).
pub fn recv_with_control<'c>(
    fd: RawFd,
    data: &mut [u8],
    control: &'c mut ControlBuf,
    flags: i32,
) -> io::Result<Option<(usize, &'c [u8])>> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` points at `iov` (over `data`) and `control`, both
    // exclusively borrowed for the call, with their true lengths; the
    // kernel writes only within them.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // msg_controllen is size_t on glibc but socklen_t on musl.
    #[allow(clippy::unnecessary_cast)]
    let len = (msg.msg_controllen as usize).min(control.0.len());
    Ok(Some((n as usize, &control.0[..len])))
}

/// Timestamping of a listen socket: software receive stamps on every
/// datagram; transmit stamps (when switched on, see [`set_tx_stamping`])
/// returned without the packet and numbered (see [`ProbeKeys`]).
const STAMPING: u32 = libc::SOF_TIMESTAMPING_RX_SOFTWARE
    | libc::SOF_TIMESTAMPING_SOFTWARE
    | libc::SOF_TIMESTAMPING_OPT_TSONLY
    | libc::SOF_TIMESTAMPING_OPT_ID;

/// Switches software transmit timestamps of every datagram `fd` sends on
/// or off (receive stamps stay on): on for the one chunk of replies a
/// worker probes now and then (see [`super::txtime`]).
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
fn drain_error_queue(fd: RawFd, mut stamp: impl FnMut(super::cmsg::TxTimestamp)) {
    let mut data = [0u8; 64];
    let mut control = ControlBuf::default();
    for _ in 0..ERRQUEUE_BATCH {
        let flags = libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT;
        let Ok(Some((_, bytes))) = recv_with_control(fd, &mut data, &mut control, flags) else {
            break;
        };
        if let Some(tx) = super::cmsg::parse_tx_timestamp(bytes) {
            stamp(tx);
        }
    }
}

/// Index of the drop count in `SO_MEMINFO`'s array (`SK_MEMINFO_DROPS`).
const SK_MEMINFO_DROPS: usize = 8;
/// Entries of `SO_MEMINFO`'s array (`SK_MEMINFO_VARS`) on current kernels.
const SK_MEMINFO_VARS: usize = 9;

/// The kernel's count of datagrams dropped on `socket` (receive queue
/// full), read with `SO_MEMINFO`; cheap enough to poll every second.
pub fn kernel_drops(socket: &UdpSocket) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid
    // in/out length; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (SK_MEMINFO_DROPS + 1) * 4 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(info[SK_MEMINFO_DROPS])
}

/// The cores this process may run on, in order.
pub fn usable_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Pins the calling thread to `core`; false if the OS refused.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_ephemeral_port() {
        let group =
            bind_group("127.0.0.1:0".parse().unwrap(), 3, SocketOptions::default()).unwrap();
        assert_eq!(group.len(), 3);
        let port = group[0].local.port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|s| s.local.port() == port && !s.wildcard));
    }

    #[test]
    fn ipv6_wildcard_and_ipv4_wildcard_bind_the_same_port() {
        let v4 = bind_group(
            "0.0.0.0:0".parse().unwrap(),
            1,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap();
        let port = v4[0].local.port();
        let v6 = bind_group(
            SocketAddr::from(([0u16; 8], port)),
            1,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        );
        match v6 {
            Ok(v6) => assert!(v6[0].wildcard && v6[0].local.port() == port),
            Err(SocketError::FamilyNotSupported { .. }) => eprintln!("skipped: no IPv6 here"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_port_another_server_holds_with_reuseport_is_not_silently_shared() {
        let first = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            2,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap();
        let err = bind_group(
            first[0].local,
            2,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, SocketError::AddressInUse { .. }), "{err}");
    }

    #[test]
    fn a_port_held_without_reuseport_is_reported_as_in_use() {
        let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let err = bind_group(
            addr,
            1,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, SocketError::AddressInUse { .. }), "{err}");
        assert!(err.to_string().contains("[server] listen"));
    }

    #[test]
    fn kernel_drops_count_datagrams_the_queue_could_not_hold() {
        let group = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            1,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap();
        let sock = &group[0];
        assert_eq!(kernel_drops(&sock.socket).unwrap(), 0);
        // Shrink the queue, then overfill it.
        setsockopt_int(sock.fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            client.send_to(&[0u8; 512], sock.local).unwrap();
        }
        assert!(kernel_drops(&sock.socket).unwrap() > 100);
    }

    #[test]
    fn requested_transmit_timestamps_come_back() {
        let group =
            bind_group("127.0.0.1:0".parse().unwrap(), 1, SocketOptions::default()).unwrap();
        let sock = &group[0];
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut control = [0u8; super::super::cmsg::SEND_CONTROL_LEN];
        let len = super::super::cmsg::append_tx_timestamp_request(&mut control, 0);
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
            assert_eq!(unsafe { libc::sendmsg(sock.fd(), &msg, 0) }, 48);
        }
        let last = take_tx_timestamp(sock.fd()).expect("transmit timestamps");
        let after = crate::clock::now();
        assert!(
            before <= last && last <= after,
            "{before:?} {last:?} {after:?}"
        );
        // Every requested timestamp was read.
        assert_eq!(take_tx_timestamp(sock.fd()), None);
    }

    #[test]
    fn a_foreign_address_is_reported_as_not_available() {
        let err = bind_group(
            "192.0.2.1:0".parse().unwrap(),
            1,
            SocketOptions {
                timestamps: false,
                ..SocketOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, SocketError::AddressNotAvailable { .. }),
            "{err}"
        );
    }
}
