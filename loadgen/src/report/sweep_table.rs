//! A sweep in the table: one row per step (rate, shares, percentiles,
//! the kernel check and the step's outcome), then the sweep's result — the
//! highest rate that passed — and why it stopped.

use std::fmt::Write as _;

use super::text::{group, rate, us};
use super::{StepReport, SweepSummary};
use crate::sweep::{Phase, StepOutcome, StopReason};

/// The per-step table of a sweep.
pub fn render_sweep_table(steps: &[StepReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4} {:<6} {:>11} {:>11} {:>11} {:>8} {:>7} {:>7} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}  outcome",
        "step", "phase", "offered/s", "achieved/s", "sent", "valid%", "lost%", "late", "invalid", "KoD", "dup",
        "θp50µs", "θp99µs", "δp50µs", "δp99µs", "kout%", "drops"
    );
    for st in steps {
        let phase = match st.phase {
            Some(Phase::Refine) => "refine",
            _ => "ramp",
        };
        let outcome = match st.outcome {
            Some(StepOutcome::Pass) => "pass",
            Some(StepOutcome::Fail) => "FAIL",
            Some(StepOutcome::Limited) => "GENERATOR LIMITED",
            Some(StepOutcome::Interrupted) => "interrupted",
            None => "",
        };
        let _ = writeln!(
            s,
            "{:>4} {:<6} {:>11} {:>11} {:>11} {:>8.3} {:>7.3} {:>7} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}  {outcome}",
            st.step,
            phase,
            rate(st.offered_rate),
            rate(st.achieved_rate),
            group(st.requests.sent),
            st.shares.valid_pct,
            st.shares.lost_pct,
            group(st.requests.late),
            group(st.requests.invalid),
            group(st.requests.kod),
            group(st.other_datagrams.duplicates),
            us(st.theta_us.p50_us),
            us(st.theta_us.p99_us),
            us(st.rtt_us.p50_us),
            us(st.rtt_us.p99_us),
            st.kernel
                .map_or("-".to_owned(), |k| format!("{:+.2}", k.out_diff_pct)),
            group(st.own_receive_drops),
        );
    }
    s
}

/// The result line(s) of a sweep.
pub fn render_sweep_summary(sum: &SweepSummary, steps: &[StepReport]) -> String {
    let mut s = String::new();
    let crit = sum.criterion_valid_pct;
    match sum.max_rate_ok {
        Some(max) => {
            let qualifier = if sum.limit_found { "" } else { "at least " };
            let _ = writeln!(
                s,
                "max rate with ≥ {crit} % valid replies: {qualifier}{} req/s (step {})",
                rate(max),
                sum.max_rate_step.unwrap_or(0)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "max rate with ≥ {crit} % valid replies: none (below the first step's rate)"
            );
        }
    }
    let why = match sum.stop_reason {
        StopReason::LossAboveThreshold => match sum.lowest_failed_rate {
            Some(f) => {
                let failed = steps
                    .iter()
                    .find(|st| st.offered_rate == f && st.outcome == Some(StepOutcome::Fail));
                format!(
                    "stopped: {} req/s had {} valid",
                    rate(f),
                    failed.map_or("too few".to_owned(), |st| format!(
                        "{:.3} %",
                        st.shares.valid_pct
                    ))
                )
            }
            None => "stopped: loss above the threshold".to_owned(),
        },
        StopReason::GeneratorLimited => {
            "stopped: the load generator could not offer the next rate — the server's limit is higher"
                .to_owned()
        }
        StopReason::ReachedMaxRate => {
            "stopped: --max-rate reached — the server's limit is higher".to_owned()
        }
        StopReason::Interrupted => "stopped: interrupted".to_owned(),
    };
    let _ = writeln!(s, "{why}");
    s
}
