//! Each client address is served by one worker (issue 12): the real
//! `fastntpd` with two workers, once per I/O backend. One client sending
//! from hundreds of source ports (RFC 9109 port randomisation) reaches a
//! single worker, on IPv4 and IPv6, so a per-worker client table sees all
//! of its requests; many client addresses still reach both workers, each
//! address kept whole. Without the kernel steering program the kernel's
//! 4-tuple hash spreads one client's ports over both workers.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{client_request, skip, Fastntpd, Io, WorkerStats};

/// Every test below runs once per backend.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod mmsg {
            $(#[test] fn $name() { super::$name(super::Io::Mmsg) })*
        }
        mod io_uring {
            $(#[test] fn $name() {
                if let Some(io) = super::Io::uring_or_skip() { super::$name(io) }
            })*
        }
    };
}

for_each_backend!(
    one_ipv4_client_from_many_ports_reaches_one_worker,
    one_ipv6_client_from_many_ports_reaches_one_worker,
    many_client_addresses_reach_both_workers_each_kept_whole,
);

/// Source ports of the one client.
const PORTS: usize = 240;
/// How long all replies may take on a busy host.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// A request without a reply after this long is sent again (same port).
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// What the config needs for steering to be on: rate limiting, with limits
/// no test client reaches (every request here must be answered).
const STEERING_ON: &str = "[rate-limit]\nenabled = true\ninterval = 0.000001\nburst = 60000\n";

/// `fastntpd` with two workers on `listen`, running `io`; `None` (after
/// saying why) where two workers or steering cannot run.
fn start(io: Io, listen: SocketAddr) -> Option<Fastntpd> {
    let cores = fastntp::sys::cpu::usable_cores().len();
    if cores < 2 {
        skip(format!("it needs 2 usable cores, this host has {cores}"));
        return None;
    }
    let server = Fastntpd::start(&format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = 2\nio = \"{io}\"\n\
         [clock]\nlocal-stratum = 10\n{STEERING_ON}"
    ));
    let expected = format!("(2 workers, {io} backend)");
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("listening on") && l.contains(&expected)),
        "not 2 workers on the {io} backend: {:#?}",
        server.log
    );
    if let Some(line) = server.log.iter().find(|l| l.contains("cannot steer")) {
        skip(format!("the kernel cannot steer: {line}"));
        return None;
    }
    Some(server)
}

/// A client bound to `source` (any port), or `None` when this host has no
/// such loopback address.
fn client(source: IpAddr) -> Option<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(source, 0)).ok()?;
    sock.set_nonblocking(true).expect("non-blocking");
    Some(sock)
}

/// One client socket and what it sent.
struct Asker {
    sock: UdpSocket,
    /// The transmit timestamp of its request, echoed as the reply's origin.
    transmit: u64,
    sent: u64,
    last_sent: Instant,
    answered: bool,
}

/// Sends one request from each of `sockets` to `server` and waits (at most
/// [`REPLY_WAIT`], sending again from the same port after
/// [`RESEND_AFTER`]) until each is answered. Returns the requests sent per
/// socket.
fn ask_each(server: SocketAddr, sockets: Vec<UdpSocket>) -> Vec<u64> {
    let mut askers: Vec<Asker> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, sock)| Asker {
            sock,
            transmit: 0x5eed_0000_0000_0000 | i as u64,
            sent: 0,
            last_sent: Instant::now(),
            answered: false,
        })
        .collect();
    let send = |a: &mut Asker| {
        a.sock
            .send_to(&client_request(4, a.transmit), server)
            .expect("send");
        a.sent += 1;
        a.last_sent = Instant::now();
    };
    askers.iter_mut().for_each(send);
    let deadline = Instant::now() + REPLY_WAIT;
    let mut buf = [0u8; 128];
    loop {
        let mut waiting = 0;
        for a in askers.iter_mut().filter(|a| !a.answered) {
            while let Ok((n, from)) = a.sock.recv_from(&mut buf) {
                if from == server && n >= 48 && buf[24..32] == a.transmit.to_be_bytes() {
                    a.answered = true;
                }
            }
            if !a.answered {
                waiting += 1;
                if a.last_sent.elapsed() >= RESEND_AFTER {
                    send(a);
                }
            }
        }
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} of {} requests unanswered after {REPLY_WAIT:?}",
            askers.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    askers.iter().map(|a| a.sent).collect()
}

/// Stops the server and returns each worker's `received`, in worker order.
fn received_per_worker(server: Fastntpd) -> Vec<u64> {
    let mut stats: Vec<WorkerStats> = server.stop();
    stats.sort_by_key(|s| s.id);
    assert_eq!(stats.len(), 2, "{stats:?}");
    stats.iter().map(|s| s.received).collect()
}

/// One client address sending from [`PORTS`] source ports: every request
/// is received by the same worker.
fn one_client_from_many_ports_reaches_one_worker(io: Io, source: IpAddr) {
    let listen = SocketAddr::new(source, 0);
    let Some(first) = client(source) else {
        skip(format!("no loopback address {source} here"));
        return;
    };
    let Some(server) = start(io, listen) else {
        return;
    };
    let target = server.addrs[0];
    let mut sockets = vec![first];
    sockets.extend((1..PORTS).map(|_| client(source).expect("another client socket")));
    let ports: std::collections::HashSet<u16> = sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect();
    assert_eq!(ports.len(), PORTS, "distinct source ports");
    let sent: u64 = ask_each(target, sockets).iter().sum();
    let received = received_per_worker(server);
    eprintln!(
        "{io}, {PORTS} ports of {source}: {sent} requests sent, received per worker {received:?}"
    );
    assert_eq!(
        received.iter().sum::<u64>(),
        sent,
        "every request is received once"
    );
    assert!(
        received.contains(&0),
        "{PORTS} source ports of the one client {source} reached both workers \
         (received per worker: {received:?}): a per-worker client table would see only \
         part of its requests"
    );
}

fn one_ipv4_client_from_many_ports_reaches_one_worker(io: Io) {
    one_client_from_many_ports_reaches_one_worker(io, Ipv4Addr::LOCALHOST.into());
}

fn one_ipv6_client_from_many_ports_reaches_one_worker(io: Io) {
    one_client_from_many_ports_reaches_one_worker(io, Ipv6Addr::LOCALHOST.into());
}

/// Client addresses 127.0.0.2 ..= 127.0.0.40.
const ADDRESSES: std::ops::RangeInclusive<u8> = 2..=40;
/// Source ports per address.
const PORTS_EACH: usize = 4;

/// Whether some of `parts` add up to `sum` (subset sum, small numbers).
fn some_add_up_to(parts: &[u64], sum: u64) -> bool {
    let sum = sum as usize;
    let mut reachable = vec![false; sum + 1];
    reachable[0] = true;
    for &p in parts {
        for s in (p as usize..=sum).rev() {
            reachable[s] |= reachable[s - p as usize];
        }
    }
    reachable[sum]
}

/// Many client addresses, each from a few ports: both workers get some,
/// and what each got is made of whole addresses.
fn many_client_addresses_reach_both_workers_each_kept_whole(io: Io) {
    let Some(server) = start(io, "127.0.0.1:0".parse().expect("address")) else {
        return;
    };
    let target = server.addrs[0];
    let mut sockets = Vec::new();
    for host in ADDRESSES {
        let source = IpAddr::from([127, 0, 0, host]);
        for _ in 0..PORTS_EACH {
            sockets.push(client(source).expect("a client on a 127/8 address"));
        }
    }
    let sent = ask_each(target, sockets);
    let per_address: Vec<u64> = sent.chunks(PORTS_EACH).map(|c| c.iter().sum()).collect();
    let received = received_per_worker(server);
    eprintln!(
        "{io}, {} addresses × {PORTS_EACH} ports: received per worker {received:?}",
        per_address.len()
    );
    assert_eq!(received.iter().sum::<u64>(), sent.iter().sum::<u64>());
    assert!(
        received.iter().all(|&n| n > 0),
        "{} client addresses all reached one worker: {received:?}",
        per_address.len()
    );
    assert!(
        some_add_up_to(&per_address, received[0]),
        "worker 0 received {} requests, which no set of whole addresses (sent {per_address:?}) \
         adds up to: an address was split between workers",
        received[0]
    );
}
