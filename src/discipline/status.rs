//! The discipline's state as one read-only structure for the control
//! interface (`fastntpctl status|sources`, Prometheus): every source's
//! reach, poll, delay, offset, jitter and tally code, and the system state.
//! The discipline thread replaces it after each change; readers take a
//! copy. Not on the hot path: a mutex is fine here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::proto::{LeapIndicator, RefId};

use super::engine::ClockMode;
pub use super::transition::Reason;

/// Selection state of a source, as ntpq's tally codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tally {
    /// `*`: the system peer.
    SystemPeer,
    /// `+`: survived selection and clustering; combined.
    Candidate,
    /// `-`: a truechimer discarded by clustering.
    Outlier,
    /// `x`: a falseticker, outside the agreeing majority.
    Falseticker,
    /// ` `: not a candidate (unreachable — no reply to its last 3 polls —,
    /// stopped answering and out of the majority, no usable sample,
    /// refused, too far, unsynchronized). Never `x` for those.
    #[default]
    Rejected,
}

impl Tally {
    /// The ntpq character.
    pub const fn code(self) -> char {
        match self {
            Tally::SystemPeer => '*',
            Tally::Candidate => '+',
            Tally::Outlier => '-',
            Tally::Falseticker => 'x',
            Tally::Rejected => ' ',
        }
    }
}

/// One upstream address.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceStatus {
    /// The `[[upstream]] address` it came from.
    pub name: String,
    /// The address polled.
    pub address: SocketAddr,
    /// Member of a pool.
    pub pool: bool,
    /// Selection state.
    pub tally: Tally,
    /// The upstream's stratum (None before its first valid reply).
    pub stratum: Option<u8>,
    /// The upstream's own refid.
    pub refid: Option<RefId>,
    /// Seconds since its last valid reply.
    pub when: Option<f64>,
    /// Poll interval, log2 s.
    pub poll: i8,
    /// Reach register (print in octal like ntpq).
    pub reach: u8,
    /// Round-trip delay, s.
    pub delay: Option<f64>,
    /// Its time minus our served time, s.
    pub offset: Option<f64>,
    /// Jitter, s.
    pub jitter: Option<f64>,
    /// Kiss code that stopped us polling it (`DENY`, `RSTR`).
    pub refused: Option<&'static str>,
}

/// What the server serves, in a word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncState {
    /// Started, waiting for the first synchronization.
    #[default]
    Starting,
    /// Following upstreams (or, in external mode, the kernel clock is
    /// synchronized).
    Synchronized,
    /// No usable upstream, still serving at the last stratum while the
    /// root dispersion grows.
    Holdover,
    /// Serving the local clock at `local-stratum` (refid `LOCL`).
    LocalClock,
    /// LI 3, stratum 0: clients must not use our time.
    Unsynchronized,
}

impl SyncState {
    /// A word for logs and tables.
    pub const fn name(self) -> &'static str {
        match self {
            SyncState::Starting => "starting",
            SyncState::Synchronized => "synchronized",
            SyncState::Holdover => "holdover",
            SyncState::LocalClock => "local clock",
            SyncState::Unsynchronized => "unsynchronized",
        }
    }

    /// Whether clients may use our time (LI ≠ 3): also true on the local
    /// clock. Not the health check: see [`SyncState::is_synchronized`].
    pub const fn serves_time(self) -> bool {
        matches!(
            self,
            SyncState::Synchronized | SyncState::Holdover | SyncState::LocalClock
        )
    }

    /// Whether the server is synchronized to its upstreams — what
    /// `fastntpctl check` reports (exit 0) for anycast and load-balancer
    /// health checks. True while following upstreams (in external mode:
    /// while the kernel clock is synchronized) and in holdover, which only
    /// lasts while its error bound holds. False while starting, on the
    /// local clock (even at `local-stratum`), and unsynchronized — a
    /// server in those states should be withdrawn from service.
    pub const fn is_synchronized(self) -> bool {
        matches!(self, SyncState::Synchronized | SyncState::Holdover)
    }
}

/// The system as a whole.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemStatus {
    /// Discipline mode.
    pub mode: ClockMode,
    /// What is served.
    pub state: SyncState,
    /// Why (e.g. corrections refused beyond panic-threshold).
    pub reason: Reason,
    /// Stratum served (0 when unsynchronized).
    pub stratum: u8,
    /// Refid served.
    pub refid: RefId,
    /// Leap indicator served.
    pub leap: LeapIndicator,
    /// The system peer.
    pub system_peer: Option<SocketAddr>,
    /// Last combined offset (upstream time minus served time), s.
    pub offset: f64,
    /// System jitter, s.
    pub jitter: f64,
    /// Frequency correction of the served clock against the kernel clock
    /// (software) or of the kernel clock (kernel), ppm.
    pub frequency_ppm: f64,
    /// Root delay served, s.
    pub root_delay: f64,
    /// Root dispersion now, s.
    pub root_dispersion: f64,
    /// Seconds since the last clock update (external mode: since the
    /// other daemon last updated the kernel clock).
    pub since_update: Option<f64>,
}

/// Everything at once. [`Status::is_synchronized`] is the health check
/// (`fastntpctl check`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// The system.
    pub system: SystemStatus,
    /// Each upstream address polled, in the order it was added (names
    /// resolve in their own time, and pool members come and go).
    pub sources: Vec<SourceStatus>,
}

impl Status {
    /// Synchronized to upstreams, per [`SyncState::is_synchronized`]:
    /// `fastntpctl check` exits 0 exactly when this holds.
    pub fn is_synchronized(&self) -> bool {
        self.system.state.is_synchronized()
    }
}

/// A shared, read-only view of the latest [`Status`].
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    inner: Arc<Mutex<Status>>,
}

impl StatusHandle {
    /// A copy of the latest status.
    pub fn get(&self) -> Status {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the status (the discipline thread's job).
    pub(crate) fn set(&self, status: Status) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_codes_are_ntpq_s() {
        let codes: String = [
            Tally::SystemPeer,
            Tally::Candidate,
            Tally::Outlier,
            Tally::Falseticker,
            Tally::Rejected,
        ]
        .iter()
        .map(|t| t.code())
        .collect();
        assert_eq!(codes, "*+-x ");
    }

    #[test]
    fn handle_shares_the_latest_status() {
        let h = StatusHandle::default();
        let reader = h.clone();
        let mut s = Status::default();
        s.system.stratum = 2;
        h.set(s.clone());
        assert_eq!(reader.get(), s);
        assert!(SyncState::Holdover.serves_time());
        assert!(!SyncState::Starting.serves_time());
    }

    #[test]
    fn only_upstream_synchronization_passes_the_health_check() {
        let passes: Vec<SyncState> = [
            SyncState::Starting,
            SyncState::Synchronized,
            SyncState::Holdover,
            SyncState::LocalClock,
            SyncState::Unsynchronized,
        ]
        .into_iter()
        .filter(|s| {
            let mut status = Status::default();
            status.system.state = *s;
            status.is_synchronized()
        })
        .collect();
        assert_eq!(passes, vec![SyncState::Synchronized, SyncState::Holdover]);
    }
}
