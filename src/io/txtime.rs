//! When does a queued reply actually leave? A batch of replies goes to the
//! kernel in one call (`sendmmsg`, or one `io_uring_enter`), which sends
//! them one after another; each send costs microseconds (on loopback it
//! even runs the receiver's side). Stamping every reply at the start of the
//! call would make the k-th reply's transmit timestamp early by k sends.
//!
//! [`TxSchedule`] predicts the departure of the k-th reply of a batch as
//! `t0 + lead + k × per_send`, where `t0` is the clock read just before the
//! batch is stamped:
//!
//! - `per_send` comes from timing the backend's send calls: their duration
//!   is a line, `fixed + n × per_send`; only the slope is used, since the
//!   call's fixed cost (entry, setup, exit) is paid once, not per reply.
//! - `lead`, the time from `t0` to the first reply leaving, is measured
//!   directly: a few times a second one reply asks the kernel for its
//!   software transmit timestamp (taken as the datagram is handed to the
//!   device, the moment a client's own stamps refer to), less the cost of
//!   that request itself. Each way of sending ([`SendPath`]) has its own
//!   lead.
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
/// Lead samples before the lead is used (until then it is 0: early).
const MIN_LEAD_SAMPLES: u16 = 8;
/// How fast the lead's lower envelope creeps up per sample.
const LEAD_CREEP: f64 = 0.01;
/// Longest believable lead (nanoseconds); longer samples were preempted.
const MAX_LEAD_NANOS: f64 = 50_000.0;

/// What asking for a transmit timestamp costs a sampled datagram before it
/// is stamped, per backend (measured on loopback, kernel 6.18: the
/// request's own parsing, and for io_uring a SendMsg where unsampled
/// replies use the lighter Send). A plain sendmsg arrived 2.38 µs after
/// the clock read, one asking for a timestamp 3.10 µs (its stamp at
/// 2.62 µs); through fastntpd the round trips seen by ntp-loadgen put the
/// cost at ≈ 1 µs for sendmmsg and ≈ 1.8 µs for io_uring.
#[derive(Clone, Copy, Debug)]
pub struct SendProbe;

impl SendProbe {
    /// Through `sendmmsg` (the mmsg backend).
    pub const MMSG: Duration = Duration::from_nanos(1_000);
    /// Through io_uring (SendMsg for the probe, Send for the others).
    pub const IO_URING: Duration = Duration::from_nanos(1_800);
}

/// How a batch's sends reach the kernel; the time from stamping to the
/// first departure differs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendPath {
    /// A call of its own right after stamping (`sendmmsg`, io_uring submit).
    Direct = 0,
    /// Together with the next wait for completions (io_uring, small
    /// batches).
    WithWait = 1,
}

/// Lower envelope of the measured leads of one [`SendPath`].
#[derive(Clone, Copy, Debug, Default)]
struct Lead {
    nanos: f64,
    samples: u16,
}

impl Lead {
    fn observe(&mut self, sample: f64) {
        if !(0.0..=MAX_LEAD_NANOS).contains(&sample) {
            return;
        }
        self.nanos = if self.samples == 0 {
            sample
        } else {
            sample.min(self.nanos * (1.0 + LEAD_CREEP))
        };
        self.samples = self.samples.saturating_add(1);
    }

    fn get(&self) -> f64 {
        if self.samples >= MIN_LEAD_SAMPLES {
            self.nanos
        } else {
            0.0
        }
    }
}

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
    leads: [Lead; 2],
}

impl Default for TxSchedule {
    fn default() -> Self {
        TxSchedule {
            envelope: [0.0; BUCKETS],
            calls: [0; BUCKETS],
            since_refit: 0,
            per_send_nanos: INITIAL_NANOS,
            fixed_nanos: 0.0,
            leads: [Lead::default(); 2],
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

    /// The current lead of `path` (zero until measured).
    pub fn lead(&self, path: SendPath) -> Duration {
        Duration::from_nanos(self.leads[path as usize].get() as u64)
    }

    /// Predicted departure of the reply at `position` (0-based) of a batch
    /// stamped at `t0` and sent by `path`.
    pub fn departure(&self, path: SendPath, t0: UnixTime, position: usize) -> UnixTime {
        let lead = self.leads[path as usize].get();
        let offset = (lead + position as f64 * self.per_send_nanos) as u64;
        let nanos = t0.nanos as u64 + offset;
        UnixTime::new(
            t0.secs + (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// Learns the lead of `path` from the first reply of a batch stamped
    /// at `t0` whose kernel transmit timestamp was `departed`. `probe_cost`
    /// is what asking for that timestamp cost the sampled reply before it
    /// was stamped (see [`SendProbe`]): replies that do not ask leave that
    /// much sooner, and their stamps must not claim a later departure than
    /// the real one.
    pub fn observe_lead(
        &mut self,
        path: SendPath,
        t0: UnixTime,
        departed: UnixTime,
        probe_cost: Duration,
    ) {
        let sample = (departed.secs - t0.secs) as f64 * 1e9 + departed.nanos as f64
            - t0.nanos as f64
            - probe_cost.as_nanos() as f64;
        self.leads[path as usize].observe(sample.max(0.0));
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
        // Without a measured lead, the first reply is stamped with t0.
        assert_eq!(s.departure(SendPath::Direct, t0, 0), t0);
        let d3 = s.departure(SendPath::Direct, t0, 3);
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
    fn the_lead_is_the_fastest_recent_measurement_per_path() {
        let mut s = TxSchedule::default();
        let t0 = UnixTime::new(100, 0);
        let after = |ns: u32| UnixTime::new(100, ns);
        const COST: Duration = Duration::from_nanos(500);
        for i in 0..7 {
            s.observe_lead(SendPath::WithWait, t0, after(2_000 + i * 100), COST);
        }
        // Not trusted yet: stamps stay early.
        assert_eq!(s.lead(SendPath::WithWait), Duration::ZERO);
        s.observe_lead(SendPath::WithWait, t0, after(2_500), COST);
        s.observe_lead(SendPath::WithWait, t0, after(40_000), COST); // preempted
                                                                     // The fastest sample (crept up by at most 1 % per later sample),
                                                                     // less what the sample's own timestamp request cost it.
        let lead = s.lead(SendPath::WithWait);
        let low = Duration::from_nanos(2_000 - COST.as_nanos() as u64);
        assert!(
            lead >= low && lead < low + Duration::from_nanos(200),
            "{lead:?}"
        );
        assert_eq!(s.lead(SendPath::Direct), Duration::ZERO);
        assert_eq!(
            s.departure(SendPath::WithWait, t0, 0),
            after(lead.as_nanos() as u32)
        );
        // Absurd samples are ignored.
        s.observe_lead(SendPath::WithWait, t0, UnixTime::new(101, 0), COST);
        assert_eq!(s.lead(SendPath::WithWait), lead);
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
