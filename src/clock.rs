//! Reading the host's real-time clock (`CLOCK_REALTIME`, the clock kernel
//! receive timestamps use) and measuring its precision. Read-only: nothing
//! here steers the clock.

use crate::proto::UnixTime;

/// The current kernel real time (`clock_gettime(CLOCK_REALTIME)`, through
/// the vDSO: no system call). Called on the hot path, so it goes straight
/// to libc rather than through `SystemTime`'s conversions.
pub fn now() -> UnixTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    // time_t is i64 here but i32 on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let secs = ts.tv_sec as i64;
    UnixTime::new(secs, ts.tv_nsec as u32)
}

/// The clock's precision as NTP states it: log2 of the shortest interval
/// between two different readings, rounded up (e.g. -24 for ~60 ns).
/// Measured like chrony does at start-up; takes well under a millisecond.
pub fn measure_precision() -> i8 {
    let mut best = u64::MAX;
    for _ in 0..200 {
        let a = now();
        let mut b = now();
        for _ in 0..1000 {
            if b != a {
                break;
            }
            b = now();
        }
        let step = (b.secs - a.secs) as i128 * 1_000_000_000 + b.nanos as i128 - a.nanos as i128;
        if step > 0 {
            best = best.min(step as u64);
        }
    }
    precision_of_nanos(best)
}

/// log2(nanos × 1e-9) rounded up, clamped to [-30, 0].
fn precision_of_nanos(nanos: u64) -> i8 {
    let secs = nanos as f64 * 1e-9;
    (secs.log2().ceil() as i32).clamp(-30, 0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_rounds_up_to_a_power_of_two() {
        assert_eq!(precision_of_nanos(1), -29); // 2^-30 < 1 ns <= 2^-29
        assert_eq!(precision_of_nanos(59), -24); // 2^-24 s = 59.6 ns
        assert_eq!(precision_of_nanos(60), -23);
        assert_eq!(precision_of_nanos(1_000), -19);
        assert_eq!(precision_of_nanos(1_000_000_000), 0);
        assert_eq!(precision_of_nanos(u64::MAX), 0);
    }

    #[test]
    fn measured_precision_is_plausible() {
        let p = measure_precision();
        assert!((-30..=-6).contains(&p), "precision {p}");
    }

    #[test]
    fn now_agrees_with_system_time() {
        let ours = now().as_secs_f64();
        let std = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((ours - std).abs() < 0.01, "{ours} vs {std}");
    }
}
