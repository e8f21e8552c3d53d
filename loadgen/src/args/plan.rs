//! What to run: the [`Plan`] a [`Cli`] turns into once the checks that
//! need more than one flag (or the resolver) pass — fixed rate or sweep,
//! threads, clients and cores, the junk flood, the timeline, and a bound on
//! the requests a thread keeps in flight.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::cli::{Cli, JunkClasses};
use super::target::{resolve_target, SourceRange};
use crate::error::ArgError;
use crate::junk::JunkClass;
use crate::matching;

/// Most `--timeline` intervals per run or step.
pub const MAX_TIMELINE_BUCKETS: usize = 100_000;

/// The junk flood of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct JunkPlan {
    /// The classes, sent in turn.
    pub classes: Vec<JunkClass>,
    /// Datagrams per second, all classes together.
    pub rate: f64,
    /// Sockets to send from.
    pub sockets: usize,
    /// How long to send junk in each run or step (at most `--duration`).
    pub duration: Duration,
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// One run at a fixed offered rate.
    Fixed {
        /// Requests per second.
        rate: f64,
    },
    /// A sweep of rising rates.
    Sweep(SweepPlan),
}

/// The parameters of a sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPlan {
    /// First offered rate.
    pub start: f64,
    /// Factor between steps.
    pub factor: f64,
    /// Highest rate tried.
    pub max: f64,
    /// Percent of requests without a valid reply that fails a step.
    pub loss_threshold_pct: f64,
    /// Bisection steps after the first failure.
    pub refine: u32,
}

/// A validated run plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The target as given.
    pub target_text: String,
    /// The resolved target.
    pub target: SocketAddr,
    /// Fixed rate or sweep.
    pub mode: Mode,
    /// Send time per run or step.
    pub duration: Duration,
    /// Load threads.
    pub threads: usize,
    /// Client sockets.
    pub clients: usize,
    /// Cores to pin thread i to (`cores[i % len]`); empty = unpinned.
    pub cores: Vec<usize>,
    /// Source addresses for the clients.
    pub sources: Option<SourceRange>,
    /// Late-reply threshold (lost after twice this).
    pub timeout: Duration,
    /// Kernel TX timestamps for T1.
    pub precise_tx: bool,
    /// NTP version of the requests.
    pub version: u8,
    /// Largest batch.
    pub max_batch: usize,
    /// Use UDP GSO for sending when available.
    pub gso: bool,
    /// `--json` output.
    pub json: Option<PathBuf>,
    /// `--plot` output.
    pub plot: Option<PathBuf>,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Unsynchronized but otherwise valid replies count as valid.
    pub accept_unsynchronized: bool,
    /// The junk flood, if any.
    pub junk: Option<JunkPlan>,
    /// `--timeline` interval.
    pub timeline: Option<Duration>,
}

impl Plan {
    /// The highest rate this plan offers.
    pub fn peak_rate(&self) -> f64 {
        match &self.mode {
            Mode::Fixed { rate } => *rate,
            Mode::Sweep(s) => s.max,
        }
    }

    /// Checks and resolves a parsed command line. `usable_cores` is the
    /// set this process may run on.
    pub fn from_cli(cli: Cli, usable_cores: &[usize]) -> Result<Plan, ArgError> {
        let target = resolve_target(&cli.target)?;
        let threads = cli.threads as usize;
        let clients = cli.clients.map_or(16 * threads, |c| c as usize);
        if clients < threads {
            return Err(ArgError::TooFewClients { clients, threads });
        }
        if let Some(range) = &cli.source_range {
            if range.base.is_ipv4() != target.is_ipv4() {
                return Err(ArgError::FamilyMismatch {
                    range: range.to_string(),
                    range_family: family(range.base),
                    target,
                    target_family: family(target.ip()),
                });
            }
        }
        let cores = match cli.cores {
            Some(cores) => {
                if let Some(&bad) = cores.iter().find(|c| !usable_cores.contains(c)) {
                    return Err(ArgError::BadCore {
                        core: bad,
                        usable: usable_cores.to_vec(),
                    });
                }
                cores
            }
            None => usable_cores.to_vec(),
        };
        let mode = if cli.sweep {
            if cli.start_rate > cli.max_rate {
                return Err(ArgError::StartAboveMax {
                    start: cli.start_rate,
                    max: cli.max_rate,
                });
            }
            Mode::Sweep(SweepPlan {
                start: cli.start_rate,
                factor: cli.step_factor,
                max: cli.max_rate,
                loss_threshold_pct: cli.loss_threshold,
                refine: cli.refine,
            })
        } else {
            if cli.rate == 0.0 && cli.junk.is_none() {
                return Err(ArgError::NothingToSend);
            }
            Mode::Fixed { rate: cli.rate }
        };
        if let Some(d) = cli.junk_duration.filter(|d| *d > cli.duration) {
            return Err(ArgError::JunkLongerThanRun {
                junk_s: d.as_secs_f64(),
                run_s: cli.duration.as_secs_f64(),
            });
        }
        if let Some(t) = cli.timeline {
            let buckets = cli.duration.as_secs_f64() / t.as_secs_f64();
            if buckets > MAX_TIMELINE_BUCKETS as f64 {
                return Err(ArgError::TimelineTooFine {
                    interval_s: t.as_secs_f64(),
                    max: MAX_TIMELINE_BUCKETS,
                });
            }
        }
        let junk = match (cli.junk, cli.junk_rate) {
            (Some(JunkClasses(classes)), Some(rate)) => Some(JunkPlan {
                classes,
                rate,
                sockets: cli.junk_sockets as usize,
                duration: cli.junk_duration.unwrap_or(cli.duration),
            }),
            _ => None,
        };
        let plan = Plan {
            target_text: cli.target,
            target,
            mode,
            duration: cli.duration,
            threads,
            clients,
            cores,
            sources: cli.source_range,
            timeout: cli.timeout,
            precise_tx: cli.precise_tx,
            version: cli.ntp_version,
            max_batch: cli.max_batch as usize,
            gso: !cli.no_gso,
            json: cli.json,
            plot: cli.plot,
            progress: !cli.no_progress,
            accept_unsynchronized: cli.accept_unsynchronized,
            junk,
            timeline: cli.timeline,
        };
        let per_thread = plan.peak_rate() / threads as f64;
        let needed = matching::slots_needed(per_thread, plan.timeout, plan.max_batch);
        if needed > matching::MAX_SLOTS {
            return Err(ArgError::TooManyInFlight {
                rate: per_thread,
                timeout_s: plan.timeout.as_secs_f64(),
                needed,
                max: matching::MAX_SLOTS,
            });
        }
        Ok(plan)
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::cli::tests::cli;
    use crate::args::values::parse_rate_or_zero;
    use crate::junk;

    /// The plan of `ntp-loadgen ARGS…` on a host with cores 0 and 1.
    fn plan(args: &[&str]) -> Result<Plan, ArgError> {
        Plan::from_cli(cli(args).unwrap(), &[0, 1])
    }

    /// The same with a junk flood of empty datagrams at 1k/s.
    fn junk_plan(more: &[&str]) -> Result<Plan, ArgError> {
        let mut args = vec!["127.0.0.1", "--junk", "empty", "--junk-rate", "1k"];
        args.extend_from_slice(more);
        plan(&args)
    }

    #[test]
    fn plans_check_combinations() {
        let fixed = plan(&["127.0.0.1:123", "--rate", "20k"]).unwrap();
        assert_eq!(fixed.mode, Mode::Fixed { rate: 20_000.0 });
        assert_eq!(fixed.clients, 16);
        assert_eq!(fixed.cores, vec![0, 1]);
        let sweep = plan(&[
            "127.0.0.1",
            "--sweep",
            "--start-rate",
            "5k",
            "--step-factor",
            "1.5",
        ])
        .unwrap();
        assert!(
            matches!(sweep.mode, Mode::Sweep(SweepPlan { start, factor, .. }) if start == 5e3 && factor == 1.5)
        );
        let mismatch = plan(&["[::1]:123", "--source-range", "127.0.0.0/16"]);
        assert!(matches!(mismatch, Err(ArgError::FamilyMismatch { .. })));
        let few = plan(&["127.0.0.1", "--threads", "4", "--clients", "2"]);
        assert!(matches!(few, Err(ArgError::TooFewClients { .. })));
        let core = plan(&["127.0.0.1", "--cores", "0,7"]);
        assert!(matches!(core, Err(ArgError::BadCore { core: 7, .. })));
        let huge = plan(&["127.0.0.1", "--rate", "50M", "--timeout", "30"]);
        assert!(matches!(huge, Err(ArgError::TooManyInFlight { .. })));
    }

    #[test]
    fn rate_zero_needs_junk_and_junk_needs_a_rate() {
        let zero = plan(&["127.0.0.1", "--rate", "0"]);
        assert!(matches!(zero, Err(ArgError::NothingToSend)));
        assert!(ArgError::NothingToSend
            .to_string()
            .contains("must be more than 0"));
        assert!(parse_rate_or_zero("-1")
            .unwrap_err()
            .contains("exactly 0 with --junk"));
        let flood = plan(&[
            "127.0.0.1",
            "--rate",
            "0",
            "--junk",
            "empty,mode-6",
            "--junk-rate",
            "150k",
        ])
        .unwrap();
        assert_eq!(flood.mode, Mode::Fixed { rate: 0.0 });
        assert_eq!(
            flood.junk,
            Some(JunkPlan {
                classes: vec![JunkClass::Empty, JunkClass::Mode(6)],
                rate: 150_000.0,
                sockets: 16,
                duration: Duration::from_secs(5),
            })
        );
        let short = junk_plan(&[
            "--duration",
            "4",
            "--junk-duration",
            "2.5",
            "--timeline",
            "0.5",
        ])
        .unwrap();
        assert_eq!(short.junk.unwrap().duration, Duration::from_millis(2500));
        assert_eq!(short.timeline, Some(Duration::from_millis(500)));
        let long = junk_plan(&["--duration", "2", "--junk-duration", "3"]);
        assert!(matches!(long, Err(ArgError::JunkLongerThanRun { .. })));
        let fine = plan(&["127.0.0.1", "--duration", "2000", "--timeline", "0.01"]);
        assert!(matches!(fine, Err(ArgError::TimelineTooFine { .. })));
        assert!(cli(&["127.0.0.1", "--timeline", "5ms"]).is_err());
        assert!(
            cli(&["127.0.0.1", "--junk-duration", "1"]).is_err(),
            "needs --junk"
        );
        let all = plan(&[
            "127.0.0.1",
            "--junk",
            "all",
            "--junk-rate",
            "1k",
            "--junk-sockets",
            "4",
        ])
        .unwrap();
        let j = all.junk.unwrap();
        assert_eq!((j.classes.len(), j.sockets), (junk::ALL.len(), 4));
        assert!(
            cli(&["127.0.0.1", "--junk", "empty"]).is_err(),
            "needs --junk-rate"
        );
        assert!(
            cli(&["127.0.0.1", "--junk-rate", "5k"]).is_err(),
            "needs --junk"
        );
        assert!(cli(&["127.0.0.1", "--junk", "mode-3", "--junk-rate", "5k"]).is_err());
        assert!(cli(&["127.0.0.1", "--junk", "empty", "--junk-rate", "0"]).is_err());
    }
}
