//! Leap seconds: which one is due at the end of today (the leap-second
//! file while it is valid, else the upstreams' majority on the last day of
//! a month), announcing it, planning it for the workers (software mode) or
//! arming it in the kernel (kernel mode), and what follows it.

use tracing::{info, warn};

use super::{ClockCommand, ClockMode, Engine, Now};
use crate::discipline::leapfile::{LeapFileError, LeapTable};
use crate::discipline::status::SyncState;
use crate::proto::{LeapIndicator, NtpTimestamp, UnixTime};

/// The engine's leap-second state.
#[derive(Debug, Default)]
pub(super) struct Leaps {
    /// The leap-second file's list, if one was read.
    table: Option<LeapTable>,
    /// The list's expiry was logged.
    expired_logged: bool,
    /// The leap second announced for the end of today.
    pub(super) announce: LeapIndicator,
    /// Software mode: the leap second the workers are to apply.
    planned: Option<PlannedLeap>,
    /// The midnight of the leap second done last (never done twice).
    done: Option<i64>,
    /// Kernel mode: the leap second armed in the kernel...
    pub(super) kernel_armed: LeapIndicator,
    /// ... for this midnight.
    kernel_midnight: i64,
}

impl Leaps {
    /// The planned leap second as the correction carries it: the kernel
    /// time the workers apply it from and its step (zero and 0 for none).
    pub(super) fn for_correction(&self) -> (NtpTimestamp, i8) {
        match self.planned {
            Some(p) => (
                NtpTimestamp::from_unix(UnixTime::new(p.instant(), 0)),
                p.step,
            ),
            None => (NtpTimestamp::ZERO, 0),
        }
    }
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
pub(super) fn leap_jump(leap: LeapIndicator) -> i8 {
    match leap {
        LeapIndicator::InsertSecond => -1,
        LeapIndicator::DeleteSecond => 1,
        _ => 0,
    }
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
    /// Installs (or removes) the leap-second table.
    pub fn set_leap_table(&mut self, table: Option<LeapTable>) {
        let expiry = |t: &Option<LeapTable>| t.as_ref().map(|t| t.expires);
        if expiry(&table) != expiry(&self.leap.table) {
            // A new list: its expiry deserves a fresh warning.
            self.leap.expired_logged = false;
        }
        self.leap.table = table;
    }

    /// Installs a freshly read leap-second file. A failed read keeps the
    /// table installed before (a file caught mid-update must not cancel a
    /// scheduled leap second); both cases are logged.
    pub fn leap_file_loaded(&mut self, result: Result<LeapTable, LeapFileError>) {
        match result {
            Ok(table) => self.set_leap_table(Some(table)),
            Err(e) if self.leap.table.is_some() => {
                warn!("{e}; keeping the leap-second list read before")
            }
            Err(e) => warn!("{e}; leap seconds come from the upstreams only"),
        }
    }

    /// The kernel applied the armed leap second: its clock and UTC jumped
    /// together, so the samples stay valid. Disarm it (the kernel leaves
    /// STA_INS/STA_DEL set until told).
    pub(super) fn kernel_leap_applied(&mut self, leap: f64) {
        info!("the kernel applied the leap second ({leap:+} s)");
        self.leap.done = Some(self.leap.kernel_midnight);
        self.leap.kernel_armed = LeapIndicator::NoWarning;
        self.commands
            .push(ClockCommand::Leap(LeapIndicator::NoWarning));
        self.dirty = true;
    }

    pub(super) fn leap_housekeeping(&mut self, now: &Now) {
        let unix = unix_secs(self.served_unleaped(now), now);
        let day = unix.div_euclid(86_400.0) as i64;
        let midnight = (day + 1) * 86_400;
        self.fold_planned_leap(now, unix);
        let wanted = if self.leap.done == Some(midnight) {
            LeapIndicator::NoWarning
        } else {
            self.leap_for_today(unix as i64, day)
        };
        if wanted != self.leap.announce {
            if wanted != LeapIndicator::NoWarning {
                info!("leap second announced for the end of today (UTC): {wanted:?}");
            }
            self.leap.announce = wanted;
            self.dirty = true;
        }
        self.plan_leap(wanted, midnight);
    }

    /// Software mode: once past the planned instant, folds the leap into
    /// the trajectory (the workers have applied it since that instant).
    fn fold_planned_leap(&mut self, now: &Now, unix: f64) {
        let Some(p) = self.leap.planned else {
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
        self.leap.done = Some(p.midnight);
        self.leap.planned = None;
        self.dirty = true;
    }

    /// Plans (software mode) or arms (kernel mode) the leap second wanted
    /// at `midnight`.
    fn plan_leap(&mut self, wanted: LeapIndicator, midnight: i64) {
        match self.params.mode {
            ClockMode::Software => {
                let step = leap_jump(wanted);
                let plan = (step != 0).then_some(PlannedLeap { midnight, step });
                if self.leap.planned != plan && self.leap.done != Some(midnight) {
                    self.leap.planned = plan;
                    self.dirty = true;
                }
            }
            ClockMode::Kernel => {
                // The kernel inserts or deletes the second itself at its
                // midnight (see detect_foreign_step for the aftermath).
                if wanted != self.leap.kernel_armed {
                    self.commands.push(ClockCommand::Leap(wanted));
                    self.leap.kernel_armed = wanted;
                    self.leap.kernel_midnight = midnight;
                }
            }
            ClockMode::External => {}
        }
    }

    /// The leap second at the end of Unix day `day`, from the leap file
    /// while it is valid, else from the upstreams' majority (only on the
    /// last day of a month, where leap seconds go).
    fn leap_for_today(&mut self, unix: i64, day: i64) -> LeapIndicator {
        if let Some(table) = &self.leap.table {
            if !table.expired(unix) {
                return table.leap_at_end_of_day(unix);
            }
            if !self.leap.expired_logged {
                warn!("the leap-second file has expired; update it (tzdata) — using the upstreams' leap indicator");
                self.leap.expired_logged = true;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discipline::engine::EngineParams;
    use crate::discipline::test_support::engine_params;
    use crate::proto::UnixTime;

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
        assert_eq!(e.leap.announce, LeapIndicator::InsertSecond);
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
