//! Reachability of one upstream, and what selection makes of it:
//!
//! - The reach register (ntpq's `reach`, shown as it is): each poll shifts
//!   it left, a valid reply sets bit 0. A poll counts as *completed* once
//!   the next one goes out; a request still in flight is never counted as
//!   lost.
//! - *Missed*: completed polls in a row without a valid reply.
//! - *Stale* (missed ≥ 1, but answered within the last
//!   [`UNREACHABLE_AFTER`]): still selectable, with its aging estimate; it
//!   may help form a majority but never prevents one (see
//!   [`super::algo::select`]). One lost reply costs nothing.
//! - *Unreachable* (missed ≥ [`UNREACHABLE_AFTER`], ntpd's rule): out of
//!   selection, tally ` `, never a falseticker. Logged once when it
//!   happens and once when the upstream answers again; its register reads
//!   0 once 8 polls are missed.

/// Completed polls in a row without a reply after which a source is
/// unreachable.
pub const UNREACHABLE_AFTER: u32 = 3;

/// A change of reachability worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No valid reply to the last `missed` polls.
    Unreachable {
        /// Polls missed in a row.
        missed: u32,
    },
    /// Answered again after being unreachable.
    Back,
}

/// The reach register and the polls behind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    register: u8,
    /// Polls sent (saturating).
    polls: u32,
    /// Reported unreachable, until it answers again.
    reported: bool,
}

impl Reach {
    /// A request went out.
    pub fn polled(&mut self) {
        self.register <<= 1;
        self.polls = self.polls.saturating_add(1);
    }

    /// A valid reply to the latest request came.
    pub fn answered(&mut self) {
        self.register |= 1;
    }

    /// Forgets every reply (a refusing upstream).
    pub fn clear(&mut self) {
        self.register = 0;
    }

    /// The register (bit 0 = the latest poll answered).
    pub fn register(&self) -> u8 {
        self.register
    }

    /// The completed polls (newest in bit 0) and how many of the bits are
    /// known; `in_flight`: the latest request still waits for its reply.
    fn completed(&self, in_flight: bool) -> (u8, u32) {
        if in_flight {
            (self.register >> 1, self.polls.saturating_sub(1).min(7))
        } else {
            (self.register, self.polls.min(8))
        }
    }

    /// Completed polls in a row, newest first, without a valid reply.
    pub fn missed(&self, in_flight: bool) -> u32 {
        let (completed, known) = self.completed(in_flight);
        completed.trailing_zeros().min(known)
    }

    /// Answered one of its last [`UNREACHABLE_AFTER`] completed polls.
    pub fn usable(&self, in_flight: bool) -> bool {
        let (completed, _) = self.completed(in_flight);
        self.missed(in_flight) < UNREACHABLE_AFTER && completed != 0
    }

    /// Usable, but its latest completed poll went unanswered.
    pub fn stale(&self, in_flight: bool) -> bool {
        self.usable(in_flight) && self.missed(in_flight) > 0
    }

    /// The change since the last call worth logging, if any.
    pub fn take_change(&mut self, in_flight: bool) -> Option<Change> {
        let missed = self.missed(in_flight);
        if !self.reported && missed >= UNREACHABLE_AFTER {
            self.reported = true;
            Some(Change::Unreachable { missed })
        } else if self.reported && self.register & 1 != 0 {
            self.reported = false;
            Some(Change::Back)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_is_not_a_miss() {
        let mut r = Reach::default();
        r.polled();
        assert_eq!(r.missed(true), 0);
        assert!(!r.usable(true), "never answered");
        r.answered();
        assert!(r.usable(false) && !r.stale(false));
        r.polled();
        assert!(r.usable(true) && !r.stale(true));
        // That one is lost once the next goes out.
        r.polled();
        assert_eq!(r.missed(true), 1);
        assert!(r.stale(true));
    }

    #[test]
    fn three_missed_polls_make_it_unreachable_once_and_a_reply_brings_it_back() {
        let mut r = Reach::default();
        r.polled();
        r.answered();
        let mut changes = Vec::new();
        for _ in 0..12 {
            r.polled();
            changes.extend(r.take_change(true));
            if r.missed(true) == 2 {
                assert!(r.usable(true) && r.stale(true));
            }
        }
        assert_eq!(changes, vec![Change::Unreachable { missed: 3 }]);
        assert!(!r.usable(true));
        assert_eq!(r.register(), 0, "8 polls missed");
        r.answered();
        assert_eq!(r.take_change(false), Some(Change::Back));
        assert_eq!(r.take_change(false), None);
        assert!(r.usable(false));
    }

    #[test]
    fn a_server_that_never_answers_is_reported_too() {
        let mut r = Reach::default();
        let mut changes = Vec::new();
        for _ in 0..5 {
            r.polled();
            changes.extend(r.take_change(true));
        }
        assert_eq!(changes, vec![Change::Unreachable { missed: 3 }]);
    }
}
