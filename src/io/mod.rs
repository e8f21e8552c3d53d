//! Moving datagrams between the network and [`worker::Worker`]: listening
//! sockets ([`socket`]), control messages ([`cmsg`]), per-worker counters
//! ([`counters`]), transmit-time prediction for batches ([`txtime`]), and
//! the two I/O backends that drive a worker through the
//! same interface: [`uring`] (io_uring with multishot receive, the fast
//! path) and [`mmsg`] (recvmmsg/sendmmsg, the portable fallback).

pub mod cmsg;
pub mod counters;
pub mod mmsg;
pub mod socket;
pub mod txtime;
pub mod uring;
pub mod worker;

use crate::config::IoBackend;

/// The backend a server's workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: multishot receive, batched sends, one syscall per batch.
    IoUring,
    /// recvmmsg/sendmmsg batches.
    Mmsg,
}

impl Backend {
    /// Name for logs (as in the `io` config key).
    pub const fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io-uring",
            Backend::Mmsg => "mmsg",
        }
    }
}

/// Why the configured backend cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// io_uring was asked for explicitly and the probe failed.
    #[error("`[server] io = \"io-uring\"`: {0}; use io = \"mmsg\" or \"auto\"")]
    IoUringUnavailable(#[from] uring::Unavailable),
}

/// Picks the backend for `wanted`: `auto` probes io_uring and falls back to
/// mmsg, returning a note for the log that says why.
pub fn select_backend(wanted: IoBackend) -> Result<(Backend, Option<String>), BackendError> {
    match wanted {
        IoBackend::Mmsg => Ok((Backend::Mmsg, None)),
        IoBackend::IoUring => {
            uring::probe()?;
            Ok((Backend::IoUring, None))
        }
        IoBackend::Auto => match uring::probe() {
            Ok(()) => Ok((Backend::IoUring, None)),
            Err(why) => Ok((
                Backend::Mmsg,
                Some(format!("{why}; falling back to the mmsg backend")),
            )),
        },
    }
}
