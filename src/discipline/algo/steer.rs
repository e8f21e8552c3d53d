//! Steering: turning the combined estimate into a correction of the served
//! clock — step, slew or refuse — and keeping the exact history of what was
//! applied as a piecewise-linear [`Trajectory`].
//!
//! The trajectory is "served clock minus uncorrected local clock" as a
//! function of local monotonic time. It changes only here, so the
//! discipline always knows it exactly; samples are kept relative to the
//! uncorrected clock (offset + trajectory), which makes the regression
//! independent of the corrections made meanwhile (chrony does the same by
//! rewriting its sample history after each adjustment).
//!
//! A slew adds at most [`MAX_SLEW`] (500 ppm) to the frequency until the
//! error is worked off; the caller ends it at `Slew::until`
//! ([`Trajectory::end_slew`]); however late it does, the trajectory stays
//! exact, since it runs on until changed. Pure.

/// Largest slew rate: 500 ppm, as ntpd's and the kernel's.
pub const MAX_SLEW: f64 = 500e-6;

/// Served-minus-local offset as a function of local monotonic time:
/// `offset + (freq + slew) × (t − base)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trajectory {
    /// Local time at which `offset` holds, s.
    pub base: f64,
    /// Offset at `base`, s.
    pub offset: f64,
    /// Frequency correction (1e-6 = served clock runs 1 ppm faster).
    pub freq: f64,
    /// Extra frequency while a slew runs.
    pub slew: f64,
    /// When the running slew is due to end (meaningless when `slew` is 0).
    pub slew_until: f64,
}

impl Trajectory {
    /// The correction at local time `t`.
    pub fn at(&self, t: f64) -> f64 {
        self.offset + (self.freq + self.slew) * (t - self.base)
    }

    /// Current rate: frequency plus slew.
    pub fn rate(&self) -> f64 {
        self.freq + self.slew
    }

    /// Moves the base to `t` without changing the function.
    pub fn rebase(&mut self, t: f64) {
        self.offset = self.at(t);
        self.base = t;
    }

    /// Ends a running slew at `t` (the correction keeps its value).
    pub fn end_slew(&mut self, t: f64) {
        self.rebase(t);
        self.slew = 0.0;
    }

    /// Whether a slew is running.
    pub fn slewing(&self) -> bool {
        self.slew != 0.0
    }

    /// Adds `delta` to the correction from `t` on (a step). A running slew
    /// keeps running: a step made for another reason (a leap second, someone
    /// else stepping the kernel clock) does not cancel the error it works
    /// off.
    pub fn step(&mut self, t: f64, delta: f64) {
        self.rebase(t);
        self.offset += delta;
    }
}

/// Limits of steering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SteerLimits {
    /// Errors above this are stepped (0 = never step).
    pub step_threshold: f64,
    /// Errors above this are refused (0 = no limit).
    pub panic_threshold: f64,
    /// The first correction may exceed `panic_threshold`.
    pub first_step_unlimited: bool,
    /// The first correction is always stepped (software mode: nothing was
    /// served from our estimate yet).
    pub step_first: bool,
    /// Lowest and highest frequency correction: ±500 ppm in software mode;
    /// in kernel mode the kernel's ±500 ppm minus the base frequency the
    /// engine counts from (asymmetric when the base is not 0).
    pub freq_range: (f64, f64),
    /// Lowest and highest frequency plus slew the clock takes: unlimited in
    /// software mode, the kernel's range in kernel mode.
    pub rate_range: (f64, f64),
}

impl SteerLimits {
    /// The limits for a clock that takes frequencies within
    /// ±[`MAX_SLEW`] of `base` (kernel mode: the kernel's range around
    /// the frequency it started from).
    pub fn kernel_ranges(base: f64) -> ((f64, f64), (f64, f64)) {
        let range = (-MAX_SLEW - base, MAX_SLEW - base);
        (range, range)
    }

    /// The limits in software mode: frequency within ±[`MAX_SLEW`], slews
    /// on top of it unlimited (the served clock is ours alone).
    pub fn software_ranges() -> ((f64, f64), (f64, f64)) {
        ((-MAX_SLEW, MAX_SLEW), (f64::NEG_INFINITY, f64::INFINITY))
    }
}

/// What steering did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// The correction jumped by this many seconds.
    Step(f64),
    /// A slew of `error` seconds at `rate` runs until `until`.
    Slew {
        /// The error being worked off, s.
        error: f64,
        /// Slew rate (signed).
        rate: f64,
        /// Local time at which it is done.
        until: f64,
    },
    /// The error exceeded the panic threshold; nothing was changed.
    Refused(f64),
}

/// Steers `traj` at local time `now` towards `target` (wanted correction at
/// `now`) with frequency `freq`. `first`: no correction was made yet.
pub fn steer(
    traj: &mut Trajectory,
    now: f64,
    target: f64,
    freq: f64,
    first: bool,
    cfg: &SteerLimits,
) -> Action {
    let error = target - traj.at(now);
    let beyond_panic = cfg.panic_threshold > 0.0 && error.abs() > cfg.panic_threshold;
    if beyond_panic && !(first && cfg.first_step_unlimited) {
        return Action::Refused(error);
    }
    traj.end_slew(now);
    traj.freq = freq.clamp(cfg.freq_range.0, cfg.freq_range.1);
    let step = if first && cfg.step_first {
        true
    } else {
        cfg.step_threshold > 0.0 && error.abs() > cfg.step_threshold
    };
    if step {
        traj.offset += error;
        return Action::Step(error);
    }
    let sign = error.signum();
    // Room left between the frequency and the limit on the slew's side.
    let room = if error > 0.0 {
        cfg.rate_range.1 - traj.freq
    } else {
        traj.freq - cfg.rate_range.0
    };
    // No room (the frequency sits at the limit): nothing to add; the
    // trajectory must never promise what the clock cannot do.
    let rate = MAX_SLEW.min(room).max(0.0) * sign;
    if error == 0.0 || rate == 0.0 {
        return Action::Slew {
            error,
            rate: 0.0,
            until: now,
        };
    }
    traj.slew = rate;
    traj.slew_until = now + error / rate;
    Action::Slew {
        error,
        rate,
        until: traj.slew_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: SteerLimits = SteerLimits {
        step_threshold: 0.128,
        panic_threshold: 1000.0,
        first_step_unlimited: true,
        step_first: false,
        freq_range: (-MAX_SLEW, MAX_SLEW),
        rate_range: (f64::NEG_INFINITY, f64::INFINITY),
    };

    #[test]
    fn small_errors_are_slewed_at_500_ppm() {
        let mut t = Trajectory::default();
        let a = steer(&mut t, 10.0, 0.005, 20e-6, false, &CFG);
        assert_eq!(
            a,
            Action::Slew {
                error: 0.005,
                rate: 500e-6,
                until: 20.0
            }
        );
        // Halfway: frequency and half the slew applied.
        assert!((t.at(15.0) - (0.0025 + 100e-6)).abs() < 1e-12);
        t.end_slew(20.0);
        assert!((t.at(20.0) - (0.005 + 200e-6)).abs() < 1e-12);
        assert!((t.at(30.0) - t.at(20.0) - 200e-6).abs() < 1e-12);
    }

    #[test]
    fn large_errors_are_stepped_and_huge_ones_refused() {
        let mut t = Trajectory::default();
        assert_eq!(steer(&mut t, 0.0, 0.2, 0.0, false, &CFG), Action::Step(0.2));
        assert!((t.at(0.0) - 0.2).abs() < 1e-12);
        let before = t;
        assert_eq!(
            steer(&mut t, 1.0, 2000.2, 0.0, false, &CFG),
            Action::Refused(2000.0)
        );
        assert_eq!(t, before, "a refused correction changes nothing");
        // The first correction may be huge when allowed (ntpd -g) ...
        assert_eq!(
            steer(&mut Trajectory::default(), 0.0, 2000.0, 0.0, true, &CFG),
            Action::Step(2000.0)
        );
        // ... and not otherwise.
        let strict = SteerLimits {
            first_step_unlimited: false,
            ..CFG
        };
        assert_eq!(
            steer(&mut Trajectory::default(), 0.0, 2000.0, 0.0, true, &strict),
            Action::Refused(2000.0)
        );
    }

    #[test]
    fn software_mode_steps_the_first_correction_whatever_its_size() {
        let cfg = SteerLimits {
            step_first: true,
            ..CFG
        };
        assert_eq!(
            steer(&mut Trajectory::default(), 0.0, 0.001, 0.0, true, &cfg),
            Action::Step(0.001)
        );
    }

    #[test]
    fn step_threshold_zero_never_steps() {
        let cfg = SteerLimits {
            step_threshold: 0.0,
            ..CFG
        };
        let a = steer(&mut Trajectory::default(), 0.0, 5.0, 0.0, false, &cfg);
        assert!(matches!(a, Action::Slew { .. }), "{a:?}");
    }

    #[test]
    fn slew_respects_the_kernel_frequency_limit() {
        let (freq_range, rate_range) = SteerLimits::kernel_ranges(0.0);
        let cfg = SteerLimits {
            freq_range,
            rate_range,
            ..CFG
        };
        let mut t = Trajectory::default();
        let a = steer(&mut t, 0.0, 0.01, 100e-6, false, &cfg);
        let Action::Slew { rate, .. } = a else {
            panic!("{a:?}")
        };
        assert!((rate - 400e-6).abs() < 1e-12);
        assert!((t.rate() - 500e-6).abs() < 1e-12);
    }

    #[test]
    fn kernel_limits_are_asymmetric_around_a_nonzero_base() {
        // The kernel starts at +400 ppm (a stale drift file); the oscillator
        // needs -50 ppm: -450 ppm relative to the base, within -900..+100.
        let (freq_range, rate_range) = SteerLimits::kernel_ranges(400e-6);
        let cfg = SteerLimits {
            freq_range,
            rate_range,
            ..CFG
        };
        let mut t = Trajectory::default();
        steer(&mut t, 0.0, -0.01, -450e-6, false, &cfg);
        assert!((t.freq + 450e-6).abs() < 1e-12, "{}", t.freq);
        // Slewing down: the full 450 ppm left to the kernel's -500 ppm.
        assert!((t.rate() + 900e-6).abs() < 1e-12, "{}", t.rate());
        // Up: only 100 ppm of room, and the frequency is capped there.
        let mut t = Trajectory::default();
        steer(&mut t, 0.0, 0.01, 300e-6, false, &cfg);
        assert!((t.freq - 100e-6).abs() < 1e-12, "{}", t.freq);
        assert!(t.rate() <= 100e-6 + 1e-12, "{}", t.rate());
    }

    #[test]
    fn software_frequency_is_clamped_to_500_ppm() {
        let mut t = Trajectory::default();
        steer(&mut t, 0.0, 0.001, 800e-6, false, &CFG);
        assert!((t.freq - 500e-6).abs() < 1e-12, "{}", t.freq);
        let here = t.at(1.0);
        steer(&mut t, 1.0, here, -900e-6, false, &CFG);
        assert!((t.freq + 500e-6).abs() < 1e-12, "{}", t.freq);
    }

    #[test]
    fn a_step_keeps_a_running_slew() {
        let mut t = Trajectory::default();
        steer(&mut t, 0.0, 0.005, 0.0, false, &CFG);
        assert!(t.slewing());
        let until = t.slew_until;
        let before = t.at(until);
        // A leap second folded in halfway.
        t.step(5.0, -1.0);
        assert!(t.slewing(), "the slew was cancelled");
        assert_eq!(t.slew_until, until);
        assert!((t.at(until) - (before - 1.0)).abs() < 1e-12);
    }
}
