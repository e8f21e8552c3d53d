//! Test support shared by the integration suites of `fastntp` (`tests/`)
//! and `ntp-loadgen` (`loadgen/tests/`), so that both start servers, find
//! tools, skip and build NTP packets the same way:
//!
//! - [`ci`]: skip outside CI, fail under `.ci/run` (`FASTNTP_CI`); external
//!   tools.
//! - [`temp`]: temporary files and directories.
//! - [`process`]: signals, time-limited runs and stops of child processes,
//!   binaries of this workspace's build.
//! - [`background`]: a test-owned thread (fake server, sink) stopped and
//!   joined on drop.
//! - [`udp`]: free loopback ports, a client socket (on a chosen address
//!   if need be), one request/reply exchange.
//! - [`packet`]: client requests and the one server-reply builder.
//! - [`fastntpd`]: the real `fastntpd`, spawned with a config and waited
//!   for until it serves; [`stats`]: its final per-worker counters.
//! - [`chronyd`]: Debian's chronyd as a loopback server that never touches
//!   the clock.
//!
//! Nothing here runs in the code under test: it is a dev-dependency only.

pub mod background;
pub mod chronyd;
pub mod ci;
pub mod fastntpd;
pub mod packet;
pub mod process;
pub mod stats;
pub mod temp;
pub mod udp;

pub use background::Background;
pub use chronyd::Chronyd;
pub use ci::{in_ci, require, require_tool, skip};
pub use fastntpd::{fastntpd_bin, Fastntpd};
pub use packet::{client_request, ntp_now, Reply};
pub use process::{built_binary, output_within, send_signal, stop_child};
pub use stats::{total, WorkerStats};
pub use temp::{write_temp, TempDir};
pub use udp::{client_for, client_from, exchange, free_udp_port};
