//! Socket calls beyond what std and socket2 offer: integer options and
//! buffer sizes (forced past the system limits where privileged), the
//! kernel's drop count, and one non-blocking `recvmsg` with its control
//! messages.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};

use super::cmsg::AnyControl;

/// Sets the receive queue of `socket` to `bytes` of kernel memory (the
/// kernel doubles what it is given, so half is asked for), past
/// `net.core.rmem_max` where the process has `CAP_NET_ADMIN`.
pub fn set_receive_queue(socket: &UdpSocket, bytes: usize) -> io::Result<()> {
    set_buffer(socket.as_raw_fd(), libc::SO_RCVBUFFORCE, bytes / 2)
}

/// Sets a buffer size, forcing past `rmem_max`/`wmem_max` when privileged.
pub fn set_buffer(fd: RawFd, force_opt: libc::c_int, size: usize) -> io::Result<()> {
    let size = size.min(i32::MAX as usize) as i32;
    if setsockopt_int(fd, libc::SOL_SOCKET, force_opt, size).is_ok() {
        return Ok(());
    }
    let plain = if force_opt == libc::SO_RCVBUFFORCE {
        libc::SO_RCVBUF
    } else {
        libc::SO_SNDBUF
    };
    setsockopt_int(fd, libc::SOL_SOCKET, plain, size)
}

/// `setsockopt` with an `int` value.
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the duration of the call and the
    // length passed is its size; the kernel validates `fd`, level and name.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` on `fd` with `flags` (`MSG_DONTWAIT` for non-blocking):
/// the payload goes to `data`, the control messages to `control`. Returns
/// the payload length and the control bytes, or `Ok(None)` when nothing is
/// queued (`EAGAIN`).
pub fn recv_with_control<'c>(
    fd: RawFd,
    data: &mut [u8],
    control: &'c mut AnyControl,
    flags: i32,
) -> io::Result<Option<(usize, &'c [u8])>> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` points at `iov` (over `data`) and `control`, both
    // exclusively borrowed for the call, with their true lengths; the
    // kernel writes only within them.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // msg_controllen is size_t on glibc but socklen_t on musl.
    #[allow(clippy::unnecessary_cast)]
    let len = (msg.msg_controllen as usize).min(control.0.len());
    Ok(Some((n as usize, &control.0[..len])))
}

/// Index of the drop count in `SO_MEMINFO`'s array (`SK_MEMINFO_DROPS`).
const SK_MEMINFO_DROPS: usize = 8;
/// Entries of `SO_MEMINFO`'s array (`SK_MEMINFO_VARS`) on current kernels.
const SK_MEMINFO_VARS: usize = 9;

/// The kernel's count of datagrams dropped on `socket` (receive queue
/// full), read with `SO_MEMINFO`; cheap enough to poll every second.
pub fn kernel_drops(socket: &UdpSocket) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid
    // in/out length; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (SK_MEMINFO_DROPS + 1) * 4 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(info[SK_MEMINFO_DROPS])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_count_datagrams_the_queue_could_not_hold() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        assert_eq!(kernel_drops(&sock).unwrap(), 0);
        // Shrink the queue, then overfill it.
        setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            client.send_to(&[0u8; 512], addr).unwrap();
        }
        assert!(kernel_drops(&sock).unwrap() > 100);
    }
}
