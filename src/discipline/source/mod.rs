//! One upstream server as a sans-IO state machine: the request in flight
//! (a random transmit timestamp, matched against the reply's origin), the
//! 8-bit reach register, what the upstream says about itself, and its
//! sample filter. Its parts: [`schedule`] (when to poll: interval within
//! `min-poll..=max-poll`, initial burst, back-off) and [`reply`] (checking
//! replies strictly: mode, stratum, leap, timestamps, delay and distance
//! sanity, kiss-o'-death codes). Time is always an argument: `mono` is
//! seconds on the caller's monotonic clock, NTP timestamps are
//! kernel-clock readings.

pub mod reply;
pub mod schedule;

use std::net::{IpAddr, SocketAddr};

use super::algo::filter::popcorn::{Offered, SpikeGuard};
use super::algo::filter::{Estimate, Sample, SampleFilter};
use super::algo::PHI;
use super::reach::{Change, Reach};
use crate::proto::{Header, Mode, NtpTimestamp, HEADER_LEN};
pub use reply::{refid_of, Kiss, Measurement, ReplyError, Upstream};
use schedule::{AtSend, Schedule};
pub use schedule::{PollParams, BURST_LEN};

/// What a source is told at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceParams {
    /// The `[[upstream]] address` it came from (a pool member shares it).
    pub name: String,
    /// Where to send requests.
    pub addr: SocketAddr,
    /// Member of a pool (replaced when unreachable or refused).
    pub pool: bool,
    /// How it is polled.
    pub poll: PollParams,
}

/// A request on its way.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// The random transmit timestamp we put on the wire.
    token: NtpTimestamp,
    /// Kernel time the request left (None until the I/O reported it).
    t1: Option<NtpTimestamp>,
    /// Our address on the path to the upstream (what it would put in its
    /// refid if it were synchronized to us).
    local: Option<IpAddr>,
}

/// One upstream server.
#[derive(Clone, Debug)]
pub struct Source {
    params: SourceParams,
    schedule: Schedule,
    reach: Reach,
    outstanding: Option<Outstanding>,
    filter: SampleFilter,
    spikes: SpikeGuard,
    upstream: Option<Upstream>,
    refused: Option<Kiss>,
    last_reply_mono: Option<f64>,
    /// When the first request since the last valid reply was sent.
    unanswered_since: Option<f64>,
    /// When the latest request but one was sent.
    previous_send: Option<f64>,
    last_send: Option<f64>,
    /// The first time another source answered while this one did not.
    others_heard: Option<f64>,
    /// Our clock's precision, s.
    precision: f64,
}

impl Source {
    /// A new source, first polled at `mono`; `precision` is our clock's
    /// (log2 s).
    pub fn new(params: SourceParams, mono: f64, precision: i8) -> Self {
        let precision = (precision as f64).exp2();
        Source {
            schedule: Schedule::new(params.poll, mono),
            reach: Reach::default(),
            outstanding: None,
            filter: SampleFilter::new(precision),
            spikes: SpikeGuard::default(),
            upstream: None,
            refused: None,
            last_reply_mono: None,
            unanswered_since: None,
            previous_send: None,
            last_send: None,
            others_heard: None,
            precision,
            params,
        }
    }

    /// What it was told at start.
    pub fn params(&self) -> &SourceParams {
        &self.params
    }

    /// Where requests go.
    pub fn addr(&self) -> SocketAddr {
        self.params.addr
    }

    /// Current poll interval, log2 s.
    pub fn poll(&self) -> i8 {
        self.schedule.poll()
    }

    /// The reach register (bit 0 = the latest poll was answered).
    pub fn reach(&self) -> u8 {
        self.reach.register()
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.schedule.sent()
    }

    /// What the upstream said about itself last.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// The kiss code that made us stop polling, if any.
    pub fn refused(&self) -> Option<Kiss> {
        self.refused
    }

    /// The filter's estimate.
    pub fn estimate(&self) -> Option<&Estimate> {
        self.filter.estimate()
    }

    /// The sample filter (for shifting after a time step).
    pub fn filter_mut(&mut self) -> &mut SampleFilter {
        &mut self.filter
    }

    /// Monotonic time of the last valid reply.
    pub fn last_reply(&self) -> Option<f64> {
        self.last_reply_mono
    }

    /// Another source answered at `mono`: evidence that the network works,
    /// if this one has requests unanswered since before then.
    pub fn note_other_reply(&mut self, mono: f64) {
        // A second of slack for replies already on their way.
        if self.others_heard.is_none() && self.unanswered_since.is_some_and(|t| mono > t + 1.0) {
            self.others_heard = Some(mono);
        }
    }

    /// Whether a request of this source was lost although another source
    /// had answered before it was sent: the network worked, this server
    /// did not. (When nothing answers at all, the fault is likely ours.)
    pub fn failed_while_others_answered(&self) -> bool {
        self.others_heard
            .is_some_and(|heard| self.previous_send.is_some_and(|sent| sent > heard))
    }

    /// Still sending its first burst (selection waits for it at start).
    pub fn in_initial_burst(&self) -> bool {
        self.refused.is_none() && self.schedule.in_initial_burst()
    }

    /// Answered at least one of the last 8 polls.
    pub fn reachable(&self) -> bool {
        self.reach.register() != 0
    }

    /// Answered at least one of the last 3 completed polls: fresh enough
    /// to be selected (an unreachable-but-not-yet-zero reach register would
    /// keep a dead source selected for hours at long polls). A request still
    /// in flight is not counted as lost. See [`crate::discipline::reach`].
    pub fn usable(&self) -> bool {
        self.reach.usable(self.outstanding.is_some())
    }

    /// Usable, but its latest completed poll went unanswered: its estimate
    /// only ages (selection lets it help a majority, never prevent one).
    pub fn stale(&self) -> bool {
        self.reach.stale(self.outstanding.is_some())
    }

    /// Completed polls in a row without a valid reply.
    pub fn missed(&self) -> u32 {
        self.reach.missed(self.outstanding.is_some())
    }

    /// The change of reachability since the last call worth logging
    /// (none for a refusing upstream, which is no longer polled).
    pub fn take_reach_change(&mut self) -> Option<Change> {
        let in_flight = self.outstanding.is_some();
        self.reach
            .take_change(in_flight)
            .filter(|_| self.refused.is_none())
    }

    /// A request is in flight and its reply would still be accepted.
    pub fn awaiting_reply(&self) -> bool {
        self.outstanding.is_some()
    }

    /// When the next request is due (infinite once refused).
    pub fn next_send(&self) -> f64 {
        if self.refused.is_some() {
            f64::INFINITY
        } else {
            self.schedule.next_send()
        }
    }

    /// Builds the request due at `mono` with transmit timestamp `random`
    /// (never our clock: a client that sends its clock reveals it, and a
    /// random value makes off-path forgery guesswork). Replaces any
    /// unanswered request. `None` if nothing is due.
    pub fn transmit(&mut self, mono: f64, random: u64) -> Option<[u8; HEADER_LEN]> {
        if self.refused.is_some() || mono < self.schedule.next_send() {
            return None;
        }
        let was_reachable = self.reachable();
        let missed = self.outstanding.is_some();
        self.reach.polled();
        self.unanswered_since.get_or_insert(mono);
        self.previous_send = self.last_send.replace(mono);
        self.schedule.sent_at(
            mono,
            AtSend {
                was_reachable,
                reachable: self.reachable(),
                missed,
            },
        );
        // A zero token could be mistaken for "no origin"; avoid it.
        let token = NtpTimestamp::from_bits(random.max(1));
        self.outstanding = Some(Outstanding {
            token,
            t1: None,
            local: None,
        });
        let header = Header {
            version: 4,
            mode: Mode::Client.to_bits(),
            poll: self.schedule.poll(),
            transmit_ts: token,
            ..Header::default()
        };
        let mut out = [0u8; HEADER_LEN];
        header.write(&mut out);
        Some(out)
    }

    /// Records the kernel time the request left and our address on the
    /// way (for loop detection; `None` if unknown).
    pub fn sent_at(&mut self, t1: NtpTimestamp, local: Option<IpAddr>) {
        if let Some(o) = &mut self.outstanding {
            o.t1 = Some(t1);
            o.local = local;
        }
    }

    /// Replaces the transmit time of the request in flight with a better
    /// one (the kernel's transmit timestamp, which comes after the send).
    pub fn refine_t1(&mut self, t1: NtpTimestamp) {
        if let Some(Outstanding { t1: Some(t), .. }) = &mut self.outstanding {
            *t = t1;
        }
    }

    /// Forgets the request in flight (it could not be sent, or the clock
    /// was stepped under it).
    pub fn forget_request(&mut self) {
        self.outstanding = None;
    }

    /// Checks a reply that arrived at kernel time `t4` (monotonic `mono`).
    /// A valid one becomes a [`Measurement`]; kiss codes change the
    /// polling as RFC 5905 asks.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        t4: NtpTimestamp,
        mono: f64,
    ) -> Result<Measurement, ReplyError> {
        let h = reply::parse(bytes)?;
        let out = match self.outstanding {
            Some(o) if o.token == h.origin_ts => o,
            _ => return Err(ReplyError::OriginMismatch),
        };
        // One reply per request: a duplicate must not count twice.
        self.outstanding = None;
        let t1 = out.t1.ok_or(ReplyError::BadTimestamps)?;
        if h.stratum == 0 {
            let kiss = reply::kiss_code(&h)?;
            self.kiss(kiss, mono);
            return Err(ReplyError::KissOfDeath(kiss));
        }
        let (upstream, timing) = reply::validate(&h, t1, t4, out.local, self.precision)?;
        self.reach.answered();
        self.last_reply_mono = Some(mono);
        self.unanswered_since = None;
        self.others_heard = None;
        self.upstream = Some(upstream);
        Ok(timing.measurement(mono))
    }

    fn kiss(&mut self, kiss: Kiss, mono: f64) {
        match kiss {
            Kiss::Rate => self.schedule.rate_limited(mono),
            Kiss::Deny | Kiss::Restricted => {
                self.refused = Some(kiss);
                self.schedule.end_burst();
                self.reach.clear();
            }
        }
    }

    /// Adds a measurement, already converted to the uncorrected local
    /// timeline (`offset` = true minus uncorrected local time), through
    /// the popcorn-spike guard ([`SpikeGuard`]), and lets the poll
    /// schedule adapt to how well the previous estimate predicted it.
    pub fn add_sample(&mut self, sample: Sample, prior_freq: f64) {
        let offered = self
            .spikes
            .offer(&mut self.filter, sample, prior_freq, self.precision);
        if let Offered::Added { surprise } = offered {
            self.schedule.sampled(surprise, self.filter.len());
        }
    }

    /// Root distance at `mono`, or `None` without an estimate: half the
    /// correctness interval of its estimate (RFC 5905: half the round trips
    /// to the primary reference plus every dispersion and the jitter). Our
    /// part of the round trip is the filter's error bound over the samples
    /// the estimate rests on — not the smallest round trip, which a run of
    /// delayed samples can leave far behind the estimate — so the interval
    /// holds the truth and selection can trust it.
    pub fn root_distance(&self, mono: f64) -> Option<f64> {
        let est = self.filter.estimate()?;
        let up = self.upstream.as_ref()?;
        let age = (mono - est.last_time).max(0.0);
        Some(
            up.root_delay / 2.0
                + up.root_dispersion
                + self.filter.error_bound_at(mono)
                + PHI * age
                + est.jitter
                + est.offset_sd_at(mono),
        )
    }
}

#[cfg(test)]
mod tests;
