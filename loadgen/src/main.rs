//! `ntp-loadgen`: command line → plan → threads → table (and JSON, SVG).
//! Exit codes: 0 done, 1 failed while running or not one valid reply
//! (after printing the report and writing the files, with one line on
//! stderr saying why), 2 bad command line, 130 stopped by Ctrl-C / SIGTERM
//! (after printing what was measured).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use ntp_loadgen::args::{Cli, Plan};
use ntp_loadgen::error::{ArgError, Error, RunError, EXIT_FAILURE, EXIT_INTERRUPTED};
use ntp_loadgen::runner::Runner;
use ntp_loadgen::signals::Interrupt;
use ntp_loadgen::{plot, report::RunReport};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap prints the message; help and version exit 0, errors 2.
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ntp-loadgen: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Checks now that an output file can be written, rather than after the run.
fn check_output(flag: &'static str, path: Option<&Path>) -> Result<(), ArgError> {
    let Some(path) = path else {
        return Ok(());
    };
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| ArgError::OutputFile {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let usable = fastntp::sys::cpu::usable_cores();
    let plan = Plan::from_cli(cli, &usable)?;
    check_output("--json", plan.json.as_deref())?;
    check_output("--plot", plan.plot.as_deref())?;
    let interrupt = Interrupt::install().map_err(RunError::Signals)?;
    let runner = Runner::start(plan.clone(), interrupt)?;
    let report = runner.run()?;
    print!("{}", report.render());
    write_outputs(&plan, &report)?;
    if report.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let Some(why) = report.no_valid_reply() {
        eprintln!("ntp-loadgen: {why}");
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(plan: &Plan, report: &RunReport) -> Result<(), RunError> {
    if let Some(path) = &plan.json {
        report.write_json(path).map_err(|reason| RunError::Output {
            flag: "--json",
            path: path.clone(),
            reason,
        })?;
    }
    if let Some(path) = &plan.plot {
        plot::write_svg(report, path).map_err(|reason| RunError::Output {
            flag: "--plot",
            path: path.clone(),
            reason,
        })?;
    }
    Ok(())
}
