//! Whether io_uring can serve here, checked once before a worker relies on
//! it (container seccomp profiles often refuse io_uring).

use std::io;

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::types::{Fd, SubmitArgs, Timespec};

use super::buffers::{recv_template, BufRing};
use super::{new_ring, Unavailable, BUFFER_GROUP, TAG_RECV};

/// Checks that this kernel (and any seccomp policy around us) lets a worker
/// do everything [`super::serve`] does: set up a single-issuer deferred-taskrun
/// ring, register a provided-buffer ring, and receive a datagram through a
/// multishot `RecvMsg` on a UDP socket. Takes about a millisecond.
pub fn probe() -> Result<(), Unavailable> {
    let fail = |what: &str, e: io::Error| Unavailable(format!("{what}: {e}"));
    // Declared before the ring, so dropped after it.
    let template = recv_template();
    let buffers = BufRing::new(2).map_err(|e| fail("buffer ring", e))?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| fail("probe socket", e))?;
    let addr = sock.local_addr().map_err(|e| fail("probe socket", e))?;
    let mut ring = new_ring(8, 16).map_err(|e| fail("ring setup refused", e))?;
    buffers.register(&ring).map_err(|e| {
        fail(
            "provided-buffer ring registration refused (kernel < 5.19?)",
            e,
        )
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let entry = opcode::RecvMsgMulti::new(Fd(fd), &template, BUFFER_GROUP)
        .build()
        .user_data(TAG_RECV);
    // SAFETY: `template`, `buffers` and `sock` are declared before `ring`
    // and so outlive every operation on it.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| Unavailable("submission queue full".into()))?;
    ring.submit().map_err(|e| fail("submit", e))?;
    sock.send_to(b"probe", addr)
        .map_err(|e| fail("probe send", e))?;
    let timeout = Timespec::new().nsec(200_000_000);
    let args = SubmitArgs::new().timespec(&timeout);
    let waited = ring.submitter().submit_with_args(1, &args);
    let cqe = ring.completion().next();
    match (waited, cqe) {
        (_, Some(cqe)) if cqe.result() > 0 && cqueue::more(cqe.flags()) => Ok(()),
        (_, Some(cqe)) if cqe.result() < 0 => Err(fail(
            "multishot recvmsg (kernel < 6.0?)",
            io::Error::from_raw_os_error(-cqe.result()),
        )),
        (_, Some(_)) => Err(Unavailable("multishot recvmsg ended at once".into())),
        (Err(e), None) => Err(fail("waiting for the probe datagram", e)),
        (Ok(_), None) => Err(Unavailable("no completion for the probe datagram".into())),
    }
}
