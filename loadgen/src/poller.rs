//! Waiting for replies on one thread's client sockets, with a nanosecond
//! timeout. Two ways, same interface:
//!
//! - few sockets (up to [`POLL_MAX`]): `ppoll`. A look without waiting
//!   (timeout 0) registers nothing with the sockets, so a busy thread adds
//!   no per-datagram work to the *sender's* core — on loopback that is the
//!   server's core, which must not pay for our bookkeeping;
//! - many sockets: a level-triggered epoll set (`epoll_pwait2` for
//!   nanosecond timeouts on Linux 5.11+, else millisecond `epoll_wait` and
//!   the engine spins the rest). Each datagram then also runs epoll's
//!   wake-up callback on the sender's core.
//!
//! An error-queue entry (a TX timestamp, an ICMP error) shows as an error.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The token the socket was added with.
    pub token: u64,
    /// Datagrams to read.
    pub readable: bool,
    /// The error queue holds something (TX stamps, ICMP errors).
    pub error: bool,
}

/// Sockets up to which `ppoll` is used instead of epoll.
pub const POLL_MAX: usize = 32;

/// A set of sockets to wait on.
pub enum Poller {
    /// `ppoll` over a few sockets.
    Poll(PollSet),
    /// epoll over many.
    Epoll(EpollSet),
}

impl Poller {
    /// A set for `sockets` sockets.
    pub fn new(sockets: usize) -> io::Result<Poller> {
        if sockets <= POLL_MAX {
            Ok(Poller::Poll(PollSet::default()))
        } else {
            Ok(Poller::Epoll(EpollSet::new(sockets)?))
        }
    }

    /// Watches `fd`, reporting `token`.
    pub fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        match self {
            Poller::Poll(p) => {
                p.add(fd, token);
                Ok(())
            }
            Poller::Epoll(e) => e.add(fd, token),
        }
    }

    /// Waits up to `timeout_ns` (0: just look) and returns how many
    /// sockets are ready; read them with [`Self::ready`]. A signal
    /// interrupting the wait counts as nothing ready.
    #[inline]
    pub fn wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        match self {
            Poller::Poll(p) => p.wait(timeout_ns),
            Poller::Epoll(e) => e.wait(timeout_ns),
        }
    }

    /// The `i`-th report of the last wait.
    #[inline]
    pub fn ready(&self, i: usize) -> Ready {
        match self {
            Poller::Poll(p) => p.ready(i),
            Poller::Epoll(e) => e.ready(i),
        }
    }

    /// Whether waits have nanosecond resolution.
    pub fn fine_timeouts(&self) -> bool {
        match self {
            Poller::Poll(_) => true,
            Poller::Epoll(e) => e.pwait2,
        }
    }

    /// "ppoll" or "epoll".
    pub fn name(&self) -> &'static str {
        match self {
            Poller::Poll(_) => "ppoll",
            Poller::Epoll(_) => "epoll",
        }
    }
}

/// `ppoll` over a few sockets.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
    tokens: Vec<u64>,
    ready: Vec<Ready>,
}

impl PollSet {
    fn add(&mut self, fd: RawFd, token: u64) {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        self.tokens.push(token);
        self.ready.reserve(self.fds.len());
    }

    fn wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs, `ts`
        // a live timespec, and a null sigmask means none.
        let rc = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        self.ready.clear();
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        if rc > 0 {
            for (p, &token) in self.fds.iter().zip(&self.tokens) {
                if p.revents != 0 {
                    // Capacity reserved in `add`: no allocation here.
                    self.ready.push(Ready {
                        token,
                        readable: p.revents & libc::POLLIN != 0,
                        error: p.revents & libc::POLLERR != 0,
                    });
                }
            }
        }
        Ok(self.ready.len())
    }

    fn ready(&self, i: usize) -> Ready {
        self.ready[i]
    }
}

/// An epoll set with its event buffer.
pub struct EpollSet {
    fd: OwnedFd,
    events: Box<[libc::epoll_event]>,
    pwait2: bool,
}

impl EpollSet {
    /// An empty set reporting up to `capacity` sockets per wait.
    pub fn new(capacity: usize) -> io::Result<EpollSet> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.clamp(1, 1024)];
        Ok(EpollSet {
            fd,
            events: events.into_boxed_slice(),
            pwait2: true,
        })
    }

    /// Watches `fd` for input (level-triggered), reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event; the kernel copies it.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ns` (0: just look) and returns how many
    /// sockets are ready; read them with [`Self::ready`]. A signal
    /// interrupting the wait counts as nothing ready.
    pub fn wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        let max = self.events.len() as libc::c_int;
        let ptr = self.events.as_mut_ptr();
        let epfd = self.fd.as_raw_fd();
        let rc = if timeout_ns == 0 || !self.pwait2 {
            let ms = (timeout_ns / 1_000_000).min(i32::MAX as u64) as libc::c_int;
            // SAFETY: `ptr` points at `max` writable epoll_event structs.
            unsafe { libc::epoll_wait(epfd, ptr, max, ms) }
        } else {
            let ts = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `ptr` points at `max` writable epoll_event structs,
            // `ts` is a live timespec, and a null sigmask means none.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    ptr,
                    max,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.pwait2 = false;
                return self.wait(timeout_ns);
            }
            rc as libc::c_int
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(rc as usize)
    }

    /// The `i`-th report of the last wait.
    #[inline]
    pub fn ready(&self, i: usize) -> Ready {
        let ev = self.events[i];
        let bits = ev.events;
        Ready {
            token: ev.u64,
            readable: bits & libc::EPOLLIN as u32 != 0,
            error: bits & libc::EPOLLERR as u32 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn both_kinds_report_readable_sockets_and_time_out() {
        let few = Poller::new(2).unwrap();
        assert_eq!(few.name(), "ppoll");
        let many = Poller::new(POLL_MAX + 1).unwrap();
        assert_eq!(many.name(), "epoll");
        for p in [few, many] {
            check(p);
        }
    }

    fn check(mut p: Poller) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        p.add(a.as_raw_fd(), 10).unwrap();
        p.add(b.as_raw_fd(), 11).unwrap();
        assert_eq!(p.wait(0).unwrap(), 0);
        let t = Instant::now();
        assert_eq!(p.wait(2_000_000).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(1));
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(p.wait(1_000_000_000).unwrap(), 1);
        assert_eq!(
            p.ready(0),
            Ready {
                token: 11,
                readable: true,
                error: false
            }
        );
    }
}
