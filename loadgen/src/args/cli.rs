//! The flags of `ntp-loadgen`: the clap definition with defaults, ranges,
//! the flags each needs or excludes, and the help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::target::SourceRange;
use super::values::{
    parse_duration, parse_factor, parse_interval, parse_percent, parse_rate, parse_rate_or_zero,
    parse_timeout,
};
use crate::junk::{self, JunkClass};

/// Load-test an NTP server: open-loop requests at a fixed rate (or a sweep
/// of rates), every reply matched and validated, kernel timestamps on both
/// ends of the round trip, and the kernel's UDP counters as a cross-check.
#[derive(Parser, Debug, Clone)]
#[command(name = "ntp-loadgen", version, about, long_about = None)]
pub struct Cli {
    /// The server: HOST, HOST:PORT, an IPv6 address, or one in brackets
    /// followed by :PORT (port 123 when none is given).
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `ntp-loadgen ARGS…` as parsed.
    pub(in crate::args) fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ntp-loadgen").chain(args.iter().copied()))
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
