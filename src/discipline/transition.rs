//! Why the server serves what it serves: the [`Reason`] behind each
//! [`SyncState`], kept in the status (`fastntpctl status` prints it) and
//! logged with every state transition — one line per transition, at one
//! level, saying what is served now and why.

use std::fmt;
use std::net::SocketAddr;

use tracing::{error, info, warn};

use super::status::SyncState;

/// Why the server is in its current state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Reason {
    /// Waiting for the upstreams' first answers.
    #[default]
    Starting,
    /// Following this upstream (the system peer).
    Following(SocketAddr),
    /// External mode: another daemon keeps the kernel clock synchronized.
    KernelSynchronized,
    /// External mode: the kernel clock is not synchronized (STA_UNSYNC, or
    /// its maximum error reached 16 s).
    KernelUnsynchronized,
    /// No `[[upstream]]` is configured.
    NoUpstreams,
    /// None of the upstreams answered within this many seconds of start.
    NoneAnswered {
        /// The start-up wait, s.
        secs: f64,
    },
    /// Every upstream missed its last polls (or refused us).
    Unreachable {
        /// Polls in a row that make an upstream unreachable.
        polls: u32,
    },
    /// The upstreams that answer disagree: no majority.
    NoMajority,
    /// Upstreams answer, but none is fit to follow (unsynchronized, stratum
    /// or root distance too high).
    Unfit,
    /// Upstreams answer, yet no update for this long, s.
    NoUpdate {
        /// Since the last update, s.
        secs: f64,
    },
    /// Holdover ended: no update for this long, s.
    HoldoverOver {
        /// Since the last update, s.
        secs: f64,
    },
    /// The upstreams agree our clock is `offset` s off, beyond
    /// `panic-threshold` (`limit` s): corrections are refused and our time
    /// is not vouched for.
    PanicThreshold {
        /// The refused correction, s.
        offset: f64,
        /// `panic-threshold`, s.
        limit: f64,
    },
}

impl Reason {
    /// Whether two reasons are the same kind (the figures may differ).
    pub fn same_kind(&self, other: &Reason) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Starting => f.write_str("waiting for the upstreams"),
            Reason::Following(peer) => write!(f, "following {peer}"),
            Reason::KernelSynchronized => {
                f.write_str("the kernel clock is disciplined by another daemon")
            }
            Reason::KernelUnsynchronized => {
                f.write_str("the kernel clock is not synchronized (STA_UNSYNC)")
            }
            Reason::NoUpstreams => f.write_str("no upstreams configured"),
            Reason::NoneAnswered { secs } => {
                write!(f, "no upstream answered for {secs:.0} s")
            }
            Reason::Unreachable { polls } => {
                write!(f, "no upstream answered any of its last {polls} polls")
            }
            Reason::NoMajority => f.write_str("the upstreams disagree: no majority"),
            Reason::Unfit => f.write_str("no upstream is fit to follow"),
            Reason::NoUpdate { secs } => {
                write!(f, "no usable sample for {:.0} minutes", secs / 60.0)
            }
            Reason::HoldoverOver { secs } => {
                write!(f, "holdover over: no update for {:.0} minutes", secs / 60.0)
            }
            Reason::PanicThreshold { offset, limit } => write!(
                f,
                "the upstreams agree the clock needs a {offset:+.3} s correction, beyond \
                 panic-threshold ({limit} s): refused; check the upstreams or raise panic-threshold"
            ),
        }
    }
}

/// Logs the transition from `old` to `new` (stratum served now:
/// `stratum`): one line, at a level that fits.
pub fn log(old: (SyncState, Reason), new: (SyncState, Reason), stratum: u8) {
    let reason = new.1;
    match new.0 {
        SyncState::Synchronized => match reason {
            Reason::Following(peer) => {
                let again = if matches!(old.1, Reason::PanicThreshold { .. }) {
                    ": corrections are within panic-threshold again"
                } else {
                    ""
                };
                info!(
                    "synchronized to {peer} at stratum {stratum} (was {}{again})",
                    old.0.name()
                )
            }
            _ => info!("synchronized ({reason})"),
        },
        SyncState::Holdover => warn!(
            "holdover: still serving at stratum {stratum}, root dispersion growing ({reason})"
        ),
        SyncState::LocalClock => match reason {
            // Configured so: nothing to warn about.
            Reason::NoUpstreams => {
                info!("serving the local clock at stratum {stratum}, refid LOCL ({reason})")
            }
            _ => warn!("serving the local clock at stratum {stratum}, refid LOCL ({reason})"),
        },
        SyncState::Unsynchronized => match reason {
            Reason::PanicThreshold { .. } => {
                error!("serving unsynchronized: LI 3, stratum 0 ({reason})")
            }
            _ => warn!("serving unsynchronized: LI 3, stratum 0 ({reason})"),
        },
        SyncState::Starting => info!("starting ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_an_operator_expects() {
        assert_eq!(
            Reason::NoneAnswered { secs: 60.0 }.to_string(),
            "no upstream answered for 60 s"
        );
        assert_eq!(
            Reason::HoldoverOver { secs: 3330.0 }.to_string(),
            "holdover over: no update for 56 minutes"
        );
        let panic = Reason::PanicThreshold {
            offset: 2000.0,
            limit: 1000.0,
        }
        .to_string();
        assert!(panic.starts_with("the upstreams agree the clock needs a +2000.000 s correction"));
        assert!(Reason::NoUpdate { secs: 1.0 }.same_kind(&Reason::NoUpdate { secs: 2.0 }));
        assert!(!Reason::NoMajority.same_kind(&Reason::Unfit));
    }
}
