//! Typed errors and the exit codes they map to: 2 for anything the command
//! line asked for that cannot be done (unknown host, bad value, a source
//! address that is not this host's), 1 for failures while running.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Exit code of a bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a run that failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a run stopped by Ctrl-C / SIGTERM (after printing what was
/// measured), as shells report a SIGINT death.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The command line asks for something that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    /// The target is not `HOST`, `HOST:PORT`, `IPV6` or `[IPV6]:PORT`.
    #[error("target `{0}`: expected HOST, HOST:PORT, an IPv6 address or [IPV6]:PORT")]
    BadTarget(String),
    /// The target host name does not resolve.
    #[error("target `{target}`: cannot resolve host: {reason}")]
    UnknownHost {
        /// As given.
        target: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The source range and the target are of different address families.
    #[error("--source-range {range} is {range_family} but the target {target} is {target_family}")]
    FamilyMismatch {
        /// The range as given.
        range: String,
        /// "IPv4" or "IPv6".
        range_family: &'static str,
        /// The resolved target.
        target: SocketAddr,
        /// "IPv4" or "IPv6".
        target_family: &'static str,
    },
    /// Fewer client sockets than threads.
    #[error("--clients {clients} is fewer than --threads {threads}: every thread needs a socket")]
    TooFewClients {
        /// Sockets asked for.
        clients: usize,
        /// Threads asked for.
        threads: usize,
    },
    /// A core of `--cores` is not one this process may run on.
    #[error("--cores: core {core} is not available to this process (usable: {usable:?})")]
    BadCore {
        /// The core asked for.
        core: usize,
        /// The cores this process may run on.
        usable: Vec<usize>,
    },
    /// Rate × timeout needs more in-flight slots than we allow.
    #[error(
        "{rate:.0} req/s per thread with --timeout {timeout_s} s keeps up to {needed} requests \
         in flight, more than the {max} a thread tracks; lower --timeout or --max-rate, or add --threads"
    )]
    TooManyInFlight {
        /// Offered rate per thread.
        rate: f64,
        /// The timeout in seconds.
        timeout_s: f64,
        /// Slots needed.
        needed: u64,
        /// The limit.
        max: u64,
    },
    /// `--rate 0` without `--junk`: nothing would be sent.
    #[error("the rate must be more than 0 requests per second (--rate 0 only with --junk, for a flood without measured requests)")]
    NothingToSend,
    /// `--junk-duration` longer than `--duration`.
    #[error("--junk-duration {junk_s} s is longer than --duration {run_s} s")]
    JunkLongerThanRun {
        /// Junk duration, seconds.
        junk_s: f64,
        /// Run duration, seconds.
        run_s: f64,
    },
    /// `--timeline` so fine that a run would have too many intervals.
    #[error("--timeline {interval_s} s makes more than {max} intervals per run; choose a longer interval")]
    TimelineTooFine {
        /// The interval, seconds.
        interval_s: f64,
        /// The limit.
        max: usize,
    },
    /// `--start-rate` above `--max-rate`.
    #[error("--start-rate {start} is above --max-rate {max}")]
    StartAboveMax {
        /// Start rate.
        start: f64,
        /// Max rate.
        max: f64,
    },
    /// An output file cannot be created.
    #[error("{flag} {path}: cannot create: {source}")]
    OutputFile {
        /// `--json` or `--plot`.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A client socket cannot be bound to its source address.
    #[error(
        "cannot bind a client socket to {addr}: {source}{hint}",
        hint = if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            " (not an address of this host: --source-range must name local addresses, \
             e.g. 127.0.0.0/16 on loopback)"
        } else {
            ""
        }
    )]
    Bind {
        /// The source address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Too many sockets for the file-descriptor limit.
    #[error(
        "--clients {clients}: the open-file limit is {limit}; raise it (ulimit -n) or use fewer clients"
    )]
    TooManyFiles {
        /// Sockets asked for.
        clients: usize,
        /// The soft limit after trying to raise it.
        limit: u64,
    },
}

/// A run failed after the command line was accepted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Socket {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A load thread could not be started.
    #[error("cannot start load thread: {0}")]
    Spawn(io::Error),
    /// A load thread died (a bug).
    #[error("load thread {0} stopped unexpectedly")]
    ThreadDied(usize),
    /// The junk flood's thread died (a bug).
    #[error("the junk flood's thread stopped unexpectedly")]
    FloodDied,
    /// Writing `--json` or `--plot` failed.
    #[error("{flag} {path}: {reason}")]
    Output {
        /// `--json` or `--plot`.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Installing the signal handlers failed.
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signals(io::Error),
}

/// Any failure of `ntp-loadgen`, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line (exit 2).
    #[error(transparent)]
    Arg(#[from] ArgError),
    /// Failure while running (exit 1).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Arg(_) => EXIT_USAGE,
            Error::Run(_) => EXIT_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors_exit_2_and_run_errors_exit_1() {
        let arg: Error = ArgError::BadTarget("x:y:z".into()).into();
        assert_eq!(arg.exit_code(), 2);
        let run: Error = RunError::ThreadDied(3).into();
        assert_eq!(run.exit_code(), 1);
    }

    #[test]
    fn a_foreign_source_address_explains_what_to_do() {
        let e = ArgError::Bind {
            addr: "192.0.2.1:0".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        };
        assert!(e.to_string().contains("not an address of this host"), "{e}");
    }
}
