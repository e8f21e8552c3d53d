//! `[clock]`: where the served time comes from — the discipline mode,
//! step and panic thresholds, drift and leap-second files, the local
//! stratum — keys, defaults, validation and warnings.

use std::path::PathBuf;

use serde::Deserialize;

use super::default_true;
use super::error::{invalid, Invalid};

/// `[clock]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockConfig {
    /// How the served time is steered.
    #[serde(default)]
    pub discipline: DisciplineMode,
    /// Seconds; corrections larger than this are stepped, smaller ones
    /// slewed. 0 = never step (after the first correction in software mode).
    #[serde(default = "default_step_threshold")]
    pub step_threshold: f64,
    /// Seconds; corrections larger than this are refused. 0 = no limit.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: f64,
    /// The first correction after start may exceed `panic-threshold`
    /// (like `ntpd -g`).
    #[serde(default = "default_true")]
    pub first_step_unlimited: bool,
    /// Kernel mode: where the kernel clock's frequency is kept across
    /// restarts (ppm, one number, written atomically).
    #[serde(default)]
    pub drift_file: Option<PathBuf>,
    /// Serve the local clock at this stratum when nothing better is known;
    /// `None` = serve "unsynchronized".
    #[serde(default)]
    pub local_stratum: Option<u8>,
    /// IERS/tzdata `leap-seconds.list`: announces leap seconds (with an
    /// expiry date) independently of the upstreams.
    #[serde(default)]
    pub leap_file: Option<PathBuf>,
}

/// `[clock] discipline`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisciplineMode {
    /// Never touch the kernel clock: serve kernel time plus a correction.
    #[default]
    Software,
    /// Steer the kernel clock (adjtimex; needs CAP_SYS_TIME).
    Kernel,
    /// Another daemon disciplines the kernel clock: serve it as is, with
    /// its synchronization status from adjtimex.
    External,
}

impl DisciplineMode {
    /// The configuration spelling.
    pub const fn name(self) -> &'static str {
        match self {
            DisciplineMode::Software => "software",
            DisciplineMode::Kernel => "kernel",
            DisciplineMode::External => "external",
        }
    }
}

/// Default `step-threshold`, seconds (ntpd's 128 ms).
pub const DEFAULT_STEP_THRESHOLD: f64 = 0.128;
/// Default `panic-threshold`, seconds (ntpd's 1000 s).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 1000.0;

fn default_step_threshold() -> f64 {
    DEFAULT_STEP_THRESHOLD
}

fn default_panic_threshold() -> f64 {
    DEFAULT_PANIC_THRESHOLD
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            discipline: DisciplineMode::Software,
            step_threshold: DEFAULT_STEP_THRESHOLD,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            first_step_unlimited: true,
            drift_file: None,
            local_stratum: None,
            leap_file: None,
        }
    }
}

impl ClockConfig {
    /// Checks `[clock]`; `has_upstreams`: `[[upstream]]` entries are
    /// configured (external mode needs them, or `local-stratum`).
    pub(super) fn validate(&self, has_upstreams: bool) -> Result<(), Invalid> {
        if let Some(s) = self.local_stratum {
            if !(1..=15).contains(&s) {
                return Err(invalid(
                    "clock.local-stratum",
                    format!("{s} is out of range; use 1 to 15"),
                ));
            }
        }
        for (key, value) in [
            ("clock.step-threshold", self.step_threshold),
            ("clock.panic-threshold", self.panic_threshold),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(
                    key,
                    format!("{value} is not allowed; give seconds, 0 or more"),
                ));
            }
        }
        if self.panic_threshold > 0.0 && self.panic_threshold < self.step_threshold {
            return Err(invalid(
                "clock.panic-threshold",
                format!(
                    "{} is below step-threshold ({}); every step would be refused",
                    self.panic_threshold, self.step_threshold
                ),
            ));
        }
        for (key, path) in [
            ("clock.drift-file", &self.drift_file),
            ("clock.leap-file", &self.leap_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key, "is empty; give a file path".into()));
            }
        }
        if self.discipline == DisciplineMode::External
            && !has_upstreams
            && self.local_stratum.is_none()
        {
            return Err(invalid(
                "clock.discipline",
                "\"external\" needs [[upstream]] entries (to learn the stratum and refid to \
                 serve) or `local-stratum`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A drift file outside kernel mode, which ignores it.
    pub(super) fn warning(&self) -> Option<String> {
        let path = self.drift_file.as_ref()?;
        (self.discipline != DisciplineMode::Kernel).then(|| {
            format!(
                "`clock.drift-file` ({}) is only used with discipline = \"kernel\"; \
                 ignored with \"{}\"",
                path.display(),
                self.discipline.name()
            )
        })
    }
}
