//! One step's figures ([`StepReport`]): requests by outcome and their
//! shares, other datagrams, sending, timestamp sources, percentiles, the
//! kernel's counters against ours, the junk flood and the timeline — built
//! once from the merged counters and histograms of the step's threads.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{cpu_pct, mean, ms, pct, pct_f, JunkReport, LIMITED_BELOW};
use crate::args::JunkPlan;
use crate::flood::FloodResult;
use crate::kernel::UdpCounters;
use crate::stats::{Counters, Histograms, Others, Percentiles, Timeline};
use crate::sweep::{Phase, StepOutcome};
use crate::validate::Invalid;

/// Requests by outcome: `sent = valid + late + lost + invalid + kod`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Requests {
    /// Due by the schedule when sending stopped.
    pub scheduled: u64,
    /// Accepted by the kernel.
    pub sent: u64,
    /// Failed to send for good.
    pub send_errors: u64,
    /// Valid replies within the timeout.
    pub valid: u64,
    /// Of `valid`, replies from a server saying it is unsynchronized
    /// (counted as valid by `--accept-unsynchronized`; else 0).
    pub valid_unsynchronized: u64,
    /// Replies after the timeout, within twice it.
    pub late: u64,
    /// No matched reply within twice the timeout.
    pub lost: u64,
    /// Invalid replies.
    pub invalid: u64,
    /// Kiss-o'-death replies.
    pub kod: u64,
}

/// Shares of the requests sent, percent.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Shares {
    /// Valid.
    pub valid_pct: f64,
    /// Late.
    pub late_pct: f64,
    /// Lost.
    pub lost_pct: f64,
    /// Invalid.
    pub invalid_pct: f64,
    /// KoD.
    pub kod_pct: f64,
}

/// How sending went.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SendStats {
    /// Send calls that sent something (one UDP GSO send or one sendmmsg
    /// per batch).
    pub calls: u64,
    /// "udp-gso" or "sendmmsg".
    pub method: &'static str,
    /// Mean requests per call.
    pub mean_batch: f64,
    /// Calls that found the send buffer full.
    pub buffer_full: u64,
    /// Calls refused by an ICMP error (nothing listening at the target).
    pub refused: u64,
    /// Largest lag behind the schedule, milliseconds.
    pub max_lag_ms: f64,
    /// recvmmsg calls that returned data.
    pub recv_calls: u64,
    /// CPU the load threads used while sending, percent of threads × send
    /// window (near 100: the generator is busy; see `limited`).
    pub thread_cpu_pct: f64,
    /// Times the load threads were preempted while sending (other work on
    /// their cores: figures from a busy host are suspect).
    pub preempted: u64,
}

/// Timestamp sources, counted.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StampStats {
    /// Replies without a kernel RX stamp (a clock read stood in).
    pub rx_missing: u64,
    /// Replies whose T1 is a kernel TX stamp.
    pub tx_used: u64,
    /// Replies whose TX stamp never came (with `--precise-tx`).
    pub tx_missing: u64,
    /// TX stamps that matched no outstanding request.
    pub tx_unmatched: u64,
    /// Valid replies whose round trip came out negative: the server's
    /// T3 − T2 exceeds our T4 − T1 (its T3 is later, or its T2 earlier,
    /// than the datagrams really moved).
    pub negative_rtt: u64,
}

/// The kernel's UDP counters against ours.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct KernelCheck {
    /// Counter deltas over the step (including the wait for replies).
    pub delta: UdpCounters,
    /// OutDatagrams the load generator accounts for: its requests (its GSO
    /// sends, which the kernel counts once each, when batches go out as
    /// UDP GSO), plus on a local target the server's replies (all read or
    /// dropped at our sockets).
    pub expected_out: u64,
    /// (OutDatagrams − expected) / expected, percent.
    pub out_diff_pct: f64,
    /// InDatagrams + RcvbufErrors the load generator accounts for: on a
    /// local target every request and reply (each is delivered or dropped
    /// at a full buffer); else the replies it read or dropped.
    pub expected_in: u64,
    /// (InDatagrams + RcvbufErrors − expected) / expected, percent.
    pub in_diff_pct: f64,
    /// On a local target: datagrams dropped at full buffers other than
    /// ours (RcvbufErrors − our drops), i.e. at the server.
    pub server_buffer_drops: Option<u64>,
}

/// Everything measured in one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// 1-based step number.
    pub step: usize,
    /// Sweep phase (`null` for a fixed run).
    pub phase: Option<Phase>,
    /// Offered rate, requests per second.
    pub offered_rate: f64,
    /// Requests sent per second of the send window.
    pub achieved_rate: f64,
    /// Achieved / offered, percent.
    pub achieved_pct: f64,
    /// Send window, seconds.
    pub send_window_s: f64,
    /// Achieved below 98 % of offered: the load generator was the
    /// bottleneck, these figures do not measure the server.
    pub limited: bool,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// Sweep verdict.
    pub outcome: Option<StepOutcome>,
    /// Requests by outcome.
    pub requests: Requests,
    /// The same as shares of `sent`.
    pub shares: Shares,
    /// Invalid replies by reason.
    pub invalid_by_reason: BTreeMap<&'static str, u64>,
    /// KoD replies by kiss code.
    pub kod_by_code: BTreeMap<String, u64>,
    /// Other datagrams.
    pub other_datagrams: Others,
    /// Datagrams the kernel dropped at our sockets (SO_RXQ_OVFL /
    /// SO_MEMINFO).
    pub own_receive_drops: u64,
    /// Sending.
    pub send: SendStats,
    /// Timestamp sources.
    pub stamps: StampStats,
    /// Offset θ = ((T2−T1)+(T3−T4))/2, µs.
    pub theta_us: Percentiles,
    /// Round-trip δ = (T4−T1)−(T3−T2), µs.
    pub rtt_us: Percentiles,
    /// Server residence T3−T2, µs.
    pub residence_us: Percentiles,
    /// The client's wait for the reply T4−T1 (δ + residence: what a
    /// client experiences, queueing at the server included), µs.
    pub wait_us: Percentiles,
    /// Cross-check with the kernel (`null` if /proc/net/snmp is unreadable).
    pub kernel: Option<KernelCheck>,
    /// The junk flood during this step (`null` without `--junk`).
    pub junk: Option<JunkReport>,
    /// Requests sent and validly answered per interval of send time
    /// (`null` without `--timeline`).
    pub timeline: Option<TimelineReport>,
}

/// `--timeline`: the step cut into intervals of send time.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineReport {
    /// Interval width, seconds.
    pub interval_s: f64,
    /// Requests sent in each interval (the last also holds what was sent
    /// after the step's end, catching up).
    pub sent: Vec<u64>,
    /// Of those, requests that got a valid reply.
    pub valid: Vec<u64>,
    /// valid / sent per interval, percent (`null` where nothing was sent).
    pub valid_pct: Vec<Option<f64>>,
}

impl TimelineReport {
    /// The report of timeline `t`.
    pub fn of(t: &Timeline) -> TimelineReport {
        TimelineReport {
            interval_s: t.interval_ns as f64 * 1e-9,
            sent: t.sent.clone(),
            valid: t.valid.clone(),
            valid_pct: t
                .sent
                .iter()
                .zip(&t.valid)
                .map(|(&s, &v)| (s > 0).then(|| pct(v, s)))
                .collect(),
        }
    }
}

/// The inputs of one step's report.
pub struct StepInput<'a> {
    /// 1-based number.
    pub step: usize,
    /// Sweep phase.
    pub phase: Option<Phase>,
    /// Offered rate.
    pub offered_rate: f64,
    /// Summed counters.
    pub counters: &'a Counters,
    /// Merged histograms.
    pub hist: &'a Histograms,
    /// Longest send window of the threads, seconds.
    pub send_window_s: f64,
    /// Some thread was interrupted.
    pub interrupted: bool,
    /// Kernel counter deltas.
    pub kernel: Option<UdpCounters>,
    /// Load threads.
    pub threads: usize,
    /// Batches went out as UDP GSO sends.
    pub gso: bool,
    /// The target is on this host.
    pub local_target: bool,
    /// The junk flood's result and plan, with `--junk`.
    pub junk: Option<(&'a FloodResult, &'a JunkPlan)>,
    /// The merged timeline, with `--timeline`.
    pub timeline: Option<&'a Timeline>,
}

impl StepReport {
    /// Builds the report of one step.
    pub fn build(i: &StepInput<'_>) -> StepReport {
        let c = i.counters;
        let window = i.send_window_s.max(1e-9);
        let achieved = c.sent as f64 / window;
        let achieved_pct = pct_f(achieved, i.offered_rate);
        let limited = achieved < LIMITED_BELOW * i.offered_rate;
        let kod = c.kod.total();
        let invalid = c.invalid_total();
        let requests = Requests {
            scheduled: c.scheduled,
            sent: c.sent,
            send_errors: c.send_errors,
            valid: c.valid,
            valid_unsynchronized: c.valid_unsynchronized,
            late: c.late,
            lost: c.lost,
            invalid,
            kod,
        };
        let shares = Shares {
            valid_pct: pct(c.valid, c.sent),
            late_pct: pct(c.late, c.sent),
            lost_pct: pct(c.lost, c.sent),
            invalid_pct: pct(invalid, c.sent),
            kod_pct: pct(kod, c.sent),
        };
        let kernel = i
            .kernel
            .map(|d| kernel_check(d, c, i.local_target, i.gso, i.junk.map(|(r, _)| r)));
        StepReport {
            step: i.step,
            phase: i.phase,
            offered_rate: i.offered_rate,
            achieved_rate: achieved,
            achieved_pct,
            send_window_s: i.send_window_s,
            limited,
            interrupted: i.interrupted,
            outcome: None,
            requests,
            shares,
            invalid_by_reason: Invalid::ALL
                .iter()
                .map(|r| (r.name(), c.invalid[r.index()]))
                .collect(),
            kod_by_code: c.kod.named().into_iter().collect(),
            other_datagrams: c.other,
            own_receive_drops: c.own_drops,
            send: SendStats {
                calls: c.send_calls,
                method: if i.gso { "udp-gso" } else { "sendmmsg" },
                mean_batch: mean(c.sent, c.send_calls),
                buffer_full: c.send_would_block,
                refused: c.refused,
                max_lag_ms: ms(c.max_lag_ns),
                recv_calls: c.recv_calls,
                thread_cpu_pct: cpu_pct(c.cpu_ns, i.send_window_s * i.threads.max(1) as f64),
                preempted: c.preempted,
            },
            stamps: StampStats {
                rx_missing: c.missing_rx_stamps,
                tx_used: c.tx_stamps_used,
                tx_missing: c.tx_stamps_missing,
                tx_unmatched: c.tx_stamps_unmatched,
                negative_rtt: c.negative_rtt,
            },
            theta_us: Percentiles::of(&i.hist.theta),
            rtt_us: Percentiles::of(&i.hist.rtt),
            residence_us: Percentiles::of(&i.hist.residence),
            wait_us: Percentiles::of(&i.hist.wait),
            kernel,
            junk: i.junk.map(|(r, plan)| JunkReport::build(r, plan)),
            timeline: i.timeline.map(TimelineReport::of),
        }
    }
}

fn kernel_check(
    d: UdpCounters,
    c: &Counters,
    local: bool,
    gso: bool,
    junk: Option<&FloodResult>,
) -> KernelCheck {
    // Replies to junk are counted as they come back, like our replies.
    let junk_replies = junk.map_or(0, |j| j.replies);
    let replies = c.other.received + c.own_drops + junk_replies;
    // OutDatagrams counts a UDP GSO send once, however many datagrams it
    // carries; InDatagrams counts each datagram.
    let out_sent = if gso { c.send_calls } else { c.sent } + junk.map_or(0, |j| j.messages);
    let sent = c.sent + junk.map_or(0, |j| j.sent);
    let (expected_out, expected_in) = if local {
        (out_sent + replies, sent + replies)
    } else {
        (out_sent, replies)
    };
    let observed_in = d.in_datagrams + d.rcvbuf_errors;
    KernelCheck {
        delta: d,
        expected_out,
        out_diff_pct: diff_pct(d.out_datagrams, expected_out),
        expected_in,
        in_diff_pct: diff_pct(observed_in, expected_in),
        server_buffer_drops: local.then(|| d.rcvbuf_errors.saturating_sub(c.own_drops)),
    }
}

fn diff_pct(got: u64, want: u64) -> f64 {
    if want == 0 {
        if got == 0 {
            0.0
        } else {
            100.0
        }
    } else {
        100.0 * (got as f64 - want as f64) / want as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{render_step, verdict};
    use crate::validate::KissCounts;
    use fastntp::proto::RefId;

    fn counters() -> Counters {
        let mut kod = KissCounts::default();
        kod.add(RefId::RATE);
        let mut c = Counters {
            scheduled: 1000,
            sent: 1000,
            valid: 990,
            late: 2,
            lost: 4,
            kod,
            other: Others {
                received: 1001,
                duplicates: 5,
                ..Others::default()
            },
            send_calls: 100,
            ..Counters::default()
        };
        c.invalid[Invalid::BadMode.index()] = 3;
        c
    }

    #[test]
    fn a_step_report_adds_up_and_flags_a_limited_generator() {
        let c = counters();
        let h = Histograms::default();
        let input = StepInput {
            step: 1,
            phase: None,
            offered_rate: 1000.0,
            counters: &c,
            hist: &h,
            send_window_s: 1.0,
            interrupted: false,
            kernel: Some(UdpCounters {
                out_datagrams: 2001,
                in_datagrams: 2001,
                ..UdpCounters::default()
            }),
            threads: 1,
            gso: false,
            local_target: true,
            junk: None,
            timeline: None,
        };
        let st = StepReport::build(&input);
        let r = st.requests;
        assert_eq!(r.valid + r.late + r.lost + r.invalid + r.kod, r.sent);
        assert!(!st.limited);
        assert_eq!(st.shares.valid_pct, 99.0);
        assert_eq!(st.kod_by_code.get("RATE"), Some(&1));
        assert_eq!(st.invalid_by_reason.get("bad_mode"), Some(&3));
        let k = st.kernel.unwrap();
        assert_eq!(k.expected_out, 2001);
        assert_eq!(k.out_diff_pct, 0.0);
        assert_eq!(k.server_buffer_drops, Some(0));

        let slow = StepReport::build(&StepInput {
            offered_rate: 1030.0,
            ..input
        });
        assert!(slow.limited);
        assert!(verdict(&slow).contains("LOAD GENERATOR LIMITED"));
        assert!(render_step(&slow, true).contains("LOAD GENERATOR LIMITED"));
    }
}
