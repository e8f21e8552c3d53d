//! Loopback UDP for tests: free ports, a client socket (on the loopback
//! address of a family, or on a chosen one such as 127.0.1.5 to be another
//! client address) and one request/reply exchange.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

/// A free UDP port on 127.0.0.1 (free when this returns).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// A client socket bound to the loopback of `server`'s family, with a
/// 300 ms read timeout.
pub fn client_for(server: SocketAddr) -> UdpSocket {
    client_from(if server.is_ipv4() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    })
}

/// A client socket on `local` (any address of this host: all of
/// 127.0.0.0/8 is on Linux's loopback, so each 127.x.y.z is a client of
/// its own to the server), an ephemeral port, with a 300 ms read timeout.
pub fn client_from(local: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(local, 0))
        .unwrap_or_else(|e| panic!("bind a client socket on {local}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    s
}

/// Sends `request` and returns the reply, if one comes within the
/// socket's read timeout.
pub fn exchange(sock: &UdpSocket, server: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(request, server).expect("send");
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, server, "reply from the wrong address");
            Some(buf[..n].to_vec())
        }
        Err(_) => None,
    }
}
