//! Popcorn spikes and jumps, in front of the [`SampleFilter`]: a sample far
//! outside the filter's prediction (beyond what its extra delay explains)
//! is held back. If the next one is normal, it was a spike and is dropped
//! (RFC 5905's popcorn suppression); if the next one is off the same way,
//! the upstream's time really jumped, and the history is shifted by the
//! jump (keeping the frequency learned) so that the estimate follows at
//! once. Pure.

use super::{Sample, SampleFilter};

/// A sample further from the prediction than this many standard
/// deviations (jitter and prediction error combined) is a surprise: held
/// back until the next sample says whether it was a spike or a jump.
pub const SURPRISE_SIGMAS: f64 = 8.0;
/// Fewest samples in the filter for a surprise to be held back.
const MIN_HISTORY: usize = 4;

/// What became of a sample offered to [`SpikeGuard::offer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Offered {
    /// Held back until the next sample tells a spike from a jump.
    Held,
    /// Added to the filter (after the sample held before it, when the two
    /// showed a jump).
    Added {
        /// How far it was from the prediction before it, in standard
        /// deviations beyond what its extra delay explains (`None` without
        /// an earlier estimate).
        surprise: Option<f64>,
    },
}

/// The sample held back, if any, and the rule that decides its fate.
#[derive(Clone, Debug, Default)]
pub struct SpikeGuard {
    /// A surprising sample and its residual, waiting for confirmation.
    held: Option<(Sample, f64)>,
}

impl SpikeGuard {
    /// Offers `sample` to `filter`: added, or held back as a possible
    /// spike. `floor` (s) is the smallest jitter assumed (our clock's
    /// precision); `prior_freq` is passed on to [`SampleFilter::add`].
    pub fn offer(
        &mut self,
        filter: &mut SampleFilter,
        sample: Sample,
        prior_freq: f64,
        floor: f64,
    ) -> Offered {
        let residual = filter.estimate().map(|e| {
            let r = sample.offset - e.offset_at(sample.time);
            let sigma = e.jitter.max(floor).hypot(e.offset_sd_at(sample.time));
            let queued = (sample.delay - e.min_delay).max(0.0) / 2.0;
            (r, (r.abs() - queued).max(0.0) / sigma)
        });
        match (residual, self.held.take()) {
            (Some((r, sigmas)), held)
                if sigmas > SURPRISE_SIGMAS && filter.len() >= MIN_HISTORY =>
            {
                match held {
                    Some((first, r0))
                        if r.signum() == r0.signum() && (r - r0).abs() < 0.5 * r0.abs() =>
                    {
                        filter.shift((r + r0) / 2.0);
                        filter.add(first, prior_freq);
                    }
                    _ => {
                        self.held = Some((sample, r));
                        return Offered::Held;
                    }
                }
            }
            _ => {}
        }
        filter.add(sample, prior_freq);
        Offered::Added {
            surprise: residual.map(|(_, s)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_is_dropped_and_a_jump_is_followed() {
        let floor = (-20f64).exp2();
        let mut filter = SampleFilter::new(floor);
        let mut guard = SpikeGuard::default();
        let mut offer = |filter: &mut SampleFilter, t: f64, offset: f64| {
            let sample = Sample {
                time: t,
                offset,
                delay: 0.01,
                dispersion: 1e-6,
            };
            guard.offer(filter, sample, 0.0, floor)
        };
        for i in 0..10 {
            let offset = 0.001 * ((i % 3) as f64 - 1.0) * 0.1;
            offer(&mut filter, i as f64 * 16.0, offset);
        }
        assert_eq!(offer(&mut filter, 160.0, 0.05), Offered::Held);
        assert!(matches!(
            offer(&mut filter, 176.0, 0.0),
            Offered::Added { surprise: Some(_) }
        ));
        assert!(
            filter.estimate().unwrap().offset_at(176.0).abs() < 0.0005,
            "spike dropped"
        );
        assert_eq!(offer(&mut filter, 192.0, 0.3), Offered::Held);
        assert!(
            filter.estimate().unwrap().offset_at(192.0).abs() < 0.0005,
            "held back"
        );
        assert!(matches!(
            offer(&mut filter, 208.0, 0.3),
            Offered::Added { .. }
        ));
        let e = filter.estimate().unwrap();
        assert!(
            (e.offset_at(208.0) - 0.3).abs() < 0.0005,
            "jump followed: {e:?}"
        );
        assert!(e.freq.abs() < 1e-6, "frequency kept: {}", e.freq);
    }
}
