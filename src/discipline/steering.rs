//! What carries out the engine's decisions on the host, per discipline
//! mode: `Steering` (nothing, the kernel clock, or another daemon's
//! kernel clock), [`KernelSteering`] (the engine's [`ClockCommand`]s on a
//! [`KernelClock`]), and [`kernel_base`] (the frequency the kernel
//! discipline starts from, from the drift file).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::drift::{self, DriftError};
use super::engine::ClockCommand;
use super::kernel_clock::{ClockError, KernelClock, SystemClock};

/// Carries out an engine's [`ClockCommand`]s on a [`KernelClock`]: the
/// engine speaks of corrections relative to the frequency the kernel had
/// at start (`base_ppm`, from the drift file); the kernel takes absolute
/// ppm.
#[derive(Debug)]
pub struct KernelSteering<C> {
    clock: C,
    base_ppm: f64,
}

impl<C: KernelClock> KernelSteering<C> {
    /// Drives `clock`, whose frequency the engine takes as its zero.
    pub fn new(clock: C, base_ppm: f64) -> Self {
        KernelSteering { clock, base_ppm }
    }

    /// Takes `clock` over like chronyd does: resets whatever PLL, slew and
    /// leap state a previous daemon left, then sets the frequency to
    /// `base_ppm`, which the engine takes as its zero.
    pub fn start(mut clock: C, base_ppm: f64) -> Result<Self, ClockError> {
        clock.reset_pll()?;
        clock.set_frequency(base_ppm)?;
        Ok(Self::new(clock, base_ppm))
    }

    /// Carries out one command.
    pub fn apply(&mut self, command: ClockCommand) -> Result<(), ClockError> {
        match command {
            ClockCommand::Step(secs) => self.clock.step(secs),
            ClockCommand::Frequency(f) => self.clock.set_frequency(self.base_ppm + f * 1e6),
            ClockCommand::Leap(leap) => self.clock.set_leap(leap),
            ClockCommand::Sync(errors) => self.clock.set_sync(errors),
        }
    }

    /// The frequency to remember in the drift file, ppm: the base plus the
    /// engine's frequency estimate (`freq`, without any running slew).
    pub fn drift_ppm(&self, freq: f64) -> f64 {
        self.base_ppm + freq * 1e6
    }

    /// The clock driven.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

/// The kernel frequency the discipline starts from, ppm: the drift file's
/// when it holds a plausible one, else the kernel's `current` frequency (a
/// missing file is normal at first start; a corrupt or implausible one is
/// logged and ignored). Only an unreadable file is an error.
pub fn kernel_base(drift_file: Option<&Path>, current: f64) -> Result<f64, DriftError> {
    let Some(path) = drift_file else {
        return Ok(current);
    };
    match drift::read(path) {
        Ok(Some(ppm)) => {
            info!("drift file {}: {ppm:+.3} ppm", path.display());
            Ok(ppm)
        }
        Ok(None) => Ok(current),
        Err(e @ (DriftError::Malformed { .. } | DriftError::Implausible { .. })) => {
            warn!("{e}; ignored, starting from the kernel's {current:+.3} ppm");
            Ok(current)
        }
        Err(e) => Err(e),
    }
}

/// How the engine's decisions reach the host, per `[clock] discipline`.
pub(super) enum Steering {
    /// Nothing to carry out: the workers apply the published correction.
    Software,
    /// The kernel clock is steered and its frequency kept in the drift
    /// file.
    Kernel {
        /// Carries out the engine's commands.
        kernel: KernelSteering<SystemClock>,
        /// Where the frequency is kept across restarts.
        drift_file: Option<PathBuf>,
    },
    /// Another daemon steers the kernel clock; its status is read.
    External(SystemClock),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discipline::kernel_clock::{FakeClock, FakeOp};
    use crate::proto::UnixTime;

    #[test]
    fn starting_kernel_mode_resets_a_leftover_pll() {
        let epoch = UnixTime::new(1_550_000_000, 0);
        let clock = FakeClock::new(epoch, 0.0, 0.0, 0.0, 1);
        // Another daemon left the PLL running with 80 ms still to apply.
        clock.leave_pll_running(0.080);
        let steering = KernelSteering::start(clock.clone(), 12.5).unwrap();
        assert_eq!(clock.pll(), (false, 0.0));
        assert_eq!(
            clock.operations(),
            vec![FakeOp::ResetPll, FakeOp::Frequency(12.5)]
        );
        // Nothing moves the clock under the discipline.
        clock.advance(600.0);
        let expected = 12.5e-6 * 600.0;
        assert!((clock.error() - expected).abs() < 1e-9, "{}", clock.error());
        assert_eq!(steering.drift_ppm(0.0), 12.5);
    }

    #[test]
    fn implausible_drift_files_are_ignored() {
        let dir = std::env::temp_dir().join(format!("fastntp-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drift");
        assert_eq!(kernel_base(None, 3.0).unwrap(), 3.0);
        assert_eq!(kernel_base(Some(&path), 3.0).unwrap(), 3.0, "missing");
        for (content, want) in [("-17.25\n", -17.25), ("400\n", 3.0), ("junk", 3.0)] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(kernel_base(Some(&path), 3.0).unwrap(), want, "{content}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
