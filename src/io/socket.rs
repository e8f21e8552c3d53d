//! Listening sockets: one `SO_REUSEPORT` socket per worker and listen
//! address (the kernel spreads clients over them by hash), each with kernel
//! receive timestamps, packet info when bound to a wildcard address and
//! large buffers. Bind failures are turned into messages that tell an
//! operator what to change.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::socket::{set_buffer, setsockopt_int};
use crate::sys::txstamp::set_tx_stamping;

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
