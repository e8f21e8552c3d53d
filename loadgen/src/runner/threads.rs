//! The runner's sending threads — one [`Engine`] per load thread, and the
//! junk [`Flood`] — and what they tell the main thread: each is pinned to
//! its core, builds its state (sockets registered, buffers allocated) and
//! says it is ready, then runs every step command it is sent and sends the
//! result back, until it is told to stop.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fastntp::sys::cpu::pin_current_thread;

use crate::clients::ClientSocket;
use crate::engine::{Engine, EngineConfig, Live, StepCmd, ThreadResult};
use crate::error::RunError;
use crate::flood::{Flood, FloodCmd, FloodConfig, FloodResult};
use crate::signals::Interrupt;
use crate::timing::tighten_timer_slack;

/// What the threads send the main thread.
pub(super) enum Msg {
    /// A load thread is ready: whether its waits have nanosecond
    /// resolution and how it waits, or why it could not start.
    Ready {
        result: std::io::Result<(bool, &'static str)>,
    },
    /// A load thread finished a step.
    Done {
        thread: usize,
        result: Box<ThreadResult>,
    },
    /// The flood thread is ready, or why it could not start.
    FloodReady(std::io::Result<()>),
    /// The flood thread finished a step.
    FloodDone(Box<FloodResult>),
}

/// A load thread, seen from the main thread.
pub(super) struct Worker {
    /// Its next step (`None`: stop).
    pub(super) cmd: Sender<Option<StepCmd>>,
    /// What it counted so far in this step.
    pub(super) live: Arc<Live>,
    pub(super) join: Option<JoinHandle<()>>,
    /// The core it is pinned to.
    pub(super) core: Option<usize>,
}

/// The junk flood's thread, seen from the main thread.
pub(super) struct FloodWorker {
    /// Its next step (`None`: stop).
    pub(super) cmd: Sender<Option<FloodCmd>>,
    pub(super) join: Option<JoinHandle<()>>,
    /// The core it is pinned to.
    pub(super) core: Option<usize>,
}

/// Starts load thread `thread` on `core` with its `sockets`; it reports
/// on `tx`.
pub(super) fn spawn_worker(
    thread: usize,
    core: Option<usize>,
    cfg: EngineConfig,
    sockets: Vec<ClientSocket>,
    tx: Sender<Msg>,
    interrupt: Arc<Interrupt>,
) -> Result<Worker, RunError> {
    let (cmd, cmds) = mpsc::channel::<Option<StepCmd>>();
    let live = Arc::new(Live::default());
    let shared = Arc::clone(&live);
    let join = spawn(format!("loadgen-{thread}"), move || {
        serve(
            &format!("thread {thread}"),
            core,
            || Engine::new(&cfg, sockets, shared),
            |engine| Msg::Ready {
                result: engine.map(|e| (e.fine_timeouts(), e.wait_method())),
            },
            |engine, cmd| Msg::Done {
                thread,
                result: Box::new(engine.run_step(cmd, &interrupt)),
            },
            cmds,
            tx,
        )
    })?;
    Ok(Worker {
        cmd,
        live,
        join: Some(join),
        core,
    })
}

/// Starts the junk flood's thread on `core` with its `sockets`; it
/// reports on `tx`.
pub(super) fn spawn_flood(
    core: Option<usize>,
    cfg: FloodConfig,
    sockets: Vec<ClientSocket>,
    tx: Sender<Msg>,
    interrupt: Arc<Interrupt>,
) -> Result<FloodWorker, RunError> {
    let (cmd, cmds) = mpsc::channel::<Option<FloodCmd>>();
    let join = spawn("loadgen-junk".to_owned(), move || {
        serve(
            "the junk thread",
            core,
            || Flood::new(&cfg, sockets),
            |flood| Msg::FloodReady(flood.map(|_| ())),
            |flood, cmd| Msg::FloodDone(Box::new(flood.run_step(cmd, &interrupt))),
            cmds,
            tx,
        )
    })?;
    Ok(FloodWorker {
        cmd,
        join: Some(join),
        core,
    })
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, RunError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(RunError::Spawn)
}

/// The body of a sending thread (`who`, for the warning when it cannot be
/// pinned to `core`): builds its state with `make` and reports that with
/// `ready`, then answers every step command with what `step` makes of it,
/// until the command is `None` or the main thread is gone.
fn serve<S, C>(
    who: &str,
    core: Option<usize>,
    make: impl FnOnce() -> std::io::Result<S>,
    ready: impl FnOnce(std::io::Result<&S>) -> Msg,
    mut step: impl FnMut(&mut S, &C) -> Msg,
    cmds: Receiver<Option<C>>,
    tx: Sender<Msg>,
) {
    if let Some(core) = core {
        // Unpinned is still correct, only noisier; the report shows the
        // core asked for, so say so on stderr.
        if !pin_current_thread(core) {
            eprintln!("ntp-loadgen: warning: {who} cannot be pinned to core {core}");
        }
    }
    tighten_timer_slack();
    let mut state = match make() {
        Ok(s) => {
            let _ = tx.send(ready(Ok(&s)));
            s
        }
        Err(e) => {
            let _ = tx.send(ready(Err(e)));
            return;
        }
    };
    while let Ok(Some(cmd)) = cmds.recv() {
        if tx.send(step(&mut state, &cmd)).is_err() {
            return;
        }
    }
}
