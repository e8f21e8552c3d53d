//! Combining the survivors of selection (RFC 5905 §11.2.3): the system
//! offset is their offsets weighted by the inverse root distance, the
//! system jitter the weighted RMS of their distance to the system peer. The
//! frequency, which the RFC's PLL learns slowly, is combined chrony-style
//! from each survivor's regression, weighted by inverse variance. Pure.

/// One survivor of selection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Survivor {
    /// Offset now, s.
    pub offset: f64,
    /// Root distance, s.
    pub root_distance: f64,
    /// Jitter, s.
    pub jitter: f64,
    /// Frequency estimate (see `filter::Estimate::freq`).
    pub freq: f64,
    /// Its variance.
    pub freq_var: f64,
}

/// The combined system estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Combined {
    /// System offset, s.
    pub offset: f64,
    /// System jitter, s (includes the system peer's own jitter).
    pub jitter: f64,
    /// System frequency.
    pub freq: f64,
    /// Its variance.
    pub freq_var: f64,
}

/// Combines `survivors` (non-empty); `peer` indexes the system peer.
/// `None` for an empty slice or an out-of-range peer.
pub fn combine(survivors: &[Survivor], peer: usize) -> Option<Combined> {
    let sys = survivors.get(peer)?;
    let weight = |s: &Survivor| 1.0 / s.root_distance.max(1e-9);
    let w_sum: f64 = survivors.iter().map(weight).sum();
    let offset = survivors.iter().map(|s| weight(s) * s.offset).sum::<f64>() / w_sum;
    let spread = survivors
        .iter()
        .map(|s| weight(s) * (s.offset - sys.offset).powi(2))
        .sum::<f64>()
        / w_sum;
    let jitter = (spread + sys.jitter * sys.jitter).sqrt();
    let fw = |s: &Survivor| 1.0 / s.freq_var.max(1e-24);
    let fw_sum: f64 = survivors.iter().map(fw).sum();
    let freq = survivors.iter().map(|s| fw(s) * s.freq).sum::<f64>() / fw_sum;
    Some(Combined {
        offset,
        jitter,
        freq,
        freq_var: 1.0 / fw_sum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(offset: f64, root_distance: f64, freq: f64, freq_var: f64) -> Survivor {
        Survivor {
            offset,
            root_distance,
            jitter: 1e-4,
            freq,
            freq_var,
        }
    }

    #[test]
    fn closer_sources_weigh_more() {
        let c = combine(&[s(0.001, 0.01, 0.0, 1.0), s(0.004, 0.04, 0.0, 1.0)], 0).unwrap();
        // weights 100 and 25: (0.1 + 0.1) / 125
        assert!((c.offset - 0.0016).abs() < 1e-12, "{}", c.offset);
        assert!(c.jitter > 1e-4);
    }

    #[test]
    fn frequency_follows_the_most_certain_estimate() {
        let c = combine(&[s(0.0, 0.01, 50e-6, 1e-16), s(0.0, 0.01, 0.0, 1e-12)], 1).unwrap();
        assert!((c.freq - 50e-6).abs() < 0.01e-6, "{}", c.freq);
        assert!(c.freq_var < 1e-16);
    }

    #[test]
    fn nothing_to_combine_is_none() {
        assert_eq!(combine(&[], 0), None);
        assert_eq!(combine(&[s(0.0, 0.01, 0.0, 1.0)], 1), None);
    }
}
