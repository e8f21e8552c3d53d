//! ntp-loadgen: an open-loop load generator that measures the throughput and
//! the timestamp accuracy of any NTP server (fastntpd, chronyd, ntpd,
//! ntpd-rs), and says so when it — not the server — is the bottleneck.
//!
//! ```text
//! args ──► Plan ──► runner (main thread: steps, sweep, kernel counters, progress)
//!                     │ StepCmd per thread                ▲ ThreadResult
//!                     ▼                                   │
//!            engine (one pinned thread each, own sockets, no locks/allocation per packet)
//!              send_loop + pacing ─► batch::SendBatch (UDP GSO or sendmmsg) ─► server
//!              poller ◄─ batch::RecvBatch (recvmmsg, kernel RX stamps) / TX stamps
//!                 └─► matching (origin → slot, O(1)) ─► validate ─► stats (counters + HDR histograms)
//!            flood (with --junk: one more thread, own sockets, the same send_loop) ─► junk datagrams
//! report (table / JSON) and plot (SVG) render the collected StepReports.
//! ```
//!
//! Module map:
//! - [`args`]: the command line (flags, values, target, source range) and
//!   its checks into a [`args::Plan`].
//! - [`error`]: typed errors and their exit codes.
//! - [`clients`]: client sockets (source ranges, buffers, timestamping).
//! - [`batch`]: pre-allocated send (UDP GSO / `sendmmsg`) and `recvmmsg`
//!   batches.
//! - [`poller`]: waiting on a thread's sockets with a nanosecond timeout.
//! - [`pacing`]: the open-loop schedule (pure arithmetic).
//! - [`send_loop`]: the paced send loop both kinds of sending thread run.
//! - [`timing`]: a thread's clock: waits, elapsed time, CPU usage.
//! - [`rng`]: random transmit timestamps.
//! - [`matching`]: the slot table that matches replies to requests.
//! - [`validate`]: judging a matched reply.
//! - [`stats`]: counters and histograms.
//! - [`engine`]: one load thread: its step, sending, receiving, and the
//!   book of replies.
//! - [`junk`]: the bad-input classes of `--junk` and their bytes.
//! - [`flood`]: the junk flood's thread: paced batches, replies counted.
//! - [`runner`]: threads, steps and sweeps.
//! - [`sweep`]: when a sweep stops and what its result is.
//! - [`kernel`]: the host's UDP counters (`/proc/net/snmp`).
//! - [`report`]: the figures of a run, as a table (header, step block,
//!   sweep table, verdicts) and as JSON.
//! - [`plot`]: the SVG picture of a sweep.
//! - [`progress`]: the terminal progress bar.
//! - [`signals`]: Ctrl-C handling.

#![warn(missing_docs)]

pub mod args;
pub mod batch;
pub mod clients;
pub mod engine;
pub mod error;
pub mod flood;
pub mod junk;
pub mod kernel;
pub mod matching;
pub mod pacing;
pub mod plot;
pub mod poller;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runner;
pub mod send_loop;
pub mod signals;
pub mod stats;
pub mod sweep;
pub mod timing;
pub mod validate;
