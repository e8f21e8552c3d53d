//! Selection over the sources' estimates: the candidates fit for it,
//! intersection and clustering ([`select`]), the system peer, combining
//! ([`combine`]), the leap second a majority announces, and the tally codes
//! that come of it.

use tracing::{info, warn};

use super::{Engine, Now};
use crate::discipline::algo::combine::{self, Combined, Survivor};
use crate::discipline::algo::select::{self, Candidacy, Candidate};
use crate::discipline::algo::MAX_DISTANCE;
use crate::discipline::status::Tally;
use crate::discipline::transition::Reason;
use crate::proto::LeapIndicator;

/// Upstream strata at or above this cannot be followed (we would be 16).
const MAX_UPSTREAM_STRATUM: u8 = 15;

/// What selection and combining found.
pub(super) struct Selection {
    /// The system peer's slot.
    pub(super) peer: usize,
    /// Combined offset (upstream time minus served time), s.
    pub(super) offset: f64,
    /// Selection jitter, s.
    pub(super) jitter: f64,
    /// Combined frequency of the survivors.
    pub(super) freq: f64,
    /// The leap second a majority of the survivors announce.
    pub(super) leap: LeapIndicator,
}

impl Engine {
    /// Selection over the current estimates; sets every tally. Why not,
    /// when no source survives.
    pub(super) fn select(&mut self, now: &Now) -> Result<Selection, Reason> {
        let (cand, index) = self.candidates(now);
        let outcomes = select::select(&cand);
        let mut tallies = vec![Tally::Rejected; self.slots.len()];
        let mut survivors = Vec::new();
        for (k, v) in outcomes.iter().enumerate() {
            tallies[index[k]] = match v {
                Candidacy::Falseticker => Tally::Falseticker,
                Candidacy::Outlier => Tally::Outlier,
                Candidacy::Stale => Tally::Rejected,
                Candidacy::Survivor => {
                    survivors.push(k);
                    Tally::Candidate
                }
            };
        }
        let result = self
            .system_peer(&cand, &index, &survivors)
            .and_then(|peer| {
                let c = self.combine(&cand, &index, &survivors, peer)?;
                tallies[index[peer]] = Tally::SystemPeer;
                Some(Selection {
                    peer: index[peer],
                    offset: c.offset,
                    jitter: c.jitter,
                    freq: c.freq,
                    leap: self.majority_leap(&index, &survivors),
                })
            });
        self.set_tallies(tallies);
        result.ok_or_else(|| self.why_unselectable(now))
    }

    /// The sources fit for selection, as candidates, with their slot
    /// indices.
    pub(super) fn candidates(&self, now: &Now) -> (Vec<Candidate>, Vec<usize>) {
        let traj_now = self.traj.at(now.mono);
        let mut cand = Vec::new();
        let mut index = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let s = &slot.source;
            let (Some(est), Some(up), Some(dist)) =
                (s.estimate(), s.upstream(), s.root_distance(now.mono))
            else {
                continue;
            };
            if !s.usable()
                || s.refused().is_some()
                || up.stratum >= MAX_UPSTREAM_STRATUM
                || dist > MAX_DISTANCE
            {
                continue;
            }
            cand.push(Candidate {
                offset: est.offset_at(now.mono) - traj_now,
                root_distance: dist,
                jitter: est.jitter,
                stratum: up.stratum,
                stale: s.stale(),
            });
            index.push(i);
        }
        (cand, index)
    }

    /// The system peer among the survivors (an index into `cand`): the
    /// current one while it survives and answers (no needless clock
    /// hopping), else one that answers before one that missed its latest
    /// poll, then the lowest stratum, then the smallest root distance.
    pub(super) fn system_peer(
        &self,
        cand: &[Candidate],
        index: &[usize],
        survivors: &[usize],
    ) -> Option<usize> {
        let previous = self.sys.map(|s| s.peer);
        survivors
            .iter()
            .copied()
            .find(|&k| !cand[k].stale && Some(self.slots[index[k]].source.addr()) == previous)
            .or_else(|| {
                survivors.iter().copied().min_by(|&a, &b| {
                    (cand[a].stale, cand[a].stratum)
                        .cmp(&(cand[b].stale, cand[b].stratum))
                        .then(cand[a].root_distance.total_cmp(&cand[b].root_distance))
                })
            })
    }

    /// Combines the survivors around the system peer `peer`.
    fn combine(
        &self,
        cand: &[Candidate],
        index: &[usize],
        survivors: &[usize],
        peer: usize,
    ) -> Option<Combined> {
        let surv: Vec<Survivor> = survivors
            .iter()
            .map(|&k| {
                let est = self.slots[index[k]].source.estimate();
                Survivor {
                    offset: cand[k].offset,
                    root_distance: cand[k].root_distance,
                    jitter: cand[k].jitter,
                    freq: est.map_or(0.0, |e| e.freq),
                    freq_var: est.map_or(1.0, |e| e.freq_var),
                }
            })
            .collect();
        let peer_pos = survivors.iter().position(|&k| k == peer)?;
        combine::combine(&surv, peer_pos)
    }

    /// The leap second a majority of the survivors announce.
    fn majority_leap(&self, index: &[usize], survivors: &[usize]) -> LeapIndicator {
        let votes = |leap| {
            survivors
                .iter()
                .filter(|&&k| {
                    self.slots[index[k]]
                        .source
                        .upstream()
                        .is_some_and(|u| u.leap == leap)
                })
                .count()
        };
        [LeapIndicator::InsertSecond, LeapIndicator::DeleteSecond]
            .into_iter()
            .find(|&l| 2 * votes(l) > survivors.len())
            .unwrap_or(LeapIndicator::NoWarning)
    }

    /// Records the new tallies, logging falsetickers as they come and go.
    fn set_tallies(&mut self, tallies: Vec<Tally>) {
        for (slot, tally) in self.slots.iter_mut().zip(tallies) {
            if slot.tally == tally {
                continue;
            }
            if tally == Tally::Falseticker {
                warn!(
                    "upstream {} rejected as a falseticker (it disagrees with the majority)",
                    slot.source.addr()
                );
            } else if slot.tally == Tally::Falseticker {
                info!(
                    "upstream {} agrees with the majority again",
                    slot.source.addr()
                );
            }
            slot.tally = tally;
            self.dirty = true;
        }
    }
}
