//! The clock update after a new sample: wait for the first bursts, select,
//! steer (step, slew or refuse beyond the panic threshold), record the
//! system variables, and end slews when due.

use tracing::{debug, info};

use super::selection::Selection;
use super::{ClockCommand, ClockMode, Engine, Now, SysVars, FIRST_SYNC_WAIT};
use crate::discipline::algo::steer::{self, Action};
use crate::discipline::algo::PHI;
use crate::discipline::source::refid_of;
use crate::discipline::status::SyncState;
use crate::discipline::transition::Reason;

impl Engine {
    /// Before the first correction: some source present at start is still
    /// in its first burst, and the wait is not over yet.
    pub(super) fn waiting_for_first_bursts(&self, now: &Now) -> bool {
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
    pub(super) fn update(&mut self, now: &Now) {
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

    pub(super) fn stepped(&mut self, error: f64) {
        info!("stepped the served clock by {error:+.6} s");
        if self.params.mode == ClockMode::Kernel {
            self.commands.push(ClockCommand::Step(error));
            self.steps.expect(error);
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

    pub(super) fn end_slew_when_due(&mut self, now: &Now) {
        if self.traj.slewing() && now.mono >= self.traj.slew_until {
            self.traj.end_slew(now.mono);
            if self.params.mode == ClockMode::Kernel {
                self.commands
                    .push(ClockCommand::Frequency(self.traj.rate()));
            }
            self.dirty = true;
        }
    }
}
