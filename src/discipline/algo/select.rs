//! Source selection, RFC 5905 §11.2.1–11.2.2: the intersection algorithm
//! (Marzullo's) finds the largest group of sources whose correctness
//! intervals `offset ± root distance` share a point and rejects the rest as
//! falsetickers; clustering then prunes outliers from the truechimers until
//! at most [`MIN_CLUSTER`] remain or the spread between them is no larger
//! than their own jitter. Pure functions of the candidates.
//!
//! Two deliberate departures from the RFC's pseudo-code, both as ntpd 4.2.8
//! and chrony do it:
//!
//! - Midpoints do not vote. The RFC also counts a source whose interval
//!   overlaps the intersection but whose *midpoint* lies outside it as a
//!   falseticker; a source whose interval has grown (an old estimate, a
//!   noisy path) is then rejected for being honest about its error, and
//!   with two sources neither survives.
//! - A source that missed its latest poll ([`Candidate::stale`]) may help
//!   form a majority but never prevents one: when all candidates have no
//!   majority, the ones still answering are asked alone. A stale source
//!   outside the intersection is set aside ([`Candidacy::Stale`]), never
//!   called a falseticker: it stopped answering, it did not disagree.

/// Clustering stops at this many survivors (RFC 5905 NMIN).
pub const MIN_CLUSTER: usize = 3;

/// A source that passed the per-source checks, as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Its offset now (served time behind true time), s.
    pub offset: f64,
    /// Root distance (half the correctness interval), s.
    pub root_distance: f64,
    /// Its jitter, s.
    pub jitter: f64,
    /// Its stratum (ranks sources in clustering).
    pub stratum: u8,
    /// Its latest completed poll went unanswered: its estimate is only
    /// being extrapolated.
    pub stale: bool,
}

/// What selection made of a candidate (ntpq's tally codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidacy {
    /// Outside the agreeing majority: `x`.
    Falseticker,
    /// A truechimer pruned by clustering: `-`.
    Outlier,
    /// Survived clustering and is combined: `+` (or `*` if chosen).
    Survivor,
    /// Stopped answering and outside the majority's intersection: set
    /// aside, not a falseticker (` `).
    Stale,
}

/// The interval `[low, high]` that a majority of the correctness intervals
/// share, allowing as few falsetickers as possible; `None` when there is no
/// majority.
pub fn intersection(candidates: &[Candidate]) -> Option<(f64, f64)> {
    let n = candidates.len();
    // Endpoints: (value, +1 lower end / -1 upper end), sorted by value,
    // lower ends first on ties (touching intervals share a point).
    let mut ends: Vec<(f64, i32)> = Vec::with_capacity(2 * n);
    for c in candidates {
        let d = c.root_distance.abs();
        ends.push((c.offset - d, 1));
        ends.push((c.offset + d, -1));
    }
    ends.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut allow = 0;
    while 2 * allow < n {
        let needed = (n - allow) as i32;
        let mut depth = 0;
        let low = ends.iter().find_map(|&(value, kind)| {
            depth += kind;
            (depth >= needed).then_some(value)
        });
        depth = 0;
        let high = ends.iter().rev().find_map(|&(value, kind)| {
            depth -= kind;
            (depth >= needed).then_some(value)
        });
        if let (Some(low), Some(high)) = (low, high) {
            if low <= high {
                return Some((low, high));
            }
        }
        allow += 1;
    }
    None
}

/// The majority's intersection: over all candidates, else (when they have
/// none) over those still answering.
fn majority(candidates: &[Candidate]) -> Option<(f64, f64)> {
    intersection(candidates).or_else(|| {
        let fresh: Vec<Candidate> = candidates.iter().filter(|c| !c.stale).copied().collect();
        let some_stale = fresh.len() < candidates.len();
        if some_stale && !fresh.is_empty() {
            intersection(&fresh)
        } else {
            None
        }
    })
}

/// Runs intersection and clustering; one [`Candidacy`] per candidate, in order.
/// Without a majority every answering candidate is a falseticker.
pub fn select(candidates: &[Candidate]) -> Vec<Candidacy> {
    let outside = |c: &Candidate| {
        if c.stale {
            Candidacy::Stale
        } else {
            Candidacy::Falseticker
        }
    };
    let Some((low, high)) = majority(candidates) else {
        return candidates.iter().map(outside).collect();
    };
    let mut outcomes: Vec<Candidacy> = candidates
        .iter()
        .map(|c| {
            let d = c.root_distance.abs();
            // As ntpd: a truechimer's interval overlaps the intersection.
            if c.offset + d < low || c.offset - d > high {
                outside(c)
            } else {
                Candidacy::Survivor
            }
        })
        .collect();
    let truechimers: Vec<usize> = (0..candidates.len())
        .filter(|&i| outcomes[i] == Candidacy::Survivor)
        .collect();
    for i in cluster(candidates, &truechimers) {
        outcomes[i] = Candidacy::Outlier;
    }
    outcomes
}

/// Clustering (RFC 5905 §11.2.2) over the indices `truechimers`: returns
/// the indices it prunes, worst first.
fn cluster(candidates: &[Candidate], truechimers: &[usize]) -> Vec<usize> {
    let mut left: Vec<usize> = truechimers.to_vec();
    let mut pruned = Vec::new();
    while left.len() > MIN_CLUSTER {
        // Selection jitter of each: RMS distance of its offset to the others'.
        let mut worst = (0usize, f64::NEG_INFINITY);
        let mut min_jitter = f64::INFINITY;
        for (pos, &i) in left.iter().enumerate() {
            let sum: f64 = left
                .iter()
                .map(|&j| (candidates[i].offset - candidates[j].offset).powi(2))
                .sum();
            let phi = (sum / (left.len() - 1) as f64).sqrt();
            // The RFC weighs by stratum so that, at equal spread, the
            // higher-stratum source goes first.
            let score = phi * (1.0 + candidates[i].stratum as f64 * 1e-3);
            if score > worst.1 {
                worst = (pos, score);
            }
            min_jitter = min_jitter.min(candidates[i].jitter);
        }
        if worst.1 <= min_jitter {
            break;
        }
        pruned.push(left.remove(worst.0));
    }
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: f64, root_distance: f64) -> Candidate {
        Candidate {
            offset,
            root_distance,
            jitter: 1e-4,
            stratum: 1,
            stale: false,
        }
    }

    #[test]
    fn one_second_falseticker_among_four_is_rejected() {
        let cands = [
            c(0.0005, 0.01),
            c(-0.0003, 0.01),
            c(1.0, 0.01),
            c(0.0001, 0.01),
        ];
        let v = select(&cands);
        assert_eq!(v[2], Candidacy::Falseticker);
        for i in [0, 1, 3] {
            assert_eq!(v[i], Candidacy::Survivor, "{i}: {v:?}");
        }
        let (low, high) = intersection(&cands).unwrap();
        assert!(low < 0.0 && high > 0.0 && high < 0.02);
    }

    #[test]
    fn a_single_source_is_its_own_majority() {
        assert_eq!(select(&[c(2.5, 0.01)]), vec![Candidacy::Survivor]);
    }

    #[test]
    fn two_disagreeing_sources_have_no_majority() {
        let v = select(&[c(0.0, 0.01), c(60.0, 0.01)]);
        assert_eq!(v, vec![Candidacy::Falseticker; 2]);
        assert_eq!(intersection(&[]), None);
    }

    #[test]
    fn three_agreeing_beat_one_far_away() {
        let v = select(&[
            c(2.5, 0.005),
            c(60.0, 0.005),
            c(2.501, 0.005),
            c(2.499, 0.005),
        ]);
        assert_eq!(v[1], Candidacy::Falseticker);
        assert_eq!(v.iter().filter(|v| **v == Candidacy::Survivor).count(), 3);
    }

    #[test]
    fn clustering_prunes_the_most_distant_truechimer() {
        // Five overlapping intervals; one sits 4 ms off the others, far more
        // than their 0.1 ms jitter.
        let cands = [
            c(0.0, 0.01),
            c(0.0001, 0.01),
            c(-0.0001, 0.01),
            c(0.0002, 0.01),
            c(0.004, 0.01),
        ];
        let v = select(&cands);
        assert_eq!(v[4], Candidacy::Outlier, "{v:?}");
        assert_eq!(v.iter().filter(|v| **v == Candidacy::Survivor).count(), 3);
    }

    #[test]
    fn clustering_keeps_sources_within_their_jitter() {
        let mut cands = [
            c(0.0, 0.01),
            c(0.0001, 0.01),
            c(-0.0001, 0.01),
            c(0.00005, 0.01),
        ];
        for x in &mut cands {
            x.jitter = 0.001;
        }
        assert!(select(&cands).iter().all(|v| *v == Candidacy::Survivor));
    }

    #[test]
    fn a_wide_interval_is_not_a_falseticker_for_where_its_middle_is() {
        // An old estimate, honest about its error (±1 ms), centred 8 µs
        // from a fresh one that is ±5 µs wide: they agree. (RFC 5905's
        // pseudo-code counts the wide one's midpoint as outside and finds no
        // majority of two.)
        let v = select(&[c(-0.000008, 0.001), c(0.0, 0.000005)]);
        assert_eq!(v, vec![Candidacy::Survivor; 2]);
        // Busy host: one of three good sources is ±3.5 ms wide around
        // +3 ms; with a real falseticker among four, three still agree.
        let v = select(&[
            c(0.003, 0.0035),
            c(0.0, 0.0004),
            c(0.00003, 0.0002),
            c(57.5, 0.00015),
        ]);
        assert_eq!(v[3], Candidacy::Falseticker);
        assert!(v[..3].iter().all(|v| *v == Candidacy::Survivor), "{v:?}");
    }

    #[test]
    fn a_source_that_stopped_answering_never_prevents_a_majority() {
        let stale = |offset, d| Candidate {
            stale: true,
            ..c(offset, d)
        };
        // One of two left: the dead one's estimate drifted away.
        let v = select(&[stale(0.01, 0.001), c(0.0, 0.0001)]);
        assert_eq!(v, vec![Candidacy::Stale, Candidacy::Survivor]);
        // ... or did not: it is still combined.
        let v = select(&[stale(0.0002, 0.001), c(0.0, 0.0001)]);
        assert_eq!(v, vec![Candidacy::Survivor; 2]);
        // Two of three.
        let v = select(&[c(0.0, 0.0001), stale(0.01, 0.001), c(0.00005, 0.0001)]);
        assert_eq!(
            v,
            vec![Candidacy::Survivor, Candidacy::Stale, Candidacy::Survivor]
        );
        // It still helps a majority: a live falseticker against a live and
        // a stale truechimer.
        let v = select(&[c(1.0, 0.001), c(0.0, 0.001), stale(0.0001, 0.001)]);
        assert_eq!(
            v,
            vec![
                Candidacy::Falseticker,
                Candidacy::Survivor,
                Candidacy::Survivor
            ]
        );
        // Answering sources that disagree are falsetickers; the silent one
        // is set aside.
        let v = select(&[c(1.0, 0.001), c(0.0, 0.001), stale(0.5, 0.001)]);
        assert_eq!(
            v,
            vec![
                Candidacy::Falseticker,
                Candidacy::Falseticker,
                Candidacy::Stale
            ]
        );
        // Only stale sources (all lost a reply): selected as usual.
        assert_eq!(select(&[stale(0.0, 0.001)]), vec![Candidacy::Survivor]);
    }
}
