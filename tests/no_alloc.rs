//! The hot path never allocates: the server runs in this process under a
//! counting global allocator, and thousands of requests (valid and junk)
//! through each backend's worker loop must not move the count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client_request, Io};
use fastntp::config::{Config, IoBackend, Workers};
use fastntp::server::Server;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The count is process-wide: tests in this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to the system allocator unchanged; only
// counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `count` requests (every 8th one junk) and waits for the replies to
/// the valid ones, without allocating in this thread.
fn traffic(sock: &UdpSocket, server: SocketAddr, count: u64) -> u64 {
    let mut buf = [0u8; 64];
    let mut replies = 0;
    for i in 0..count {
        let mut req = client_request(4, i);
        let junk = i % 8 == 7;
        if junk {
            req[0] = 0x26; // mode 6
        }
        sock.send_to(&req, server).expect("send");
        if !junk && sock.recv_from(&mut buf).is_ok() {
            replies += 1;
        }
    }
    replies
}

fn no_allocation_per_packet(io: IoBackend) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = Config::default();
    config.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.server.workers = Workers::Count(1);
    config.server.io = io;
    config.clock.local_stratum = Some(10);
    let stop = Arc::new(AtomicBool::new(false));
    let server = Server::start(&config, Arc::clone(&stop)).expect("start");
    let addr = server.listening()[0];
    let supervisor = std::thread::spawn(move || server.run());

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // Warm up: first-touch allocations (thread-locals, lazy statics) happen here.
    assert_eq!(traffic(&sock, addr, 200), 175);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let replies = traffic(&sock, addr, 8_000);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(replies, 7_000);
    // The supervisor wakes every 100 ms and may log; no per-packet growth
    // means far fewer allocations than packets.
    assert!(
        after - before < 50,
        "{} allocations during 8000 datagrams on {io:?}",
        after - before
    );
    stop.store(true, Ordering::Relaxed);
    supervisor.join().unwrap().unwrap();
}

#[test]
fn mmsg_worker_loop_does_not_allocate() {
    no_allocation_per_packet(IoBackend::Mmsg);
}

#[test]
fn io_uring_worker_loop_does_not_allocate() {
    if Io::uring_or_skip().is_some() {
        no_allocation_per_packet(IoBackend::IoUring);
    }
}
