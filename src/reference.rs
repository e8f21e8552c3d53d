//! What the server serves while it has no upstream to follow: its local
//! clock at `[clock] local-stratum` (refid `LOCL`), or "unsynchronized" (LI
//! 3, stratum 0, refid `INIT`). The local-clock state is re-issued
//! periodically so its reference time stays recent and its root dispersion
//! small, as a disciplined server's would.

use std::time::Duration;

use crate::proto::{NtpTimestamp, ServerState};

/// How often the local-clock state is re-issued.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(16);

/// The state source used until a discipline takes over.
#[derive(Clone, Copy, Debug)]
pub struct LocalReference {
    stratum: Option<u8>,
    precision: i8,
}

impl LocalReference {
    /// Serves the local clock at `stratum`, or unsynchronized if `None`.
    pub fn new(stratum: Option<u8>, precision: i8) -> Self {
        LocalReference { stratum, precision }
    }

    /// The state to publish at `now`.
    pub fn state(&self, now: NtpTimestamp) -> ServerState {
        match self.stratum {
            Some(stratum) => ServerState::local_clock(stratum, self.precision, now),
            None => ServerState::unsynchronized(self.precision),
        }
    }

    /// Whether the state changes with time and needs re-publishing.
    pub fn needs_refresh(&self) -> bool {
        self.stratum.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LeapIndicator, RefId};

    #[test]
    fn local_stratum_serves_locl_with_a_fresh_reference_time() {
        let now = NtpTimestamp::from_bits(0xE000_0000_0000_0000);
        let s = LocalReference::new(Some(10), -22).state(now);
        assert_eq!(s.stratum, 10);
        assert_eq!(s.reference_id, RefId::LOCL);
        assert_eq!(s.reference_time, now);
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.precision, -22);
    }

    #[test]
    fn without_local_stratum_the_server_is_unsynchronized() {
        let r = LocalReference::new(None, -22);
        let s = r.state(NtpTimestamp::ZERO);
        assert!(!s.is_synchronized());
        assert!(!r.needs_refresh());
    }
}
