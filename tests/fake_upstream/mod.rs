//! Fake upstream NTP servers inside the test process, on loopback: each
//! answers client requests with the system clock shifted by a fixed amount
//! (or with a kiss code), and counts what it received.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastntp::proto::{Header, Mode, NtpTimestamp};
use testkit::packet::{short_from_secs, Reply};
use testkit::Background;

/// A running fake upstream.
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _thread: Background<()>,
}

impl FakeUpstream {
    /// A stratum-1 server `ahead` seconds ahead of the system clock.
    pub fn ahead(ahead: f64) -> FakeUpstream {
        Self::spawn(ahead, None)
    }

    /// A server that answers every request with kiss code `code`.
    pub fn kiss(code: [u8; 4]) -> FakeUpstream {
        Self::spawn(0.0, Some(code))
    }

    fn spawn(ahead: f64, kiss: Option<[u8; 4]>) -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let requests = Arc::clone(&requests);
            Background::spawn(move |stop| {
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let rx = NtpTimestamp::from_unix(fastntp::clock::now()).add_secs(ahead);
                    let Ok(req) = Header::parse(&buf[..n]) else {
                        continue;
                    };
                    if req.mode() != Mode::Client {
                        continue;
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    let mut reply = Reply {
                        root_dispersion: short_from_secs(0.0001),
                        reference: rx.add_secs(-1.0).to_bits(),
                        ..Reply::answering(&buf[..n], rx.to_bits())
                    };
                    if let Some(code) = kiss {
                        reply = reply.kiss(code);
                    }
                    reply.transmit = NtpTimestamp::from_unix(fastntp::clock::now())
                        .add_secs(ahead)
                        .to_bits();
                    let _ = socket.send_to(&reply.bytes(), from);
                }
            })
        };
        FakeUpstream {
            addr,
            requests,
            _thread: thread,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// `[[upstream]]` entries for `addrs`, with fast polling (iburst, 1/8 s
/// to 1 s).
pub fn upstream_config(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| {
            format!("[[upstream]]\naddress = \"{a}\"\niburst = true\nmin-poll = -3\nmax-poll = 0\n")
        })
        .collect()
}
