//! Helpers of the fastntp integration tests on top of the shared
//! [`testkit`] (which spawns `fastntpd` and chronyd, builds packets and
//! skips outside CI): the I/O backends under test, seccomp faults injected
//! into `fastntpd`, and a client with kernel receive timestamps.
#![allow(dead_code)]

/// Generates, for each named `fn NAME(io: Io)`, one test per I/O backend:
/// `mmsg::NAME` and `io_uring::NAME` (skipped where io_uring cannot run).
/// The test file needs `Io` in scope and `#[macro_use] mod common;`.
#[allow(unused_macros)] // not every test binary runs per backend
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

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

#[allow(unused_imports)] // not every test binary uses all of them
pub use testkit::{
    client_for, client_request, exchange, in_ci, require, require_tool, skip, total, write_temp,
    Chronyd, Fastntpd, WorkerStats,
};

/// The I/O backends the integration suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// recvmmsg/sendmmsg.
    Mmsg,
    /// io_uring.
    IoUring,
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Mmsg => "mmsg",
            Io::IoUring => "io-uring",
        })
    }
}

impl Io {
    /// `Some(Io::IoUring)` if this kernel runs the io_uring backend; else
    /// prints why the test is skipped (and fails in CI, where it must run).
    pub fn uring_or_skip() -> Option<Io> {
        require(fastntp::io::uring::probe().map(|()| Io::IoUring))
    }
}

/// Makes `cmd`'s process fail `io_uring_setup` with EPERM, as a container
/// seccomp profile that refuses io_uring does.
pub fn deny_io_uring(cmd: &mut Command) {
    seccomp_errno(
        cmd,
        &[SyscallFault {
            nr: libc::SYS_io_uring_setup,
            arg_bits: None,
            errno: libc::EPERM,
        }],
    );
}

/// One system call a seccomp filter makes fail.
#[derive(Clone, Copy, Debug)]
pub struct SyscallFault {
    /// The system call number.
    pub nr: libc::c_long,
    /// Only calls whose argument `.0` (low 32 bits) has a bit of `.1` set.
    pub arg_bits: Option<(u32, u32)>,
    /// The error it returns.
    pub errno: i32,
}

/// Makes `cmd`'s process fail the system calls `faults` describe, with
/// their errno (a seccomp filter installed between fork and exec, after
/// `PR_SET_NO_NEW_PRIVS`): the kernel errors a server must survive, on
/// demand.
pub fn seccomp_errno(cmd: &mut Command, faults: &[SyscallFault]) {
    use std::os::unix::process::CommandExt;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    /// `offsetof(struct seccomp_data, args)` (nr, arch, instruction pointer).
    const ARGS_AT: u32 = 16;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut filter = Vec::new();
    for f in faults {
        let ret = insn(RET_K, 0, 0, RET_ERRNO | f.errno as u32);
        filter.push(insn(LD_W_ABS, 0, 0, 0));
        match f.arg_bits {
            None => {
                filter.push(insn(JEQ_K, 0, 1, f.nr as u32));
                filter.push(ret);
            }
            Some((arg, bits)) => {
                filter.push(insn(JEQ_K, 0, 3, f.nr as u32));
                filter.push(insn(LD_W_ABS, 0, 0, ARGS_AT + 8 * arg));
                filter.push(insn(JSET_K, 0, 1, bits));
                filter.push(ret);
            }
        }
    }
    filter.push(insn(RET_K, 0, 0, RET_ALLOW));
    // SAFETY: the closure runs between fork and exec and only makes two
    // prctl system calls (async-signal-safe) on data owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The `fastntpd` under test, as a command-line word (see
/// [`testkit::fastntpd_bin`]).
pub fn fastntpd_bin() -> String {
    testkit::fastntpd_bin()
        .expect("fastntpd is built")
        .to_string_lossy()
        .into_owned()
}

/// A client socket with kernel receive timestamps on (see
/// [`recv_stamped`]).
pub fn stamped_client_for(server: SocketAddr) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let sock = client_for(server);
    let flags = (libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE) as i32;
    fastntp::sys::socket::setsockopt_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        flags,
    )
    .expect("SO_TIMESTAMPING");
    sock
}

/// Receives one datagram with its kernel receive timestamp (within the
/// socket's read timeout).
pub fn recv_stamped(sock: &UdpSocket) -> Option<(Vec<u8>, fastntp::proto::UnixTime)> {
    use fastntp::sys::cmsg::AnyControl;
    use fastntp::sys::socket::recv_with_control;
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 2048];
    let mut control = AnyControl::default();
    let (n, bytes) = recv_with_control(sock.as_raw_fd(), &mut buf, &mut control, 0).ok()??;
    let stamp = fastntp::sys::cmsg::parse(bytes).rx_stamp?;
    Some((buf[..n].to_vec(), stamp))
}
