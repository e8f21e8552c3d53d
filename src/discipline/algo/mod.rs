//! The discipline's algorithms as pure functions and plain data, tested in
//! simulated time:
//!
//! - [`filter`]: per-source sample history and weighted regression (offset,
//!   frequency, jitter), with delay weighting and a runs-test window, and
//!   in front of it popcorn-spike suppression and jump detection.
//! - [`select`]: RFC 5905 intersection (falseticker rejection) and
//!   clustering.
//! - [`combine`]: RFC 5905 combining of the survivors, plus their
//!   frequencies.
//! - [`steer`]: step / slew / refuse decisions and the exact trajectory of
//!   the corrections applied.

pub mod combine;
pub mod filter;
pub mod select;
pub mod steer;

/// RFC 5905 PHI: the dispersion growth rate assumed for any clock, 15 ppm.
pub const PHI: f64 = 15e-6;
/// RFC 5905 MAXDIST: sources with a larger root distance are not selectable.
pub const MAX_DISTANCE: f64 = 1.5;
