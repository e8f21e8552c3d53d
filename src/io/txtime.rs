//! When does a queued reply actually leave? A batch of replies goes to the
//! kernel in one call (`sendmmsg`, or one `io_uring_enter`), which sends
//! them one after another; each send costs microseconds (on loopback it
//! even runs the receiver's side). Stamping every reply at the start of the
//! call would make the k-th reply's transmit timestamp early by k sends.
//!
//! [`TxSchedule`] learns how long a send call takes as a line, `duration =
//! fixed + n × per_send`, and predicts the departure of the k-th reply of a
//! batch as `t0 + k × per_send`: the start of its own slot in a call that
//! starts at `t0`. Only the slope is used: the call's fixed cost (entry,
//! setup, exit) is paid once, not per reply.
//!
//! Call durations are noisy in one direction only (interrupts and
//! preemption add time, nothing removes it), so the line is fitted through
//! the lower envelope: per batch size, the fastest recent call, allowed to
//! creep up slowly so the envelope follows real changes. A transmit
//! timestamp later than the real departure would show the client a
//! negative round trip, so the prediction deliberately errs early: until
//! the fit has two batch sizes to go on, it uses a low default.

use std::time::Duration;

use crate::proto::UnixTime;

/// Batch sizes with an envelope entry (1..BUCKETS); bigger batches are
/// rare and add nothing the smaller ones do not show.
const BUCKETS: usize = 64;
/// How fast an envelope entry creeps up per call of its size (relative),
/// so a once-fast path that got slower is followed within a few hundred
/// calls.
const CREEP: f64 = 0.002;
/// Calls between refits of the line (the fit is a loop over the buckets).
const REFIT_EVERY: u32 = 32;
/// Calls of a size before its envelope entry is trusted (a lone sample may
/// be a stretched one).
const MIN_CALLS: u16 = 16;
/// Starting per-send estimate, and the one used until the fit has two batch
/// sizes: low, so that stamps err early.
const INITIAL_NANOS: f64 = 1_000.0;
/// Per-send estimates are kept in this range (nanoseconds).
const MIN_NANOS: f64 = 50.0;
const MAX_NANOS: f64 = 10_000.0;

/// Running estimate of the time one send takes inside a batched send call.
#[derive(Clone, Copy, Debug)]
pub struct TxSchedule {
    /// Fastest recent call per batch size, in nanoseconds (0 = none yet).
    envelope: [f64; BUCKETS],
    /// Calls seen per batch size (saturating).
    calls: [u16; BUCKETS],
    since_refit: u32,
    per_send_nanos: f64,
    fixed_nanos: f64,
}

impl Default for TxSchedule {
    fn default() -> Self {
        TxSchedule {
            envelope: [0.0; BUCKETS],
            calls: [0; BUCKETS],
            since_refit: 0,
            per_send_nanos: INITIAL_NANOS,
            fixed_nanos: 0.0,
        }
    }
}

impl TxSchedule {
    /// The current estimate of one send's duration.
    pub fn per_send(&self) -> Duration {
        Duration::from_nanos(self.per_send_nanos as u64)
    }

    /// The current estimate of a call's fixed cost.
    pub fn fixed(&self) -> Duration {
        Duration::from_nanos(self.fixed_nanos as u64)
    }

    /// Predicted departure of the reply at `position` (0-based) of a batch
    /// whose send call starts at `t0`.
    pub fn departure(&self, t0: UnixTime, position: usize) -> UnixTime {
        let offset = (position as f64 * self.per_send_nanos) as u64;
        let nanos = t0.nanos as u64 + offset;
        UnixTime::new(
            t0.secs + (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// Learns from a send call that sent `sends` replies in `elapsed`.
    pub fn observe(&mut self, sends: usize, elapsed: Duration) {
        let Some(slot) = self.envelope.get_mut(sends) else {
            return;
        };
        if sends == 0 {
            return;
        }
        let d = elapsed.as_nanos() as f64;
        self.calls[sends] = self.calls[sends].saturating_add(1);
        *slot = if *slot == 0.0 {
            d
        } else {
            d.min(*slot * (1.0 + CREEP))
        };
        self.since_refit += 1;
        if self.since_refit >= REFIT_EVERY {
            self.since_refit = 0;
            self.refit();
        }
    }

    /// Least-squares line through the trusted envelope points. The slope
    /// is capped by the smallest duration per send of any point: the fixed
    /// cost cannot be negative, so no point allows a steeper line.
    fn refit(&mut self) {
        let (mut w, mut sn, mut sd, mut snn, mut snd) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut cap = MAX_NANOS;
        for (n, (&d, &calls)) in self.envelope.iter().zip(&self.calls).enumerate() {
            if d > 0.0 && calls >= MIN_CALLS {
                let n = n as f64;
                cap = cap.min(d / n);
                w += 1.0;
                sn += n;
                sd += d;
                snn += n * n;
                snd += n * d;
            }
        }
        if w < 2.0 {
            return;
        }
        let var_n = snn / w - (sn / w) * (sn / w);
        let cov = snd / w - (sn / w) * (sd / w);
        let slope = (cov / var_n).min(cap).clamp(MIN_NANOS, MAX_NANOS);
        self.per_send_nanos = slope;
        self.fixed_nanos = (sd / w - slope * sn / w).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls of a line with fixed cost 1.6 µs and 1.9 µs per send, batch
    /// sizes cycling through 1..=40, with one-sided noise: mostly up to
    /// 0.6 µs, every 7th call stretched by up to 300 µs (preemption).
    fn feed(s: &mut TxSchedule, calls: usize) {
        for i in 0..calls {
            let n = 1 + i % 40;
            let mut noise = ((i * 7919) % 600) as u64;
            if i % 7 == 0 {
                noise += ((i * 104_729) % 300_000) as u64;
            }
            let d = 1_600 + 1_900 * n as u64 + noise;
            s.observe(n, Duration::from_nanos(d));
        }
    }

    #[test]
    fn the_fixed_cost_is_not_charged_to_each_send() {
        let mut s = TxSchedule::default();
        feed(&mut s, 1_000);
        let per_send = s.per_send().as_nanos() as f64;
        assert!((per_send - 1_900.0).abs() < 40.0, "{per_send}");
        let fixed = s.fixed().as_nanos() as f64;
        assert!((fixed - 1_600.0).abs() < 400.0, "{fixed}");
    }

    #[test]
    fn departures_are_spread_by_the_per_send_cost() {
        let mut s = TxSchedule::default();
        feed(&mut s, 1_000);
        let t0 = UnixTime::new(100, 999_999_000);
        // The first reply is stamped with the start of the call.
        assert_eq!(s.departure(t0, 0), t0);
        let d3 = s.departure(t0, 3);
        assert_eq!(d3.secs, 101);
        let spread = d3.as_secs_f64() - t0.as_secs_f64();
        assert!((spread - 5.7e-6).abs() < 2e-7, "{spread}");
    }

    #[test]
    fn a_run_of_preempted_calls_does_not_move_the_estimate() {
        let mut s = TxSchedule::default();
        feed(&mut s, 1_000);
        for _ in 0..50 {
            s.observe(8, Duration::from_millis(3));
            s.observe(30, Duration::from_micros(400));
        }
        let per_send = s.per_send().as_nanos() as f64;
        assert!((per_send - 1_900.0).abs() < 60.0, "{per_send}");
    }

    #[test]
    fn a_slower_path_is_followed() {
        let mut s = TxSchedule::default();
        feed(&mut s, 1_000);
        // Every send now costs 2.5 µs.
        for i in 0..20_000 {
            let n = 1 + i % 40;
            s.observe(n, Duration::from_nanos(1_600 + 2_500 * n as u64));
        }
        let per_send = s.per_send().as_nanos() as f64;
        assert!((per_send - 2_500.0).abs() < 100.0, "{per_send}");
    }

    #[test]
    fn a_few_stretched_first_calls_do_not_make_a_steep_line() {
        let mut s = TxSchedule::default();
        // Size 2 was only ever seen stretched; size 1 and 40 normally.
        for _ in 0..40 {
            s.observe(1, Duration::from_nanos(3_500));
            s.observe(2, Duration::from_micros(300));
            s.observe(40, Duration::from_nanos(1_600 + 40 * 1_900));
        }
        assert!(
            s.per_send() <= Duration::from_nanos(1_940),
            "{:?}",
            s.per_send()
        );
    }

    #[test]
    fn one_batch_size_alone_keeps_the_low_default() {
        let mut s = TxSchedule::default();
        for _ in 0..100 {
            s.observe(8, Duration::from_micros(20));
        }
        assert_eq!(s.per_send(), TxSchedule::default().per_send());
    }
}
