//! The sync-state machine: starting, synchronized, holdover, local clock
//! or unsynchronized, and the reason for each — the start-up grace,
//! holdover by age, an overdue update, and external mode (the state of the
//! kernel clock another daemon steers).

use tracing::info;

use super::{ClockCommand, ClockMode, Engine, Now};
use super::{HOLDOVER_MAX_AGE, HOLDOVER_MAX_GROWTH, STARTUP_GRACE};
use crate::discipline::algo::PHI;
use crate::discipline::kernel_clock::KernelStatus;
use crate::discipline::reach::UNREACHABLE_AFTER;
use crate::discipline::status::SyncState;
use crate::discipline::transition::{self, Reason};

/// While synchronized, an update is overdue only after this many poll
/// intervals of the system peer (when that is longer than
/// [`HOLDOVER_MAX_AGE`]).
const OVERDUE_POLLS: f64 = 3.0;

impl Engine {
    /// External mode: the kernel clock's status, read by the caller at
    /// `now` (about every second: see [`crate::discipline::external`]).
    pub fn set_kernel_status(&mut self, status: KernelStatus, now: &Now) {
        if self.external.observe(status, now) {
            self.dirty = true;
        }
    }

    /// Enters `state` for `reason`; a new state (or a panic) is logged
    /// once, with its reason.
    pub(super) fn set_state(&mut self, state: SyncState, reason: Reason) {
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

    pub(super) fn fallback(&self) -> SyncState {
        if self.params.local_stratum.is_some() {
            SyncState::LocalClock
        } else {
            SyncState::Unsynchronized
        }
    }

    pub(super) fn enter_holdover(&mut self, reason: Reason) {
        // External mode takes its state from the kernel alone.
        if self.state == SyncState::Synchronized && self.params.mode != ClockMode::External {
            self.set_state(SyncState::Holdover, reason);
        }
    }

    /// After a change in reachability: holdover when nothing is usable.
    pub(super) fn reassess(&mut self, now: &Now) {
        if self.corrected {
            if let Err(reason) = self.select(now) {
                self.enter_holdover(reason);
            }
        }
    }

    pub(super) fn evaluate_state(&mut self, now: &Now) {
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
    pub(super) fn why_unselectable(&self, now: &Now) -> Reason {
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
    pub(super) fn since_update(&self, now: &Now) -> Option<f64> {
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
    pub(super) fn age_out_external_peer(&mut self, now: &Now) {
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
}
