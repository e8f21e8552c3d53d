//! The figures of a run: built once from the threads' counters,
//! histograms and the kernel's counters into [`StepReport`]s, then rendered
//! as the table on stdout and serialized as `--json` from the same structs,
//! so the JSON holds every figure the table shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::args::JunkPlan;
use crate::flood::FloodResult;
use crate::kernel::UdpCounters;
use crate::stats::{Counters, Histograms, Others, Percentiles, Timeline};
use crate::sweep::{Phase, StepOutcome, StopReason};
use crate::validate::Invalid;

/// Achieved rates below this share of the offered rate mark a step as
/// limited by the load generator.
pub const LIMITED_BELOW: f64 = 0.98;

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// "ntp-loadgen".
    pub tool: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The target as given.
    pub target: String,
    /// The address it resolved to.
    pub target_addr: String,
    /// The target is on this host (traffic over loopback: the kernel's
    /// counters see both directions).
    pub local_target: bool,
    /// How the run was set up.
    pub config: ConfigReport,
    /// Where T1 comes from.
    pub t1_source: String,
    /// Where T4 comes from.
    pub t4_source: String,
    /// Every step (one for a fixed-rate run), in the order run.
    pub steps: Vec<StepReport>,
    /// The result of a sweep.
    pub sweep: Option<SweepSummary>,
    /// The junk flood over the whole run (every step), with `--junk`.
    pub junk: Option<JunkReport>,
    /// Stopped early by Ctrl-C / SIGTERM.
    pub interrupted: bool,
}

/// The run's settings, as used.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigReport {
    /// "fixed" or "sweep".
    pub mode: &'static str,
    /// Offered rate of a fixed run.
    pub rate: Option<f64>,
    /// First rate of a sweep.
    pub start_rate: Option<f64>,
    /// Sweep step factor.
    pub step_factor: Option<f64>,
    /// Highest sweep rate.
    pub max_rate: Option<f64>,
    /// Percent of requests without a valid reply that fails a step.
    pub loss_threshold_pct: Option<f64>,
    /// Bisection steps.
    pub refine: Option<u32>,
    /// Send time per run / step, seconds.
    pub duration_s: f64,
    /// Load threads.
    pub threads: usize,
    /// Core of each thread (`null`: not pinned).
    pub thread_cores: Vec<Option<usize>>,
    /// Client sockets.
    pub clients: usize,
    /// `--source-range`.
    pub source_range: Option<String>,
    /// Distinct source addresses the clients use.
    pub source_addresses: u64,
    /// Late threshold, seconds (lost after twice this).
    pub timeout_s: f64,
    /// Kernel TX timestamps for T1.
    pub precise_tx: bool,
    /// NTP version of the requests.
    pub ntp_version: u8,
    /// Largest batch.
    pub max_batch: usize,
    /// Receive buffer per client socket (bytes, as the kernel reports).
    pub recv_buffer_bytes: usize,
    /// Send buffer per client socket (bytes).
    pub send_buffer_bytes: usize,
    /// The receive buffer was forced past `rmem_max`.
    pub recv_buffer_forced: bool,
    /// Waits have nanosecond resolution (`epoll_pwait2`).
    pub fine_timeouts: bool,
    /// How batches are sent: "udp-gso" (one send per batch, cut into
    /// datagrams by the kernel) or "sendmmsg".
    pub send_method: &'static str,
    /// How threads wait for replies: "ppoll" (few sockets: nothing
    /// registered while busy) or "epoll" (many sockets).
    pub wait_method: &'static str,
    /// `--accept-unsynchronized`: unsynchronized but otherwise valid
    /// replies count as valid.
    pub accept_unsynchronized: bool,
    /// `--junk` classes (`null` without a flood).
    pub junk_classes: Option<Vec<&'static str>>,
    /// `--junk-rate`, datagrams per second.
    pub junk_rate: Option<f64>,
    /// `--junk-sockets`.
    pub junk_sockets: Option<usize>,
    /// Junk send time per run or step, seconds (`--junk-duration`, else
    /// `--duration`).
    pub junk_duration_s: Option<f64>,
    /// `--timeline` interval, seconds.
    pub timeline_interval_s: Option<f64>,
    /// Core of the junk flood's thread (`null`: not pinned).
    pub junk_core: Option<usize>,
}

/// The result of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepSummary {
    /// Highest offered rate with at least `criterion_valid_pct` valid.
    pub max_rate_ok: Option<f64>,
    /// Its step number.
    pub max_rate_step: Option<usize>,
    /// Lowest offered rate that failed.
    pub lowest_failed_rate: Option<f64>,
    /// Why the sweep ended.
    pub stop_reason: StopReason,
    /// The server's limit lies between `max_rate_ok` and
    /// `lowest_failed_rate` (false: it is above `max_rate_ok`, unknown).
    pub limit_found: bool,
    /// The pass criterion: percent of requests with valid replies.
    pub criterion_valid_pct: f64,
}

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
    fn of(t: &Timeline) -> TimelineReport {
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

    /// The table's line.
    fn render(&self) -> String {
        let cells: Vec<String> = self
            .valid_pct
            .iter()
            .map(|p| p.map_or("-".to_owned(), |p| format!("{p:.1}")))
            .collect();
        format!(
            "timeline       valid % per {} s of send time: {}\n",
            self.interval_s,
            cells.join(" ")
        )
    }
}

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
            mean_per_call: if r.calls == 0 {
                0.0
            } else {
                r.sent as f64 / r.calls as f64
            },
            gso_classes: r.gso_classes,
            buffer_full: r.buffer_full,
            refused: r.refused,
            send_errors: r.send_errors,
            max_lag_ms: r.max_lag_ns as f64 / 1e6,
            thread_cpu_pct: pct_f(r.cpu_ns as f64 * 1e-9, window),
            preempted: r.preempted,
            send_window_s: window,
        }
    }

    /// The one "junk" line of the table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "junk           {} sent ({}) at {}/s of {}/s offered ({:.2} %) from {} sockets, \
             {} sendmmsg calls ({} of {} classes as GSO batches), buffer full {}, refused {}, \
             thread CPU {:.1} %; replies to junk {}",
            group(self.sent),
            self.classes.join(","),
            rate(self.rate_achieved),
            rate(self.rate_offered),
            self.achieved_pct,
            self.sockets,
            group(self.send_calls),
            self.gso_classes,
            self.classes.len(),
            group(self.buffer_full),
            group(self.refused),
            self.thread_cpu_pct,
            group(self.replies),
        );
        if self.replies > 0 {
            s.push_str(" (THE SERVER ANSWERED JUNK: amplification)");
        }
        s.push('\n');
        s
    }

    /// The warning when the flood fell short, like the load generator's.
    pub fn verdict(&self) -> Option<String> {
        self.limited.then(|| {
            format!(
                "JUNK FLOOD LIMITED — achieved {} of {} junk datagrams/s offered ({:.1} %); \
                 the server saw a weaker flood than asked",
                rate(self.rate_achieved),
                rate(self.rate_offered),
                self.achieved_pct
            )
        })
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
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
                mean_batch: if c.send_calls == 0 {
                    0.0
                } else {
                    c.sent as f64 / c.send_calls as f64
                },
                buffer_full: c.send_would_block,
                refused: c.refused,
                max_lag_ms: c.max_lag_ns as f64 / 1e6,
                recv_calls: c.recv_calls,
                thread_cpu_pct: pct_f(
                    c.cpu_ns as f64 * 1e-9,
                    i.send_window_s * i.threads.max(1) as f64,
                ),
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

fn pct_f(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
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

/// A count with thousands separators.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn rate(r: f64) -> String {
    group(r.round() as u64)
}

fn us(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

impl RunReport {
    /// Writes the JSON form to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| e.to_string())
    }

    /// The header lines: what was run and how it measures.
    pub fn render_header(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let cores: Vec<String> = c
            .thread_cores
            .iter()
            .map(|core| core.map_or("unpinned".to_owned(), |n| n.to_string()))
            .collect();
        let _ = writeln!(
            s,
            "ntp-loadgen {} → {} ({}), NTPv{}, {} thread{} (core {}), {} client socket{}{}",
            self.version,
            self.target,
            self.target_addr,
            c.ntp_version,
            c.threads,
            if c.threads == 1 { "" } else { "s" },
            cores.join(", "),
            group(c.clients as u64),
            if c.clients == 1 { "" } else { "s" },
            match &c.source_range {
                Some(r) => format!(" from {} addresses of {r}", group(c.source_addresses)),
                None => String::new(),
            },
        );
        let _ = writeln!(
            s,
            "receive buffer {} KiB per socket{}; batches of up to {} sent by {}, replies awaited by {}; timeout {} s (late after it, lost after {} s)",
            c.recv_buffer_bytes / 1024,
            if c.recv_buffer_forced { " (forced)" } else { "" },
            c.max_batch,
            c.send_method,
            c.wait_method,
            c.timeout_s,
            2.0 * c.timeout_s,
        );
        let _ = writeln!(s, "T1: {}", self.t1_source);
        let _ = writeln!(s, "T4: {}", self.t4_source);
        if c.accept_unsynchronized {
            let _ = writeln!(
                s,
                "--accept-unsynchronized: replies whose only fault is an unsynchronized server \
                 (LI 3, stratum 16, or stratum 0 with INIT/STEP) count as valid, and are counted apart"
            );
        }
        if let (Some(classes), Some(junk_rate)) = (&c.junk_classes, c.junk_rate) {
            let _ = writeln!(
                s,
                "junk flood: {} at {}/s in total for {} s from {} sockets on its own thread ({}); replies to it are counted",
                classes.join(","),
                rate(junk_rate),
                c.junk_duration_s.unwrap_or(c.duration_s),
                c.junk_sockets.unwrap_or(0),
                c.junk_core.map_or("unpinned".to_owned(), |n| format!("core {n}")),
            );
        }
        s
    }

    /// Why the run counts as failed although it ran: requests were sent
    /// and not one valid reply came back (in any step). One line, for
    /// stderr; `None` when some reply was valid, nothing was sent, or the
    /// run was interrupted.
    pub fn no_valid_reply(&self) -> Option<String> {
        if self.interrupted {
            return None;
        }
        let mut sent = 0;
        let mut valid = 0;
        let mut lost = 0;
        let mut late = 0;
        let mut refused = 0;
        let mut kod: BTreeMap<&str, u64> = BTreeMap::new();
        let mut invalid: BTreeMap<&str, u64> = BTreeMap::new();
        for st in &self.steps {
            sent += st.requests.sent;
            valid += st.requests.valid;
            lost += st.requests.lost;
            late += st.requests.late;
            refused += st.send.refused;
            for (code, n) in &st.kod_by_code {
                *kod.entry(code).or_default() += n;
            }
            for (why, n) in &st.invalid_by_reason {
                *invalid.entry(why).or_default() += n;
            }
        }
        if sent == 0 || valid > 0 {
            return None;
        }
        let invalid_total: u64 = invalid.values().sum();
        let kod_total: u64 = kod.values().sum();
        let breakdown = if lost == sent {
            "all lost".to_owned()
        } else {
            let mut parts = Vec::new();
            let list = |m: &BTreeMap<&str, u64>| {
                m.iter()
                    .filter(|(_, &n)| n > 0)
                    .map(|(k, n)| format!("{k} {}", group(*n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for (n, what) in [(lost, "lost"), (late, "late")] {
                if n > 0 {
                    parts.push(format!("{} {what}", group(n)));
                }
            }
            if invalid_total > 0 {
                parts.push(format!(
                    "{} invalid: {}",
                    group(invalid_total),
                    list(&invalid)
                ));
            }
            if kod_total > 0 {
                parts.push(format!("{} KoD: {}", group(kod_total), list(&kod)));
            }
            parts.join("; ")
        };
        let unsynchronized = invalid.get("unsynchronized").copied().unwrap_or(0)
            + kod.get("INIT").copied().unwrap_or(0)
            + kod.get("STEP").copied().unwrap_or(0);
        let hint = if lost + late == sent {
            if let Some(junk) = self.junk.as_ref().filter(|_| refused == 0) {
                if junk.sent > 0 {
                    "the server answered nothing while the junk flood ran"
                } else {
                    "is an NTP server listening there?"
                }
            } else if refused > 0 {
                "nothing listens there (the host answered ICMP port unreachable)"
            } else {
                "is an NTP server listening there?"
            }
        } else if unsynchronized > 0 {
            "the server says it is not synchronized; --accept-unsynchronized counts such replies for throughput"
        } else if kod_total > 0 {
            "the server refused the requests (kiss-o'-death)"
        } else if late > 0 && invalid_total == 0 {
            "the replies came after --timeout"
        } else {
            "its replies are not valid NTP server replies"
        };
        Some(format!(
            "no valid reply from {} ({} sent, {breakdown}): {hint}",
            self.target_addr,
            group(sent)
        ))
    }

    /// The full table: header, then the step (fixed run) or the sweep
    /// table, its result and the details of its best step.
    pub fn render(&self) -> String {
        let mut s = self.render_header();
        s.push('\n');
        match &self.sweep {
            None => {
                if let Some(step) = self.steps.first() {
                    s.push_str(&render_step(step, self.local_target));
                }
            }
            Some(sum) => {
                s.push_str(&render_sweep_table(&self.steps));
                s.push('\n');
                s.push_str(&render_sweep_summary(sum, &self.steps));
                if let Some(best) = sum
                    .max_rate_step
                    .and_then(|n| self.steps.iter().find(|st| st.step == n))
                {
                    let _ = writeln!(s, "\nstep {} in detail:", best.step);
                    s.push_str(&render_step(best, self.local_target));
                }
            }
        }
        if self.interrupted {
            s.push_str("\ninterrupted: sending stopped early; the figures cover what was sent\n");
        }
        s
    }
}

/// The detailed block of one step.
pub fn render_step(st: &StepReport, local_target: bool) -> String {
    let mut s = String::new();
    let r = &st.requests;
    let sh = &st.shares;
    let _ = writeln!(
        s,
        "rate           offered {} req/s, achieved {} req/s ({:.2} %) over {:.3} s",
        rate(st.offered_rate),
        rate(st.achieved_rate),
        st.achieved_pct,
        st.send_window_s
    );
    let _ = writeln!(
        s,
        "requests sent  {:>12}{}",
        group(r.sent),
        if r.send_errors > 0 {
            format!("   (send errors {})", group(r.send_errors))
        } else {
            String::new()
        }
    );
    let line = |s: &mut String, label: &str, n: u64, p: f64, extra: String| {
        let _ = writeln!(s, "  {label:<13}{:>12}  {p:>8.3} %{extra}", group(n));
    };
    line(
        &mut s,
        "valid",
        r.valid,
        sh.valid_pct,
        if r.valid_unsynchronized > 0 {
            format!(
                "   (of which {} unsynchronized, counted by --accept-unsynchronized)",
                group(r.valid_unsynchronized)
            )
        } else {
            String::new()
        },
    );
    line(&mut s, "late", r.late, sh.late_pct, String::new());
    line(&mut s, "lost", r.lost, sh.lost_pct, String::new());
    let reasons: Vec<String> = st
        .invalid_by_reason
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {}", group(*n)))
        .collect();
    line(
        &mut s,
        "invalid",
        r.invalid,
        sh.invalid_pct,
        if reasons.is_empty() {
            String::new()
        } else {
            format!("   ({})", reasons.join(", "))
        },
    );
    let codes: Vec<String> = st
        .kod_by_code
        .iter()
        .map(|(k, n)| format!("{k} {}", group(*n)))
        .collect();
    line(
        &mut s,
        "KoD",
        r.kod,
        sh.kod_pct,
        if codes.is_empty() {
            String::new()
        } else {
            format!("   ({})", codes.join(", "))
        },
    );
    let o = &st.other_datagrams;
    let _ = writeln!(
        s,
        "datagrams read {:>12}   duplicates {}, unmatched origin {}, stale {}, wrong source {}, malformed {}",
        group(o.received),
        group(o.duplicates),
        group(o.unmatched),
        group(o.stale),
        group(o.wrong_source),
        group(o.malformed)
    );
    let _ = writeln!(
        s,
        "own receive drops (SO_RXQ_OVFL/SO_MEMINFO) {}",
        group(st.own_receive_drops)
    );
    let sd = &st.send;
    let _ = writeln!(
        s,
        "sending        {} {} calls, mean batch {:.1}, buffer full {}, refused {}, max lag {:.3} ms; {} recvmmsg calls",
        group(sd.calls),
        sd.method,
        sd.mean_batch,
        group(sd.buffer_full),
        group(sd.refused),
        sd.max_lag_ms,
        group(sd.recv_calls)
    );
    let _ = writeln!(
        s,
        "load threads   CPU {:.1} % of the send window, preempted {} times",
        sd.thread_cpu_pct,
        group(sd.preempted)
    );
    let ts = &st.stamps;
    let _ = writeln!(
        s,
        "stamps         RX missing {}; TX used {}, missing {}, unmatched {}; negative round trips {}{}",
        group(ts.rx_missing),
        group(ts.tx_used),
        group(ts.tx_missing),
        group(ts.tx_unmatched),
        group(ts.negative_rtt),
        if ts.negative_rtt > 0 {
            " (server T3−T2 longer than the whole round trip: its stamps are off)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "\n{:<16}{:>10}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}   (µs)",
        "", "count", "min", "p1", "p50", "p99", "max", "p99|x|", "max|x|"
    );
    for (label, p) in [
        ("offset θ", &st.theta_us),
        ("round trip δ", &st.rtt_us),
        ("server T3−T2", &st.residence_us),
        ("reply wait T4−T1", &st.wait_us),
    ] {
        let _ = writeln!(
            s,
            "{label:<16}{:>10}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}",
            group(p.count),
            us(p.min_us),
            us(p.p1_us),
            us(p.p50_us),
            us(p.p99_us),
            us(p.max_us),
            us(p.abs_p99_us),
            us(p.max_abs_us)
        );
    }
    if let Some(k) = &st.kernel {
        let d = &k.delta;
        let scope = if local_target {
            "host-wide, both directions on loopback"
        } else {
            "host-wide"
        };
        let _ = writeln!(s, "\nkernel UDP counters (Δ over the step, {scope}):");
        let _ = writeln!(
            s,
            "  OutDatagrams            {:>12}   ours {:>12}  {:+.3} %",
            group(d.out_datagrams),
            group(k.expected_out),
            k.out_diff_pct
        );
        let _ = writeln!(
            s,
            "  InDatagrams+RcvbufErrors{:>12}   ours {:>12}  {:+.3} %",
            group(d.in_datagrams + d.rcvbuf_errors),
            group(k.expected_in),
            k.in_diff_pct
        );
        let _ = writeln!(
            s,
            "  RcvbufErrors {}, SndbufErrors {}, NoPorts {}, InErrors {}, MemErrors {}, InCsumErrors {}",
            group(d.rcvbuf_errors),
            group(d.sndbuf_errors),
            group(d.no_ports),
            group(d.in_errors),
            group(d.mem_errors),
            group(d.in_csum_errors)
        );
        if let Some(server) = k.server_buffer_drops {
            let _ = writeln!(
                s,
                "  dropped at the server's full buffer (RcvbufErrors − ours): {}",
                group(server)
            );
        }
        let sends = if st.send.method == "udp-gso" {
            "GSO sends (OutDatagrams counts one per send)"
        } else {
            "requests sent"
        };
        let junk = if st.junk.is_some() {
            " + junk messages (a GSO message counts once)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  (ours: out = {sends}{junk}{}; in = {}{})",
            if local_target {
                " + replies read + replies dropped at our sockets"
            } else {
                ""
            },
            if local_target {
                "requests sent + replies read + replies dropped at our sockets"
            } else {
                "replies read + replies dropped at our sockets"
            },
            if st.junk.is_some() && local_target {
                " + junk sent"
            } else {
                ""
            }
        );
    }
    if let Some(j) = &st.junk {
        s.push_str(&j.render());
    }
    if let Some(t) = &st.timeline {
        s.push_str(&t.render());
    }
    let _ = writeln!(s, "\nresult: {}", verdict(st));
    if let Some(warning) = st.junk.as_ref().and_then(JunkReport::verdict) {
        let _ = writeln!(s, "junk:   {warning}");
    }
    s
}

/// One line saying whether the figures measure the server.
pub fn verdict(st: &StepReport) -> String {
    if st.offered_rate == 0.0 {
        "no requests offered (--rate 0: junk flood only)".to_owned()
    } else if st.limited {
        format!(
            "LOAD GENERATOR LIMITED — achieved {} of {} req/s offered ({:.1} %); \
             these figures do not measure the server",
            rate(st.achieved_rate),
            rate(st.offered_rate),
            st.achieved_pct
        )
    } else {
        format!(
            "{:.3} % valid replies at {} req/s offered (achieved {:.2} %)",
            st.shares.valid_pct,
            rate(st.offered_rate),
            st.achieved_pct
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn numbers_group_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
