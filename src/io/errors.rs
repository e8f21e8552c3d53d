//! What a worker does when the kernel says no. A public server meets
//! errors it did not cause (a firewall refusing one destination, memory
//! pressure, an ICMP error reported on the socket), and one of them must
//! never stop the service: such errors are counted, logged at most once a
//! minute, and the worker goes on. Only a state no retry can leave (the
//! socket itself is gone, or memory we handed the kernel is bad: a bug)
//! stops the worker, and with it the process, so that systemd restarts it.
//!
//! For io_uring a third answer exists: the ring itself failed; the worker
//! builds a new one (and, if rings keep failing, serves with `recvmmsg`
//! instead, see [`RingFailures`]).

use std::time::{Duration, Instant};

/// What to do about one failed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Count it and go on (waiting a little first if it repeats: see
    /// [`Backoff`]).
    Continue,
    /// The io_uring instance is unusable: build a new one.
    RecreateRing,
    /// Nothing a retry can fix: stop the worker (and the process).
    Stop,
}

/// Errors that mean this worker's socket or memory is broken: a bug or a
/// descriptor closed under us. Everything else passes.
fn unrecoverable(errno: i32) -> bool {
    matches!(
        errno,
        libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EOPNOTSUPP
    )
}

/// A receive (`recvmmsg`, or an io_uring receive completion) failed with
/// `errno`. Transient conditions (`ENOBUFS`, `ENOMEM`, `EINTR`, `EAGAIN`,
/// an ICMP error such as `ECONNREFUSED` or `ENETUNREACH` reported on the
/// socket, and any errno not known to be fatal) are counted; a broken
/// socket stops the worker.
pub fn on_receive(errno: i32) -> ErrorAction {
    if unrecoverable(errno) {
        ErrorAction::Stop
    } else {
        ErrorAction::Continue
    }
}

/// Waiting for or submitting io_uring work (`io_uring_enter`) failed with
/// `errno`. Interruptions, timeouts and a full completion queue are
/// normal; a ring that lost completions (`EBADR`) or refuses work for any
/// other reason is rebuilt.
pub fn on_ring_enter(errno: i32) -> ErrorAction {
    match errno {
        libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN | libc::ENOMEM => {
            ErrorAction::Continue
        }
        _ => ErrorAction::RecreateRing,
    }
}

/// `poll` failed with `errno` (mmsg backend): only an interruption or a
/// lack of memory is expected; anything else means the arguments are bad.
pub fn on_poll(errno: i32) -> ErrorAction {
    match errno {
        libc::EINTR | libc::ENOMEM | libc::EAGAIN => ErrorAction::Continue,
        _ => ErrorAction::Stop,
    }
}

/// Repeats of a failing operation are spaced out, so that an error that
/// comes back at once (a socket whose every receive fails) does not spin a
/// core: nothing for the first failure, then 1 ms doubling to 100 ms while
/// it keeps failing; one success resets it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Longest pause between attempts.
    pub const MAX: Duration = Duration::from_millis(100);

    /// The operation failed again: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        match self.failures {
            1 => Duration::ZERO,
            n => Duration::from_millis(1u64 << (n - 2).min(7)).min(Self::MAX),
        }
    }

    /// The operation worked.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// Recent io_uring ring failures of one worker. A ring that fails now and
/// then is rebuilt; one that fails [`RingFailures::LIMIT`] times within
/// [`RingFailures::WINDOW`] is given up for the portable backend.
#[derive(Debug, Default)]
pub struct RingFailures {
    recent: Vec<Instant>,
}

impl RingFailures {
    /// Failures tolerated within [`Self::WINDOW`].
    pub const LIMIT: usize = 5;
    /// The window failures are counted over.
    pub const WINDOW: Duration = Duration::from_secs(60);

    /// A ring failed at `now`: whether to give io_uring up.
    pub fn give_up(&mut self, now: Instant) -> bool {
        self.recent
            .retain(|&t| now.saturating_duration_since(t) < Self::WINDOW);
        self.recent.push(now);
        self.recent.len() >= Self::LIMIT
    }
}

/// Logs a recurring error at most once per [`RateLimitedLog::INTERVAL`].
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    last: Option<Instant>,
}

impl RateLimitedLog {
    /// Shortest interval between two lines.
    pub const INTERVAL: Duration = Duration::from_secs(60);

    /// Whether a line may be logged now (and if so, remembers it was).
    pub fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::INTERVAL);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_continue_and_broken_sockets_stop() {
        for errno in [
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EINTR,
            libc::EAGAIN,
            libc::ECONNREFUSED,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::EPERM,
            libc::EMSGSIZE,
            // Unknown to us: still not a reason to stop serving.
            libc::EPROTO,
        ] {
            assert_eq!(on_receive(errno), ErrorAction::Continue, "errno {errno}");
        }
        for errno in [libc::EBADF, libc::ENOTSOCK, libc::EFAULT] {
            assert_eq!(on_receive(errno), ErrorAction::Stop, "errno {errno}");
        }
    }

    #[test]
    fn a_broken_ring_is_rebuilt_and_a_busy_one_waited_for() {
        for errno in [libc::EINTR, libc::ETIME, libc::EBUSY, libc::EAGAIN] {
            assert_eq!(on_ring_enter(errno), ErrorAction::Continue);
        }
        for errno in [libc::EBADR, libc::EOWNERDEAD, libc::ENXIO, libc::EINVAL] {
            assert_eq!(on_ring_enter(errno), ErrorAction::RecreateRing);
        }
        assert_eq!(on_poll(libc::EINTR), ErrorAction::Continue);
        assert_eq!(on_poll(libc::EFAULT), ErrorAction::Stop);
    }

    #[test]
    fn backoff_grows_to_a_bound_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(), Duration::ZERO);
        assert_eq!(b.failed(), Duration::from_millis(1));
        assert_eq!(b.failed(), Duration::from_millis(2));
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.failed(), Backoff::MAX);
        b.succeeded();
        assert_eq!(b.failed(), Duration::ZERO);
    }

    #[test]
    fn rings_are_given_up_after_repeated_failures_only() {
        let mut f = RingFailures::default();
        let t0 = Instant::now();
        for i in 0..RingFailures::LIMIT - 1 {
            assert!(!f.give_up(t0 + Duration::from_secs(i as u64)));
        }
        // Spread over more than the window: never given up.
        let later = t0 + RingFailures::WINDOW * 2;
        assert!(!f.give_up(later));
        for i in 1..RingFailures::LIMIT - 1 {
            assert!(!f.give_up(later + Duration::from_millis(i as u64)));
        }
        assert!(f.give_up(later + Duration::from_millis(10)));
    }
}
