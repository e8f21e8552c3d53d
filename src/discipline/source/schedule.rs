//! Poll scheduling, sans-IO: when a source sends its next request. The
//! poll interval stays within `min-poll..=max-poll` (log2 s); an initial
//! burst (iburst) sends [`BURST_LEN`] requests a few seconds apart, and
//! again when the source just became unreachable; an unreachable source
//! backs off to `max-poll`, a lost reply halves the interval; a run of
//! well-predicted samples doubles it, a surprising one halves it; KoD RATE
//! raises the floor for good.

/// Requests in a burst (RFC 5905 iburst).
pub const BURST_LEN: u8 = 8;
/// Spacing of burst requests, at most (capped by 2^min-poll).
const BURST_SPACING: f64 = 2.0;
/// Good samples in a row before the poll interval doubles.
const POLL_UP_AFTER: u32 = 4;
/// A new sample further than this many jitters from the prediction halves
/// the poll interval.
const POLL_DOWN_JITTERS: f64 = 4.0;

/// How a source is polled (`[[upstream]]` `iburst`, `min-poll`,
/// `max-poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollParams {
    /// Burst at start and while unreachable.
    pub iburst: bool,
    /// Shortest poll interval, log2 s.
    pub min_poll: i8,
    /// Longest poll interval, log2 s.
    pub max_poll: i8,
}

/// What the reach register said as a request went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtSend {
    /// Reachable before this request was counted.
    pub was_reachable: bool,
    /// Reachable with it counted (as unanswered so far).
    pub reachable: bool,
    /// The request before it was never answered.
    pub missed: bool,
}

/// One source's poll schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    params: PollParams,
    /// Current poll interval, log2 s.
    poll: i8,
    /// Floor raised by KoD RATE.
    rate_floor: i8,
    next_send: f64,
    burst_left: u8,
    sent: u64,
    good_in_a_row: u32,
}

impl Schedule {
    /// A schedule whose first request is due at `mono`.
    pub fn new(params: PollParams, mono: f64) -> Self {
        Schedule {
            params,
            poll: params.min_poll,
            rate_floor: params.min_poll,
            next_send: mono,
            burst_left: if params.iburst { BURST_LEN } else { 0 },
            sent: 0,
            good_in_a_row: 0,
        }
    }

    /// Current poll interval, log2 s.
    pub fn poll(&self) -> i8 {
        self.poll
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// When the next request is due (monotonic s).
    pub fn next_send(&self) -> f64 {
        self.next_send
    }

    /// Not started yet, or still sending the initial burst.
    pub fn in_initial_burst(&self) -> bool {
        self.sent == 0 || (self.burst_left > 0 && self.sent < BURST_LEN as u64 + 1)
    }

    fn burst_spacing(&self) -> f64 {
        BURST_SPACING.min((self.params.min_poll as f64).exp2())
    }

    /// A request went out at `mono`: sets the interval to the next one.
    pub fn sent_at(&mut self, mono: f64, reach: AtSend) {
        self.sent += 1;
        if reach.was_reachable && !reach.reachable {
            // Just became unreachable: burst again to find it quickly.
            if self.params.iburst {
                self.burst_left = BURST_LEN;
            }
        } else if !reach.reachable && self.burst_left == 0 && self.sent > BURST_LEN as u64 {
            // Unreachable for a while: back off.
            self.poll = (self.poll + 1).min(self.params.max_poll);
        } else if reach.missed && self.burst_left == 0 {
            // A reply went missing: look again sooner, so that a dead
            // source is noticed in minutes, not hours.
            self.poll = (self.poll - 1).max(self.rate_floor);
        }
        let interval = if self.burst_left > 0 {
            self.burst_left -= 1;
            self.burst_spacing()
        } else {
            (self.poll as f64).exp2()
        };
        self.next_send = mono + interval;
    }

    /// KoD RATE at `mono`: no more burst, a longer interval from now on
    /// (and never shorter again).
    pub fn rate_limited(&mut self, mono: f64) {
        self.burst_left = 0;
        self.poll = (self.poll + 1)
            .max(self.rate_floor)
            .min(self.params.max_poll.max(self.poll));
        self.rate_floor = self.poll;
        self.next_send = mono + (self.poll as f64).exp2();
    }

    /// No more burst (the source refused us).
    pub fn end_burst(&mut self) {
        self.burst_left = 0;
    }

    /// A sample joined the filter, which now holds `samples`: the
    /// interval grows after `POLL_UP_AFTER` (4) samples in a row that the
    /// previous estimate predicted (`surprise`: how far off it was, in
    /// standard deviations), and shrinks when one is far off.
    pub fn sampled(&mut self, surprise: Option<f64>, samples: usize) {
        let steady = samples >= BURST_LEN as usize && self.burst_left == 0;
        match surprise {
            Some(s) if s > POLL_DOWN_JITTERS => {
                self.good_in_a_row = 0;
                self.poll = (self.poll - 1).max(self.rate_floor);
            }
            Some(_) if steady => {
                self.good_in_a_row += 1;
                if self.good_in_a_row >= POLL_UP_AFTER {
                    self.good_in_a_row = 0;
                    self.poll = (self.poll + 1).min(self.params.max_poll);
                }
            }
            _ => {}
        }
    }
}
