//! The figures of a run: built once from the threads' counters,
//! histograms and the kernel's counters into [`StepReport`]s, then rendered
//! as the table on stdout and serialized as `--json` from the same structs,
//! so the JSON holds every figure the table shows.
//!
//! - this file: the run ([`RunReport`]: its setup, steps, sweep result and
//!   junk flood) and its JSON form;
//! - `step`: one step's figures and how they are built;
//! - `junk`: the junk flood's figures;
//! - `text`: the table — the header and the run's layout, and the
//!   number formats;
//! - `step_text`: the detailed block of one step;
//! - `sweep_table`: a sweep's table of steps and its result lines;
//! - `verdict`: the one-line verdicts (does a step measure the server,
//!   did the flood fall short, why a run got no valid reply).

mod junk;
mod step;
mod step_text;
mod sweep_table;
mod text;
mod verdict;

use std::path::Path;

use serde::Serialize;

use crate::sweep::StopReason;

pub use junk::JunkReport;
pub use step::{
    KernelCheck, Requests, SendStats, Shares, StampStats, StepInput, StepReport, TimelineReport,
};
pub use step_text::render_step;
pub use sweep_table::{render_sweep_summary, render_sweep_table};
pub use text::group;
pub use verdict::verdict;

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

impl RunReport {
    /// Writes the JSON form to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| e.to_string())
    }
}

/// `part` of `whole`, percent (0 when `whole` is 0).
fn pct(part: u64, whole: u64) -> f64 {
    pct_f(part as f64, whole as f64)
}

/// `total / count` (0 without any).
fn mean(total: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    }
}

/// Nanoseconds as milliseconds.
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `cpu_ns` of CPU time as percent of `window_s` seconds.
fn cpu_pct(cpu_ns: u64, window_s: f64) -> f64 {
    pct_f(cpu_ns as f64 * 1e-9, window_s)
}

/// `part` of `whole`, percent (0 unless `whole` is positive).
fn pct_f(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}
