//! Moving datagrams between the network and [`worker::Worker`]: listening
//! sockets ([`socket`]), control messages ([`cmsg`]), per-worker counters
//! ([`counters`]), and the I/O backends that drive a worker: [`mmsg`]
//! (recvmmsg/sendmmsg, portable, always available).

pub mod cmsg;
pub mod counters;
pub mod mmsg;
pub mod socket;
pub mod worker;

use crate::config::IoBackend;

/// The backend a server's workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// recvmmsg/sendmmsg batches.
    Mmsg,
}

impl Backend {
    /// Name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Mmsg => "mmsg",
        }
    }
}

/// Why the configured backend cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// io_uring was asked for explicitly.
    #[error(
        "`[server] io = \"io-uring\"`: the io_uring backend is not available in this version; \
         use \"mmsg\" or \"auto\""
    )]
    IoUringUnavailable,
}

/// Picks the backend for `wanted`, with a note for the log when `auto`
/// settled for less than the best.
pub fn select_backend(wanted: IoBackend) -> Result<(Backend, Option<&'static str>), BackendError> {
    match wanted {
        IoBackend::Mmsg => Ok((Backend::Mmsg, None)),
        IoBackend::Auto => Ok((
            Backend::Mmsg,
            Some("io_uring backend not available in this version; using mmsg"),
        )),
        IoBackend::IoUring => Err(BackendError::IoUringUnavailable),
    }
}
