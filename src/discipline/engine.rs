//! The system process, sans-IO: owns the sources, runs selection,
//! clustering and combining on each new sample, steers the served clock
//! (software mode: the snapshot's correction; kernel mode: commands for the
//! kernel clock), tracks holdover and fallback, schedules leap seconds, and
//! produces the [`ServerState`] to publish and the [`Status`] to show.
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

use std::net::{IpAddr, SocketAddr};

use tracing::{debug, info, warn};

use super::algo::combine::{self, Combined, Survivor};
use super::algo::filter::Sample;
use super::algo::select::{self, Candidacy, Candidate};
use super::algo::steer::{self, Action, SteerLimits, Trajectory};
use super::algo::{MAX_DISTANCE, PHI};
use super::external::KernelUpdates;
use super::kernel_clock::KernelStatus;
use super::leapfile::{LeapFileError, LeapTable};
use super::reach::{Change, UNREACHABLE_AFTER};
use super::source::{refid_of, Kiss, Measurement, ReplyError, Source, SourceParams};
use super::status::{SourceStatus, Status, SyncState, SystemStatus, Tally};
use super::transition::{self, Reason};
use crate::proto::time::secs_to_units;
use crate::proto::{
    Correction, LeapIndicator, NtpShort, NtpTimestamp, RefId, ServerState, UnixTime, HEADER_LEN,
};

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
/// While synchronized, an update is overdue only after this many poll
/// intervals of the system peer (when that is longer than
/// [`HOLDOVER_MAX_AGE`]).
const OVERDUE_POLLS: f64 = 3.0;
/// A jump between the kernel and monotonic clocks larger than this, not
/// made by us, is someone else stepping the kernel clock.
const FOREIGN_STEP: f64 = 0.01;
/// Upstream strata at or above this cannot be followed (we would be 16).
const MAX_UPSTREAM_STRATUM: u8 = 15;

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

/// Which clock the engine steers (`[clock] discipline` in the engine's
/// terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// The served time only: the kernel clock is never touched; the
    /// published correction maps it to the served time.
    #[default]
    Software,
    /// The kernel clock, through [`ClockCommand`]s.
    Kernel,
    /// None: another daemon steers the kernel clock, which is served as
    /// is; the upstreams only name the stratum and refid.
    External,
}

/// What the engine is told at start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineParams {
    /// Which clock is steered.
    pub mode: ClockMode,
    /// Errors above this are stepped, smaller ones slewed (0 = never step
    /// after the first correction), s.
    pub step_threshold: f64,
    /// Corrections above this are refused (0 = no limit), s.
    pub panic_threshold: f64,
    /// The first correction may exceed `panic_threshold`.
    pub first_step_unlimited: bool,
    /// Fallback stratum: serve the local clock at it when no upstream is
    /// usable (`None`: serve "unsynchronized").
    pub local_stratum: Option<u8>,
    /// Our clock's precision, log2 s.
    pub precision: i8,
    /// Kernel mode: the kernel frequency the discipline starts from, ppm
    /// (the engine's zero).
    pub base_ppm: f64,
    /// Upstreams are configured (their sources appear once resolved): the
    /// local-clock fallback waits [`STARTUP_GRACE`] for them.
    pub has_upstreams: bool,
}

impl EngineParams {
    /// The step, slew and panic limits: in kernel mode the kernel takes
    /// ±500 ppm around zero, so the engine's corrections may go from
    /// −500 − `base_ppm` to 500 − `base_ppm`.
    pub fn steer_limits(&self) -> SteerLimits {
        let (freq_range, rate_range) = match self.mode {
            ClockMode::Kernel => SteerLimits::kernel_ranges(self.base_ppm * 1e-6),
            _ => SteerLimits::software_ranges(),
        };
        SteerLimits {
            step_threshold: self.step_threshold,
            panic_threshold: self.panic_threshold,
            first_step_unlimited: self.first_step_unlimited,
            step_first: self.mode == ClockMode::Software,
            freq_range,
            rate_range,
        }
    }
}

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

struct Selection {
    peer: usize,
    offset: f64,
    jitter: f64,
    freq: f64,
    leap: LeapIndicator,
}

/// A leap second planned for software mode.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PlannedLeap {
    /// Unix time of the midnight that ends the leap day.
    midnight: i64,
    /// -1 insert, +1 delete.
    step: i8,
}

impl PlannedLeap {
    /// Unix time from which the workers serve the leaped time: midnight
    /// for an insertion (23:59:59 repeats), a second earlier for a
    /// deletion (23:59:59 is skipped).
    fn instant(&self) -> i64 {
        self.midnight - i64::from(self.step > 0)
    }
}

/// How UTC jumps against a continuous clock at the leap second `leap`
/// announces: −1 s for an insertion, +1 s for a deletion, 0 for none.
fn leap_jump(leap: LeapIndicator) -> i8 {
    match leap {
        LeapIndicator::InsertSecond => -1,
        LeapIndicator::DeleteSecond => 1,
        _ => 0,
    }
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
    leap_table: Option<LeapTable>,
    leap_expired_logged: bool,
    announce: LeapIndicator,
    planned: Option<PlannedLeap>,
    leap_done: Option<i64>,
    kernel_armed: LeapIndicator,
    kernel_leap_midnight: i64,
    external: KernelUpdates,
    kernel_epoch: NtpTimestamp,
    kernel_minus_mono: Option<f64>,
    expected_jump: f64,
    foreign_steps: u32,
    dirty: bool,
}

/// `t` as Unix seconds, in the era of the kernel clock at `now`.
fn unix_secs(t: NtpTimestamp, now: &Now) -> f64 {
    t.to_unix(now.unix).as_secs_f64()
}

/// Whether Unix day number `day` is the last day of its month.
fn last_day_of_month(day: i64) -> bool {
    civil_day_of_month(day + 1) == 1
}

/// Day of month (1–31) of Unix day `z` (H. Hinnant's civil_from_days).
fn civil_day_of_month(z: i64) -> u32 {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    (doy - (153 * mp + 2) / 5 + 1) as u32
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
            leap_table: None,
            leap_expired_logged: false,
            announce: LeapIndicator::NoWarning,
            planned: None,
            leap_done: None,
            kernel_armed: LeapIndicator::NoWarning,
            kernel_leap_midnight: 0,
            external: KernelUpdates::default(),
            kernel_epoch: now.kernel,
            kernel_minus_mono: None,
            expected_jump: 0.0,
            foreign_steps: 0,
            dirty: true,
        }
    }

    /// Adds a source, first polled at once. Sources added before the first
    /// correction, within [`FIRST_SYNC_WAIT`] of the first one and before
    /// any was removed, are the ones the first correction waits for.
    pub fn add_source(&mut self, params: SourceParams, now: &Now) -> SourceId {
        let id = self.next_id;
        self.next_id += 1;
        info!("upstream {} ({}) added", params.addr, params.name);
        let first = *self.first_added.get_or_insert(now.mono);
        let waited_for = !self.corrected && !self.removed_any && now.mono < first + FIRST_SYNC_WAIT;
        let source = Source::new(params, now.mono, self.params.precision);
        self.slots.push(Slot {
            id,
            source,
            tally: Tally::Rejected,
            waited_for,
        });
        self.dirty = true;
        id
    }

    /// Removes a source (a pool member being replaced).
    pub fn remove_source(&mut self, id: SourceId) {
        if let Some(pos) = self.slots.iter().position(|s| s.id == id) {
            let slot = self.slots.remove(pos);
            info!(
                "upstream {} ({}) removed",
                slot.source.addr(),
                slot.source.params().name
            );
            self.removed_any = true;
            self.dirty = true;
        }
    }

    /// The sources, with their ids, in the order they were added.
    pub fn sources(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.slots.iter().map(|s| (s.id, &s.source))
    }

    /// Source `id`, if it is still there.
    pub fn source(&self, id: SourceId) -> Option<&Source> {
        self.slots.iter().find(|s| s.id == id).map(|s| &s.source)
    }

    fn slot_mut(&mut self, id: SourceId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    /// Whether source `id` still waits for the reply to its last request
    /// (the caller keeps its socket open until then or a timeout).
    pub fn awaiting_reply(&self, id: SourceId) -> bool {
        self.source(id).is_some_and(Source::awaiting_reply)
    }

    /// Pool members that should be replaced: refused by a kiss code, or
    /// unanswered for their last 8 polls.
    pub fn unusable_pool_members(&self) -> Vec<SourceId> {
        self.slots
            .iter()
            .filter(|s| s.source.params().pool)
            .filter(|s| {
                s.source.refused().is_some() || (!s.source.reachable() && s.source.sent() >= 8)
            })
            .map(|s| s.id)
            .collect()
    }

    /// Installs (or removes) the leap-second table.
    pub fn set_leap_table(&mut self, table: Option<LeapTable>) {
        let expiry = |t: &Option<LeapTable>| t.as_ref().map(|t| t.expires);
        if expiry(&table) != expiry(&self.leap_table) {
            // A new list: its expiry deserves a fresh warning.
            self.leap_expired_logged = false;
        }
        self.leap_table = table;
    }

    /// Installs a freshly read leap-second file. A failed read keeps the
    /// table installed before (a file caught mid-update must not cancel a
    /// scheduled leap second); both cases are logged.
    pub fn leap_file_loaded(&mut self, result: Result<LeapTable, LeapFileError>) {
        match result {
            Ok(table) => self.set_leap_table(Some(table)),
            Err(e) if self.leap_table.is_some() => {
                warn!("{e}; keeping the leap-second list read before")
            }
            Err(e) => warn!("{e}; leap seconds come from the upstreams only"),
        }
    }

    /// External mode: the kernel clock's status, read by the caller at
    /// `now` (about every second: see [`super::external`]).
    pub fn set_kernel_status(&mut self, status: KernelStatus, now: &Now) {
        if self.external.observe(status, now) {
            self.dirty = true;
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
        self.foreign_steps
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

    /// Requests due at `now`; `random` supplies each transmit timestamp.
    pub fn poll(&mut self, now: &Now, mut random: impl FnMut() -> u64) -> Vec<Request> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            if let Some(packet) = slot.source.transmit(now.mono, random()) {
                out.push(Request {
                    id: slot.id,
                    addr: slot.source.addr(),
                    packet,
                });
            }
        }
        if !out.is_empty() {
            // Reachability changed: see whether anything is still usable.
            self.log_reach_changes();
            self.reassess(now);
        }
        out
    }

    /// Logs the sources that became unreachable or came back, once each.
    fn log_reach_changes(&mut self) {
        for slot in &mut self.slots {
            let addr = slot.source.addr();
            match slot.source.take_reach_change() {
                Some(Change::Unreachable { missed }) => {
                    warn!("upstream {addr} unreachable (no reply to the last {missed} polls)")
                }
                Some(Change::Back) => info!("upstream {addr} reachable again"),
                None => {}
            }
        }
    }

    /// The request of source `id` left at kernel time `t1`, from our
    /// address `local` (if known: it spots upstreams synchronized to us).
    pub fn sent(&mut self, id: SourceId, t1: NtpTimestamp, local: Option<IpAddr>) {
        if let Some(s) = self.slot_mut(id) {
            s.source.sent_at(t1, local);
        }
    }

    /// The kernel's transmit timestamp of source `id`'s request in flight,
    /// which is better than the clock read given to [`Engine::sent`].
    pub fn tx_stamp(&mut self, id: SourceId, t1: NtpTimestamp) {
        if let Some(s) = self.slot_mut(id) {
            s.source.refine_t1(t1);
        }
    }

    /// The request of source `id` could not be sent.
    pub fn send_failed(&mut self, id: SourceId) {
        if let Some(s) = self.slot_mut(id) {
            s.source.forget_request();
        }
    }

    /// A datagram from source `id`, received at kernel time `t4`.
    pub fn receive(
        &mut self,
        id: SourceId,
        bytes: &[u8],
        t4: NtpTimestamp,
        now: &Now,
    ) -> Result<(), ReplyError> {
        let mono = now.mono - now.kernel.diff_secs(t4).max(0.0);
        let slot = self.slot_mut(id).ok_or(ReplyError::UnknownSource)?;
        match slot.source.receive(bytes, t4, mono) {
            Ok(m) => {
                self.add_measurement(id, m);
                self.log_reach_changes();
                for slot in self.slots.iter_mut().filter(|s| s.id != id) {
                    slot.source.note_other_reply(now.mono);
                }
                self.update(now);
                Ok(())
            }
            Err(ReplyError::KissOfDeath(kiss)) => {
                self.kissed(id, kiss, now);
                Err(ReplyError::KissOfDeath(kiss))
            }
            Err(e) => {
                debug!("reply from {} rejected: {e}", slot.source.addr());
                Err(e)
            }
        }
    }

    fn kissed(&mut self, id: SourceId, kiss: Kiss, now: &Now) {
        let Some(source) = self.source(id) else {
            return;
        };
        let addr = source.addr();
        match kiss {
            Kiss::Rate => warn!(
                "upstream {addr} sent KoD RATE: polling it every {} s from now on",
                (source.poll() as f64).exp2()
            ),
            Kiss::Deny | Kiss::Restricted => {
                warn!(
                    "upstream {addr} sent KoD {}: no longer polling it",
                    kiss.code()
                );
                self.reassess(now);
            }
        }
        self.dirty = true;
    }

    /// Adds a measurement to its source's filter, on the uncorrected
    /// timeline: in kernel mode the kernel clock carries our corrections,
    /// so they are added back.
    fn add_measurement(&mut self, id: SourceId, m: Measurement) {
        let traj = self.traj;
        let shift = if self.params.mode == ClockMode::Kernel {
            traj.at(m.mono)
        } else {
            0.0
        };
        if let Some(slot) = self.slot_mut(id) {
            slot.source.add_sample(
                Sample {
                    time: m.mono,
                    offset: m.offset + shift,
                    delay: m.delay,
                    dispersion: m.dispersion,
                },
                traj.freq,
            );
        }
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

    fn end_slew_when_due(&mut self, now: &Now) {
        if self.traj.slewing() && now.mono >= self.traj.slew_until {
            self.traj.end_slew(now.mono);
            if self.params.mode == ClockMode::Kernel {
                self.commands
                    .push(ClockCommand::Frequency(self.traj.rate()));
            }
            self.dirty = true;
        }
    }

    fn detect_foreign_step(&mut self, now: &Now) {
        let d = now.kernel.diff_secs(self.kernel_epoch) - now.mono;
        let expected = std::mem::take(&mut self.expected_jump);
        let Some(prev) = self.kernel_minus_mono.replace(d) else {
            return;
        };
        let jump = d - prev - expected;
        let leap = f64::from(leap_jump(self.kernel_armed));
        if leap != 0.0 && (jump - leap).abs() < FOREIGN_STEP {
            self.kernel_leap_applied(leap);
        } else if jump.abs() > FOREIGN_STEP {
            self.foreign_step(now, jump);
        }
    }

    /// The kernel applied the armed leap second: its clock and UTC jumped
    /// together, so the samples stay valid. Disarm it (the kernel leaves
    /// STA_INS/STA_DEL set until told).
    fn kernel_leap_applied(&mut self, leap: f64) {
        info!("the kernel applied the leap second ({leap:+} s)");
        self.leap_done = Some(self.kernel_leap_midnight);
        self.kernel_armed = LeapIndicator::NoWarning;
        self.commands
            .push(ClockCommand::Leap(LeapIndicator::NoWarning));
        self.dirty = true;
    }

    fn foreign_step(&mut self, now: &Now, jump: f64) {
        warn!("the kernel clock was stepped by {jump:+.6} s by someone else");
        self.foreign_steps += 1;
        for slot in &mut self.slots {
            slot.source.filter_mut().shift(-jump);
            slot.source.forget_request();
        }
        if self.params.mode == ClockMode::Software {
            // Keep the served time continuous.
            self.traj.step(now.mono, -jump);
            self.dirty = true;
        }
    }

    /// Enters `state` for `reason`; a new state (or a panic) is logged
    /// once, with its reason.
    fn set_state(&mut self, state: SyncState, reason: Reason) {
        let old = (self.state, self.reason);
        let panic_news =
            matches!(reason, Reason::PanicThreshold { .. }) && !reason.same_kind(&old.1);
        if reason != old.1 {
            self.reason = reason;
            self.dirty = true;
        }
        if state == old.0 && !panic_news {
            return;
        }
        self.state = state;
        if self.params.mode == ClockMode::Kernel
            && matches!(state, SyncState::LocalClock | SyncState::Unsynchronized)
        {
            // Tell other users of the kernel clock it is no longer vouched for.
            self.commands.push(ClockCommand::Sync(None));
        }
        let stratum = match state {
            SyncState::LocalClock => self.params.local_stratum.unwrap_or(0),
            _ => self.sys.map_or(0, |s| s.stratum),
        };
        transition::log(old, (state, reason), stratum);
    }

    fn fallback(&self) -> SyncState {
        if self.params.local_stratum.is_some() {
            SyncState::LocalClock
        } else {
            SyncState::Unsynchronized
        }
    }

    fn enter_holdover(&mut self, reason: Reason) {
        // External mode takes its state from the kernel alone.
        if self.state == SyncState::Synchronized && self.params.mode != ClockMode::External {
            self.set_state(SyncState::Holdover, reason);
        }
    }

    /// After a change in reachability: holdover when nothing is usable.
    fn reassess(&mut self, now: &Now) {
        if self.corrected {
            if let Err(reason) = self.select(now) {
                self.enter_holdover(reason);
            }
        }
    }

    fn evaluate_state(&mut self, now: &Now) {
        if self.params.mode == ClockMode::External {
            self.evaluate_external(now);
            return;
        }
        match self.state {
            SyncState::Starting => {
                if self.startup_grace_over(now) {
                    let reason = self.why_not_synchronized(now);
                    self.set_state(self.fallback(), reason);
                }
            }
            SyncState::Holdover => {
                if self.holdover_over(now) {
                    let secs = self.since_update(now).unwrap_or(0.0);
                    self.set_state(self.fallback(), Reason::HoldoverOver { secs });
                }
            }
            SyncState::Synchronized => {
                if self.update_overdue(now) {
                    // Sources answer, but nothing usable came for too long.
                    let secs = self.since_update(now).unwrap_or(0.0);
                    self.set_state(SyncState::Holdover, Reason::NoUpdate { secs });
                }
            }
            SyncState::LocalClock | SyncState::Unsynchronized => {}
        }
    }

    /// Why the first synchronization has not come by the end of the
    /// start-up wait.
    fn why_not_synchronized(&self, now: &Now) -> Reason {
        if !self.params.has_upstreams {
            Reason::NoUpstreams
        } else if self.slots.iter().all(|s| s.source.last_reply().is_none()) {
            Reason::NoneAnswered {
                secs: now.mono - self.start_mono,
            }
        } else {
            self.why_unselectable(now)
        }
    }

    /// Why selection finds nothing to follow, from the candidates at `now`.
    fn why_unselectable(&self, now: &Now) -> Reason {
        if !self.candidates(now).0.is_empty() {
            Reason::NoMajority
        } else if self
            .slots
            .iter()
            .all(|s| !s.source.usable() || s.source.refused().is_some())
        {
            Reason::Unreachable {
                polls: UNREACHABLE_AFTER,
            }
        } else {
            Reason::Unfit
        }
    }

    fn evaluate_external(&mut self, now: &Now) {
        let synced = self
            .external
            .status()
            .is_some_and(|k| k.synchronized && k.maxerror < 16.0);
        if synced {
            self.set_state(SyncState::Synchronized, Reason::KernelSynchronized);
        } else if self.state != SyncState::Starting || self.startup_grace_over(now) {
            self.set_state(self.fallback(), Reason::KernelUnsynchronized);
        }
    }

    fn startup_grace_over(&self, now: &Now) -> bool {
        !self.params.has_upstreams || now.mono - self.start_mono >= STARTUP_GRACE
    }

    /// Seconds since the last clock update (`None` before the first).
    fn since_update(&self, now: &Now) -> Option<f64> {
        self.sys.map(|s| (now.mono - s.update_mono).max(0.0))
    }

    /// Holdover is over once the dispersion grown since the last update
    /// passes [`HOLDOVER_MAX_GROWTH`].
    fn holdover_over(&self, now: &Now) -> bool {
        self.since_update(now)
            .is_none_or(|age| PHI * age > HOLDOVER_MAX_GROWTH)
    }

    /// Synchronized, yet no update for longer than holdover allows and
    /// than the system peer's poll interval explains.
    fn update_overdue(&self, now: &Now) -> bool {
        let Some(age) = self.since_update(now) else {
            return true;
        };
        let peer_interval = self
            .sys
            .and_then(|sys| self.slots.iter().find(|s| s.source.addr() == sys.peer))
            .map_or(0.0, |s| (s.source.poll() as f64).exp2());
        age > HOLDOVER_MAX_AGE.max(OVERDUE_POLLS * peer_interval)
    }

    /// External mode: the system peer, stratum and refid learned from the
    /// upstreams expire like a holdover does, so a server whose upstreams
    /// are gone stops naming them.
    fn age_out_external_peer(&mut self, now: &Now) {
        if self.params.mode == ClockMode::External && self.sys.is_some() && self.holdover_over(now)
        {
            info!(
                "no upstream heard from for {:.0} minutes: no longer serving its stratum and refid",
                HOLDOVER_MAX_AGE / 60.0
            );
            self.sys = None;
            self.dirty = true;
        }
    }

    /// Selection over the current estimates; sets every tally. Why not,
    /// when no source survives.
    fn select(&mut self, now: &Now) -> Result<Selection, Reason> {
        let (cand, index) = self.candidates(now);
        let outcomes = select::select(&cand);
        let mut tallies = vec![Tally::Rejected; self.slots.len()];
        let mut survivors = Vec::new();
        for (k, v) in outcomes.iter().enumerate() {
            tallies[index[k]] = match v {
                Candidacy::Falseticker => Tally::Falseticker,
                Candidacy::Outlier => Tally::Outlier,
                Candidacy::Stale => Tally::Rejected,
                Candidacy::Survivor => {
                    survivors.push(k);
                    Tally::Candidate
                }
            };
        }
        let result = self
            .system_peer(&cand, &index, &survivors)
            .and_then(|peer| {
                let c = self.combine(&cand, &index, &survivors, peer)?;
                tallies[index[peer]] = Tally::SystemPeer;
                Some(Selection {
                    peer: index[peer],
                    offset: c.offset,
                    jitter: c.jitter,
                    freq: c.freq,
                    leap: self.majority_leap(&index, &survivors),
                })
            });
        self.set_tallies(tallies);
        result.ok_or_else(|| self.why_unselectable(now))
    }

    /// The sources fit for selection, as candidates, with their slot
    /// indices.
    fn candidates(&self, now: &Now) -> (Vec<Candidate>, Vec<usize>) {
        let traj_now = self.traj.at(now.mono);
        let mut cand = Vec::new();
        let mut index = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let s = &slot.source;
            let (Some(est), Some(up), Some(dist)) =
                (s.estimate(), s.upstream(), s.root_distance(now.mono))
            else {
                continue;
            };
            if !s.usable()
                || s.refused().is_some()
                || up.stratum >= MAX_UPSTREAM_STRATUM
                || dist > MAX_DISTANCE
            {
                continue;
            }
            cand.push(Candidate {
                offset: est.offset_at(now.mono) - traj_now,
                root_distance: dist,
                jitter: est.jitter,
                stratum: up.stratum,
                stale: s.stale(),
            });
            index.push(i);
        }
        (cand, index)
    }

    /// The system peer among the survivors (an index into `cand`): the
    /// current one while it survives and answers (no needless clock
    /// hopping), else one that answers before one that missed its latest
    /// poll, then the lowest stratum, then the smallest root distance.
    fn system_peer(
        &self,
        cand: &[Candidate],
        index: &[usize],
        survivors: &[usize],
    ) -> Option<usize> {
        let previous = self.sys.map(|s| s.peer);
        survivors
            .iter()
            .copied()
            .find(|&k| !cand[k].stale && Some(self.slots[index[k]].source.addr()) == previous)
            .or_else(|| {
                survivors.iter().copied().min_by(|&a, &b| {
                    (cand[a].stale, cand[a].stratum)
                        .cmp(&(cand[b].stale, cand[b].stratum))
                        .then(cand[a].root_distance.total_cmp(&cand[b].root_distance))
                })
            })
    }

    /// Combines the survivors around the system peer `peer`.
    fn combine(
        &self,
        cand: &[Candidate],
        index: &[usize],
        survivors: &[usize],
        peer: usize,
    ) -> Option<Combined> {
        let surv: Vec<Survivor> = survivors
            .iter()
            .map(|&k| {
                let est = self.slots[index[k]].source.estimate();
                Survivor {
                    offset: cand[k].offset,
                    root_distance: cand[k].root_distance,
                    jitter: cand[k].jitter,
                    freq: est.map_or(0.0, |e| e.freq),
                    freq_var: est.map_or(1.0, |e| e.freq_var),
                }
            })
            .collect();
        let peer_pos = survivors.iter().position(|&k| k == peer)?;
        combine::combine(&surv, peer_pos)
    }

    /// The leap second a majority of the survivors announce.
    fn majority_leap(&self, index: &[usize], survivors: &[usize]) -> LeapIndicator {
        let votes = |leap| {
            survivors
                .iter()
                .filter(|&&k| {
                    self.slots[index[k]]
                        .source
                        .upstream()
                        .is_some_and(|u| u.leap == leap)
                })
                .count()
        };
        [LeapIndicator::InsertSecond, LeapIndicator::DeleteSecond]
            .into_iter()
            .find(|&l| 2 * votes(l) > survivors.len())
            .unwrap_or(LeapIndicator::NoWarning)
    }

    /// Records the new tallies, logging falsetickers as they come and go.
    fn set_tallies(&mut self, tallies: Vec<Tally>) {
        for (slot, tally) in self.slots.iter_mut().zip(tallies) {
            if slot.tally == tally {
                continue;
            }
            if tally == Tally::Falseticker {
                warn!(
                    "upstream {} rejected as a falseticker (it disagrees with the majority)",
                    slot.source.addr()
                );
            } else if slot.tally == Tally::Falseticker {
                info!(
                    "upstream {} agrees with the majority again",
                    slot.source.addr()
                );
            }
            slot.tally = tally;
            self.dirty = true;
        }
    }

    /// Before the first correction: some source present at start is still
    /// in its first burst, and the wait is not over yet.
    fn waiting_for_first_bursts(&self, now: &Now) -> bool {
        !self.corrected
            && self
                .first_added
                .is_some_and(|t| now.mono < t + FIRST_SYNC_WAIT)
            && self
                .slots
                .iter()
                .any(|s| s.waited_for && s.source.in_initial_burst())
    }

    /// Runs selection after a new sample and steers.
    fn update(&mut self, now: &Now) {
        // Wait for the first bursts so the first correction is made by a
        // majority, not by whoever answered first.
        self.update_deferred = self.waiting_for_first_bursts(now);
        if self.update_deferred {
            return;
        }
        let sel = match self.select(now) {
            Ok(sel) => sel,
            Err(reason) => {
                self.enter_holdover(reason);
                return;
            }
        };
        let residual = if self.params.mode == ClockMode::External {
            0.0
        } else {
            match self.steer_clock(&sel, now) {
                Some(residual) => residual,
                None => return,
            }
        };
        self.corrected = true;
        self.record_update(&sel, now, residual);
    }

    /// Steers towards the selection; the error left to slew (0 after a
    /// step), or `None` when the correction was refused.
    fn steer_clock(&mut self, sel: &Selection, now: &Now) -> Option<f64> {
        let first = !self.corrected;
        let target = self.traj.at(now.mono) + sel.offset;
        let action = steer::steer(
            &mut self.traj,
            now.mono,
            target,
            sel.freq,
            first,
            &self.steer,
        );
        let residual = match action {
            Action::Refused(e) => {
                self.refuse(e);
                return None;
            }
            Action::Step(e) => {
                self.stepped(e);
                0.0
            }
            Action::Slew { error, .. } => {
                debug!("slewing {error:+.9} s");
                error.abs()
            }
        };
        if self.params.mode == ClockMode::Kernel {
            self.commands
                .push(ClockCommand::Frequency(self.traj.rate()));
        }
        Some(residual)
    }

    /// The upstreams agree that our time is off by more than we may
    /// correct: stop vouching for it at once — "unsynchronized", not the
    /// local clock (that is for no usable upstream, not for upstreams that
    /// call our clock wrong), and not a holdover of a time they reject —
    /// until a correction within the threshold is accepted again.
    fn refuse(&mut self, error: f64) {
        let reason = Reason::PanicThreshold {
            offset: error,
            limit: self.steer.panic_threshold,
        };
        self.set_state(SyncState::Unsynchronized, reason);
    }

    fn stepped(&mut self, error: f64) {
        info!("stepped the served clock by {error:+.6} s");
        if self.params.mode == ClockMode::Kernel {
            self.commands.push(ClockCommand::Step(error));
            self.expected_jump += error;
            for slot in &mut self.slots {
                slot.source.forget_request();
            }
        }
    }

    /// The system variables after an update (RFC 5905 §11.2.3: the root
    /// dispersion adds the system peer's, its jitter, the selection jitter
    /// and |Θ|, the correction still being made).
    fn record_update(&mut self, sel: &Selection, now: &Now, residual: f64) {
        let slot = &self.slots[sel.peer];
        let (Some(up), Some(est)) = (slot.source.upstream(), slot.source.estimate()) else {
            return;
        };
        let root_delay = up.root_delay + est.min_delay;
        let root_dispersion = up.root_dispersion
            + est.jitter
            + est.offset_sd_at(now.mono)
            + PHI * (now.mono - est.last_time).max(0.0)
            + sel.jitter
            + residual;
        let peer = slot.source.addr();
        self.sys = Some(SysVars {
            peer,
            stratum: up.stratum + 1,
            refid: refid_of(peer.ip()),
            root_delay,
            root_dispersion,
            update_mono: now.mono,
            update_served: self.served_unleaped(now),
            offset: sel.offset,
            jitter: sel.jitter,
            leap: sel.leap,
        });
        if self.params.mode == ClockMode::Kernel {
            let maxerror = root_delay / 2.0 + root_dispersion;
            self.commands
                .push(ClockCommand::Sync(Some((maxerror, sel.jitter))));
        }
        self.dirty = true;
        if self.params.mode != ClockMode::External {
            self.set_state(SyncState::Synchronized, Reason::Following(peer));
        }
    }

    /// Served time at `now` ignoring a pending leap second.
    fn served_unleaped(&self, now: &Now) -> NtpTimestamp {
        match self.params.mode {
            ClockMode::Software => now.kernel.add_secs(self.traj.at(now.mono)),
            _ => now.kernel,
        }
    }

    fn leap_housekeeping(&mut self, now: &Now) {
        let unix = unix_secs(self.served_unleaped(now), now);
        let day = unix.div_euclid(86_400.0) as i64;
        let midnight = (day + 1) * 86_400;
        self.fold_planned_leap(now, unix);
        let wanted = if self.leap_done == Some(midnight) {
            LeapIndicator::NoWarning
        } else {
            self.leap_for_today(unix as i64, day)
        };
        if wanted != self.announce {
            if wanted != LeapIndicator::NoWarning {
                info!("leap second announced for the end of today (UTC): {wanted:?}");
            }
            self.announce = wanted;
            self.dirty = true;
        }
        self.plan_leap(wanted, midnight);
    }

    /// Software mode: once past the planned instant, folds the leap into
    /// the trajectory (the workers have applied it since that instant).
    fn fold_planned_leap(&mut self, now: &Now, unix: f64) {
        let Some(p) = self.planned else {
            return;
        };
        if unix < p.instant() as f64 {
            return;
        }
        self.traj.step(now.mono, f64::from(p.step));
        for slot in &mut self.slots {
            // True (UTC) time jumped; the samples must follow.
            slot.source.filter_mut().shift(f64::from(p.step));
            slot.source.forget_request();
        }
        info!(
            "leap second {} at {} UTC",
            if p.step < 0 { "inserted" } else { "deleted" },
            p.midnight
        );
        self.leap_done = Some(p.midnight);
        self.planned = None;
        self.dirty = true;
    }

    /// Plans (software mode) or arms (kernel mode) the leap second wanted
    /// at `midnight`.
    fn plan_leap(&mut self, wanted: LeapIndicator, midnight: i64) {
        match self.params.mode {
            ClockMode::Software => {
                let step = leap_jump(wanted);
                let plan = (step != 0).then_some(PlannedLeap { midnight, step });
                if self.planned != plan && self.leap_done != Some(midnight) {
                    self.planned = plan;
                    self.dirty = true;
                }
            }
            ClockMode::Kernel => {
                // The kernel inserts or deletes the second itself at its
                // midnight (see detect_foreign_step for the aftermath).
                if wanted != self.kernel_armed {
                    self.commands.push(ClockCommand::Leap(wanted));
                    self.kernel_armed = wanted;
                    self.kernel_leap_midnight = midnight;
                }
            }
            ClockMode::External => {}
        }
    }

    /// The leap second at the end of Unix day `day`, from the leap file
    /// while it is valid, else from the upstreams' majority (only on the
    /// last day of a month, where leap seconds go).
    fn leap_for_today(&mut self, unix: i64, day: i64) -> LeapIndicator {
        if let Some(table) = &self.leap_table {
            if !table.expired(unix) {
                return table.leap_at_end_of_day(unix);
            }
            if !self.leap_expired_logged {
                warn!("the leap-second file has expired; update it (tzdata) — using the upstreams' leap indicator");
                self.leap_expired_logged = true;
            }
        }
        match (&self.sys, self.state) {
            (Some(sys), SyncState::Synchronized | SyncState::Holdover)
                if last_day_of_month(day) =>
            {
                sys.leap
            }
            _ => LeapIndicator::NoWarning,
        }
    }

    /// The correction workers apply (software mode), at `now`.
    pub fn correction(&self, now: &Now) -> Correction {
        if self.params.mode != ClockMode::Software {
            return Correction::NONE;
        }
        let (leap_at, leap_step) = match self.planned {
            Some(p) => (
                NtpTimestamp::from_unix(UnixTime::new(p.instant(), 0)),
                p.step,
            ),
            None => (NtpTimestamp::ZERO, 0),
        };
        Correction {
            base: now.kernel,
            offset: secs_to_units(self.traj.at(now.mono)),
            freq: self.traj.rate(),
            leap_at,
            leap_step,
        }
    }

    /// The state workers should serve from `now` on.
    pub fn server_state(&self, now: &Now) -> ServerState {
        if self.params.mode == ClockMode::External {
            return self.external_state(now);
        }
        match (self.state, &self.sys) {
            (SyncState::Synchronized | SyncState::Holdover, Some(sys)) => {
                self.synced_state(sys, self.correction(now))
            }
            (SyncState::LocalClock, _) => self.local_state(now, self.announce),
            _ => self.unsynchronized_state(now),
        }
    }

    /// External mode: the kernel's leap flags, its maximum error as of the
    /// last read as root dispersion (when larger than the upstreams'), and
    /// the time the other daemon last updated the clock as reference time.
    fn external_state(&self, now: &Now) -> ServerState {
        let ext = &self.external;
        match (self.state, ext.status(), ext.read_at(), ext.last_update()) {
            (SyncState::Synchronized, Some(k), Some(read_at), Some(updated)) => {
                let mut s = match &self.sys {
                    Some(sys) => self.synced_state(sys, self.correction(now)),
                    None => self.local_state(now, k.leap),
                };
                s.leap = k.leap;
                let upstream = s.root_dispersion_at(read_at).as_secs_f64();
                s.root_dispersion = NtpShort::from_secs_f64(k.maxerror.max(upstream));
                s.dispersion_base = read_at;
                s.reference_time = updated;
                s
            }
            (SyncState::LocalClock, ..) => self.local_state(now, LeapIndicator::NoWarning),
            _ => self.unsynchronized_state(now),
        }
    }

    fn local_state(&self, now: &Now, leap: LeapIndicator) -> ServerState {
        let served = self.served_unleaped(now);
        let mut s = ServerState::local_clock(
            self.params.local_stratum.unwrap_or(15),
            self.params.precision,
            served,
        );
        s.correction = self.correction(now);
        s.leap = leap;
        s
    }

    fn unsynchronized_state(&self, now: &Now) -> ServerState {
        let mut s = ServerState::unsynchronized(self.params.precision);
        s.correction = self.correction(now);
        s
    }

    fn synced_state(&self, sys: &SysVars, correction: Correction) -> ServerState {
        ServerState {
            leap: self.announce,
            stratum: sys.stratum,
            precision: self.params.precision,
            reference_id: sys.refid,
            reference_time: sys.update_served,
            root_delay: NtpShort::from_secs_f64(sys.root_delay),
            root_dispersion: NtpShort::from_secs_f64(sys.root_dispersion),
            dispersion_base: sys.update_served,
            correction,
        }
    }

    /// Everything the control interface shows, at `now`.
    pub fn status(&self, now: &Now) -> Status {
        let state = self.server_state(now);
        let traj_now = self.traj.at(now.mono);
        let sources = self
            .slots
            .iter()
            .map(|slot| source_status(slot, now, traj_now))
            .collect();
        let kernel_ppm = self.external.status().map_or(0.0, |k| k.frequency_ppm);
        Status {
            system: SystemStatus {
                mode: self.params.mode,
                state: self.state,
                reason: self.reason,
                stratum: state.stratum,
                refid: state.reference_id,
                leap: state.leap,
                system_peer: self
                    .sys
                    .as_ref()
                    .filter(|_| self.state == SyncState::Synchronized)
                    .map(|s| s.peer),
                offset: self.sys.map_or(0.0, |s| s.offset),
                jitter: self.sys.map_or(0.0, |s| s.jitter),
                frequency_ppm: if self.params.mode == ClockMode::External {
                    kernel_ppm
                } else {
                    self.traj.freq * 1e6
                },
                root_delay: state.root_delay.as_secs_f64(),
                root_dispersion: state
                    .root_dispersion_at(self.served_unleaped(now))
                    .as_secs_f64(),
                since_update: if self.params.mode == ClockMode::External {
                    self.external.since_update(now.mono)
                } else {
                    self.since_update(now)
                },
            },
            sources,
        }
    }
}

fn source_status(slot: &Slot, now: &Now, traj_now: f64) -> SourceStatus {
    let s = &slot.source;
    let est = s.estimate();
    SourceStatus {
        name: s.params().name.clone(),
        address: s.addr(),
        pool: s.params().pool,
        tally: slot.tally,
        stratum: s.upstream().map(|u| u.stratum),
        refid: s.upstream().map(|u| u.refid),
        when: s.last_reply().map(|t| (now.mono - t).max(0.0)),
        poll: s.poll(),
        reach: s.reach(),
        delay: est.map(|e| e.min_delay),
        offset: est.map(|e| e.offset_at(now.mono) - traj_now),
        jitter: est.map(|e| e.jitter),
        refused: s.refused().map(|k| k.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discipline::test_support::engine_params;

    fn external_engine(local_stratum: Option<u8>) -> (Engine, Now) {
        let params = EngineParams {
            local_stratum,
            has_upstreams: false,
            ..engine_params(ClockMode::External)
        };
        let now = Now::new(10.0, UnixTime::new(1_800_000_000, 0));
        (Engine::new(params, &now), now)
    }

    #[test]
    fn external_mode_serves_the_kernel_status() {
        let (mut e, now) = external_engine(Some(1));
        e.set_kernel_status(
            KernelStatus {
                synchronized: true,
                maxerror: 0.002,
                esterror: 0.0001,
                leap: LeapIndicator::InsertSecond,
                frequency_ppm: 12.5,
            },
            &now,
        );
        e.tick(&now);
        let s = e.server_state(&now);
        assert_eq!(e.state(), SyncState::Synchronized);
        assert_eq!(
            (s.stratum, s.reference_id, s.leap),
            (1, RefId::LOCL, LeapIndicator::InsertSecond)
        );
        assert!((s.root_dispersion.as_secs_f64() - 0.002).abs() < 1e-4);
        assert_eq!(s.correction, Correction::NONE);
        assert_eq!(e.status(&now).system.frequency_ppm, 12.5);

        // STA_UNSYNC: fall back.
        e.set_kernel_status(
            KernelStatus {
                synchronized: false,
                maxerror: 16.0,
                esterror: 16.0,
                leap: LeapIndicator::NoWarning,
                frequency_ppm: 12.5,
            },
            &now,
        );
        e.tick(&now);
        assert_eq!(e.state(), SyncState::LocalClock);
        let (mut e, now) = external_engine(None);
        e.tick(&now);
        assert_eq!(e.server_state(&now).leap, LeapIndicator::Unsynchronized);
    }

    #[test]
    fn external_mode_serves_the_time_of_the_last_kernel_update() {
        let (mut e, start) = external_engine(None);
        let kernel = |maxerror: f64, esterror: f64| KernelStatus {
            synchronized: true,
            maxerror,
            esterror,
            leap: LeapIndicator::NoWarning,
            frequency_ppm: 12.5,
        };
        let ago = |s: &ServerState, now: &Now| now.kernel.diff_secs(s.reference_time);
        // First read: 2 ms maximum error, so the other daemon updated the
        // clock at most 4 s ago; that is what is served.
        e.set_kernel_status(kernel(0.002, 0.0001), &start);
        e.tick(&start);
        let s = e.server_state(&start.later(0.5));
        assert!((ago(&s, &start) - 4.0).abs() < 1e-6, "{}", ago(&s, &start));
        // The kernel grows maxerror by 500 µs a second: no update, the
        // reference time stays put while the state is re-published.
        let mut now = start;
        for i in 1..=5 {
            now = start.later(i as f64);
            e.set_kernel_status(kernel(0.002 + 0.0005 * i as f64, 0.0001), &now);
            e.tick(&now);
            let s = e.server_state(&now);
            assert!((ago(&s, &now) - (4.0 + i as f64)).abs() < 1e-6, "{i}");
            // Root dispersion: the kernel's maximum error as of this read.
            assert_eq!(s.dispersion_base, now.kernel);
            assert!((s.root_dispersion.as_secs_f64() - (0.002 + 0.0005 * i as f64)).abs() < 1e-4);
        }
        // The daemon updates the clock (maxerror falls): that instant.
        let update = now.later(1.0);
        e.set_kernel_status(kernel(0.0012, 0.00008), &update);
        e.tick(&update);
        for later in [0.0, 0.4, 0.9] {
            let s = e.server_state(&update.later(later));
            assert_eq!(s.reference_time, update.kernel, "{later}");
        }
        let status = e.status(&update.later(3.0));
        assert!((status.system.since_update.unwrap() - 3.0).abs() < 1e-6);
    }

    #[test]
    fn month_ends_are_found() {
        // 2016-12-31 is Unix day 17166; 2016-06-30 is 16982; 2016-02-28 not
        // (leap year), 2016-02-29 is.
        assert!(last_day_of_month(17_166));
        assert!(last_day_of_month(16_982));
        assert!(!last_day_of_month(16_859));
        assert!(last_day_of_month(16_860));
        assert!(!last_day_of_month(17_165));
    }

    #[test]
    fn kernel_limits_follow_the_base_frequency() {
        let kernel = EngineParams {
            base_ppm: 400.0,
            ..engine_params(ClockMode::Kernel)
        };
        let (lo, hi) = kernel.steer_limits().freq_range;
        assert!((lo + 900e-6).abs() < 1e-12 && (hi - 100e-6).abs() < 1e-12);
        let soft = engine_params(ClockMode::Software).steer_limits();
        assert_eq!(soft.freq_range, (-500e-6, 500e-6));
    }

    #[test]
    fn a_failed_leap_file_reload_keeps_the_previous_list() {
        // 2016-12-31T12:00Z: the list schedules an insertion tonight.
        let params = EngineParams {
            has_upstreams: false,
            ..engine_params(ClockMode::Software)
        };
        let now = Now::new(10.0, UnixTime::new(1_483_185_600, 0));
        let mut e = Engine::new(params, &now);
        e.leap_file_loaded(LeapTable::parse(
            "#@ 4000000000\n3644697600 36\n3692217600 37\n",
        ));
        // An hour later the file is caught half-written.
        e.leap_file_loaded(LeapTable::parse("#@ 4000000000\n"));
        e.tick(&now);
        assert_eq!(e.announce, LeapIndicator::InsertSecond);
        assert_eq!(e.correction(&now).leap_step, -1);
    }

    #[test]
    fn leap_instants_and_jumps() {
        let insert = PlannedLeap {
            midnight: 86_400,
            step: -1,
        };
        let delete = PlannedLeap {
            midnight: 86_400,
            step: 1,
        };
        assert_eq!((insert.instant(), delete.instant()), (86_400, 86_399));
        assert_eq!(leap_jump(LeapIndicator::InsertSecond), -1);
        assert_eq!(leap_jump(LeapIndicator::DeleteSecond), 1);
        assert_eq!(leap_jump(LeapIndicator::Unsynchronized), 0);
    }
}
