//! External mode: when the other daemon (chronyd, ntpd, ptp4l) last
//! updated the kernel clock, from the `adjtimex` status read every second.
//!
//! On its own the kernel only grows `maxerror`, by 500 µs at each second,
//! and changes nothing else. Any other change — `maxerror` falling or
//! moving off that pattern, a new `esterror` or frequency, the clock
//! becoming synchronized — is the daemon updating the clock (chronyd sets
//! all three at each update). That instant is the reference time served,
//! as chronyd serves the time of its last clock update; never the time of
//! each publish. Before the first update is seen, the earliest it can have
//! been stands in: `maxerror` grew from at least 0 at 500 µs/s.

use super::engine::Now;
use super::kernel_clock::KernelStatus;
use crate::proto::NtpTimestamp;

/// How fast the kernel grows `maxerror` by itself, s/s.
const KERNEL_GROWTH: f64 = 500e-6;
/// Slack when comparing `maxerror` readings (kept in µs by the kernel), s.
const SLACK: f64 = 1.5e-6;
/// `maxerror` at which the kernel gives up (16 s, NTP_PHASE_LIMIT).
const MAXERROR_LIMIT: f64 = 16.0;

/// One `adjtimex` reading.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    status: KernelStatus,
    /// Kernel time of the read.
    at: NtpTimestamp,
    /// Monotonic time of the read, s.
    mono: f64,
}

/// The kernel status readings and the updates they reveal.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelUpdates {
    last: Option<Reading>,
    /// Kernel (and monotonic) time of the last update seen, or of the
    /// earliest it can have been.
    update: Option<(NtpTimestamp, f64)>,
}

/// Whether going from `prev` to `next` in `dt` seconds is the kernel's own
/// doing: `maxerror` grown by whole 500 µs steps (one per second
/// boundary), or pinned at its limit, and nothing else changed.
fn kernel_only(prev: &KernelStatus, next: &KernelStatus, dt: f64) -> bool {
    let grew = next.maxerror - prev.maxerror;
    let steps = (grew / KERNEL_GROWTH).round();
    let growth_ok = (grew - steps * KERNEL_GROWTH).abs() <= SLACK
        && steps >= 0.0
        && steps <= dt.max(0.0).ceil() + 1.0;
    let saturated = prev.maxerror >= MAXERROR_LIMIT && next.maxerror >= MAXERROR_LIMIT;
    (growth_ok || saturated)
        && next.esterror == prev.esterror
        && next.frequency_ppm == prev.frequency_ppm
        && (next.synchronized || !prev.synchronized)
}

impl KernelUpdates {
    /// Takes a reading made at `now`; whether anything changed.
    pub fn observe(&mut self, status: KernelStatus, now: &Now) -> bool {
        let reading = Reading {
            status,
            at: now.kernel,
            mono: now.mono,
        };
        let updated = match &self.last {
            Some(prev) => !kernel_only(&prev.status, &status, now.mono - prev.mono),
            None => {
                // Not seen yet: at the earliest, maxerror ago at 500 µs/s.
                if status.maxerror < MAXERROR_LIMIT {
                    let age = status.maxerror / KERNEL_GROWTH;
                    self.update = Some((now.kernel.add_secs(-age), now.mono - age));
                }
                false
            }
        };
        if updated {
            self.update = Some((now.kernel, now.mono));
        }
        let changed = self.last.map(|r| r.status) != Some(status);
        self.last = Some(reading);
        changed
    }

    /// The latest status read.
    pub fn status(&self) -> Option<KernelStatus> {
        self.last.map(|r| r.status)
    }

    /// Kernel time of the latest read (what its `maxerror` refers to).
    pub fn read_at(&self) -> Option<NtpTimestamp> {
        self.last.map(|r| r.at)
    }

    /// Kernel time of the daemon's last update of the clock (see the
    /// module documentation).
    pub fn last_update(&self) -> Option<NtpTimestamp> {
        self.update.map(|u| u.0)
    }

    /// Seconds since that update at monotonic time `mono`.
    pub fn since_update(&self, mono: f64) -> Option<f64> {
        self.update.map(|u| (mono - u.1).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LeapIndicator, UnixTime};

    fn status(maxerror: f64, esterror: f64) -> KernelStatus {
        KernelStatus {
            synchronized: true,
            maxerror,
            esterror,
            leap: LeapIndicator::NoWarning,
            frequency_ppm: 12.5,
        }
    }

    fn at(secs: f64) -> Now {
        Now::new(1000.0, UnixTime::new(1_800_000_000, 0)).later(secs)
    }

    #[test]
    fn the_kernel_growing_maxerror_is_no_update_and_a_drop_is() {
        let mut k = KernelUpdates::default();
        // First read: maxerror 3 ms, so the update was at most 6 s ago.
        k.observe(status(0.003, 0.0001), &at(0.0));
        let first = k.last_update().unwrap();
        assert!((at(0.0).kernel.diff_secs(first) - 6.0).abs() < 1e-6);
        // The kernel adds 500 µs a second (reads a little over 1 s apart
        // may see two steps): nothing happened.
        for (i, m) in [0.0035, 0.004, 0.005, 0.0055].into_iter().enumerate() {
            k.observe(status(m, 0.0001), &at(1.0 + i as f64 * 1.02));
            assert_eq!(k.last_update(), Some(first), "{m}");
        }
        // chronyd updates: maxerror falls to 2 ms.
        k.observe(status(0.002, 0.0001), &at(5.1));
        assert_eq!(k.last_update(), Some(at(5.1).kernel));
        assert!((k.since_update(at(8.0).mono).unwrap() - 2.9).abs() < 1e-9);
        // An update that sets a larger maxerror, or only a new estimated
        // error or frequency, is seen too.
        k.observe(status(0.0023, 0.0001), &at(6.1));
        assert_eq!(k.last_update(), Some(at(6.1).kernel));
        k.observe(status(0.0028, 0.0002), &at(7.1));
        assert_eq!(k.last_update(), Some(at(7.1).kernel));
        let mut s = status(0.0033, 0.0002);
        s.frequency_ppm = 12.6;
        k.observe(s, &at(8.1));
        assert_eq!(k.last_update(), Some(at(8.1).kernel));
    }

    #[test]
    fn an_unsynchronized_kernel_has_no_update_time() {
        let mut k = KernelUpdates::default();
        let mut s = status(16.0, 16.0);
        s.synchronized = false;
        k.observe(s, &at(0.0));
        k.observe(s, &at(1.0));
        assert_eq!(k.last_update(), None);
        // It becomes synchronized: that is an update.
        k.observe(status(0.01, 0.001), &at(2.0));
        assert_eq!(k.last_update(), Some(at(2.0).kernel));
    }
}
