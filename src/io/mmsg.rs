//! The portable backend: `poll` to wait, then per ready socket a
//! `recvmmsg` batch in, lent to [`Worker::serve_batch`] (see [`Batch`]),
//! whose replies go out with `sendmmsg` chunk by chunk. Every buffer is
//! allocated once per worker; the per-packet path only resets a few header
//! fields.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::errors::{self, Backoff, ErrorAction};
use super::socket::ListenSocket;
use super::txtime::Departures;
use super::worker::{Batch, Datagram, Sent, Worker, UNKNOWN_SOURCE};
use crate::proto::{UnixTime, HEADER_LEN};
use crate::sys::buffers::zeroed_slice;
use crate::sys::cmsg::{self, ControlBuf, LocalAddr, RECV_CONTROL_LEN, SEND_CONTROL_LEN};
use crate::sys::sockaddr;
use crate::sys::txstamp::{self, ProbeKeys};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Largest datagram read whole; longer ones are dropped as oversize. 1280
/// bytes (the IPv6 minimum MTU) fits any unfragmented NTP request with
/// extension fields.
pub const RECV_SLOT: usize = 1280;
/// How long a worker sleeps in `poll` before re-checking the stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Batches read from one socket before looking at the others.
const ROUNDS_PER_SOCKET: usize = 8;

/// The buffers and message headers of one worker. The headers point into
/// the boxed buffers, which never move; the raw pointers also make this
/// type `!Send`, so it lives and dies on its worker thread.
pub(super) struct MmsgBatch {
    payload: Box<[[u8; RECV_SLOT]]>,
    names: Box<[libc::sockaddr_storage]>,
    recv_control: Box<[ControlBuf<RECV_CONTROL_LEN>]>,
    recv_iov: Box<[libc::iovec]>,
    recv_hdr: Box<[libc::mmsghdr]>,
    /// Headers the last `recvmmsg` filled, to be reset before the next.
    recv_used: usize,
    replies: Box<[[u8; HEADER_LEN]]>,
    send_control: Box<[ControlBuf<SEND_CONTROL_LEN>]>,
    send_iov: Box<[libc::iovec]>,
    send_hdr: Box<[libc::mmsghdr]>,
}

impl MmsgBatch {
    pub(super) fn new() -> Self {
        let mut b = MmsgBatch {
            payload: vec![[0u8; RECV_SLOT]; BATCH].into_boxed_slice(),
            // SAFETY: all-zero is a valid sockaddr_storage.
            names: unsafe { zeroed_slice(BATCH) },
            recv_control: vec![ControlBuf::default(); BATCH].into_boxed_slice(),
            // SAFETY: all-zero is a valid iovec.
            recv_iov: unsafe { zeroed_slice(BATCH) },
            // SAFETY: all-zero is a valid mmsghdr.
            recv_hdr: unsafe { zeroed_slice(BATCH) },
            recv_used: BATCH,
            replies: vec![[0u8; HEADER_LEN]; BATCH].into_boxed_slice(),
            send_control: vec![ControlBuf::default(); BATCH].into_boxed_slice(),
            // SAFETY: all-zero is a valid iovec.
            send_iov: unsafe { zeroed_slice(BATCH) },
            // SAFETY: all-zero is a valid mmsghdr.
            send_hdr: unsafe { zeroed_slice(BATCH) },
        };
        for i in 0..BATCH {
            b.recv_iov[i] = libc::iovec {
                iov_base: b.payload[i].as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            let h = &mut b.recv_hdr[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.recv_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = b.recv_control[i].0.as_mut_ptr().cast();
            b.send_iov[i] = libc::iovec {
                iov_base: b.replies[i].as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            };
            let s = &mut b.send_hdr[i].msg_hdr;
            s.msg_iov = &mut b.send_iov[i];
            s.msg_iovlen = 1;
        }
        b
    }

    /// Reads up to [`BATCH`] datagrams without blocking.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        for h in &mut self.recv_hdr[..self.recv_used] {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_controllen = RECV_CONTROL_LEN as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at buffers owned by `self` with the
        // lengths just set; `BATCH` headers exist; the kernel writes only
        // within those lengths. No timeout pointer is passed.
        let n = unsafe {
            raw::recvmmsg(
                fd,
                self.recv_hdr.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            self.recv_used = 0;
            return Err(io::Error::last_os_error());
        }
        self.recv_used = n as usize;
        Ok(n as usize)
    }

    /// Addresses reply slot `slot` to the sender of received datagram `from`.
    fn queue(&mut self, slot: usize, from: usize, source: Option<&LocalAddr>) {
        let namelen = self.recv_hdr[from].msg_hdr.msg_namelen;
        let name: *mut libc::sockaddr_storage = &mut self.names[from];
        let control = &mut self.send_control[slot].0;
        let (control_ptr, control_len) = match source {
            Some(local) => (control.as_mut_ptr(), cmsg::write_source(control, local)),
            None => (std::ptr::null_mut(), 0),
        };
        let s = &mut self.send_hdr[slot].msg_hdr;
        s.msg_name = name.cast();
        s.msg_namelen = namelen;
        s.msg_control = control_ptr.cast();
        s.msg_controllen = control_len as _;
    }

    /// Sends queued replies `range`; says how many failed (and the last
    /// error) and how many went out. A failure of one reply (e.g. a
    /// firewall refusing one destination) skips just that reply; a full
    /// send buffer fails the rest.
    fn send(&mut self, fd: i32, range: Range<usize>) -> (Sent, usize) {
        let (mut done, count) = (range.start, range.end);
        let mut sent = Sent::default();
        let mut went = 0;
        while done < count {
            // SAFETY: headers `done..count` were filled by `queue` and point
            // at buffers owned by `self` (names stay valid until the next
            // `recv`).
            let rc = unsafe {
                raw::sendmmsg(
                    fd,
                    self.send_hdr[done..].as_mut_ptr(),
                    (count - done) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                done += rc as usize;
                went += rc as usize;
                continue;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            sent.errno = errno;
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM => {
                    sent.failed += (count - done) as u64;
                    break;
                }
                _ => {
                    sent.failed += 1;
                    done += 1;
                }
            }
        }
        (sent, went)
    }
}

/// The three system calls of a batch, made directly. glibc's wrappers make
/// each a thread-cancellation point (about 60 instructions of bookkeeping a
/// call, measured with callgrind), for `pthread_cancel`, which Rust never
/// uses. Same contracts as the libc functions; return -1 with `errno` set on
/// failure.
mod raw {
    /// `recvmmsg` without a timeout.
    ///
    /// # Safety
    /// `hdrs` points at `n` valid headers describing writable buffers.
    pub unsafe fn recvmmsg(fd: i32, hdrs: *mut libc::mmsghdr, n: u32, flags: i32) -> isize {
        let no_timeout = std::ptr::null::<libc::timespec>();
        // SAFETY: the caller's contract is the system call's.
        unsafe { libc::syscall(libc::SYS_recvmmsg, fd, hdrs, n, flags, no_timeout) as isize }
    }

    /// `sendmmsg`.
    ///
    /// # Safety
    /// `hdrs` points at `n` valid headers describing readable buffers.
    pub unsafe fn sendmmsg(fd: i32, hdrs: *mut libc::mmsghdr, n: u32, flags: i32) -> isize {
        // SAFETY: the caller's contract is the system call's.
        unsafe { libc::syscall(libc::SYS_sendmmsg, fd, hdrs, n, flags) as isize }
    }

    /// `ppoll` with no signal mask (`poll` itself does not exist on every
    /// architecture).
    pub fn poll(fds: &mut [libc::pollfd], timeout: libc::timespec) -> isize {
        let no_mask = std::ptr::null::<libc::sigset_t>();
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs and
        // `timeout` a live timespec; the kernel copies the timeout in.
        unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                fds.as_mut_ptr(),
                fds.len(),
                &timeout,
                no_mask,
                0usize,
            ) as isize
        }
    }
}

/// What the mmsg loop keeps per socket.
#[derive(Debug, Default)]
struct SocketState {
    keys: ProbeKeys,
    backoff: Backoff,
    /// After failing receives: not polled before this.
    resume_at: Option<Instant>,
}

/// Serves `sockets` until `stop` is set. Returns an error only for failures
/// that mean the sockets are unusable (see [`errors`]); everything else is
/// counted and survived.
pub fn serve(worker: &mut Worker, sockets: &[ListenSocket], stop: &AtomicBool) -> io::Result<()> {
    let mut batch = MmsgBatch::new();
    let mut state: Vec<SocketState> = sockets.iter().map(|_| SocketState::default()).collect();
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    worker.ready();
    while !stop.load(Ordering::Relaxed) {
        let timeout = poll_timeout(sockets, &mut state, &mut fds);
        let ready = raw::poll(&mut fds, timeout);
        if ready < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errors::on_poll(errno) {
                ErrorAction::Stop => return Err(io::Error::from_raw_os_error(errno)),
                _ => continue,
            }
        }
        for ((sock, pfd), st) in sockets.iter().zip(&fds).zip(&mut state) {
            if pfd.revents & libc::POLLERR != 0 {
                // A transmit timestamp that came after its probe was given
                // up (or an error report): read it, or `poll` keeps saying
                // POLLERR and the worker spins.
                txstamp::drain_probe_timestamps(sock.fd(), &mut st.keys);
            }
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..ROUNDS_PER_SOCKET {
                match batch.serve(worker, sock, Some(&mut st.keys), sockets) {
                    Ok(n) => {
                        st.backoff.succeeded();
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(errno) => {
                        if errors::on_receive(errno) == ErrorAction::Stop {
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                        worker.note_receive_error(sock.local, errno);
                        let pause = st.backoff.failed();
                        st.resume_at = (!pause.is_zero()).then(|| Instant::now() + pause);
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Takes sockets whose receives keep failing out of the poll set until
/// their pause is over (a negative descriptor is ignored by `poll`), and
/// returns how long `poll` may sleep.
fn poll_timeout(
    sockets: &[ListenSocket],
    state: &mut [SocketState],
    fds: &mut [libc::pollfd],
) -> libc::timespec {
    let mut timeout = POLL_TIMEOUT;
    let now = Instant::now();
    for ((sock, st), pfd) in sockets.iter().zip(state).zip(fds) {
        pfd.fd = sock.fd();
        if let Some(at) = st.resume_at {
            if at > now {
                pfd.fd = -1;
                timeout = timeout.min(at - now);
            } else {
                st.resume_at = None;
            }
        }
    }
    libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    }
}

impl MmsgBatch {
    /// One batch from `sock`: reads up to [`BATCH`] datagrams and lends
    /// them to `worker` (see [`Received`]). With `keys`, a chunk now and
    /// then goes out with kernel transmit timestamps on (the sweeps of the
    /// io_uring backend pass `None`: its own probes may be in flight).
    /// `all` are the worker's sockets (their receive queues are bounded
    /// together). Returns how many datagrams were read, or the receive's
    /// errno (`EAGAIN` is 0 datagrams, not an error).
    pub(super) fn serve(
        &mut self,
        worker: &mut Worker,
        sock: &ListenSocket,
        keys: Option<&mut ProbeKeys>,
        all: &[ListenSocket],
    ) -> Result<usize, i32> {
        let n = match self.recv(sock.fd()) {
            Ok(n) => n,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                    errno => Err(errno.unwrap_or(0)),
                }
            }
        };
        if n > 0 {
            worker.serve_batch(&mut Received {
                buffers: self,
                sock,
                keys,
                all,
                n,
                kept: 0,
                local: None,
                probe: None,
                departures: None,
            });
        }
        Ok(n)
    }
}

/// One `recvmmsg` batch from one socket, as the worker sees it: request
/// `i` is received slot `i`, kept reply `k` is reply slot `k`, and each
/// chunk goes out with one `sendmmsg` (a probed one with transmit stamps
/// switched on around it, read back at once).
struct Received<'a> {
    buffers: &'a mut MmsgBatch,
    sock: &'a ListenSocket,
    keys: Option<&'a mut ProbeKeys>,
    all: &'a [ListenSocket],
    /// Datagrams received.
    n: usize,
    /// Replies kept so far.
    kept: usize,
    /// Where the request just handed out was sent to (wildcard sockets).
    local: Option<LocalAddr>,
    /// The `OPT_ID` number of the probed chunk's first reply, while
    /// transmit stamps are on for it.
    probe: Option<u32>,
    departures: Option<Departures>,
}

impl Batch for Received<'_> {
    fn received(&self) -> usize {
        self.n
    }

    fn request(&mut self, i: usize) -> (Datagram<'_>, &mut [u8; HEADER_LEN]) {
        let b = &mut *self.buffers;
        let h = &b.recv_hdr[i];
        // msg_controllen is size_t on glibc but socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = (h.msg_hdr.msg_controllen as usize).min(RECV_CONTROL_LEN);
        let info = cmsg::parse(&b.recv_control[i].0[..control_len]);
        self.local = if self.sock.wildcard { info.local } else { None };
        let len = (h.msg_len as usize).min(RECV_SLOT);
        let dgram = Datagram {
            payload: &b.payload[i][..len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            rx_stamp: info.rx_stamp,
            source: sockaddr::ip_of_storage(&b.names[i], h.msg_hdr.msg_namelen)
                .unwrap_or(UNKNOWN_SOURCE),
        };
        (dgram, &mut b.replies[self.kept])
    }

    fn keep(&mut self, i: usize) -> Result<(), i32> {
        let local = self.local;
        self.buffers.queue(self.kept, i, local.as_ref());
        self.kept += 1;
        Ok(())
    }

    fn reply(&mut self, k: usize) -> &mut [u8; HEADER_LEN] {
        &mut self.buffers.replies[k]
    }

    fn probe(&mut self, _chunk: Range<usize>) -> bool {
        let Some(keys) = self.keys.as_deref() else {
            return false;
        };
        if txstamp::set_tx_stamping(self.sock.fd(), true).is_err() {
            return false;
        }
        self.probe = Some(keys.next());
        true
    }

    fn send(&mut self, chunk: Range<usize>, t0: UnixTime) -> Sent {
        let len = chunk.len();
        let (sent, sent_ok) = self.buffers.send(self.sock.fd(), chunk);
        if let (Some(first), Some(keys)) = (self.probe.take(), self.keys.as_deref_mut()) {
            let _ = txstamp::set_tx_stamping(self.sock.fd(), false);
            keys.sent(sent_ok);
            let mut d = Departures::new(t0, len);
            txstamp::take_probe_timestamps(self.sock.fd(), keys, first, d.stamps_mut());
            if sent.failed == 0 {
                self.departures = Some(d);
            }
        }
        sent
    }

    fn departures(&mut self) -> Option<Departures> {
        self.departures.take()
    }

    fn sockets(&self) -> &[ListenSocket] {
        self.all
    }
}
