//! The command line: the clap definition ([`Cli`]), value parsers with
//! clear messages, the target and source range, and the checks that need
//! more than one flag (or the resolver) to turn a [`Cli`] into a [`Plan`].
//! Every rejection here exits with code 2.
//!
//! - `cli`: the flags, their defaults and help;
//! - `values`: parsing one flag's value (rates, durations, factors,
//!   percentages);
//! - `target`: the target (`HOST[:PORT]`, IPv6 forms) and `--source-range`;
//! - `plan`: what to run ([`Plan`]), checked and resolved.

mod cli;
mod plan;
mod target;
mod values;

pub use cli::{Cli, JunkClasses};
pub use plan::{JunkPlan, Mode, Plan, SweepPlan, MAX_TIMELINE_BUCKETS};
pub use target::{resolve_target, split_target, SourceRange, NTP_PORT};
pub use values::{parse_duration, parse_rate, parse_rate_or_zero, MAX_RATE};
