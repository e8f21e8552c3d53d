//! fastntp: a public NTP server built for millions of requests per second
//! with accurate timestamps.
//!
//! ```text
//! upstreams ──► discipline ──publish──► snapshot (lock-free) ◄──read per batch── worker N (pinned core N)
//!                                                                 │ recv batch + kernel RX stamps
//!                                                                 ▼
//!                                                proto::respond (pure) ─► send batch
//! ```
//!
//! Dependencies point one way: binaries → [`server`] → [`io`] /
//! [`discipline`] → [`sys`] / [`snapshot`] → [`proto`] → [`policy`].
//!
//! - [`proto`]: the sans-IO protocol core (time formats, packet codec, the
//!   reply pipeline, [`proto::ServerState`]).
//! - [`policy`]: who gets an answer, sans-IO: access lists and per-client
//!   rate limits, asked by [`proto::respond`] at its steps.
//! - [`snapshot`]: the single-writer lock-free cell that publishes the state.
//! - [`io`]: listen sockets, counters, the worker and its two backends.
//! - [`sys`]: what `io` and `discipline` share below them: control
//!   messages, socket options, transmit timestamps, C buffers, pinning.
//! - [`clock`]: reading the host clock (never steering it).
//! - [`config`]: the TOML configuration.
//! - [`files`]: size-bounded reads of the files an operator names.
//! - [`discipline`]: the thread that syncs to upstreams, steers the served
//!   clock and is the only writer of the snapshot.
//! - [`server`]: wiring it all together for `fastntpd`.

#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod discipline;
pub mod files;
pub mod io;
pub mod policy;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod sys;
