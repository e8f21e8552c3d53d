//! What the report says about how the run was set up: the
//! [`ConfigReport`] from the plan and from what the sockets and threads
//! found at start, and where T1 and T4 come from.

use super::Runner;
use crate::args::Mode;
use crate::batch::GSO_MAX_SEGMENTS;
use crate::pacing::Schedule;
use crate::report::{ConfigReport, RunReport, StepReport, SweepSummary};

impl Runner {
    /// The run's report around `steps` (its junk flood's part is added by
    /// the caller).
    pub(super) fn report(
        &self,
        steps: Vec<StepReport>,
        sweep: Option<SweepSummary>,
        interrupted: bool,
    ) -> RunReport {
        let p = &self.plan;
        let (rate, start, factor, max, threshold, refine) = match &p.mode {
            Mode::Fixed { rate } => (Some(*rate), None, None, None, None, None),
            Mode::Sweep(s) => (
                None,
                Some(s.start),
                Some(s.factor),
                Some(s.max),
                Some(s.loss_threshold_pct),
                Some(s.refine),
            ),
        };
        let source_addresses = p
            .sources
            .as_ref()
            .map_or(1, |r| r.host_count().min(p.clients as u128) as u64);
        let t1_source = if p.precise_tx {
            "kernel TX software timestamp from the socket error queue (SO_TIMESTAMPING, OPT_ID); \
             a CLOCK_REALTIME read just before the send call where none came (counted below)"
                .to_owned()
        } else {
            let batch = match &p.mode {
                Mode::Fixed { rate } => format!(
                    "≈{} at this rate",
                    Schedule::new(rate / p.threads as f64, 1_000_000_000, p.max_batch).batch()
                ),
                Mode::Sweep(_) => format!("sized to each rate, up to {}", p.max_batch),
            };
            format!(
                "CLOCK_REALTIME read just before each send call, shared by the requests of \
                 its batch ({batch}); --precise-tx uses kernel TX timestamps"
            )
        };
        RunReport {
            tool: "ntp-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            target: p.target_text.clone(),
            target_addr: p.target.to_string(),
            local_target: self.local_target,
            config: ConfigReport {
                mode: if sweep.is_some() || matches!(p.mode, Mode::Sweep(_)) {
                    "sweep"
                } else {
                    "fixed"
                },
                rate,
                start_rate: start,
                step_factor: factor,
                max_rate: max,
                loss_threshold_pct: threshold,
                refine,
                duration_s: p.duration.as_secs_f64(),
                threads: p.threads,
                thread_cores: self.workers.iter().map(|w| w.core).collect(),
                clients: p.clients,
                source_range: p.sources.as_ref().map(|r| r.to_string()),
                source_addresses,
                timeout_s: p.timeout.as_secs_f64(),
                precise_tx: p.precise_tx,
                ntp_version: p.version,
                max_batch: if self.buffers.gso {
                    p.max_batch.min(GSO_MAX_SEGMENTS)
                } else {
                    p.max_batch
                },
                recv_buffer_bytes: self.buffers.recv_buffer,
                send_buffer_bytes: self.buffers.send_buffer,
                recv_buffer_forced: self.buffers.forced,
                send_method: if self.buffers.gso {
                    "udp-gso"
                } else {
                    "sendmmsg"
                },
                fine_timeouts: self.fine_timeouts,
                wait_method: self.wait_method,
                accept_unsynchronized: p.accept_unsynchronized,
                junk_classes: p
                    .junk
                    .as_ref()
                    .map(|j| j.classes.iter().map(|c| c.name()).collect()),
                junk_rate: p.junk.as_ref().map(|j| j.rate),
                junk_sockets: p.junk.as_ref().map(|j| j.sockets),
                junk_duration_s: p.junk.as_ref().map(|j| j.duration.as_secs_f64()),
                timeline_interval_s: p.timeline.map(|t| t.as_secs_f64()),
                junk_core: self.flood.as_ref().and_then(|f| f.core),
            },
            t1_source,
            t4_source: "kernel RX software timestamp (SO_TIMESTAMPING); a CLOCK_REALTIME read \
                        after recvmmsg where none came (counted below)"
                .to_owned(),
            steps,
            sweep,
            junk: None,
            interrupted,
        }
    }
}
