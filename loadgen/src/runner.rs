//! Running a plan: open the client sockets, start one pinned
//! [`Engine`](crate::engine::Engine) thread per `--threads` with its share
//! of the sockets, then for each step hand every thread its share of the
//! rate and a common start time, read the kernel's UDP counters before and
//! after, drive the progress bar, and merge what the threads measured into
//! a [`StepReport`]. A sweep asks [`Sweep`] for the next rate. With
//! `--junk` one more thread, the [`Flood`], gets the same start and
//! duration for each step and its own sockets.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastntp::sys::cpu::pin_current_thread;

use crate::args::{Mode, Plan};
use crate::clients::{self, BufferInfo, ClientSetup, ClientSocket};
use crate::engine::{Engine, EngineConfig, Live, StepCmd, ThreadResult};
use crate::error::{Error, RunError};
use crate::flood::{Flood, FloodCmd, FloodConfig, FloodResult, JUNK_RECV_BUFFER};
use crate::kernel;
use crate::matching;
use crate::pacing::Schedule;
use crate::progress::Progress;
use crate::report::{ConfigReport, JunkReport, RunReport, StepInput, StepReport, SweepSummary};
use crate::signals::Interrupt;
use crate::stats::{Counters, Histograms};
use crate::sweep::{Phase, Sweep};
use crate::timing::tighten_timer_slack;

/// How long the kernel may take to switch timestamping on (the first
/// datagrams after enabling it can come without a stamp).
const TIMESTAMPING_SETTLE: Duration = Duration::from_millis(50);
/// Lead time of a step's common start.
const START_LEAD: Duration = Duration::from_millis(20);
/// Progress refresh period.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

enum Msg {
    Ready {
        result: std::io::Result<(bool, &'static str)>,
    },
    Done {
        thread: usize,
        result: Box<ThreadResult>,
    },
    FloodReady(std::io::Result<()>),
    FloodDone(Box<FloodResult>),
}

/// The junk flood's thread.
struct FloodWorker {
    cmd: Sender<Option<FloodCmd>>,
    join: Option<JoinHandle<()>>,
    core: Option<usize>,
}

struct Worker {
    cmd: Sender<Option<StepCmd>>,
    live: Arc<Live>,
    join: Option<JoinHandle<()>>,
    core: Option<usize>,
}

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
            let core = core_of(thread);
            let (cmd, cmds) = mpsc::channel::<Option<StepCmd>>();
            let live = Arc::new(Live::default());
            let (cfg, tx, live2, interrupt) = (
                cfg.clone(),
                tx.clone(),
                Arc::clone(&live),
                Arc::clone(&interrupt),
            );
            let join = std::thread::Builder::new()
                .name(format!("loadgen-{thread}"))
                .spawn(move || thread_main(thread, core, cfg, sockets, live2, cmds, tx, interrupt))
                .map_err(RunError::Spawn)?;
            workers.push(Worker {
                cmd,
                live,
                join: Some(join),
                core,
            });
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
                let (cmd, cmds) = mpsc::channel::<Option<FloodCmd>>();
                let (tx, interrupt) = (tx.clone(), Arc::clone(&interrupt));
                let join = std::thread::Builder::new()
                    .name("loadgen-junk".to_owned())
                    .spawn(move || flood_main(flood_core, cfg, sockets, cmds, tx, interrupt))
                    .map_err(RunError::Spawn)?;
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
                Some(FloodWorker {
                    cmd,
                    join: Some(join),
                    core: flood_core,
                })
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

    fn report(
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
                    p.max_batch.min(crate::batch::GSO_MAX_SEGMENTS)
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

#[allow(clippy::too_many_arguments)]
fn thread_main(
    thread: usize,
    core: Option<usize>,
    cfg: EngineConfig,
    sockets: Vec<ClientSocket>,
    live: Arc<Live>,
    cmds: Receiver<Option<StepCmd>>,
    tx: Sender<Msg>,
    interrupt: Arc<Interrupt>,
) {
    if let Some(core) = core {
        // Unpinned is still correct, only noisier; the report shows the
        // core asked for, so say so on stderr.
        if !pin_current_thread(core) {
            eprintln!("ntp-loadgen: warning: thread {thread} cannot be pinned to core {core}");
        }
    }
    tighten_timer_slack();
    let mut engine = match Engine::new(&cfg, sockets, live) {
        Ok(e) => {
            let _ = tx.send(Msg::Ready {
                result: Ok((e.fine_timeouts(), e.wait_method())),
            });
            e
        }
        Err(e) => {
            let _ = tx.send(Msg::Ready { result: Err(e) });
            return;
        }
    };
    while let Ok(Some(cmd)) = cmds.recv() {
        let result = engine.run_step(&cmd, &interrupt);
        if tx
            .send(Msg::Done {
                thread,
                result: Box::new(result),
            })
            .is_err()
        {
            return;
        }
    }
}

fn flood_main(
    core: Option<usize>,
    cfg: FloodConfig,
    sockets: Vec<ClientSocket>,
    cmds: Receiver<Option<FloodCmd>>,
    tx: Sender<Msg>,
    interrupt: Arc<Interrupt>,
) {
    if let Some(core) = core {
        if !pin_current_thread(core) {
            eprintln!("ntp-loadgen: warning: the junk thread cannot be pinned to core {core}");
        }
    }
    tighten_timer_slack();
    let mut flood = match Flood::new(&cfg, sockets) {
        Ok(f) => {
            let _ = tx.send(Msg::FloodReady(Ok(())));
            f
        }
        Err(e) => {
            let _ = tx.send(Msg::FloodReady(Err(e)));
            return;
        }
    };
    while let Ok(Some(cmd)) = cmds.recv() {
        let result = flood.run_step(&cmd, &interrupt);
        if tx.send(Msg::FloodDone(Box::new(result))).is_err() {
            return;
        }
    }
}
