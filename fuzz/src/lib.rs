//! Fuzz targets for fastntp, run by AFL++ through afl.rs on the stable
//! toolchain. Each target binary (`src/bin/`) is one line: it hands AFL's
//! bytes to a `check` here, which calls the library as the server does and
//! panics (a crash, to AFL) when a user-visible rule is broken.
//!
//! - [`input`]: splitting the fuzzer's bytes into fixed-size fields and the
//!   rest (the scenario prefix of a case).
//! - [`config`]: the configuration parser.
//! - [`respond`]: the reply pipeline (`respond` + `stamp_transmit`).
//! - [`seeds`]: the generated part of the committed corpus.
//!
//! The committed seed corpus is in `corpus/<target>/`; the tests replay it
//! through the checks (`cargo afl test --release`, or plain `cargo test`).

#![warn(missing_docs)]

pub mod config;
pub mod input;
pub mod respond;
pub mod seeds;
