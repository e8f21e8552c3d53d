//! Loopback UDP for tests: free ports, a client socket and one
//! request/reply exchange.

use std::net::{SocketAddr, UdpSocket};
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
    let bind = if server.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    let s = UdpSocket::bind(bind).expect("bind client");
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
