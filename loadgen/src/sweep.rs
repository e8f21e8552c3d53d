//! The sweep's decisions, separate from running it: which rate comes next,
//! when to stop, and what the result is. Rates rise by the step factor
//! while steps pass; after the first failure an optional bisection (in
//! geometric steps) narrows the gap between the last pass and the failure.
//! A step the load generator could not offer in full ends the sweep: above
//! it nothing would be known about the server.

use serde::Serialize;

use crate::args::SweepPlan;

/// How a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// At least 100 − threshold percent of the requests got valid replies.
    Pass,
    /// More than the threshold got no valid reply.
    Fail,
    /// The offered rate was not achieved: no verdict on the server.
    Limited,
    /// Stopped by Ctrl-C.
    Interrupted,
}

/// Why a sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A step (and the bisection, if any) found the server's limit.
    LossAboveThreshold,
    /// The load generator could not offer a step's rate; the server's
    /// limit is above the last pass.
    GeneratorLimited,
    /// `--max-rate` passed; the server's limit is above it.
    ReachedMaxRate,
    /// Ctrl-C.
    Interrupted,
}

/// The phase a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Rising by the step factor.
    Ramp,
    /// Bisecting after the first failure.
    Refine,
}

/// A sweep in progress.
#[derive(Clone, Debug)]
pub struct Sweep {
    plan: SweepPlan,
    phase: Phase,
    refine_left: u32,
    best_pass: Option<f64>,
    lowest_fail: Option<f64>,
    stop: Option<StopReason>,
}

impl Sweep {
    /// A sweep following `plan`.
    pub fn new(plan: SweepPlan) -> Sweep {
        Sweep {
            plan,
            phase: Phase::Ramp,
            refine_left: plan.refine,
            best_pass: None,
            lowest_fail: None,
            stop: None,
        }
    }

    /// The first rate.
    pub fn first_rate(&self) -> f64 {
        self.plan.start
    }

    /// The phase of the next step.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The verdict on a step with `valid_pct` percent valid replies.
    pub fn judge(&self, valid_pct: f64, limited: bool, interrupted: bool) -> StepOutcome {
        if interrupted {
            StepOutcome::Interrupted
        } else if limited {
            StepOutcome::Limited
        } else if valid_pct >= 100.0 - self.plan.loss_threshold_pct {
            StepOutcome::Pass
        } else {
            StepOutcome::Fail
        }
    }

    /// Records the outcome of a step at `rate`; returns the next rate, or
    /// `None` when the sweep is over.
    pub fn record(&mut self, rate: f64, outcome: StepOutcome) -> Option<f64> {
        match outcome {
            StepOutcome::Interrupted => return self.end(StopReason::Interrupted),
            StepOutcome::Limited => return self.end(StopReason::GeneratorLimited),
            StepOutcome::Pass => {
                self.best_pass = Some(self.best_pass.map_or(rate, |b| b.max(rate)));
            }
            StepOutcome::Fail => {
                self.lowest_fail = Some(self.lowest_fail.map_or(rate, |f| f.min(rate)));
            }
        }
        match self.phase {
            Phase::Ramp if outcome == StepOutcome::Pass => {
                if rate >= self.plan.max {
                    return self.end(StopReason::ReachedMaxRate);
                }
                Some((rate * self.plan.factor).min(self.plan.max))
            }
            Phase::Ramp => {
                if self.refine_left == 0 || self.best_pass.is_none() {
                    return self.end(StopReason::LossAboveThreshold);
                }
                self.phase = Phase::Refine;
                self.bisect()
            }
            Phase::Refine => self.bisect(),
        }
    }

    fn bisect(&mut self) -> Option<f64> {
        match (self.best_pass, self.lowest_fail) {
            (Some(lo), Some(hi)) if self.refine_left > 0 && hi > lo => {
                self.refine_left -= 1;
                Some((lo * hi).sqrt().round())
            }
            _ => self.end(StopReason::LossAboveThreshold),
        }
    }

    fn end(&mut self, why: StopReason) -> Option<f64> {
        self.stop = Some(why);
        None
    }

    /// Why the sweep ended (once it has).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// The highest rate that passed.
    pub fn best_pass(&self) -> Option<f64> {
        self.best_pass
    }

    /// The lowest rate that failed.
    pub fn lowest_fail(&self) -> Option<f64> {
        self.lowest_fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(refine: u32) -> SweepPlan {
        SweepPlan {
            start: 1000.0,
            factor: 2.0,
            max: 100_000.0,
            loss_threshold_pct: 1.0,
            refine,
        }
    }

    #[test]
    fn ramps_until_a_failure() {
        let mut s = Sweep::new(plan(0));
        assert_eq!(s.first_rate(), 1000.0);
        assert_eq!(s.judge(99.0, false, false), StepOutcome::Pass);
        assert_eq!(s.judge(98.9, false, false), StepOutcome::Fail);
        assert_eq!(s.record(1000.0, StepOutcome::Pass), Some(2000.0));
        assert_eq!(s.record(2000.0, StepOutcome::Pass), Some(4000.0));
        assert_eq!(s.record(4000.0, StepOutcome::Fail), None);
        assert_eq!(s.stop_reason(), Some(StopReason::LossAboveThreshold));
        assert_eq!(s.best_pass(), Some(2000.0));
        assert_eq!(s.lowest_fail(), Some(4000.0));
    }

    #[test]
    fn bisects_after_the_failure() {
        let mut s = Sweep::new(plan(2));
        s.record(1000.0, StepOutcome::Pass);
        s.record(2000.0, StepOutcome::Pass);
        let mid = s.record(4000.0, StepOutcome::Fail).unwrap();
        assert_eq!(mid, 2828.0);
        assert_eq!(s.phase(), Phase::Refine);
        let mid2 = s.record(mid, StepOutcome::Pass).unwrap();
        assert_eq!(mid2, (2828.0f64 * 4000.0).sqrt().round());
        assert_eq!(s.record(mid2, StepOutcome::Fail), None);
        assert_eq!(s.best_pass(), Some(2828.0));
        assert_eq!(s.stop_reason(), Some(StopReason::LossAboveThreshold));
    }

    #[test]
    fn limited_interrupted_and_max_rate_end_it() {
        let mut s = Sweep::new(plan(3));
        assert_eq!(s.judge(100.0, true, false), StepOutcome::Limited);
        s.record(1000.0, StepOutcome::Pass);
        assert_eq!(s.record(2000.0, StepOutcome::Limited), None);
        assert_eq!(s.stop_reason(), Some(StopReason::GeneratorLimited));
        assert_eq!(s.best_pass(), Some(1000.0));

        let mut i = Sweep::new(plan(0));
        assert_eq!(i.record(1000.0, StepOutcome::Interrupted), None);
        assert_eq!(i.stop_reason(), Some(StopReason::Interrupted));

        let mut m = Sweep::new(SweepPlan {
            max: 3000.0,
            ..plan(0)
        });
        assert_eq!(m.record(1000.0, StepOutcome::Pass), Some(2000.0));
        assert_eq!(m.record(2000.0, StepOutcome::Pass), Some(3000.0));
        assert_eq!(m.record(3000.0, StepOutcome::Pass), None);
        assert_eq!(m.stop_reason(), Some(StopReason::ReachedMaxRate));
    }

    #[test]
    fn a_failing_first_step_has_no_maximum() {
        let mut s = Sweep::new(plan(3));
        assert_eq!(s.record(1000.0, StepOutcome::Fail), None);
        assert_eq!(s.best_pass(), None);
    }
}
