//! `fastntpd`: command line → configuration → server. Errors are printed as
//! one readable line and exit with code 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use fastntp::config::Config;
use fastntp::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A high-throughput NTP server.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Run with this configuration file (without it: built-in defaults,
    /// listening on port 123 of 0.0.0.0 and ::).
    #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
    config: Option<PathBuf>,
    /// Validate a configuration file and exit (0 = valid, 1 = invalid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

fn init_logging() {
    use std::io::IsTerminal;
    let level = match std::env::var("FASTNTPD_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(level)
        .init();
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("fastntpd: error: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(config) => {
                let warnings = fastntp::server::preflight(&config);
                for w in &warnings {
                    eprintln!("fastntpd: warning: {w}");
                }
                match warnings.len() {
                    0 => println!("{}: configuration OK", path.display()),
                    n => println!(
                        "{}: configuration OK, with {n} warning{} (above)",
                        path.display(),
                        if n == 1 { "" } else { "s" }
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    init_logging();
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return fail(e),
        },
        None => Config::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        let registered =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)));
        if let Err(e) = registered {
            return fail(format!("cannot install signal handler: {e}"));
        }
    }
    let server = match Server::start(&config, stop) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
