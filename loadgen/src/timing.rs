//! The time of the calling thread, for the sending threads (load threads
//! and the junk flood): nanoseconds since an instant, sleeping then spinning
//! up to an instant, the thread's CPU time and preemptions
//! (`getrusage(RUSAGE_THREAD)`), and its timer slack.

use std::time::{Duration, Instant};

/// `d` in nanoseconds (saturating at `u64::MAX`, some 584 years).
#[inline]
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Nanoseconds since `since`.
#[inline]
pub fn elapsed_ns(since: Instant) -> u64 {
    nanos(since.elapsed())
}

/// Sleeps until shortly before `at`, then spins to it.
pub fn wait_until(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > Duration::from_millis(2) {
            std::thread::sleep(left - Duration::from_millis(1));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// CPU time and involuntary context switches of the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User + system CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Involuntary context switches.
    pub preempted: u64,
}

impl Usage {
    /// What was used from `before` to `self`.
    pub fn since(&self, before: &Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            preempted: self.preempted.saturating_sub(before.preempted),
        }
    }
}

/// The calling thread's [`Usage`] so far.
pub fn thread_usage() -> Usage {
    // SAFETY: all-zero bytes are a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live rusage the kernel fills in.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Usage::default();
    }
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    Usage {
        cpu_ns: ns(ru.ru_utime) + ns(ru.ru_stime),
        preempted: ru.ru_nivcsw as u64,
    }
}

/// Sets the calling thread's timer slack to 1 ns so short sleeps end on
/// time (the default slack is 50 µs).
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_on_time_and_usage_grows() {
        assert_eq!(nanos(Duration::from_millis(3)), 3_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        let before = thread_usage();
        let start = Instant::now();
        let at = start + Duration::from_millis(5);
        wait_until(at);
        assert!(Instant::now() >= at);
        assert!(elapsed_ns(start) >= 5_000_000);
        let used = thread_usage().since(&before);
        assert!(used.cpu_ns < 10_000_000_000, "{used:?}");
    }
}
