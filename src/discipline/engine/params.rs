//! What the engine is told at start: which clock it steers
//! ([`ClockMode`]) and its limits ([`EngineParams`]), in its own terms (the
//! discipline's glue maps `[clock]` to them).

use crate::discipline::algo::steer::SteerLimits;

/// Which clock the engine steers (`[clock] discipline` in the engine's
/// terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// The served time only: the kernel clock is never touched; the
    /// published correction maps it to the served time.
    #[default]
    Software,
    /// The kernel clock, through [`ClockCommand`](super::ClockCommand)s.
    Kernel,
    /// None: another daemon steers the kernel clock, which is served as
    /// is; the upstreams only name the stratum and refid.
    External,
}

/// What the engine is told at start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineParams {
    /// Which clock is steered.
    pub mode: ClockMode,
    /// Errors above this are stepped, smaller ones slewed (0 = never step
    /// after the first correction), s.
    pub step_threshold: f64,
    /// Corrections above this are refused (0 = no limit), s.
    pub panic_threshold: f64,
    /// The first correction may exceed `panic_threshold`.
    pub first_step_unlimited: bool,
    /// Fallback stratum: serve the local clock at it when no upstream is
    /// usable (`None`: serve "unsynchronized").
    pub local_stratum: Option<u8>,
    /// Our clock's precision, log2 s.
    pub precision: i8,
    /// Kernel mode: the kernel frequency the discipline starts from, ppm
    /// (the engine's zero).
    pub base_ppm: f64,
    /// Upstreams are configured (their sources appear once resolved): the
    /// local-clock fallback waits [`STARTUP_GRACE`](super::STARTUP_GRACE) for them.
    pub has_upstreams: bool,
}

impl EngineParams {
    /// The step, slew and panic limits: in kernel mode the kernel takes
    /// ±500 ppm around zero, so the engine's corrections may go from
    /// −500 − `base_ppm` to 500 − `base_ppm`.
    pub fn steer_limits(&self) -> SteerLimits {
        let (freq_range, rate_range) = match self.mode {
            ClockMode::Kernel => SteerLimits::kernel_ranges(self.base_ppm * 1e-6),
            _ => SteerLimits::software_ranges(),
        };
        SteerLimits {
            step_threshold: self.step_threshold,
            panic_threshold: self.panic_threshold,
            first_step_unlimited: self.first_step_unlimited,
            step_first: self.mode == ClockMode::Software,
            freq_range,
            rate_range,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discipline::test_support::engine_params;

    #[test]
    fn kernel_limits_follow_the_base_frequency() {
        let kernel = EngineParams {
            base_ppm: 400.0,
            ..engine_params(ClockMode::Kernel)
        };
        let (lo, hi) = kernel.steer_limits().freq_range;
        assert!((lo + 900e-6).abs() < 1e-12 && (hi - 100e-6).abs() < 1e-12);
        let soft = engine_params(ClockMode::Software).steer_limits();
        assert_eq!(soft.freq_range, (-500e-6, 500e-6));
    }
}
