//! Hazards of a public server, each as an operator or an attacker would
//! meet it (issue 10): a restart right after an unclean exit binds; an idle
//! server stays idle after load (and after a transmit timestamp left on a
//! socket's error queue); kernel errors are counted and survived, a failing
//! io_uring is rebuilt and then replaced by mmsg; requests that went stale
//! while the server was stalled are dropped, not answered late; a worker
//! count beyond the cores is capped.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    client_for, client_request, exchange, seccomp_errno, skip, total, Fastntpd, Io, SyscallFault,
};
use fastntp::proto::Header;

fn config(io: Io, listen: &str, workers: usize) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = {workers}\nio = \"{io}\"\n\
         [clock]\nlocal-stratum = 10\n"
    )
}

fn backends() -> Vec<Io> {
    let mut v = vec![Io::Mmsg];
    v.extend(Io::uring_or_skip());
    v
}

fn answers(addr: SocketAddr) -> bool {
    let sock = client_for(addr);
    (0..3).any(|i| exchange(&sock, addr, &client_request(4, 0xabc0 + i)).is_some())
}

/// After kill -9 the kernel tears a dead process's io_uring down in the
/// background, and its sockets stay bound for some tens of milliseconds;
/// a restart in that window (systemd `RestartSec=0`) must still bind.
#[test]
fn a_restart_right_after_kill_9_binds() {
    for io in backends() {
        let first = Fastntpd::start(&config(io, "127.0.0.1:0", 2));
        let addr = first.addrs[0];
        first.kill();
        for round in 0..5 {
            // Fastntpd::start fails the test if the server does not start.
            let again = Fastntpd::start(&config(io, &addr.to_string(), 2));
            assert_eq!(again.addrs[0], addr);
            assert!(answers(addr), "{io}: no answer after restart {round}");
            again.kill();
        }
    }
}

#[test]
fn a_restart_after_a_double_sigterm_binds() {
    for io in backends() {
        let mut first = Fastntpd::start(&config(io, "127.0.0.1:0", 2));
        let addr = first.addrs[0];
        // The second signal ends the process at once, without clean-up.
        first.signal(libc::SIGTERM);
        first.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.is_running() {
            assert!(Instant::now() < deadline, "did not exit");
            std::thread::sleep(Duration::from_millis(1));
        }
        let again = Fastntpd::start(&config(io, &addr.to_string(), 2));
        assert!(answers(again.addrs[0]), "{io}");
        again.stop();
    }
}

/// After a burst of load, an idle server must go back to using (almost) no
/// CPU: a leftover on a socket's error queue used to make `poll` report it
/// forever while every receive said "nothing", spinning a core.
#[test]
fn an_idle_server_uses_no_cpu_after_a_load_burst() {
    for io in backends() {
        let server = Fastntpd::start(&config(io, "127.0.0.1:0", 1));
        let addr = server.addrs[0];
        let sock = client_for(addr);
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sent = 0u64;
        while sent < 40_000 && Instant::now() < deadline {
            for _ in 0..64 {
                let _ = sock.send_to(&client_request(4, sent), addr);
                sent += 1;
            }
            while sock.recv_from(&mut buf).is_ok() {}
        }
        // Let it finish the burst, then watch it idle.
        std::thread::sleep(Duration::from_millis(500));
        let before = server.cpu_time();
        let watch = Duration::from_secs(5);
        std::thread::sleep(watch);
        let used = server.cpu_time() - before;
        let share = used.as_secs_f64() / watch.as_secs_f64();
        eprintln!("{io}: {sent} requests, then {used:?} of CPU in {watch:?} idle");
        assert!(
            share < 0.01,
            "{io}: an idle server used {:.1} % of a core",
            share * 100.0
        );
        server.stop();
    }
}

/// Puts a kernel transmit timestamp on the error queue of `sock`, the way a
/// probed reply whose stamp came too late leaves one.
fn leave_a_tx_timestamp(sock: &fastntp::io::socket::ListenSocket) {
    use fastntp::sys::cmsg::{append_tx_timestamp_request, SEND_CONTROL_LEN};
    #[repr(C, align(8))]
    struct Control([u8; SEND_CONTROL_LEN]);
    let mut control = Control([0; SEND_CONTROL_LEN]);
    let len = append_tx_timestamp_request(&mut control.0, 0);
    let payload = [0u8; 48];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let dest: libc::sockaddr_in = {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = sock.local.port().to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        a
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &dest as *const libc::sockaddr_in as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = len as _;
    // SAFETY: every pointer in `msg` refers to a live local of the right
    // length for the duration of the call.
    let rc = unsafe { libc::sendmsg(sock.fd(), &msg, 0) };
    assert_eq!(rc, 48, "{}", std::io::Error::last_os_error());
    // The stamp is there: poll reports the error queue.
    let mut pfd = libc::pollfd {
        fd: sock.fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut pfd, 1, 1000) };
    assert!(pfd.revents & libc::POLLERR != 0, "no stamp queued");
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: all-zero is a valid timespec, written by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The same hazard at its root, deterministically: a worker serving a
/// socket that has a transmit timestamp on its error queue and nothing to
/// read must sleep, not spin.
#[test]
fn a_leftover_transmit_timestamp_does_not_make_an_idle_worker_spin() {
    use fastntp::io::counters::SharedCounters;
    use fastntp::io::queue::{QueueBound, DEFAULT_MAX_DELAY};
    use fastntp::io::socket::{bind_group, SocketOptions};
    use fastntp::io::worker::Worker;
    use fastntp::io::Backend;
    use fastntp::proto::ServerState;

    let mut backends = vec![Backend::Mmsg];
    if Io::uring_or_skip().is_some() {
        backends.push(Backend::IoUring);
    }
    for backend in backends {
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = Arc::clone(&stop);
        let worker = std::thread::spawn(move || {
            let sockets =
                bind_group("127.0.0.1:0".parse().unwrap(), 1, SocketOptions::default()).unwrap();
            leave_a_tx_timestamp(&sockets[0]);
            let (_publisher, reader) = fastntp::snapshot::new(&ServerState::unsynchronized(-20));
            let mut worker = Worker::new(
                reader,
                true,
                Arc::new(SharedCounters::default()),
                QueueBound::new(DEFAULT_MAX_DELAY),
                fastntp::policy::Policy::default(),
            );
            let before = thread_cpu();
            let started = Instant::now();
            fastntp::io::serve(backend, &mut worker, &sockets, &stopper).unwrap();
            (thread_cpu() - before, started.elapsed())
        });
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let (cpu, wall) = worker.join().unwrap();
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        eprintln!("{backend:?}: {cpu:?} of CPU in {wall:?}");
        assert!(
            share < 0.02,
            "{backend:?}: the idle worker used {:.1} % of a core",
            share * 100.0
        );
    }
}

/// A receive error the kernel reports on the socket (here every
/// `recvmmsg` fails with ECONNREFUSED, as an ICMP error would make one)
/// is counted and survived; it does not stop the server, nor spin.
#[test]
fn receive_errors_are_counted_and_survived() {
    let fault = SyscallFault {
        nr: libc::SYS_recvmmsg,
        arg_bits: None,
        errno: libc::ECONNREFUSED,
    };
    let mut server = Fastntpd::start_with(&config(Io::Mmsg, "127.0.0.1:0", 1), |cmd| {
        seccomp_errno(cmd, &[fault])
    });
    let addr = server.addrs[0];
    let sock = client_for(addr);
    let before = server.cpu_time();
    let started = Instant::now();
    for i in 0..20 {
        sock.send_to(&client_request(4, i), addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.is_running(), "{:#?}", server.log);
    let share = (server.cpu_time() - before).as_secs_f64() / started.elapsed().as_secs_f64();
    assert!(share < 0.5, "it spins: {:.0} % of a core", share * 100.0);
    let stats = total(&server.stop());
    assert!(stats.receive_errors > 0, "{stats:?}");
}

/// Kernel ≥ 6.15, whose io_uring has `IORING_ENTER_NO_IOWAIT`, which only
/// the serving loop (not the start-up probe) passes.
fn io_uring_waits_without_iowait() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 15)
}

/// An io_uring whose every wait fails (here: `io_uring_enter` of the
/// serving loop returns EOWNERDEAD) is rebuilt a few times, then the worker
/// goes on with the mmsg backend: clients keep being answered.
#[test]
fn a_failing_io_uring_is_rebuilt_then_replaced_by_mmsg() {
    if Io::uring_or_skip().is_none() {
        return;
    }
    if !io_uring_waits_without_iowait() {
        skip("kernel < 6.15 (no IORING_ENTER_NO_IOWAIT to tell the loop's waits)");
        return;
    }
    const NO_IOWAIT: u32 = 128;
    let fault = SyscallFault {
        nr: libc::SYS_io_uring_enter,
        arg_bits: Some((3, NO_IOWAIT)),
        errno: libc::EOWNERDEAD,
    };
    let mut server = Fastntpd::start_with(&config(Io::IoUring, "127.0.0.1:0", 1), |cmd| {
        seccomp_errno(cmd, &[fault])
    });
    server.wait_for("goes on with the mmsg backend", Duration::from_secs(10));
    assert!(answers(server.addrs[0]), "{:#?}", server.log);
    let stats = total(&server.stop());
    assert!(stats.ring_restarts >= 1, "{stats:?}");
}

/// Requests that waited while the server was stalled (here: stopped with
/// SIGSTOP for 1.5 s, past a client's usual timeout) are dropped, not
/// answered that late; the ones that come after are answered at once.
#[test]
fn requests_that_went_stale_in_a_stall_are_dropped_not_answered_late() {
    for io in backends() {
        let server = Fastntpd::start(&config(io, "127.0.0.1:0", 1));
        let addr = server.addrs[0];
        let sock = client_for(addr);
        assert!(answers(addr));
        server.signal(libc::SIGSTOP);
        wait_until_stopped(server.pid());
        const STALLED: u64 = 100;
        for i in 0..STALLED {
            sock.send_to(&client_request(4, 0x0005_7a1e_0000 + i), addr)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(1500));
        server.signal(libc::SIGCONT);
        // Fresh requests behind them are answered.
        assert!(answers(addr), "{io}: fresh requests unanswered");
        let mut buf = [0u8; 64];
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut late = Vec::new();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let h = Header::parse(&buf[..n]).unwrap();
            late.push(h.transmit_ts.diff_secs(h.receive_ts));
        }
        assert!(
            late.is_empty(),
            "{io}: {} stalled requests were answered, up to {:.3} s after they arrived",
            late.len(),
            late.iter().cloned().fold(0.0, f64::max)
        );
        let stats = total(&server.stop());
        assert_eq!(stats.dropped_for("stale"), STALLED, "{io}: {stats:?}");
    }
}

/// Waits until every thread of process `pid` is stopped (SIGSTOP takes
/// effect asynchronously).
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task list")
            .flatten()
            .all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()
                            .map(|r| r.trim_start().starts_with('T'))
                    })
                    .unwrap_or(true)
            });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Usable cores, as the server will see them (it inherits our affinity).
fn usable_cores() -> usize {
    fastntp::sys::cpu::usable_cores().len().max(1)
}

#[test]
fn more_workers_than_cores_start_one_per_core_with_a_warning() {
    let server = Fastntpd::start(&config(Io::Mmsg, "127.0.0.1:0", 64));
    let cores = usable_cores();
    let log = server.log.join("\n");
    assert!(
        log.contains("workers = 64") && log.contains(&format!("starting {cores}")),
        "{log}"
    );
    assert!(log.contains(&format!("({cores} workers")), "{log}");
    let stats = server.stop();
    assert_eq!(stats.len(), cores);
}
