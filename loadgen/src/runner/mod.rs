//! Running a plan: open the client sockets, start one pinned
//! [`Engine`](crate::engine::Engine) thread per `--threads` with its share
//! of the sockets, then for each step hand every thread its share of the
//! rate and a common start time, read the kernel's UDP counters before and
//! after, drive the progress bar, and merge what the threads measured into
//! a [`StepReport`]. A sweep asks [`Sweep`] for the next rate. With
//! `--junk` one more thread, the [`Flood`](crate::flood::Flood), gets the same start and
//! duration for each step and its own sockets.

mod describe;
mod threads;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{Mode, Plan};
use crate::clients::{self, BufferInfo, ClientSetup, ClientSocket};
use crate::engine::{EngineConfig, StepCmd, ThreadResult};
use crate::error::{Error, RunError};
use crate::flood::{FloodCmd, FloodConfig, FloodResult, JUNK_RECV_BUFFER};
use crate::kernel;
use crate::matching;
use crate::progress::Progress;
use crate::report::{JunkReport, RunReport, StepInput, StepReport, SweepSummary};
use crate::signals::Interrupt;
use crate::stats::{Counters, Histograms};
use crate::sweep::{Phase, Sweep};

use threads::{spawn_flood, spawn_worker, FloodWorker, Msg, Worker};

/// How long the kernel may take to switch timestamping on (the first
/// datagrams after enabling it can come without a stamp).
const TIMESTAMPING_SETTLE: Duration = Duration::from_millis(50);
/// Lead time of a step's common start.
const START_LEAD: Duration = Duration::from_millis(20);
/// Progress refresh period.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// A plan with its threads started.
pub struct Runner {
    plan: Plan,
    workers: Vec<Worker>,
    results: Receiver<Msg>,
    interrupt: Arc<Interrupt>,
    progress: Progress,
    local_target: bool,
    buffers: BufferInfo,
    fine_timeouts: bool,
    wait_method: &'static str,
    flood: Option<FloodWorker>,
    /// The flood's results over all steps so far.
    flood_total: Option<FloodResult>,
}

impl Runner {
    /// Opens the sockets and starts the threads.
    pub fn start(plan: Plan, interrupt: Arc<Interrupt>) -> Result<Runner, Error> {
        let setup = ClientSetup {
            target: plan.target,
            clients: plan.clients,
            sources: plan.sources.clone(),
            precise_tx: plan.precise_tx,
            gso: plan.gso && !plan.precise_tx,
        };
        let (sockets, buffers) = clients::open(&setup)?;
        let local_target = plan.target.ip().is_loopback()
            || sockets
                .first()
                .is_some_and(|s| s.local.ip() == plan.target.ip());
        let mut shares: Vec<Vec<ClientSocket>> = (0..plan.threads).map(|_| Vec::new()).collect();
        for (i, s) in sockets.into_iter().enumerate() {
            shares[i % plan.threads].push(s);
        }
        let per_thread = plan.peak_rate() / plan.threads as f64;
        let core_of = |i: usize| (!plan.cores.is_empty()).then(|| plan.cores[i % plan.cores.len()]);
        // The flood thread takes the core after the load threads'.
        let flood_core = core_of(plan.threads);
        let shares_core = (0..plan.threads).any(|t| core_of(t) == flood_core);
        let cfg = EngineConfig {
            target: plan.target,
            version: plan.version,
            timeout: plan.timeout,
            precise_tx: plan.precise_tx,
            max_batch: plan.max_batch,
            table_slots: matching::slots_needed(per_thread, plan.timeout, plan.max_batch),
            gso: buffers.gso,
            accept_unsynchronized: plan.accept_unsynchronized,
            timeline: plan.timeline,
            spin: plan.junk.is_none() || !shares_core,
        };
        let (tx, results) = mpsc::channel();
        let mut workers = Vec::with_capacity(plan.threads);
        for (thread, sockets) in shares.into_iter().enumerate() {
            workers.push(spawn_worker(
                thread,
                core_of(thread),
                cfg.clone(),
                sockets,
                tx.clone(),
                Arc::clone(&interrupt),
            )?);
        }
        let mut fine_timeouts = true;
        let mut wait_method = "ppoll";
        for _ in 0..workers.len() {
            match results.recv() {
                Ok(Msg::Ready {
                    result: Ok((fine, method)),
                }) => {
                    fine_timeouts &= fine;
                    if method == "epoll" {
                        wait_method = method;
                    }
                }
                Ok(Msg::Ready {
                    result: Err(source),
                }) => {
                    return Err(RunError::Socket {
                        what: "epoll",
                        source,
                    }
                    .into())
                }
                Ok(Msg::Done { thread, .. }) => return Err(RunError::ThreadDied(thread).into()),
                Ok(Msg::FloodReady(_) | Msg::FloodDone(_)) => {}
                Err(_) => return Err(RunError::ThreadDied(0).into()),
            }
        }
        let flood = match &plan.junk {
            Some(junk) => {
                let sockets = clients::open_plain(plan.target, junk.sockets, JUNK_RECV_BUFFER)?;
                let cfg = FloodConfig {
                    target: plan.target,
                    classes: junk.classes.clone(),
                    gso: plan.gso,
                    linger: plan.timeout,
                };
                let flood =
                    spawn_flood(flood_core, cfg, sockets, tx.clone(), Arc::clone(&interrupt))?;
                match results.recv() {
                    Ok(Msg::FloodReady(Ok(()))) => {}
                    Ok(Msg::FloodReady(Err(source))) => {
                        return Err(RunError::Socket {
                            what: "junk sockets",
                            source,
                        }
                        .into())
                    }
                    _ => return Err(RunError::FloodDied.into()),
                }
                Some(flood)
            }
            None => None,
        };
        std::thread::sleep(TIMESTAMPING_SETTLE);
        let progress = Progress::new(plan.progress);
        Ok(Runner {
            plan,
            workers,
            results,
            interrupt,
            progress,
            local_target,
            buffers,
            fine_timeouts,
            wait_method,
            flood,
            flood_total: None,
        })
    }

    /// Runs the plan to the end (or Ctrl-C) and stops the threads.
    pub fn run(mut self) -> Result<RunReport, Error> {
        let mut steps = Vec::new();
        let mut summary = None;
        match self.plan.mode.clone() {
            Mode::Fixed { rate } => steps.push(self.run_step(1, rate, None)?),
            Mode::Sweep(sp) => {
                let mut sweep = Sweep::new(sp);
                let mut next = Some(sweep.first_rate());
                while let Some(rate) = next {
                    let phase = sweep.phase();
                    let mut st = self.run_step(steps.len() + 1, rate, Some(phase))?;
                    let outcome = sweep.judge(st.shares.valid_pct, st.limited, st.interrupted);
                    st.outcome = Some(outcome);
                    steps.push(st);
                    next = sweep.record(rate, outcome);
                }
                let best = sweep.best_pass();
                summary = sweep.stop_reason().map(|stop_reason| SweepSummary {
                    max_rate_ok: best,
                    max_rate_step: best.and_then(|b| {
                        steps
                            .iter()
                            .find(|s: &&StepReport| {
                                s.offered_rate == b
                                    && s.outcome == Some(crate::sweep::StepOutcome::Pass)
                            })
                            .map(|s| s.step)
                    }),
                    lowest_failed_rate: sweep.lowest_fail(),
                    stop_reason,
                    limit_found: sweep.lowest_fail().is_some(),
                    criterion_valid_pct: 100.0 - sp.loss_threshold_pct,
                });
            }
        }
        let interrupted = steps.iter().any(|s| s.interrupted);
        let mut report = self.report(steps, summary, interrupted);
        report.junk = match (&self.flood_total, &self.plan.junk) {
            (Some(total), Some(plan)) => Some(JunkReport::build(total, plan)),
            _ => None,
        };
        self.stop()?;
        Ok(report)
    }

    /// Runs one step at `rate` requests per second (all threads together).
    fn run_step(
        &mut self,
        step: usize,
        rate: f64,
        phase: Option<Phase>,
    ) -> Result<StepReport, Error> {
        let threads = self.workers.len();
        let before = kernel::read();
        let start = Instant::now() + START_LEAD;
        let cmd = StepCmd {
            rate: rate / threads as f64,
            duration: self.plan.duration,
            start,
        };
        for (i, w) in self.workers.iter().enumerate() {
            w.cmd.send(Some(cmd)).map_err(|_| RunError::ThreadDied(i))?;
        }
        let mut flood_result: Option<FloodResult> = None;
        let junk_rate = self.plan.junk.as_ref().map_or(0.0, |j| j.rate);
        if let Some(f) = &self.flood {
            f.cmd
                .send(Some(FloodCmd {
                    rate: junk_rate,
                    duration: self
                        .plan
                        .junk
                        .as_ref()
                        .map_or(self.plan.duration, |j| j.duration),
                    start,
                }))
                .map_err(|_| RunError::FloodDied)?;
        }
        let flood_pending = |r: &Option<FloodResult>| self.flood.is_some() && r.is_none();
        self.progress.start_step(
            format!(
                "step {step}: {} req/s",
                crate::report::group(rate.round() as u64)
            ),
            self.plan.duration,
        );
        let mut got: Vec<Option<ThreadResult>> = (0..threads).map(|_| None).collect();
        while got.iter().any(Option::is_none) || flood_pending(&flood_result) {
            match self.results.recv_timeout(PROGRESS_TICK) {
                Ok(Msg::Done { thread, result }) => got[thread] = Some(*result),
                Ok(Msg::FloodDone(result)) => flood_result = Some(*result),
                Ok(Msg::Ready { .. } | Msg::FloodReady(_)) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if flood_pending(&flood_result)
                        && self
                            .flood
                            .as_ref()
                            .and_then(|f| f.join.as_ref())
                            .is_none_or(|j| j.is_finished())
                    {
                        return Err(RunError::FloodDied.into());
                    }
                    if let Some(dead) = self.workers.iter().enumerate().position(|(i, w)| {
                        got[i].is_none() && w.join.as_ref().is_none_or(|j| j.is_finished())
                    }) {
                        return Err(RunError::ThreadDied(dead).into());
                    }
                    let (sent, valid) = self.workers.iter().fold((0, 0), |(s, v), w| {
                        (
                            s + w.live.sent.load(std::sync::atomic::Ordering::Relaxed),
                            v + w.live.valid.load(std::sync::atomic::Ordering::Relaxed),
                        )
                    });
                    self.progress
                        .update(start.elapsed().min(self.plan.duration), sent, valid);
                }
                Err(RecvTimeoutError::Disconnected) => return Err(RunError::ThreadDied(0).into()),
            }
        }
        self.progress.finish_step();
        let after = kernel::read();
        let mut counters = Counters::default();
        let mut hist = Histograms::default();
        let mut window = Duration::ZERO;
        let mut interrupted = false;
        let mut timeline: Option<crate::stats::Timeline> = None;
        for r in got.into_iter().flatten() {
            counters.merge(&r.counters);
            hist.merge(&r.hist);
            if let Some(t) = &r.timeline {
                match &mut timeline {
                    Some(all) => all.merge(t),
                    None => timeline = Some(t.clone()),
                }
            }
            window = window.max(r.send_window);
            interrupted |= r.interrupted;
        }
        let kernel = match (before, after) {
            (Some(b), Some(a)) => Some(a.since(&b)),
            _ => None,
        };
        if let Some(r) = &flood_result {
            match &mut self.flood_total {
                Some(total) => total.merge(r),
                None => self.flood_total = Some(r.clone()),
            }
        }
        let junk = flood_result.as_ref().zip(self.plan.junk.as_ref());
        Ok(StepReport::build(&StepInput {
            step,
            phase,
            offered_rate: rate,
            counters: &counters,
            hist: &hist,
            send_window_s: window.as_secs_f64(),
            interrupted,
            kernel,
            threads,
            gso: self.buffers.gso,
            local_target: self.local_target,
            junk,
            timeline: timeline.as_ref(),
        }))
    }

    /// Whether Ctrl-C was pressed.
    pub fn interrupted(&self) -> bool {
        self.interrupt.stop_requested()
    }

    fn stop(&mut self) -> Result<(), Error> {
        for w in &self.workers {
            let _ = w.cmd.send(None);
        }
        if let Some(f) = &self.flood {
            let _ = f.cmd.send(None);
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(j) = w.join.take() {
                j.join().map_err(|_| RunError::ThreadDied(i))?;
            }
        }
        if let Some(j) = self.flood.as_mut().and_then(|f| f.join.take()) {
            j.join().map_err(|_| RunError::FloodDied)?;
        }
        Ok(())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
