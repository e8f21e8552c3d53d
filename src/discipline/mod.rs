//! The discipline thread: the only writer of the snapshot. It polls the
//! `[[upstream]]` servers and pools, runs the sans-IO [`engine::Engine`]
//! (filter → select → cluster → combine → steer), carries out what the
//! engine decides for the configured `[clock] discipline`, and publishes
//! the state the workers serve:
//!
//! - `software`: never touches the kernel clock; the published
//!   [`Correction`](crate::proto::Correction) maps kernel time to served
//!   time and workers apply it to every timestamp.
//! - `kernel`: steers the kernel clock through [`kernel_clock::KernelClock`]
//!   (adjtimex), keeps the drift file, arms leap seconds in the kernel.
//! - `external`: another daemon steers the kernel clock; the thread reads
//!   its status (read-only) and polls upstreams only to learn what to call
//!   itself (stratum, refid).
//!
//! Modules:
//!
//! - sans-IO cores, which know nothing of the configuration file:
//!   [`engine`] (the system process: selection, updates, state, leap
//!   seconds, what is published), [`source`] (per-upstream state machine,
//!   its reply checks and poll schedule), [`reach`] (reachability and what
//!   selection makes of it), [`algo`] (pure algorithms), [`transition`]
//!   (why each state: reasons and their log lines), [`external`] (external
//!   mode: the other daemon's clock updates), [`pool`] (which addresses to
//!   poll: resolution, pool replacement and back-off), [`status`] (what the
//!   control interface reads);
//! - I/O: [`runner`] (the thread's loop), [`steering`] (the engine's
//!   clock commands carried out per mode), [`kernel_clock`] (kernel clock
//!   trait, real and fake), [`net`] (polling sockets), [`resolve`] (DNS
//!   helper thread), [`drift`] and [`leapfile`] (files);
//! - this module, the glue: `[clock]` and `[[upstream]]` mapped to the
//!   cores' parameters ([`engine_params`], [`upstream_params`]), setting
//!   up ([`prepare`]) and starting the thread.

pub mod algo;
pub mod drift;
pub mod engine;
pub mod external;
pub mod kernel_clock;
pub mod leapfile;
pub mod net;
pub mod pool;
pub mod reach;
pub mod resolve;
pub mod runner;
pub mod source;
pub mod status;
pub mod steering;
#[cfg(test)]
mod test_support;
pub mod transition;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::config::{ClockConfig, Config, DisciplineMode, UpstreamConfig, UpstreamKind};
use crate::proto::{ServerState, UnixTime};
use crate::snapshot::Publisher;
use drift::DriftError;
use engine::{ClockMode, Engine, EngineParams, Now};
use kernel_clock::{ClockError, KernelClock, SystemClock};
use leapfile::LeapTable;
use pool::UpstreamParams;
use source::PollParams;
use status::StatusHandle;
use steering::Steering;

pub use pool::POOL_MEMBERS;
pub use steering::{kernel_base, KernelSteering};

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

impl From<DisciplineMode> for ClockMode {
    fn from(mode: DisciplineMode) -> Self {
        match mode {
            DisciplineMode::Software => ClockMode::Software,
            DisciplineMode::Kernel => ClockMode::Kernel,
            DisciplineMode::External => ClockMode::External,
        }
    }
}

/// The engine's parameters from `[clock]` (`clock`), our clock's
/// `precision` (log2 s), the kernel frequency the discipline starts from
/// (`base_ppm`, kernel mode) and whether `[[upstream]]`s are configured.
pub fn engine_params(
    clock: &ClockConfig,
    precision: i8,
    base_ppm: f64,
    has_upstreams: bool,
) -> EngineParams {
    EngineParams {
        mode: clock.discipline.into(),
        step_threshold: clock.step_threshold,
        panic_threshold: clock.panic_threshold,
        first_step_unlimited: clock.first_step_unlimited,
        local_stratum: clock.local_stratum,
        precision,
        base_ppm,
        has_upstreams,
    }
}

/// The pool's view of the `[[upstream]]` entries (`configs`). An entry
/// whose address does not split into host and port (validation prevents
/// it) is left out, with a warning.
pub fn upstream_params(configs: &[UpstreamConfig]) -> Vec<UpstreamParams> {
    configs
        .iter()
        .filter_map(|u| match u.host_port() {
            Ok((host, port)) => Some(UpstreamParams {
                name: u.address.clone(),
                host,
                port,
                pool: u.kind == UpstreamKind::Pool,
                poll: PollParams {
                    iburst: u.iburst,
                    min_poll: u.min_poll,
                    max_poll: u.max_poll,
                },
            }),
            Err(e) => {
                warn!("upstream `{}`: {e}; ignored", u.address);
                None
            }
        })
        .collect()
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
    steering: Steering,
    clocks: Clocks,
    upstreams: Vec<UpstreamParams>,
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
    let (steering, base_ppm) = match clock_cfg.discipline {
        DisciplineMode::Software => (Steering::Software, 0.0),
        DisciplineMode::External => {
            SystemClock.status()?;
            (Steering::External(SystemClock), 0.0)
        }
        DisciplineMode::Kernel => {
            let current = SystemClock.status()?.frequency_ppm;
            let base = kernel_base(clock_cfg.drift_file.as_deref(), current)?;
            // Also the privilege check: fails with advice without CAP_SYS_TIME.
            let kernel = KernelSteering::start(SystemClock, base)?;
            (
                Steering::Kernel {
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
    let has_upstreams = !config.upstreams.is_empty();
    let mut engine = Engine::new(
        engine_params(clock_cfg, precision, base_ppm, has_upstreams),
        &now,
    );
    if let Some(path) = &clock_cfg.leap_file {
        engine.leap_file_loaded(LeapTable::load(path));
    }
    if let Steering::External(clock) = &steering {
        engine.set_kernel_status(clock.status()?, &now);
    }
    engine.tick(&now);
    let status = StatusHandle::default();
    status.set(engine.status(&now));
    Ok(Prepared {
        engine,
        steering,
        clocks,
        upstreams: upstream_params(&config.upstreams),
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
    fn the_clock_section_maps_to_the_engine_parameters() {
        let defaults = engine_params(&ClockConfig::default(), -20, 0.0, true);
        assert_eq!(defaults, test_support::engine_params(ClockMode::Software));
        let clock = ClockConfig {
            discipline: DisciplineMode::Kernel,
            step_threshold: 0.5,
            panic_threshold: 0.0,
            first_step_unlimited: false,
            local_stratum: Some(3),
            ..ClockConfig::default()
        };
        let want = EngineParams {
            mode: ClockMode::Kernel,
            step_threshold: 0.5,
            panic_threshold: 0.0,
            first_step_unlimited: false,
            local_stratum: Some(3),
            precision: -24,
            base_ppm: 12.5,
            has_upstreams: false,
        };
        assert_eq!(engine_params(&clock, -24, 12.5, false), want);
        assert_eq!(
            ClockMode::from(DisciplineMode::External),
            ClockMode::External
        );
    }

    #[test]
    fn upstream_entries_map_to_the_pool_parameters() {
        let server = UpstreamConfig {
            address: "[2001:db8::1]:1123".into(),
            kind: UpstreamKind::Server,
            iburst: false,
            min_poll: -4,
            max_poll: 0,
        };
        let bad = UpstreamConfig {
            address: "host:0".into(),
            ..server.clone()
        };
        let mut configs = Config::default().upstreams;
        configs.extend([bad, server]);
        let want = [
            UpstreamParams {
                name: "pool.ntp.org".into(),
                host: "pool.ntp.org".into(),
                port: 123,
                pool: true,
                poll: PollParams {
                    iburst: true,
                    min_poll: 6,
                    max_poll: 10,
                },
            },
            UpstreamParams {
                name: "[2001:db8::1]:1123".into(),
                host: "2001:db8::1".into(),
                port: 1123,
                pool: false,
                poll: PollParams {
                    iburst: false,
                    min_poll: -4,
                    max_poll: 0,
                },
            },
        ];
        assert_eq!(upstream_params(&configs), want);
    }
}
