//! Steps of the kernel clock the engine did not make: a jump between the
//! kernel and monotonic clocks beyond what was commanded is the kernel's
//! leap second (when one was armed) or someone else stepping the clock;
//! the samples follow it, and in software mode the served time stays
//! continuous.

use tracing::warn;

use super::leap::leap_jump;
use super::{ClockMode, Engine, Now};
use crate::proto::NtpTimestamp;

/// Watch over the kernel clock's steps.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepWatch {
    /// The kernel clock at start (differences are taken from it).
    kernel_epoch: NtpTimestamp,
    /// Kernel minus monotonic time at the last look, s.
    kernel_minus_mono: Option<f64>,
    /// Steps commanded since the last look, s.
    expected_jump: f64,
    /// Steps someone else made.
    foreign: u32,
}

impl StepWatch {
    /// Watching from kernel time `kernel_epoch` on.
    pub(super) fn new(kernel_epoch: NtpTimestamp) -> Self {
        StepWatch {
            kernel_epoch,
            kernel_minus_mono: None,
            expected_jump: 0.0,
            foreign: 0,
        }
    }

    /// A step of `secs` was commanded: the next look expects it.
    pub(super) fn expect(&mut self, secs: f64) {
        self.expected_jump += secs;
    }

    /// How often someone else stepped the kernel clock.
    pub(super) fn foreign(&self) -> u32 {
        self.foreign
    }
}

/// A jump between the kernel and monotonic clocks larger than this, not
/// made by us, is someone else stepping the kernel clock.
const FOREIGN_STEP: f64 = 0.01;

impl Engine {
    /// Compares kernel minus monotonic time with the last look: a jump
    /// beyond the steps commanded meanwhile is the armed leap second or
    /// someone else's step.
    pub(super) fn detect_foreign_step(&mut self, now: &Now) {
        let d = now.kernel.diff_secs(self.steps.kernel_epoch) - now.mono;
        let expected = std::mem::take(&mut self.steps.expected_jump);
        let Some(prev) = self.steps.kernel_minus_mono.replace(d) else {
            return;
        };
        let jump = d - prev - expected;
        let leap = f64::from(leap_jump(self.leap.kernel_armed));
        if leap != 0.0 && (jump - leap).abs() < FOREIGN_STEP {
            self.kernel_leap_applied(leap);
        } else if jump.abs() > FOREIGN_STEP {
            self.foreign_step(now, jump);
        }
    }

    /// Someone else stepped the kernel clock by `jump`: the samples follow
    /// it, and in software mode the served time does not.
    fn foreign_step(&mut self, now: &Now, jump: f64) {
        warn!("the kernel clock was stepped by {jump:+.6} s by someone else");
        self.steps.foreign += 1;
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
}
