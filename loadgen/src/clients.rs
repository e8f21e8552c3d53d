//! The client sockets: one UDP socket per client, bound to its source
//! address (successive hosts of `--source-range`, or the kernel's choice)
//! and connected to the target — so the route is looked up once, sends need
//! no address, and only the target's datagrams reach it. Each has a large
//! receive buffer (forced past `rmem_max` when privileged), kernel RX
//! software timestamps, drop counting, and with `--precise-tx` TX software
//! timestamps keyed by `OPT_ID` on the error queue. The junk flood's
//! sockets ([`open_plain`]) are the same without timestamps.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use fastntp::proto::HEADER_LEN;
use fastntp::sys::socket::setsockopt_int;
use socket2::{Domain, Protocol, Socket, Type};

use crate::args::SourceRange;
use crate::error::{ArgError, Error, RunError};

/// Receive buffer memory shared by all client sockets.
const RECV_BUDGET: usize = 256 << 20;
/// Per-socket receive buffer bounds.
const RECV_MIN: usize = 256 << 10;
const RECV_MAX: usize = 16 << 20;
/// Send buffer per socket.
const SEND_BUFFER: usize = 4 << 20;
/// File descriptors kept free for everything else.
const SPARE_FDS: u64 = 64;

/// How the client sockets are set up.
#[derive(Clone, Debug)]
pub struct ClientSetup {
    /// Where the requests go.
    pub target: SocketAddr,
    /// Number of sockets.
    pub clients: usize,
    /// Source addresses, if any.
    pub sources: Option<SourceRange>,
    /// Kernel TX timestamps on the error queue.
    pub precise_tx: bool,
    /// Try UDP GSO (`UDP_SEGMENT`) for sending batches.
    pub gso: bool,
}

/// One client socket.
#[derive(Debug)]
pub struct ClientSocket {
    /// The socket (non-blocking, connected to the target).
    pub socket: Socket,
    /// Its local address.
    pub local: SocketAddr,
}

impl ClientSocket {
    /// The file descriptor.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// What the sockets got from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferInfo {
    /// Receive buffer per socket as the kernel reports it (bytes).
    pub recv_buffer: usize,
    /// Send buffer per socket (bytes).
    pub send_buffer: usize,
    /// The receive buffer was forced past `rmem_max`.
    pub forced: bool,
    /// Every socket accepted `UDP_SEGMENT` (batches go out as one GSO
    /// send each).
    pub gso: bool,
}

/// Receive buffer to ask for per socket.
pub fn recv_buffer_for(clients: usize) -> usize {
    (RECV_BUDGET / clients.max(1)).clamp(RECV_MIN, RECV_MAX)
}

/// Opens every client socket.
pub fn open(setup: &ClientSetup) -> Result<(Vec<ClientSocket>, BufferInfo), Error> {
    ensure_fd_limit(setup.clients)?;
    let recv = recv_buffer_for(setup.clients);
    let mut info = BufferInfo::default();
    let mut sockets = Vec::with_capacity(setup.clients);
    let mut gso = setup.gso;
    for i in 0..setup.clients {
        let source = setup
            .sources
            .as_ref()
            .map(|r| SocketAddr::new(r.nth_host(i as u128), 0));
        let (sock, forced) = open_one(setup, source, recv)?;
        if gso {
            gso = setsockopt_int(
                sock.fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                HEADER_LEN as i32,
            )
            .is_ok();
        }
        if i == 0 {
            info = BufferInfo {
                recv_buffer: sock.socket.recv_buffer_size().unwrap_or(0),
                send_buffer: sock.socket.send_buffer_size().unwrap_or(0),
                forced,
                gso: false,
            };
        }
        sockets.push(sock);
    }
    if setup.gso && !gso {
        // Some socket refused: send plainly everywhere (a segment size on
        // the others is harmless for sends of one datagram).
        for s in &sockets {
            let _ = setsockopt_int(s.fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0);
        }
    }
    info.gso = gso;
    Ok((sockets, info))
}

fn open_one(
    setup: &ClientSetup,
    source: Option<SocketAddr>,
    recv: usize,
) -> Result<(ClientSocket, bool), Error> {
    let (sock, forced) = connected(setup.target, source, recv, |fd| {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
            .map_err(socket_step("SO_RXQ_OVFL"))?;
        let mut flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
        if setup.precise_tx {
            flags |= libc::SOF_TIMESTAMPING_TX_SOFTWARE
                | libc::SOF_TIMESTAMPING_OPT_ID
                | libc::SOF_TIMESTAMPING_OPT_TSONLY;
        }
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags as i32)
            .map_err(socket_step("SO_TIMESTAMPING"))?;
        Ok(())
    })?;
    Ok((sock, forced))
}

fn socket_step(what: &'static str) -> impl Fn(io::Error) -> RunError {
    move |source| RunError::Socket { what, source }
}

/// Opens `count` plain sockets connected to `target` (kernel-chosen source
/// ports, `recv` bytes of receive buffer, no timestamping): the junk
/// flood's sockets, which only send and count what comes back.
pub fn open_plain(
    target: SocketAddr,
    count: usize,
    recv: usize,
) -> Result<Vec<ClientSocket>, Error> {
    ensure_fd_limit(count)?;
    (0..count)
        .map(|_| connected(target, None, recv, |_| Ok(())).map(|(s, _)| s))
        .collect()
}

/// A non-blocking UDP socket with `recv` bytes of receive buffer (forced
/// past `rmem_max` when privileged: the flag says whether it was) and a
/// large send buffer, `options` applied, bound to `source` if given and
/// connected to `target`.
fn connected(
    target: SocketAddr,
    source: Option<SocketAddr>,
    recv: usize,
    options: impl FnOnce(RawFd) -> Result<(), RunError>,
) -> Result<(ClientSocket, bool), Error> {
    let step = socket_step;
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(step("socket"))?;
    socket.set_nonblocking(true).map_err(step("O_NONBLOCK"))?;
    let fd = socket.as_raw_fd();
    let forced = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, recv as i32).is_ok();
    if !forced {
        socket
            .set_recv_buffer_size(recv)
            .map_err(step("SO_RCVBUF"))?;
    }
    if setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SEND_BUFFER as i32,
    )
    .is_err()
    {
        socket
            .set_send_buffer_size(SEND_BUFFER)
            .map_err(step("SO_SNDBUF"))?;
    }
    options(fd)?;
    if let Some(addr) = source {
        socket
            .bind(&addr.into())
            .map_err(|source| ArgError::Bind { addr, source })?;
    }
    socket.connect(&target.into()).map_err(step("connect"))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| unspecified(target));
    Ok((ClientSocket { socket, local }, forced))
}

fn unspecified(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Raises the soft open-file limit so `clients` sockets fit.
fn ensure_fd_limit(clients: usize) -> Result<(), ArgError> {
    let needed = clients as u64 + SPARE_FDS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the kernel fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(()); // Unknown limit: let socket() report a failure.
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `raised` is a live rlimit; only the soft limit changes.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    let now = if ok { raised.rlim_cur } else { lim.rlim_cur };
    if now < needed {
        return Err(ArgError::TooManyFiles {
            clients,
            limit: now,
        });
    }
    Ok(())
}

/// The kernel's count of datagrams dropped at `fd` (`SO_MEMINFO`), if the
/// kernel tells.
pub fn kernel_drops(fd: RawFd) -> Option<u32> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and the kernel writes at
    // most `len` bytes, updating `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let at = libc::SK_MEMINFO_DROPS as usize;
    (rc == 0 && len as usize > at * 4).then(|| info[at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_bind_to_successive_source_addresses_and_connect() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let setup = ClientSetup {
            target: server.local_addr().unwrap(),
            clients: 3,
            sources: Some(SourceRange::parse("127.0.0.0/16").unwrap()),
            precise_tx: true,
            gso: true,
        };
        let (sockets, info) = open(&setup).unwrap();
        let ips: Vec<IpAddr> = sockets.iter().map(|s| s.local.ip()).collect();
        assert_eq!(
            ips,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                .map(|a| a.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(info.recv_buffer >= RECV_MIN, "{info:?}");
        assert!(info.gso, "UDP_SEGMENT is available on Linux 4.18+");
        assert_eq!(kernel_drops(sockets[0].fd()), Some(0));
        sockets[1].socket.send(&[0u8; 48]).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (48, sockets[1].local));
    }

    #[test]
    fn a_foreign_source_address_is_an_argument_error() {
        let setup = ClientSetup {
            target: "127.0.0.1:123".parse().unwrap(),
            clients: 1,
            sources: Some(SourceRange::parse("192.0.2.0/24").unwrap()),
            precise_tx: false,
            gso: false,
        };
        match open(&setup) {
            Err(Error::Arg(ArgError::Bind { .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn receive_buffers_share_a_budget() {
        assert_eq!(recv_buffer_for(1), RECV_MAX);
        assert_eq!(recv_buffer_for(4096), RECV_MIN);
        assert_eq!(recv_buffer_for(64), 4 << 20);
    }
}
