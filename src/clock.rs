//! Reading the host's real-time clock (`CLOCK_REALTIME`, the clock kernel
//! receive timestamps use) and measuring its precision. Read-only: nothing
//! here steers the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::UnixTime;

/// The current kernel real time.
pub fn now() -> UnixTime {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => UnixTime::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => before_epoch(e.duration()),
    }
}

fn before_epoch(d: Duration) -> UnixTime {
    let secs = -(d.as_secs() as i64);
    match d.subsec_nanos() {
        0 => UnixTime::new(secs, 0),
        n => UnixTime::new(secs - 1, 1_000_000_000 - n),
    }
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
    fn times_before_1970_are_negative() {
        assert_eq!(
            before_epoch(Duration::new(1, 250_000_000)),
            UnixTime::new(-2, 750_000_000)
        );
        assert_eq!(before_epoch(Duration::new(3, 0)), UnixTime::new(-3, 0));
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now().secs > 1_577_836_800);
    }
}
