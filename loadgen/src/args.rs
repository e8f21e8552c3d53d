//! The command line: clap definitions, value parsers with clear messages,
//! and the checks that need more than one flag (or the resolver) to turn a
//! [`Cli`] into a [`Plan`]. Every rejection here exits with code 2.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::ArgError;
use crate::junk::{self, JunkClass};
use crate::matching;

/// The NTP port, used when the target names none.
pub const NTP_PORT: u16 = 123;
/// Highest offered rate accepted (requests per second).
pub const MAX_RATE: f64 = 100e6;
/// Most `--timeline` intervals per run or step.
pub const MAX_TIMELINE_BUCKETS: usize = 100_000;

/// Load-test an NTP server: open-loop requests at a fixed rate (or a sweep
/// of rates), every reply matched and validated, kernel timestamps on both
/// ends of the round trip, and the kernel's UDP counters as a cross-check.
#[derive(Parser, Debug, Clone)]
#[command(name = "ntp-loadgen", version, about, long_about = None)]
pub struct Cli {
    /// The server: HOST, HOST:PORT, an IPv6 address or [IPV6]:PORT
    /// (port 123 when none is given).
    pub target: String,

    /// Offered rate in requests per second (k and M suffixes allowed: 50k);
    /// 0 only with --junk (a flood without measured requests).
    #[arg(long, default_value = "1000", value_parser = parse_rate_or_zero, conflicts_with = "sweep")]
    pub rate: f64,

    /// How long to send, per run or per sweep step: seconds, or with a
    /// unit (500ms, 10s, 2m).
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    pub duration: Duration,

    /// Step the offered rate up from --start-rate until the share of
    /// requests without a valid reply exceeds --loss-threshold; report the
    /// highest rate that stayed within it.
    #[arg(long)]
    pub sweep: bool,

    /// First rate of a sweep.
    #[arg(long, default_value = "10k", value_parser = parse_rate, requires = "sweep")]
    pub start_rate: f64,

    /// Factor from one sweep step to the next (1.05–4).
    #[arg(long, default_value = "1.25", value_parser = parse_factor, requires = "sweep")]
    pub step_factor: f64,

    /// Highest rate a sweep tries: with --duration it bounds the sweep's
    /// length (at most ⌈log(max/start)/log(factor)⌉ + 1 + --refine steps).
    #[arg(long, default_value = "2M", value_parser = parse_rate, requires = "sweep")]
    pub max_rate: f64,

    /// Percent of requests without a valid reply that ends a sweep (the
    /// reported maximum keeps at least 100 − this percent valid).
    #[arg(long, default_value = "1", value_parser = parse_percent, requires = "sweep")]
    pub loss_threshold: f64,

    /// After a sweep fails, bisect between the last good and the failed
    /// rate this many times to pin the maximum down.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8), requires = "sweep")]
    pub refine: u32,

    /// Load threads, each pinned to its own core and driving its share of
    /// the clients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// Client sockets (distinct source ports, and addresses with
    /// --source-range), spread over the threads; default 16 per thread.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub clients: Option<u32>,

    /// Cores to pin the threads to, comma-separated (default: the cores
    /// this process may run on, in order, e.g. as set by taskset).
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,

    /// Bind the clients to successive host addresses of this range, e.g.
    /// 127.0.0.0/16, so the server sees many client addresses. They must be
    /// addresses of this host (all of 127.0.0.0/8 is on loopback).
    #[arg(long, value_parser = SourceRange::parse)]
    pub source_range: Option<SourceRange>,

    /// A reply later than this is counted as late, not valid; one later
    /// than twice this (or none) as lost.
    #[arg(long, default_value = "1", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// T1 from kernel transmit timestamps (the socket error queue) instead
    /// of a clock read just before the send call.
    #[arg(long)]
    pub precise_tx: bool,

    /// NTP version of the requests (1–4); replies must echo it.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub ntp_version: u8,

    /// Largest send/receive batch (batches are sized to the rate up to
    /// this; at most 64 with UDP GSO).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: u32,

    /// Send batches with sendmmsg, one message per request, instead of one
    /// UDP GSO send per batch (the server sees the same datagrams either
    /// way; GSO costs the load generator less). --precise-tx implies it.
    /// Also sends the --junk flood one datagram per message.
    #[arg(long)]
    pub no_gso: bool,

    /// Write every figure of the run (and every sweep step) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw reply ratio and offset/round-trip percentiles against offered
    /// rate into FILE (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Count replies whose only fault is that the server says it is not
    /// synchronized (LI 3, stratum 16, or stratum 0 with INIT/STEP) as
    /// valid, for throughput; the report says how many there were. Kiss-o'-
    /// death refusals (RATE, DENY, …) still count as KoD.
    #[arg(long)]
    pub accept_unsynchronized: bool,

    /// Also flood the target with junk of these classes (comma-separated,
    /// `all` for every one), sent from their own sockets on their own
    /// thread beside the measured requests; a reply to junk is counted
    /// (it is an amplification bug). Classes: empty, short, bad-length,
    /// zero-trailer, overlong-extension, short-extension,
    /// unaligned-extension, stray-bytes, oversize, mode-0, mode-1, mode-2,
    /// mode-4, mode-5, mode-6, mode-7, version-0, version-5, version-6,
    /// version-7.
    #[arg(long, value_name = "CLASS[,CLASS...]", value_parser = parse_junk, requires = "junk_rate")]
    pub junk: Option<JunkClasses>,

    /// Junk datagrams per second, all classes together (round-robin).
    #[arg(long, value_name = "J", value_parser = parse_rate, requires = "junk")]
    pub junk_rate: Option<f64>,

    /// Send junk only during the first S of each run or step (default: all
    /// of --duration), e.g. to see the service come back after a flood.
    #[arg(long, value_name = "S", value_parser = parse_duration, requires = "junk")]
    pub junk_duration: Option<Duration>,

    /// Also count requests sent and validly answered per interval of S of
    /// send time (e.g. 0.5): the report and JSON get a timeline.
    #[arg(long, value_name = "S", value_parser = parse_interval)]
    pub timeline: Option<Duration>,

    /// Sockets the junk is sent from (more spread it wider over a server's
    /// SO_REUSEPORT sockets).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024), requires = "junk")]
    pub junk_sockets: u32,
}

/// The classes of `--junk`, as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JunkClasses(pub Vec<JunkClass>);

fn parse_junk(text: &str) -> Result<JunkClasses, String> {
    junk::parse_classes(text).map(JunkClasses)
}

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

/// Splits a target into host and port (123 when absent).
pub fn split_target(text: &str) -> Result<(String, u16), ArgError> {
    let bad = || ArgError::BadTarget(text.to_owned());
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_string(), NTP_PORT));
    }
    if text.starts_with('[') {
        // `[v6]` without a port, or a malformed bracket form.
        let inner = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(bad)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| bad())?;
        return Ok((ip.to_string(), NTP_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (text, NTP_PORT),
    };
    let host_ok = !host.is_empty()
        && !host.contains(':')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Resolves a target to its first address. Port 0 is refused.
pub fn resolve_target(text: &str) -> Result<SocketAddr, ArgError> {
    let (host, port) = split_target(text)?;
    if port == 0 {
        return Err(ArgError::BadTarget(text.to_owned()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unknown = |reason: String| ArgError::UnknownHost {
        target: text.to_owned(),
        reason,
    };
    let mut addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unknown(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| unknown("no addresses".to_owned()))
}

/// A range of source addresses in CIDR notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRange {
    /// The network address (host bits cleared).
    pub base: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for SourceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl SourceRange {
    /// Parses `ADDR/LEN` (IPv4 or IPv6); host bits of ADDR are cleared.
    pub fn parse(text: &str) -> Result<SourceRange, String> {
        let bad = |why: &str| {
            format!("`{text}` is not a source range ({why}); expected e.g. 127.0.0.0/16")
        };
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| bad("no /prefix-length"))?;
        let ip: IpAddr = addr.trim().parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = len
            .trim()
            .parse()
            .map_err(|_| bad("prefix length is not a number"))?;
        let base = match ip {
            IpAddr::V4(v4) => {
                if prefix > 32 {
                    return Err(bad("IPv4 prefix length above 32"));
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                if prefix > 128 {
                    return Err(bad("IPv6 prefix length above 128"));
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        if base.is_unspecified() || base.is_multicast() {
            return Err(bad("unspecified or multicast"));
        }
        Ok(SourceRange { base, prefix })
    }

    /// Usable host addresses: the network and (IPv4) broadcast addresses
    /// are skipped unless the range is a single address or pair.
    pub fn host_count(&self) -> u128 {
        let bits = match self.base {
            IpAddr::V4(_) => 32 - self.prefix as u32,
            IpAddr::V6(_) => 128 - self.prefix as u32,
        };
        match (self.base, bits) {
            (_, 0) => 1,
            (_, 1) => 2,
            (IpAddr::V4(_), b) => (1u128 << b) - 2,
            (IpAddr::V6(_), 128) => u128::MAX,
            (IpAddr::V6(_), b) => (1u128 << b) - 1,
        }
    }

    /// The `i`-th usable host address (wrapping around the range).
    pub fn nth_host(&self, i: u128) -> IpAddr {
        let count = self.host_count();
        let i = i % count;
        let skip_network = count > 2;
        let offset = i + skip_network as u128;
        match self.base {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(offset as u32))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(offset))),
        }
    }
}

/// Parses `--rate`: like [`parse_rate`], but 0 is allowed (checked
/// against `--junk` later).
pub fn parse_rate_or_zero(text: &str) -> Result<f64, String> {
    if text.trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    parse_rate(text).map_err(|e| {
        if e.contains("more than 0") {
            format!("{e} (or exactly 0 with --junk)")
        } else {
            e
        }
    })
}

/// Parses a rate: a positive number with an optional k or M suffix.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (requests per second, e.g. 20000 or 20k)"))?;
    let v = v * scale;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!(
            "the rate must be more than 0 requests per second, not `{text}`"
        ));
    }
    if v > MAX_RATE {
        return Err(format!(
            "`{text}` is above the limit of {MAX_RATE:.0} requests per second"
        ));
    }
    Ok(v)
}

/// Parses a duration: seconds, or a number with ms, s or m.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_secs(text, 86_400.0)
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_secs(text, 3600.0)?;
    if d < Duration::from_millis(10) {
        return Err(format!("`{text}`: the interval must be at least 10 ms"));
    }
    Ok(d)
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_secs(text, 60.0)
}

fn parse_secs(text: &str, max_s: f64) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (seconds, or e.g. 500ms, 10s, 2m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs < 0.001 {
        return Err(format!("`{text}`: the duration must be at least 1 ms"));
    }
    if secs > max_s {
        return Err(format!("`{text}`: at most {max_s} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_factor(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(1.05..=4.0).contains(&v) {
        return Err(format!(
            "`{text}`: the step factor must be between 1.05 and 4"
        ));
    }
    Ok(v)
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage"))?;
    if !(v > 0.0 && v < 100.0) {
        return Err(format!("`{text}`: must be above 0 and below 100 percent"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ntp-loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn rates_accept_suffixes_and_refuse_zero() {
        assert_eq!(parse_rate("20k"), Ok(20_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0").unwrap_err().contains("more than 0"));
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("1e12").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_timeout("61").is_err());
    }

    #[test]
    fn source_ranges_parse_and_enumerate_hosts() {
        let r = SourceRange::parse("127.0.0.0/16").unwrap();
        assert_eq!(r.host_count(), 65_534);
        assert_eq!(r.nth_host(0), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.nth_host(255), "127.0.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(r.nth_host(65_534), r.nth_host(0));
        let host_bits = SourceRange::parse("127.1.2.3/24").unwrap();
        assert_eq!(host_bits.base, "127.1.2.0".parse::<IpAddr>().unwrap());
        let single = SourceRange::parse("127.0.0.5/32").unwrap();
        assert_eq!(single.host_count(), 1);
        assert_eq!(single.nth_host(7), "127.0.0.5".parse::<IpAddr>().unwrap());
        let v6 = SourceRange::parse("fd00::/120").unwrap();
        assert_eq!(v6.host_count(), 255);
        assert_eq!(v6.nth_host(0), "fd00::1".parse::<IpAddr>().unwrap());
        for bad in [
            "127.0.0.0",
            "127.0.0.0/33",
            "300.0.0.0/8",
            "abc/8",
            "::/200",
            "0.0.0.0/8",
            "127.0.0.0/x",
        ] {
            assert!(SourceRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(
            split_target("127.0.0.1:11123").unwrap(),
            ("127.0.0.1".into(), 11123)
        );
        assert_eq!(
            split_target("127.0.0.1").unwrap(),
            ("127.0.0.1".into(), 123)
        );
        assert_eq!(split_target("[::1]:500").unwrap(), ("::1".into(), 500));
        assert_eq!(split_target("::1").unwrap(), ("::1".into(), 123));
        assert_eq!(split_target("[::1]").unwrap(), ("::1".into(), 123));
        assert_eq!(
            split_target("localhost:9").unwrap(),
            ("localhost".into(), 9)
        );
        assert_eq!(
            split_target("ntp.example").unwrap(),
            ("ntp.example".into(), 123)
        );
        for bad in ["host:port", "host:70000", "a b:1", ":123", "[::1", "[zz]:1"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            resolve_target("127.0.0.1:0"),
            Err(ArgError::BadTarget(_))
        ));
        assert!(matches!(
            resolve_target("no-such-host.invalid:123"),
            Err(ArgError::UnknownHost { .. })
        ));
    }

    #[test]
    fn plans_check_combinations() {
        let cores = [0, 1];
        let plan =
            Plan::from_cli(cli(&["127.0.0.1:123", "--rate", "20k"]).unwrap(), &cores).unwrap();
        assert_eq!(plan.mode, Mode::Fixed { rate: 20_000.0 });
        assert_eq!(plan.clients, 16);
        assert_eq!(plan.cores, vec![0, 1]);
        let sweep = Plan::from_cli(
            cli(&[
                "127.0.0.1",
                "--sweep",
                "--start-rate",
                "5k",
                "--step-factor",
                "1.5",
            ])
            .unwrap(),
            &cores,
        )
        .unwrap();
        assert!(
            matches!(sweep.mode, Mode::Sweep(SweepPlan { start, factor, .. }) if start == 5e3 && factor == 1.5)
        );
        let mismatch = Plan::from_cli(
            cli(&["[::1]:123", "--source-range", "127.0.0.0/16"]).unwrap(),
            &cores,
        );
        assert!(matches!(mismatch, Err(ArgError::FamilyMismatch { .. })));
        let few = Plan::from_cli(
            cli(&["127.0.0.1", "--threads", "4", "--clients", "2"]).unwrap(),
            &cores,
        );
        assert!(matches!(few, Err(ArgError::TooFewClients { .. })));
        let core = Plan::from_cli(cli(&["127.0.0.1", "--cores", "0,7"]).unwrap(), &cores);
        assert!(matches!(core, Err(ArgError::BadCore { core: 7, .. })));
        let huge = Plan::from_cli(
            cli(&["127.0.0.1", "--rate", "50M", "--timeout", "30"]).unwrap(),
            &cores,
        );
        assert!(matches!(huge, Err(ArgError::TooManyInFlight { .. })));
    }

    #[test]
    fn rate_zero_needs_junk_and_junk_needs_a_rate() {
        let cores = [0, 1];
        let zero = Plan::from_cli(cli(&["127.0.0.1", "--rate", "0"]).unwrap(), &cores);
        assert!(matches!(zero, Err(ArgError::NothingToSend)));
        assert!(ArgError::NothingToSend
            .to_string()
            .contains("must be more than 0"));
        assert!(parse_rate_or_zero("-1")
            .unwrap_err()
            .contains("exactly 0 with --junk"));
        let flood = Plan::from_cli(
            cli(&[
                "127.0.0.1",
                "--rate",
                "0",
                "--junk",
                "empty,mode-6",
                "--junk-rate",
                "150k",
            ])
            .unwrap(),
            &cores,
        )
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
        let short = Plan::from_cli(
            cli(&[
                "127.0.0.1",
                "--junk",
                "empty",
                "--junk-rate",
                "1k",
                "--duration",
                "4",
                "--junk-duration",
                "2.5",
                "--timeline",
                "0.5",
            ])
            .unwrap(),
            &cores,
        )
        .unwrap();
        assert_eq!(short.junk.unwrap().duration, Duration::from_millis(2500));
        assert_eq!(short.timeline, Some(Duration::from_millis(500)));
        let long = Plan::from_cli(
            cli(&[
                "127.0.0.1",
                "--junk",
                "empty",
                "--junk-rate",
                "1k",
                "--duration",
                "2",
                "--junk-duration",
                "3",
            ])
            .unwrap(),
            &cores,
        );
        assert!(matches!(long, Err(ArgError::JunkLongerThanRun { .. })));
        let fine = Plan::from_cli(
            cli(&["127.0.0.1", "--duration", "2000", "--timeline", "0.01"]).unwrap(),
            &cores,
        );
        assert!(matches!(fine, Err(ArgError::TimelineTooFine { .. })));
        assert!(cli(&["127.0.0.1", "--timeline", "5ms"]).is_err());
        assert!(
            cli(&["127.0.0.1", "--junk-duration", "1"]).is_err(),
            "needs --junk"
        );
        let all = Plan::from_cli(
            cli(&[
                "127.0.0.1",
                "--junk",
                "all",
                "--junk-rate",
                "1k",
                "--junk-sockets",
                "4",
            ])
            .unwrap(),
            &cores,
        )
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

    #[test]
    fn clap_rejects_bad_rates_and_sweep_options_without_sweep() {
        assert!(cli(&["127.0.0.1", "--rate", "-3"]).is_err());
        assert!(cli(&["127.0.0.1", "--start-rate", "5k"]).is_err());
        assert!(cli(&["127.0.0.1", "--sweep", "--rate", "5k"]).is_err());
        assert!(cli(&["127.0.0.1", "--ntp-version", "5"]).is_err());
        assert!(cli(&["127.0.0.1", "--source-range", "10.0.0.0/40"]).is_err());
    }
}
