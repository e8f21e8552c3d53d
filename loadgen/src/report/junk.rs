//! What the junk flood of `--junk` did ([`JunkReport`]), per step and
//! over the whole run, built from the flood thread's result and the plan.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{cpu_pct, mean, ms, pct_f, LIMITED_BELOW};
use crate::args::JunkPlan;
use crate::flood::FloodResult;

/// What the junk flood of `--junk` did.
#[derive(Clone, Debug, Serialize)]
pub struct JunkReport {
    /// The classes, in the order sent.
    pub classes: Vec<&'static str>,
    /// Junk datagrams per second asked for (`--junk-rate`).
    pub rate_offered: f64,
    /// Junk datagrams the kernel accepted.
    pub sent: u64,
    /// Junk datagrams sent per second of the send window.
    pub rate_achieved: f64,
    /// Achieved / offered, percent.
    pub achieved_pct: f64,
    /// Achieved below 98 % of offered: the flood was weaker than asked.
    pub limited: bool,
    /// Datagrams that came back on the junk sockets (read or dropped at
    /// their buffers): answers to junk, an amplification bug.
    pub replies: u64,
    /// Bytes of the replies read.
    pub reply_bytes: u64,
    /// Datagrams sent per class.
    pub sent_by_class: BTreeMap<&'static str, u64>,
    /// Sockets the junk went out from.
    pub sockets: usize,
    /// `sendmmsg` calls that sent something.
    pub send_calls: u64,
    /// Mean datagrams per call.
    pub mean_per_call: f64,
    /// Classes sent as UDP GSO batches (empty datagrams never are).
    pub gso_classes: usize,
    /// Calls that found the send buffer full.
    pub buffer_full: u64,
    /// ICMP errors on the junk sockets (nothing listening at the target).
    pub refused: u64,
    /// Datagrams that failed to send for another reason.
    pub send_errors: u64,
    /// Largest lag behind the junk schedule, milliseconds.
    pub max_lag_ms: f64,
    /// CPU the flood thread used while sending, percent of the window.
    pub thread_cpu_pct: f64,
    /// Times the flood thread was preempted while sending.
    pub preempted: u64,
    /// Send window, seconds.
    pub send_window_s: f64,
}

impl JunkReport {
    /// The report of flood result `r` for `plan`.
    pub fn build(r: &FloodResult, plan: &JunkPlan) -> JunkReport {
        let window = r.send_window.as_secs_f64();
        let achieved = r.sent as f64 / window.max(1e-9);
        JunkReport {
            classes: plan.classes.iter().map(|c| c.name()).collect(),
            rate_offered: plan.rate,
            sent: r.sent,
            rate_achieved: achieved,
            achieved_pct: pct_f(achieved, plan.rate),
            limited: achieved < LIMITED_BELOW * plan.rate,
            replies: r.replies,
            reply_bytes: r.reply_bytes,
            sent_by_class: plan
                .classes
                .iter()
                .zip(&r.sent_by_class)
                .map(|(c, n)| (c.name(), *n))
                .collect(),
            sockets: plan.sockets,
            send_calls: r.calls,
            mean_per_call: mean(r.sent, r.calls),
            gso_classes: r.gso_classes,
            buffer_full: r.buffer_full,
            refused: r.refused,
            send_errors: r.send_errors,
            max_lag_ms: ms(r.max_lag_ns),
            thread_cpu_pct: cpu_pct(r.cpu_ns, window),
            preempted: r.preempted,
            send_window_s: window,
        }
    }
}
