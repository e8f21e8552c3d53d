//! The system process, sans-IO: owns the sources, runs selection,
//! clustering and combining on each new sample, steers the served clock
//! (software mode: the snapshot's correction; kernel mode: commands for the
//! kernel clock), tracks holdover and fallback, schedules leap seconds, and
//! produces the [`ServerState`](crate::proto::ServerState) to publish and
//! the [`Status`](super::status::Status) to show.
//!
//! The caller supplies every time as a [`Now`] (monotonic seconds plus the
//! kernel clock read at the same instant), sends the requests it is given,
//! hands back replies with their kernel receive stamps, and carries out the
//! [`ClockCommand`]s. The real thread and the simulation harness drive the
//! same code.
//!
//! Holdover is a matter of age, not of the root dispersion served: once no
//! upstream is usable the server keeps serving at its last stratum until
//! the dispersion grown since the last update ([`PHI`] × age) passes
//! [`HOLDOVER_MAX_GROWTH`], then falls back. What the upstreams themselves
//! advertise, or a slew still running, never ends synchronization.
//!
//! One type, [`Engine`], whose `impl` is split along its seams:
//!
//! - `params`: what the engine is told at start ([`EngineParams`]).
//! - `sources`: adding and removing sources, their requests and replies.
//! - `selection`: selection, clustering and combining over the sources'
//!   estimates, and their tally codes.
//! - `update`: the clock update — steer (step, slew or refuse) and the
//!   system variables after it.
//! - `steps`: steps of the kernel clock the engine did not make.
//! - `sync_state`: the sync-state machine (synchronized, holdover, local
//!   clock, unsynchronized; external mode) and why.
//! - `leap`: leap seconds — the leap-second file, the upstreams' majority,
//!   planning (software mode) and arming (kernel mode).
//! - `publish`: what is published — the correction, the served state, the
//!   status.

mod leap;
mod params;
mod publish;
mod selection;
mod sources;
mod steps;
mod sync_state;
mod update;

use std::net::SocketAddr;

use super::algo::steer::{SteerLimits, Trajectory};
use super::algo::PHI;
use super::external::KernelUpdates;
use super::source::Source;
use super::status::{SyncState, Tally};
use super::transition::Reason;
use crate::proto::{LeapIndicator, NtpTimestamp, RefId, UnixTime, HEADER_LEN};
use leap::Leaps;
pub use params::{ClockMode, EngineParams};
use steps::StepWatch;

/// Dispersion that may grow (at [`PHI`]) since the last clock update before
/// holdover ends and the server falls back to the local clock (or
/// unsynchronized): 50 ms.
pub const HOLDOVER_MAX_GROWTH: f64 = 0.05;

/// The same bound as an age, s: about 55 minutes.
pub const HOLDOVER_MAX_AGE: f64 = HOLDOVER_MAX_GROWTH / PHI;

/// With upstreams configured, how long to wait for the first
/// synchronization before serving the local clock at `local-stratum`.
pub const STARTUP_GRACE: f64 = 60.0;

/// Before the first correction the engine waits for the initial bursts of
/// the sources present at start, so that a majority makes it; but never
/// longer than this after the first source was added, s.
pub const FIRST_SYNC_WAIT: f64 = 20.0;

/// The caller's clocks at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Now {
    /// Monotonic time, s (any origin; never steps).
    pub mono: f64,
    /// The kernel real-time clock.
    pub kernel: NtpTimestamp,
    /// The same reading as Unix time: it names the NTP era (timestamps
    /// carry none), so dates stay right past 2036 and 2091.
    pub unix: UnixTime,
}

impl Now {
    /// The monotonic clock at `mono` s and the kernel clock at `kernel`.
    pub fn new(mono: f64, kernel: UnixTime) -> Now {
        Now {
            mono,
            kernel: NtpTimestamp::from_unix(kernel),
            unix: kernel,
        }
    }

    /// `secs` later on both clocks (for tests and simulations).
    pub fn later(&self, secs: f64) -> Now {
        let kernel = self.kernel.add_secs(secs);
        Now {
            mono: self.mono + secs,
            kernel,
            unix: kernel.to_unix(self.unix),
        }
    }
}

/// What the caller must do to the kernel clock (kernel mode only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClockCommand {
    /// Step by this many seconds.
    Step(f64),
    /// Set the frequency correction relative to the start frequency
    /// (dimensionless; the caller adds the base and converts to ppm).
    Frequency(f64),
    /// Arm or disarm a leap second at the next midnight.
    Leap(LeapIndicator),
    /// Tell the kernel it is synchronized with these (maxerror, esterror)
    /// bounds, s, or not (None).
    Sync(Option<(f64, f64)>),
}

/// A request to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which source (pass it back with the reply).
    pub id: SourceId,
    /// Where to.
    pub addr: SocketAddr,
    /// The packet.
    pub packet: [u8; HEADER_LEN],
}

/// Identifies a source for the life of the engine.
pub type SourceId = u64;

/// A source and what selection made of it.
struct Slot {
    id: SourceId,
    source: Source,
    tally: Tally,
    /// Present at start: the first correction waits for its first burst.
    waited_for: bool,
}

/// The result of the last clock update.
#[derive(Clone, Copy, Debug)]
struct SysVars {
    peer: SocketAddr,
    stratum: u8,
    refid: RefId,
    root_delay: f64,
    root_dispersion: f64,
    update_mono: f64,
    update_served: NtpTimestamp,
    offset: f64,
    jitter: f64,
    leap: LeapIndicator,
}

/// The discipline's state machine.
pub struct Engine {
    params: EngineParams,
    steer: SteerLimits,
    slots: Vec<Slot>,
    next_id: SourceId,
    traj: Trajectory,
    corrected: bool,
    start_mono: f64,
    /// When the first source was added (the first-burst wait counts from it).
    first_added: Option<f64>,
    /// A source was removed: those added later are replacements.
    removed_any: bool,
    /// An update was put off while waiting for first bursts.
    update_deferred: bool,
    sys: Option<SysVars>,
    state: SyncState,
    reason: Reason,
    commands: Vec<ClockCommand>,
    leap: Leaps,
    external: KernelUpdates,
    steps: StepWatch,
    dirty: bool,
}

impl Engine {
    /// A new engine at `now`, serving nothing yet.
    pub fn new(params: EngineParams, now: &Now) -> Self {
        Engine {
            params,
            steer: params.steer_limits(),
            slots: Vec::new(),
            next_id: 1,
            traj: Trajectory {
                base: now.mono,
                ..Trajectory::default()
            },
            corrected: false,
            start_mono: now.mono,
            first_added: None,
            removed_any: false,
            update_deferred: false,
            sys: None,
            state: SyncState::Starting,
            reason: Reason::Starting,
            commands: Vec::new(),
            leap: Leaps::default(),
            external: KernelUpdates::default(),
            steps: StepWatch::new(now.kernel),
            dirty: true,
        }
    }

    /// What is served now, in a word.
    pub fn state(&self) -> SyncState {
        self.state
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The correction trajectory (served minus uncorrected local clock).
    pub fn trajectory(&self) -> &Trajectory {
        &self.traj
    }

    /// How often someone else stepped the kernel clock under us.
    pub fn foreign_steps(&self) -> u32 {
        self.steps.foreign()
    }

    /// Kernel-clock commands to carry out, in order, before the next
    /// [`Engine::tick`] (which checks that a commanded step happened).
    pub fn take_commands(&mut self) -> Vec<ClockCommand> {
        std::mem::take(&mut self.commands)
    }

    /// The last commands, at exit: anything pending, then (kernel mode)
    /// the frequency estimate without the running slew, which the kernel
    /// would otherwise keep applying, up to 500 ppm, after we are gone.
    pub fn shutdown(&mut self, now: &Now) -> Vec<ClockCommand> {
        let mut out = self.take_commands();
        if self.params.mode == ClockMode::Kernel {
            self.traj.end_slew(now.mono);
            out.push(ClockCommand::Frequency(self.traj.freq));
        }
        out
    }

    /// Whether the served state changed since the last call (publish it).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// When the engine next needs the caller: a poll, the end of a slew, or
    /// within a second for housekeeping (monotonic s).
    pub fn next_wakeup(&self, now: &Now) -> f64 {
        let mut t = now.mono + 1.0;
        for s in &self.slots {
            t = t.min(s.source.next_send());
        }
        if self.traj.slewing() {
            t = t.min(self.traj.slew_until);
        }
        t
    }

    /// Housekeeping at `now`: foreign clock steps, the end of a slew, a
    /// first update put off, leap seconds, holdover and fallback.
    pub fn tick(&mut self, now: &Now) {
        self.detect_foreign_step(now);
        self.end_slew_when_due(now);
        if self.update_deferred && !self.waiting_for_first_bursts(now) {
            self.update(now);
        }
        self.leap_housekeeping(now);
        self.evaluate_state(now);
        self.age_out_external_peer(now);
    }

    /// Served time at `now` ignoring a pending leap second.
    fn served_unleaped(&self, now: &Now) -> NtpTimestamp {
        match self.params.mode {
            ClockMode::Software => now.kernel.add_secs(self.traj.at(now.mono)),
            _ => now.kernel,
        }
    }
}
