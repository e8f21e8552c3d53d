//! The per-source sample filter: a history of samples and a weighted linear
//! regression of offset against local time, in the style of chrony's
//! `sourcestats` rather than RFC 5905's 8-stage minimum-delay register.
//!
//! Why not the RFC register: it passes on at most one sample in several
//! (only when the newest one has the lowest delay of the last eight) and
//! only an offset, so the clock discipline behind it needs hours to learn
//! the frequency. A regression uses every sample, yields offset *and*
//! frequency with their uncertainties, and extrapolates to any instant, so
//! sources polled at different times can be compared at one instant.
//!
//! What the register is good at, rejecting samples delayed by queueing, is
//! kept as weighting: a sample whose round trip exceeds the smallest one in
//! the window by `e` may be off by up to `e / 2`, so its weight is
//! `1 / (d0 + e / 2)²`, where `d0` is half the median excess, floored at
//! the clock precision and capped, as chrony caps it, at half the smallest
//! round trip: a run of delayed samples (a busy host, a queue) must not
//! make every sample weigh the same. Wander is handled like chrony does:
//! the window is the longest run of recent samples whose residuals pass a
//! runs test (too few sign changes means the line no longer fits), and
//! older samples are dropped.
//!
//! The estimate is a weighted sum of the samples, `Σ cᵢ(t)·offsetᵢ`, and
//! each sample is within `delayᵢ / 2 + dispersionᵢ` of the truth, so
//! [`SampleFilter::error_bound_at`] (`Σ |cᵢ(t)|·(delayᵢ / 2 +
//! dispersionᵢ)`) bounds the estimate's error wherever the line holds, how
//! ever the samples are weighted: what selection needs of a correctness
//! interval.
//!
//! Pure: samples in, [`Estimate`] out; times are seconds on any monotonic
//! scale chosen by the caller. In front of it, [`popcorn`] holds back
//! spikes and recognizes jumps.

pub mod popcorn;

use std::collections::VecDeque;

/// Most samples kept per source.
pub const MAX_SAMPLES: usize = 64;
/// Fewest samples a regression window may shrink to.
const MIN_WINDOW: usize = 3;
/// Below this many samples the runs test says nothing; the window is kept.
const MIN_RUNS_TEST: usize = 8;
/// z-score under which too few runs reject a window (5 %, one-sided).
const RUNS_Z_LIMIT: f64 = -1.645;
/// Frequency variance assumed when a single sample cannot tell the
/// frequency: (100 ppm)².
const UNKNOWN_FREQ_VAR: f64 = 1e-8;

/// One measurement of a source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Local monotonic time of the measurement (middle of the exchange), s.
    pub time: f64,
    /// True time minus the local (uncorrected) timeline at `time`, s.
    pub offset: f64,
    /// Round-trip delay, s.
    pub delay: f64,
    /// Dispersion of the sample itself (precisions + 15 ppm × round trip), s.
    pub dispersion: f64,
}

/// What the regression says about a source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Weighted mean time of the window, where `offset` holds, s.
    pub mean_time: f64,
    /// Offset at `mean_time`, s.
    pub offset: f64,
    /// Frequency: d(offset)/d(time), dimensionless (1e-6 = 1 ppm).
    pub freq: f64,
    /// Variance of `offset` at `mean_time`, s².
    pub offset_var: f64,
    /// Variance of `freq`.
    pub freq_var: f64,
    /// Weighted RMS of the residuals (the source's jitter), s.
    pub jitter: f64,
    /// Samples in the window.
    pub samples: usize,
    /// Smallest delay in the window, s.
    pub min_delay: f64,
    /// Time of the newest sample, s.
    pub last_time: f64,
}

impl Estimate {
    /// Predicted offset at `time`.
    pub fn offset_at(&self, time: f64) -> f64 {
        self.offset + self.freq * (time - self.mean_time)
    }

    /// Standard deviation of [`Estimate::offset_at`].
    pub fn offset_sd_at(&self, time: f64) -> f64 {
        let dt = time - self.mean_time;
        (self.offset_var + dt * dt * self.freq_var).sqrt()
    }
}

/// The sample history of one source and its current [`Estimate`].
#[derive(Clone, Debug)]
pub struct SampleFilter {
    samples: VecDeque<Sample>,
    floor: f64,
    estimate: Option<Estimate>,
    /// For each sample of the window: how the estimate at `t` depends on
    /// it, `cᵢ(t) = a + (t − mean_time)·b`.
    coefficients: Vec<(f64, f64)>,
}

impl SampleFilter {
    /// An empty filter; `floor` (s) is the smallest noise assumed, e.g. the
    /// clock precision.
    pub fn new(floor: f64) -> Self {
        SampleFilter {
            samples: VecDeque::with_capacity(MAX_SAMPLES),
            floor: floor.max(1e-9),
            estimate: None,
            coefficients: Vec::new(),
        }
    }

    /// Adds a sample and re-fits. `prior_freq` stands in for the frequency
    /// while a single sample cannot tell it. Samples must come in time
    /// order; an older one is ignored.
    pub fn add(&mut self, sample: Sample, prior_freq: f64) -> Option<&Estimate> {
        if self.samples.back().is_some_and(|s| s.time > sample.time) {
            return self.estimate.as_ref();
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        let (start, fitted) = best_fit(self.samples.make_contiguous(), self.floor, prior_freq);
        self.samples.drain(..start);
        self.estimate = Some(fitted.estimate);
        self.coefficients = fitted.coefficients;
        self.estimate.as_ref()
    }

    /// A bound on the error of [`Estimate::offset_at`]`(time)` from the
    /// samples' own errors (each within half its round trip plus its
    /// dispersion), assuming the offset runs on a line over the window:
    /// `Σ |cᵢ(time)|·(delayᵢ / 2 + dispersionᵢ)`. 0 without samples.
    pub fn error_bound_at(&self, time: f64) -> f64 {
        let Some(e) = &self.estimate else {
            return 0.0;
        };
        self.samples
            .iter()
            .zip(&self.coefficients)
            .map(|(s, (a, b))| {
                (a + (time - e.mean_time) * b).abs() * (s.delay / 2.0 + s.dispersion)
            })
            .sum()
    }

    /// The latest estimate (none before the first sample).
    pub fn estimate(&self) -> Option<&Estimate> {
        self.estimate.as_ref()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Samples kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is kept.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.estimate = None;
        self.coefficients.clear();
    }

    /// Adds `delta` to every stored offset (the local timeline they refer to
    /// jumped by `-delta`, e.g. someone stepped the kernel clock).
    pub fn shift(&mut self, delta: f64) {
        for s in &mut self.samples {
            s.offset += delta;
        }
        if let Some(e) = &mut self.estimate {
            e.offset += delta;
        }
    }
}

/// A fit of one window.
struct Fit {
    estimate: Estimate,
    /// Residuals in time order.
    residuals: Vec<f64>,
    /// `(a, b)` per sample: see [`SampleFilter::coefficients`].
    coefficients: Vec<(f64, f64)>,
}

/// The longest recent window that passes the runs test: its start index and
/// its fit.
fn best_fit(samples: &[Sample], floor: f64, prior_freq: f64) -> (usize, Fit) {
    let n = samples.len();
    let last_start = n.saturating_sub(MIN_WINDOW);
    for start in 0..=last_start {
        let window = &samples[start..];
        let f = fit(window, floor, prior_freq);
        let r = &f.residuals;
        let rms = (r.iter().map(|r| r * r).sum::<f64>() / r.len() as f64).sqrt();
        // Residuals at the noise floor carry no sign information.
        if window.len() < MIN_RUNS_TEST || rms <= floor || runs_ok(r) {
            return (start, f);
        }
    }
    (last_start, fit(&samples[last_start..], floor, prior_freq))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Weighted least squares of offset on time.
fn fit(window: &[Sample], floor: f64, prior_freq: f64) -> Fit {
    let min_delay = window.iter().map(|s| s.delay).fold(f64::INFINITY, f64::min);
    let excess: Vec<f64> = window.iter().map(|s| s.delay - min_delay).collect();
    let d0 = (median(excess.clone()) / 2.0)
        .min(min_delay / 2.0)
        .max(floor);
    let weights: Vec<f64> = excess
        .iter()
        .map(|e| 1.0 / (d0 + e / 2.0).powi(2))
        .collect();
    let w_sum: f64 = weights.iter().sum();
    let mean_time = weighted_mean(window.iter().map(|s| s.time), &weights, w_sum);
    let last_time = window.last().map_or(mean_time, |s| s.time);
    let sxx: f64 = window
        .iter()
        .zip(&weights)
        .map(|(s, w)| w * (s.time - mean_time).powi(2))
        .sum();
    // A window spanning (almost) no time cannot tell the frequency.
    let freq_known = window.len() >= 2 && sxx * d0 * d0 > 1e-12;
    let (freq, offset) = if freq_known {
        let mean_off = weighted_mean(window.iter().map(|s| s.offset), &weights, w_sum);
        let sxy: f64 = window
            .iter()
            .zip(&weights)
            .map(|(s, w)| w * (s.time - mean_time) * (s.offset - mean_off))
            .sum();
        (sxy / sxx, mean_off)
    } else {
        let detrended = window
            .iter()
            .map(|s| s.offset - prior_freq * (s.time - mean_time));
        (prior_freq, weighted_mean(detrended, &weights, w_sum))
    };
    let residuals: Vec<f64> = window
        .iter()
        .map(|s| s.offset - (offset + freq * (s.time - mean_time)))
        .collect();
    let chi2: f64 = residuals.iter().zip(&weights).map(|(r, w)| w * r * r).sum();
    // Variance of unit weight: measured when there are degrees of freedom
    // left, else trust the weights (1).
    let unit_var = if window.len() > 2 {
        (chi2 / (window.len() - 2) as f64).max(0.25)
    } else {
        1.0
    };
    let jitter = (chi2 / w_sum).sqrt().max(floor);
    // offset_at(t) = Σ (wᵢ/W + (t − t̄)·wᵢ(tᵢ − t̄)/Sxx)·offsetᵢ, or only the
    // first term with the prior frequency (which carries no sample error).
    let coefficients = window
        .iter()
        .zip(&weights)
        .map(|(s, w)| {
            let b = if freq_known {
                w * (s.time - mean_time) / sxx
            } else {
                0.0
            };
            (w / w_sum, b)
        })
        .collect();
    let estimate = Estimate {
        mean_time,
        offset,
        freq,
        offset_var: unit_var / w_sum,
        freq_var: if freq_known {
            unit_var / sxx
        } else {
            UNKNOWN_FREQ_VAR
        },
        jitter,
        samples: window.len(),
        min_delay,
        last_time,
    };
    Fit {
        estimate,
        residuals,
        coefficients,
    }
}

fn weighted_mean(values: impl Iterator<Item = f64>, weights: &[f64], w_sum: f64) -> f64 {
    values.zip(weights).map(|(v, w)| v * w).sum::<f64>() / w_sum
}

/// Wald–Wolfowitz runs test on the residual signs: `false` when there are
/// significantly fewer sign changes than chance gives, i.e. the residuals
/// drift and the line no longer fits the whole window.
fn runs_ok(residuals: &[f64]) -> bool {
    let pos = residuals.iter().filter(|r| **r >= 0.0).count() as f64;
    let neg = residuals.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return false;
    }
    let n = pos + neg;
    let runs = 1 + residuals
        .windows(2)
        .filter(|w| (w[0] >= 0.0) != (w[1] >= 0.0))
        .count();
    let mean = 2.0 * pos * neg / n + 1.0;
    let var = 2.0 * pos * neg * (2.0 * pos * neg - n) / (n * n * (n - 1.0));
    if var <= 0.0 {
        return true;
    }
    (runs as f64 - mean) / var.sqrt() > RUNS_Z_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time: f64, offset: f64, delay: f64) -> Sample {
        Sample {
            time,
            offset,
            delay,
            dispersion: 1e-6,
        }
    }

    /// Deterministic pseudo-noise in [-1, 1) (splitmix64).
    fn noise(i: u64) -> f64 {
        let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    #[test]
    fn a_line_is_recovered_exactly() {
        let mut f = SampleFilter::new(1e-6);
        for i in 0..10 {
            let t = i as f64 * 64.0;
            f.add(sample(t, 0.1 + 50e-6 * t, 0.01), 0.0);
        }
        let e = f.estimate().unwrap();
        assert!((e.freq - 50e-6).abs() < 1e-12, "{}", e.freq);
        assert!((e.offset_at(640.0) - (0.1 + 0.032)).abs() < 1e-9);
        assert_eq!(e.samples, 10);
    }

    #[test]
    fn one_sample_uses_the_prior_frequency() {
        let mut f = SampleFilter::new(1e-6);
        let e = *f.add(sample(100.0, 0.5, 0.01), 10e-6).unwrap();
        assert_eq!(e.freq, 10e-6);
        assert!((e.offset_at(200.0) - 0.501).abs() < 1e-12);
        assert!(e.freq_var >= UNKNOWN_FREQ_VAR);
    }

    #[test]
    fn queued_samples_count_less_than_fast_ones() {
        // Fast exchanges say offset 0; one in four is queued (10 ms more
        // delay, one way) and says +5 ms. The estimate must stay near the
        // fast ones (an unweighted fit would be 1.25 ms off).
        let mut f = SampleFilter::new(1e-6);
        for i in 0..16 {
            let slow = i % 4 == 1;
            let (off, delay) = if slow { (0.005, 0.020) } else { (0.0, 0.010) };
            f.add(sample(i as f64, off, delay), 0.0);
        }
        let e = f.estimate().unwrap();
        assert!(e.offset_at(15.0).abs() < 0.0001, "{e:?}");
    }

    #[test]
    fn noisy_frequency_converges_with_more_samples() {
        let mut f = SampleFilter::new(1e-6);
        let mut errors = Vec::new();
        for i in 0..60u64 {
            let t = i as f64 * 64.0;
            let jitter = 0.0005 * noise(i);
            f.add(
                sample(t, -0.02 + 20e-6 * t + jitter, 0.01 + jitter.abs()),
                0.0,
            );
            errors.push((f.estimate().unwrap().freq - 20e-6).abs());
        }
        assert!(errors[59] < 0.1e-6, "{:e}", errors[59]);
        assert!(errors[59] < errors[5]);
    }

    #[test]
    fn a_frequency_change_shrinks_the_window() {
        // 40 samples on one line, then the frequency jumps by 1 ppm: the runs
        // test must drop the old samples so the new frequency shows.
        let mut f = SampleFilter::new(1e-7);
        let mut off = 0.0;
        for i in 0..80u64 {
            let t = i as f64 * 16.0;
            let freq = if i < 40 { 0.0 } else { 1e-6 };
            off += freq * 16.0;
            f.add(sample(t, off + 2e-7 * noise(i), 0.001), 0.0);
        }
        let e = f.estimate().unwrap();
        assert!((e.freq - 1e-6).abs() < 0.05e-6, "{:e}", e.freq);
        assert!(f.len() < 60, "old samples dropped: {}", f.len());
    }

    #[test]
    fn runs_test_flags_a_curve_and_passes_noise() {
        let curve: Vec<f64> = (0..20).map(|i| ((i as f64) - 9.5).powi(2) - 33.0).collect();
        assert!(!runs_ok(&curve));
        let alternating: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!(runs_ok(&alternating));
    }

    #[test]
    fn shift_moves_every_offset() {
        let mut f = SampleFilter::new(1e-6);
        f.add(sample(0.0, 1.0, 0.01), 0.0);
        f.add(sample(1.0, 1.0, 0.01), 0.0);
        f.shift(-1.0);
        assert!(f.estimate().unwrap().offset_at(1.0).abs() < 1e-12);
        assert_eq!(f.last().unwrap().offset, 0.0);
        f.clear();
        assert!(f.is_empty() && f.estimate().is_none());
    }

    #[test]
    fn a_run_of_delayed_samples_does_not_carry_the_estimate_off() {
        // Seen on a busy host (loopback, 50-100 µs round trips): seven
        // replies in a row 4-8 ms late, each reading about half its extra
        // delay ahead. The estimate stays with the prompt samples.
        let mut f = SampleFilter::new(3e-8);
        let mut t = 0.0;
        for i in 0..9u64 {
            t += 0.125;
            f.add(
                sample(t, 5e-6 * noise(i), 0.00008 + 2e-5 * noise(i + 50).abs()),
                0.0,
            );
        }
        for late in [0.0038, 0.0078, 0.0079, 0.0077, 0.0079, 0.0048, 0.0039] {
            t += 0.13;
            f.add(sample(t, late / 2.0, late), 0.0);
        }
        let e = f.estimate().unwrap();
        assert!(e.offset_at(t).abs() < 0.0005, "{e:?}");
        assert!(e.freq.abs() < 500e-6, "{e:?}");
    }

    #[test]
    fn the_error_bound_covers_what_the_samples_allow() {
        // Whatever the estimate makes of samples that are each within half
        // their delay of the truth (0 here), the truth is within the bound,
        // also when extrapolated.
        for seed in 0..200u64 {
            let mut f = SampleFilter::new(1e-7);
            let mut t = 0.0;
            for i in 0..20u64 {
                t += 1.0 + noise(seed * 100 + i).abs();
                let delay = 0.0001 + 0.004 * noise(seed * 100 + i + 40).abs().powi(3);
                let error = delay / 2.0 * noise(seed * 100 + i + 80);
                f.add(sample(t, error, delay), 0.0);
                let e = *f.estimate().unwrap();
                for ahead in [0.0, 1.0, 10.0] {
                    let off = e.offset_at(t + ahead);
                    let bound = f.error_bound_at(t + ahead);
                    assert!(
                        off.abs() <= bound + 1e-12,
                        "seed {seed}, sample {i}, +{ahead} s: {off} beyond ±{bound}"
                    );
                }
            }
        }
        // Plain samples: about half the round trip.
        let mut f = SampleFilter::new(1e-7);
        for i in 0..10 {
            f.add(sample(i as f64, 0.0, 0.01), 0.0);
        }
        let b = f.error_bound_at(9.0);
        assert!((0.005..0.01).contains(&b), "{b}");
    }
}
