//! What the engine publishes: the correction workers apply (software
//! mode), the [`ServerState`] they serve in each state (synchronized or in
//! holdover, local clock, unsynchronized, external mode), and the
//! [`Status`] the control interface shows.

use super::{ClockMode, Engine, Now, Slot, SysVars};
use crate::discipline::status::{SourceStatus, Status, SyncState, SystemStatus};
use crate::proto::time::secs_to_units;
use crate::proto::{Correction, LeapIndicator, NtpShort, ServerState};

impl Engine {
    /// The correction workers apply (software mode), at `now`.
    pub fn correction(&self, now: &Now) -> Correction {
        if self.params.mode != ClockMode::Software {
            return Correction::NONE;
        }
        let (leap_at, leap_step) = self.leap.for_correction();
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
            (SyncState::LocalClock, _) => self.local_state(now, self.leap.announce),
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
            leap: self.leap.announce,
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
    use crate::discipline::engine::EngineParams;
    use crate::discipline::kernel_clock::KernelStatus;
    use crate::discipline::test_support::engine_params;
    use crate::proto::{RefId, UnixTime};

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
}
