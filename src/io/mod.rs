//! Moving datagrams between the network and [`worker::Worker`]: listening
//! sockets ([`socket`]), per-worker counters
//! ([`counters`]), transmit-time prediction for batches ([`txtime`]), the
//! time bound of receive queues ([`queue`]), what to do when the kernel
//! refuses ([`errors`]), and the two I/O backends that drive a worker
//! through the same interface: [`uring`] (io_uring with multishot receive,
//! the fast path) and [`mmsg`] (recvmmsg/sendmmsg, the portable fallback).
//! [`serve`] runs a worker on the chosen one.

pub mod counters;
pub mod errors;
pub mod mmsg;
pub mod queue;
pub mod socket;
pub mod txtime;
pub mod uring;
pub mod worker;

use std::sync::atomic::AtomicBool;

use tracing::warn;

use crate::config::IoBackend;
use socket::ListenSocket;
use worker::Worker;

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

/// Serves `sockets` with `worker` on `backend` until `stop` is set. An
/// io_uring worker whose rings keep failing goes on with the mmsg backend
/// (logged); an error is returned only when the sockets themselves are
/// unusable, and then the process must stop.
pub fn serve(
    backend: Backend,
    worker: &mut Worker,
    sockets: &[ListenSocket],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    if backend == Backend::IoUring {
        match uring::serve(worker, sockets, stop) {
            Ok(()) => return Ok(()),
            Err(uring::UringError::Fatal(e)) => return Err(e),
            Err(e @ uring::UringError::Unusable(_)) => {
                warn!("{e}; this worker goes on with the mmsg backend")
            }
        }
    }
    mmsg::serve(worker, sockets, stop)
}
