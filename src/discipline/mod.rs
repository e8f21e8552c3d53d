//! The discipline thread: the only writer of the snapshot. It polls the
//! `[[upstream]]` servers and pools, runs the sans-IO [`engine::Engine`]
//! (filter → select → cluster → combine → steer), carries out what the
//! engine decides for the configured `[clock] discipline`, and publishes
//! the state the workers serve:
//!
//! - `software`: never touches the kernel clock; the published
//!   [`Correction`](crate::proto::Correction) maps kernel time to served
//!   time and workers apply it to every timestamp.
//! - `kernel`: steers the kernel clock through [`clock::KernelClock`]
//!   (adjtimex), keeps the drift file, arms leap seconds in the kernel.
//! - `external`: another daemon steers the kernel clock; the thread reads
//!   its status (read-only) and polls upstreams only to learn what to call
//!   itself (stratum, refid).
//!
//! Modules: [`source`] (per-upstream state machine), [`reach`] (its
//! reachability and what selection makes of it), [`algo`] (pure
//! algorithms), [`engine`] (system process), [`transition`] (why each
//! state: reasons and their log lines), [`external`] (external mode: the
//! other daemon's clock updates), [`pool`] (which addresses to poll:
//! resolution, pool replacement and back-off), [`runner`] (the thread's
//! I/O loop), [`clock`] (kernel clock trait, real and fake), [`net`]
//! (polling sockets), [`resolve`] (DNS helper thread), [`status`] (what the
//! control interface reads), [`drift`] and [`leapfile`] (files).

pub mod algo;
pub mod clock;
pub mod drift;
pub mod engine;
pub mod external;
pub mod leapfile;
pub mod net;
pub mod pool;
pub mod reach;
pub mod resolve;
pub mod runner;
pub mod source;
pub mod status;
pub mod transition;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{Config, DisciplineMode, UpstreamConfig};
use crate::proto::{ServerState, UnixTime};
use crate::snapshot::Publisher;
use clock::{ClockError, KernelClock, SystemClock};
use drift::DriftError;
use engine::{ClockCommand, Engine, EngineConfig, Now};
use leapfile::LeapTable;
use status::StatusHandle;

pub use pool::POOL_MEMBERS;

/// Clock reads whose monotonic reads before and after are closer than this
/// are taken at once.
const TIGHT_READ: Duration = Duration::from_micros(20);
/// Most attempts at a tight clock read.
const CLOCK_READS: usize = 3;

/// Why the discipline could not start.
#[derive(Debug, thiserror::Error)]
pub enum DisciplineError {
    /// The kernel clock could not be read or (kernel mode) adjusted.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The drift file could not be read.
    #[error(transparent)]
    Drift(#[from] DriftError),
    /// The thread could not be started.
    #[error("cannot start the discipline thread: {0}")]
    Spawn(std::io::Error),
}

/// Carries out an engine's [`ClockCommand`]s on a [`KernelClock`]: the
/// engine speaks of corrections relative to the frequency the kernel had
/// at start (`base_ppm`, from the drift file); the kernel takes absolute
/// ppm.
#[derive(Debug)]
pub struct KernelBackend<C> {
    clock: C,
    base_ppm: f64,
}

impl<C: KernelClock> KernelBackend<C> {
    /// Drives `clock`, whose frequency the engine takes as its zero.
    pub fn new(clock: C, base_ppm: f64) -> Self {
        KernelBackend { clock, base_ppm }
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

enum Backend {
    Software,
    Kernel {
        kernel: KernelBackend<SystemClock>,
        drift_file: Option<PathBuf>,
    },
    External(SystemClock),
}

/// Reads the monotonic and kernel clocks at (nearly) the same instant.
struct Clocks {
    origin: Instant,
}

impl Clocks {
    fn now(&self) -> Now {
        tightest_read(|| {
            let a = self.origin.elapsed();
            let kernel = crate::clock::now();
            (a, kernel, self.origin.elapsed())
        })
    }
}

/// Of up to [`CLOCK_READS`] reads of (monotonic, kernel, monotonic), the
/// one whose monotonic reads are closest (least likely preempted between
/// them); the first under [`TIGHT_READ`] is taken at once. The monotonic
/// time is the middle of the two reads (plus 1000 s, so it never nears 0).
fn tightest_read(mut read: impl FnMut() -> (Duration, UnixTime, Duration)) -> Now {
    let mut best: Option<(Duration, Now)> = None;
    for _ in 0..CLOCK_READS {
        let (a, kernel, b) = read();
        let spread = b.saturating_sub(a);
        let now = Now::new(1000.0 + (a + spread / 2).as_secs_f64(), kernel);
        if best.is_none_or(|(s, _)| spread < s) {
            best = Some((spread, now));
        }
        if spread < TIGHT_READ {
            break;
        }
    }
    match best {
        Some((_, now)) => now,
        None => {
            let (a, kernel, _) = read();
            Now::new(1000.0 + a.as_secs_f64(), kernel)
        }
    }
}

/// The discipline, set up but not running yet.
pub struct Prepared {
    engine: Engine,
    backend: Backend,
    clocks: Clocks,
    upstreams: Vec<UpstreamConfig>,
    leap_file: Option<PathBuf>,
    status: StatusHandle,
}

/// The running discipline thread.
pub struct Discipline {
    thread: JoinHandle<()>,
    status: StatusHandle,
}

/// Sets the discipline up for `config`: reads the drift and leap files,
/// checks kernel clock access for the chosen mode (kernel mode without
/// CAP_SYS_TIME fails here, with advice) and, in kernel mode, takes the
/// kernel clock over (PLL reset, frequency from the drift file).
pub fn prepare(config: &Config, precision: i8) -> Result<Prepared, DisciplineError> {
    for w in config.warnings() {
        warn!("{w}");
    }
    let clock_cfg = &config.clock;
    let (backend, base_ppm) = match clock_cfg.discipline {
        DisciplineMode::Software => (Backend::Software, 0.0),
        DisciplineMode::External => {
            SystemClock.status()?;
            (Backend::External(SystemClock), 0.0)
        }
        DisciplineMode::Kernel => {
            let current = SystemClock.status()?.frequency_ppm;
            let base = kernel_base(clock_cfg.drift_file.as_deref(), current)?;
            // Also the privilege check: fails with advice without CAP_SYS_TIME.
            let kernel = KernelBackend::start(SystemClock, base)?;
            (
                Backend::Kernel {
                    kernel,
                    drift_file: clock_cfg.drift_file.clone(),
                },
                base,
            )
        }
    };
    let clocks = Clocks {
        origin: Instant::now(),
    };
    let now = clocks.now();
    let mut engine = Engine::new(
        EngineConfig::new(clock_cfg, precision, base_ppm, !config.upstreams.is_empty()),
        &now,
    );
    if let Some(path) = &clock_cfg.leap_file {
        engine.leap_file_loaded(LeapTable::load(path));
    }
    if let Backend::External(clock) = &backend {
        engine.set_kernel_status(clock.status()?, &now);
    }
    engine.tick(&now);
    let status = StatusHandle::default();
    status.set(engine.status(&now));
    Ok(Prepared {
        engine,
        backend,
        clocks,
        upstreams: config.upstreams.clone(),
        leap_file: clock_cfg.leap_file.clone(),
        status,
    })
}

impl Prepared {
    /// The state to serve before the thread runs.
    pub fn initial_state(&self) -> ServerState {
        self.engine.server_state(&self.clocks.now())
    }

    /// The status the thread will keep up to date.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Starts the thread; it runs until `stop` is set.
    pub fn spawn(
        self,
        publisher: Publisher,
        stop: Arc<AtomicBool>,
    ) -> Result<Discipline, DisciplineError> {
        let status = self.status.clone();
        let thread = std::thread::Builder::new()
            .name("fastntp-sync".into())
            .spawn(move || {
                let mut run = match runner::Runner::new(self, publisher) {
                    Ok(r) => r,
                    Err(e) => {
                        error!("cannot start upstream name resolution: {e}; not synchronizing");
                        return;
                    }
                };
                run.run(&stop);
            })
            .map_err(DisciplineError::Spawn)?;
        Ok(Discipline { thread, status })
    }
}

impl Discipline {
    /// The status for the control interface.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Whether the thread has ended (it only does when asked to stop).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread to end (after `stop` was set); false if it
    /// panicked.
    pub fn join(self) -> bool {
        self.thread.join().is_ok()
    }
}

/// A random 64-bit value for transmit timestamps. getrandom does not fail
/// on Linux ≥ 3.17; should it, a clock-and-counter hash still makes
/// values that an off-path attacker cannot predict to the nanosecond.
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::sync::atomic::AtomicU64;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = crate::clock::now();
        let mut x =
            (t.secs as u64) << 30 ^ t.nanos as u64 ^ COUNTER.fetch_add(1, Ordering::Relaxed) << 48;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NtpTimestamp;
    use clock::{FakeClock, FakeOp};

    #[test]
    fn the_tightest_of_several_clock_reads_is_kept() {
        // Three reads, all preempted (≥ 20 µs between the monotonic reads);
        // the second is the tightest.
        let reads = [(0u64, 1u32, 80u64), (200, 2, 230), (400, 3, 470)];
        let mut i = 0;
        let now = tightest_read(|| {
            let (a, k, b) = reads[i.min(2)];
            i += 1;
            (
                Duration::from_micros(a),
                UnixTime::new(1_800_000_000, k),
                Duration::from_micros(b),
            )
        });
        assert_eq!(i, 3);
        assert_eq!(
            now.kernel,
            NtpTimestamp::from_unix(UnixTime::new(1_800_000_000, 2))
        );
        assert!((now.mono - (1000.0 + 215e-6)).abs() < 1e-9, "{}", now.mono);
    }

    #[test]
    fn a_tight_read_is_taken_at_once() {
        let mut calls = 0;
        tightest_read(|| {
            calls += 1;
            (
                Duration::from_micros(10),
                UnixTime::new(1_800_000_000, 0),
                Duration::from_micros(12),
            )
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn starting_kernel_mode_resets_a_leftover_pll() {
        let epoch = UnixTime::new(1_550_000_000, 0);
        let clock = FakeClock::new(epoch, 0.0, 0.0, 0.0, 1);
        // Another daemon left the PLL running with 80 ms still to apply.
        clock.leave_pll_running(0.080);
        let backend = KernelBackend::start(clock.clone(), 12.5).unwrap();
        assert_eq!(clock.pll(), (false, 0.0));
        assert_eq!(
            clock.operations(),
            vec![FakeOp::ResetPll, FakeOp::Frequency(12.5)]
        );
        // Nothing moves the clock under the discipline.
        clock.advance(600.0);
        let expected = 12.5e-6 * 600.0;
        assert!((clock.error() - expected).abs() < 1e-9, "{}", clock.error());
        assert_eq!(backend.drift_ppm(0.0), 12.5);
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
