//! Fake upstream NTP servers inside the test process, on loopback: each
//! answers client requests with the system clock shifted by a fixed amount
//! (or with a kiss code), and counts what it received.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fastntp::proto::{Header, LeapIndicator, Mode, NtpShort, NtpTimestamp, RefId};

/// A running fake upstream.
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// A stratum-1 server `ahead` seconds ahead of the system clock.
    pub fn ahead(ahead: f64) -> FakeUpstream {
        Self::spawn(ahead, None)
    }

    /// A server that answers every request with kiss code `code`.
    pub fn kiss(code: [u8; 4]) -> FakeUpstream {
        Self::spawn(0.0, Some(RefId(code)))
    }

    fn spawn(ahead: f64, kiss: Option<RefId>) -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
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
                    let mut h = Header {
                        leap: LeapIndicator::NoWarning,
                        version: req.version,
                        mode: Mode::Server.to_bits(),
                        stratum: 1,
                        poll: req.poll,
                        precision: -20,
                        root_delay: NtpShort::ZERO,
                        root_dispersion: NtpShort::from_secs_f64(0.0001),
                        reference_id: RefId(*b"GPS\0"),
                        reference_ts: rx.add_secs(-1.0),
                        origin_ts: req.transmit_ts,
                        receive_ts: rx,
                        transmit_ts: rx,
                    };
                    if let Some(code) = kiss {
                        h.stratum = 0;
                        h.reference_id = code;
                    }
                    h.transmit_ts = NtpTimestamp::from_unix(fastntp::clock::now()).add_secs(ahead);
                    let mut out = [0u8; 48];
                    h.write(&mut out);
                    let _ = socket.send_to(&out, from);
                }
            })
        };
        FakeUpstream {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
