//! One upstream server as a sans-IO state machine: when to poll (poll
//! interval within `min-poll..=max-poll`, initial burst, back-off), the
//! 8-bit reach register, building requests with a random transmit timestamp
//! and checking replies strictly (origin match, mode, stratum, leap,
//! timestamps, delay and distance sanity, kiss-o'-death codes). Time is
//! always an argument: `mono` is seconds on the caller's monotonic clock,
//! NTP timestamps are kernel-clock readings.

use std::net::{IpAddr, SocketAddr};

use md5::{Digest, Md5};

use super::algo::filter::{Estimate, Sample, SampleFilter};
use super::algo::{MAX_DISTANCE, PHI};
use super::reach::{Change, Reach};
use crate::proto::{Header, LeapIndicator, Mode, NtpTimestamp, RefId, HEADER_LEN};

/// Requests in a burst (RFC 5905 iburst).
pub const BURST_LEN: u8 = 8;
/// Spacing of burst requests, at most (capped by 2^min-poll).
const BURST_SPACING: f64 = 2.0;
/// Good samples in a row before the poll interval doubles.
const POLL_UP_AFTER: u32 = 4;
/// A new sample further than this many jitters from the prediction halves
/// the poll interval.
const POLL_DOWN_JITTERS: f64 = 4.0;
/// A sample further from the prediction than this many standard
/// deviations (jitter and prediction error combined) is a surprise: held
/// back until the next sample says whether it was a spike or a jump.
const SURPRISE_SIGMAS: f64 = 8.0;
/// Longest plausible round trip, s.
const MAX_DELAY: f64 = 3.0;
/// Longest plausible time the upstream held our request, s.
const MAX_HOLD: f64 = 1.0;

/// How a source was configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// The `[[upstream]] address` it came from (a pool member shares it).
    pub name: String,
    /// Where to send requests.
    pub addr: SocketAddr,
    /// Member of a pool (replaced when unreachable or refused).
    pub pool: bool,
    /// Burst while unreachable.
    pub iburst: bool,
    /// Shortest poll interval, log2 s.
    pub min_poll: i8,
    /// Longest poll interval, log2 s.
    pub max_poll: i8,
}

/// What the upstream said about itself in its last valid reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upstream {
    /// Its stratum (1–15).
    pub stratum: u8,
    /// Its leap indicator.
    pub leap: LeapIndicator,
    /// Its reference id.
    pub refid: RefId,
    /// Its root delay, s.
    pub root_delay: f64,
    /// Its root dispersion, s.
    pub root_dispersion: f64,
    /// Its precision, log2 s.
    pub precision: i8,
}

/// Kiss-o'-death codes that change how a source is used (RFC 5905 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kiss {
    /// RATE: poll less often.
    Rate,
    /// DENY: access denied; never poll again.
    Deny,
    /// RSTR: access restricted; never poll again.
    Restricted,
}

impl Kiss {
    /// The four-letter code.
    pub const fn code(self) -> &'static str {
        match self {
            Kiss::Rate => "RATE",
            Kiss::Deny => "DENY",
            Kiss::Restricted => "RSTR",
        }
    }
}

/// Why a reply was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Shorter than an NTP header.
    #[error("shorter than 48 bytes")]
    TooShort,
    /// Not a mode-4 reply, or a version outside 1–4.
    #[error("not a server reply (mode/version)")]
    NotServerReply,
    /// Its origin timestamp is not our outstanding request's transmit
    /// timestamp (late, duplicate or forged).
    #[error("origin timestamp does not match any request")]
    OriginMismatch,
    /// LI 3, stratum 0 without a known kiss code, stratum 16 or more, or
    /// no reference time: the upstream is not synchronized.
    #[error("upstream is not synchronized")]
    Unsynchronized,
    /// A kiss-o'-death packet (handled, not a sample).
    #[error("kiss-o'-death {}", .0.code())]
    KissOfDeath(Kiss),
    /// Receive/transmit timestamps missing or inconsistent, or a delay
    /// that cannot be.
    #[error("implausible timestamps or delay")]
    BadTimestamps,
    /// The upstream's own root distance is beyond 1.5 s.
    #[error("upstream root distance too large")]
    TooFar,
    /// The upstream claims a precision coarser than 1 s: nothing it says
    /// about time can be trusted (and 2^127 s would swamp every sum).
    #[error("upstream precision coarser than 1 s")]
    ImplausiblePrecision,
    /// The upstream's refid is our own address: it is synchronized to us,
    /// and following it would close a timing loop.
    #[error("upstream is synchronized to us (timing loop)")]
    Loop,
    /// No source with that id (removed while its request was in flight).
    #[error("no such source")]
    UnknownSource,
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

/// A valid measurement, before it joins the filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Monotonic time of the middle of the exchange.
    pub mono: f64,
    /// True time minus kernel time, s.
    pub offset: f64,
    /// Round trip, s.
    pub delay: f64,
    /// Dispersion, s.
    pub dispersion: f64,
}

/// One upstream server.
#[derive(Clone, Debug)]
pub struct Source {
    config: SourceConfig,
    poll: i8,
    /// Floor raised by KoD RATE.
    rate_floor: i8,
    reach: Reach,
    next_send: f64,
    burst_left: u8,
    /// The initial burst (if any) has been sent.
    started: bool,
    sent: u64,
    good_in_a_row: u32,
    outstanding: Option<Outstanding>,
    filter: SampleFilter,
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
    precision: f64,
    /// A surprising sample and its residual, waiting for confirmation.
    held: Option<(Sample, f64)>,
}

/// The refid that names `ip` when it is our system peer (RFC 5905): the
/// IPv4 address, or the first four octets of the MD5 digest of the IPv6
/// address.
pub fn refid_of(ip: IpAddr) -> RefId {
    match ip {
        IpAddr::V4(v4) => RefId::from_ipv4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => RefId::from_ipv4(v4),
            None => {
                let digest = Md5::digest(v6.octets());
                RefId([digest[0], digest[1], digest[2], digest[3]])
            }
        },
    }
}

/// What the timestamps of one exchange say.
struct Timing {
    /// Our round trip (T4 − T1), s.
    elapsed: f64,
    /// Their clock minus ours, s.
    offset: f64,
    /// Network round trip (without the upstream's hold), s.
    delay: f64,
    /// Precisions plus PHI over the round trip, s.
    dispersion: f64,
}

/// A server reply's header: at least 48 bytes, mode 4, version 1–4.
fn parse_reply(bytes: &[u8]) -> Result<Header, ReplyError> {
    if bytes.len() < HEADER_LEN {
        return Err(ReplyError::TooShort);
    }
    let h = Header::parse(bytes).map_err(|_| ReplyError::TooShort)?;
    if h.mode() != Mode::Server || !(1..=4).contains(&h.version) {
        return Err(ReplyError::NotServerReply);
    }
    Ok(h)
}

/// The kiss code of a stratum-0 reply; an unknown one is just
/// "unsynchronized".
fn kiss_code(h: &Header) -> Result<Kiss, ReplyError> {
    match &h.reference_id.0 {
        b"RATE" => Ok(Kiss::Rate),
        b"DENY" => Ok(Kiss::Deny),
        b"RSTR" => Ok(Kiss::Restricted),
        _ => Err(ReplyError::Unsynchronized),
    }
}

/// Whether a (non-kiss) reply comes from a server fit to follow: LI ≠ 3,
/// stratum ≤ 15, a reference time, precision 1 s or finer, and not
/// synchronized to us (`local`: our address on the way to it).
fn check_synchronized(h: &Header, local: Option<IpAddr>) -> Result<(), ReplyError> {
    if h.leap == LeapIndicator::Unsynchronized
        || h.stratum > 15
        || h.reference_ts == NtpTimestamp::ZERO
    {
        return Err(ReplyError::Unsynchronized);
    }
    if h.precision > 0 {
        return Err(ReplyError::ImplausiblePrecision);
    }
    // A secondary server names its own system peer in its refid: our
    // address (IPv4) or its hash (IPv6) means it follows us.
    if h.stratum >= 2 && local.is_some_and(|ip| h.reference_id == refid_of(ip)) {
        return Err(ReplyError::Loop);
    }
    Ok(())
}

impl Source {
    /// A new source, first polled at `mono`; `precision` is our clock's
    /// (log2 s).
    pub fn new(config: SourceConfig, mono: f64, precision: i8) -> Self {
        let poll = config.min_poll;
        let precision = (precision as f64).exp2();
        Source {
            poll,
            rate_floor: config.min_poll,
            reach: Reach::default(),
            next_send: mono,
            burst_left: if config.iburst { BURST_LEN } else { 0 },
            started: false,
            sent: 0,
            good_in_a_row: 0,
            outstanding: None,
            filter: SampleFilter::new(precision),
            upstream: None,
            refused: None,
            last_reply_mono: None,
            unanswered_since: None,
            previous_send: None,
            last_send: None,
            others_heard: None,
            precision,
            held: None,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// Where requests go.
    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// Current poll interval, log2 s.
    pub fn poll(&self) -> i8 {
        self.poll
    }

    /// The reach register (bit 0 = the latest poll was answered).
    pub fn reach(&self) -> u8 {
        self.reach.register()
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
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
        self.refused.is_none()
            && (!self.started || (self.burst_left > 0 && self.sent < BURST_LEN as u64 + 1))
    }

    /// Answered at least one of the last 8 polls.
    pub fn reachable(&self) -> bool {
        self.reach.register() != 0
    }

    /// Answered at least one of the last 3 completed polls: fresh enough
    /// to be selected (an unreachable-but-not-yet-zero reach register would
    /// keep a dead source selected for hours at long polls). A request still
    /// in flight is not counted as lost. See [`super::reach`].
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
            self.next_send
        }
    }

    fn burst_spacing(&self) -> f64 {
        BURST_SPACING.min((self.config.min_poll as f64).exp2())
    }

    /// Builds the request due at `mono` with transmit timestamp `random`
    /// (never our clock: a client that sends its clock reveals it, and a
    /// random value makes off-path forgery guesswork). Replaces any
    /// unanswered request. `None` if nothing is due.
    pub fn transmit(&mut self, mono: f64, random: u64) -> Option<[u8; HEADER_LEN]> {
        if self.refused.is_some() || mono < self.next_send {
            return None;
        }
        let was_reachable = self.reachable();
        let missed = self.outstanding.is_some();
        self.reach.polled();
        self.sent += 1;
        self.started = true;
        self.unanswered_since.get_or_insert(mono);
        self.previous_send = self.last_send.replace(mono);
        if was_reachable && !self.reachable() {
            // Just became unreachable: burst again to find it quickly.
            if self.config.iburst {
                self.burst_left = BURST_LEN;
            }
        } else if !self.reachable() && self.burst_left == 0 && self.sent > BURST_LEN as u64 {
            // Unreachable for a while: back off.
            self.poll = (self.poll + 1).min(self.config.max_poll);
        } else if missed && self.burst_left == 0 {
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
            poll: self.poll,
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
        let h = parse_reply(bytes)?;
        let out = match self.outstanding {
            Some(o) if o.token == h.origin_ts => o,
            _ => return Err(ReplyError::OriginMismatch),
        };
        // One reply per request: a duplicate must not count twice.
        self.outstanding = None;
        let t1 = out.t1.ok_or(ReplyError::BadTimestamps)?;
        if h.stratum == 0 {
            let kiss = kiss_code(&h)?;
            self.kiss(kiss, mono);
            return Err(ReplyError::KissOfDeath(kiss));
        }
        check_synchronized(&h, out.local)?;
        let timing = self.timing(&h, t1, t4)?;
        let root_delay = h.root_delay.as_secs_f64();
        let root_dispersion = h.root_dispersion.as_secs_f64();
        if root_delay / 2.0 + root_dispersion > MAX_DISTANCE {
            return Err(ReplyError::TooFar);
        }
        self.reach.answered();
        self.last_reply_mono = Some(mono);
        self.unanswered_since = None;
        self.others_heard = None;
        self.upstream = Some(Upstream {
            stratum: h.stratum,
            leap: h.leap,
            refid: h.reference_id,
            root_delay,
            root_dispersion,
            precision: h.precision,
        });
        Ok(Measurement {
            mono: mono - timing.elapsed / 2.0,
            offset: timing.offset,
            delay: timing.delay,
            dispersion: timing.dispersion,
        })
    }

    /// Round trip, offset, delay and dispersion of the exchange, if its
    /// timestamps are plausible.
    fn timing(&self, h: &Header, t1: NtpTimestamp, t4: NtpTimestamp) -> Result<Timing, ReplyError> {
        let (t2, t3) = (h.receive_ts, h.transmit_ts);
        if t2 == NtpTimestamp::ZERO || t3 == NtpTimestamp::ZERO {
            return Err(ReplyError::BadTimestamps);
        }
        let elapsed = t4.diff_secs(t1);
        let held = t3.diff_secs(t2);
        let delay = elapsed - held;
        let tolerance = self.precision + (h.precision as f64).exp2();
        if !(0.0..=MAX_DELAY).contains(&elapsed)
            || !(0.0..=MAX_HOLD).contains(&held)
            || delay < -tolerance
            || delay > MAX_DELAY
        {
            return Err(ReplyError::BadTimestamps);
        }
        Ok(Timing {
            elapsed,
            offset: (t2.diff_secs(t1) + t3.diff_secs(t4)) / 2.0,
            delay: delay.max(tolerance),
            dispersion: tolerance + PHI * elapsed,
        })
    }

    fn kiss(&mut self, kiss: Kiss, mono: f64) {
        match kiss {
            Kiss::Rate => {
                self.burst_left = 0;
                self.poll = (self.poll + 1)
                    .max(self.rate_floor)
                    .min(self.config.max_poll.max(self.poll));
                self.rate_floor = self.poll;
                self.next_send = mono + (self.poll as f64).exp2();
            }
            Kiss::Deny | Kiss::Restricted => {
                self.refused = Some(kiss);
                self.burst_left = 0;
                self.reach.clear();
            }
        }
    }

    /// Adds a measurement, already converted to the uncorrected local
    /// timeline (`offset` = true minus uncorrected local time), and adapts
    /// the poll interval: it grows after [`POLL_UP_AFTER`] samples in a row
    /// that the previous estimate predicted within its jitter, and shrinks
    /// when one is far off.
    ///
    /// A sample far outside the prediction (beyond what its extra delay
    /// explains) is held back: if the next one is normal it was a spike and
    /// is dropped (RFC 5905's popcorn suppression); if the next one is off
    /// the same way the upstream's time really jumped, and the history is
    /// shifted by the jump (keeping the frequency learned) so that the
    /// estimate follows at once.
    pub fn add_sample(&mut self, sample: Sample, prior_freq: f64) {
        let residual = self.filter.estimate().map(|e| {
            let r = sample.offset - e.offset_at(sample.time);
            let sigma = e
                .jitter
                .max(self.precision)
                .hypot(e.offset_sd_at(sample.time));
            let queued = (sample.delay - e.min_delay).max(0.0) / 2.0;
            (r, (r.abs() - queued).max(0.0) / sigma)
        });
        match (residual, self.held.take()) {
            (Some((r, sigmas)), held) if sigmas > SURPRISE_SIGMAS && self.filter.len() >= 4 => {
                match held {
                    Some((first, r0))
                        if r.signum() == r0.signum() && (r - r0).abs() < 0.5 * r0.abs() =>
                    {
                        self.filter.shift((r + r0) / 2.0);
                        self.filter.add(first, prior_freq);
                    }
                    _ => {
                        self.held = Some((sample, r));
                        return;
                    }
                }
            }
            _ => {}
        }
        let surprise = residual.map(|(_, s)| s);
        self.filter.add(sample, prior_freq);
        let steady = self.filter.len() >= BURST_LEN as usize && self.burst_left == 0;
        match surprise {
            Some(s) if s > POLL_DOWN_JITTERS => {
                self.good_in_a_row = 0;
                self.poll = (self.poll - 1).max(self.rate_floor);
            }
            Some(_) if steady => {
                self.good_in_a_row += 1;
                if self.good_in_a_row >= POLL_UP_AFTER {
                    self.good_in_a_row = 0;
                    self.poll = (self.poll + 1).min(self.config.max_poll);
                }
            }
            _ => {}
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
mod tests {
    use super::*;
    use crate::proto::NtpShort;

    fn config(iburst: bool) -> SourceConfig {
        SourceConfig {
            name: "test".into(),
            addr: "127.0.0.1:123".parse().unwrap(),
            pool: false,
            iburst,
            min_poll: 6,
            max_poll: 10,
        }
    }

    fn ts(secs: f64) -> NtpTimestamp {
        NtpTimestamp::from_bits(0xE000_0000_0000_0000).add_secs(secs)
    }

    /// A reply to `request`, from a server whose clock is `ahead` of ours,
    /// for a request sent at our `t1` with `delay` round trip.
    fn reply(
        request: &[u8; 48],
        t1: f64,
        delay: f64,
        ahead: f64,
        edit: impl FnOnce(&mut Header),
    ) -> [u8; 48] {
        crate::discipline::test_support::primary_reply(request, ts(t1 + delay / 2.0 + ahead), edit)
    }

    fn exchange(
        s: &mut Source,
        mono: f64,
        edit: impl FnOnce(&mut Header),
    ) -> Result<Measurement, ReplyError> {
        let req = s
            .transmit(mono, 0x1234_5678_9abc_def0 ^ mono.to_bits())
            .expect("due");
        s.sent_at(ts(mono), Some("192.0.2.200".parse().unwrap()));
        let rep = reply(&req, mono, 0.010, 0.5, edit);
        s.receive(&rep, ts(mono + 0.010 + 0.00001), mono + 0.010)
    }

    #[test]
    fn a_valid_reply_gives_offset_and_delay() {
        let mut s = Source::new(config(false), 100.0, -20);
        let m = exchange(&mut s, 100.0, |_| {}).unwrap();
        assert!((m.offset - 0.5).abs() < 1e-5, "{m:?}");
        assert!((m.delay - 0.010).abs() < 1e-5);
        assert!((m.mono - 100.005).abs() < 1e-4);
        assert_eq!(s.reach(), 1);
        assert_eq!(s.upstream().unwrap().stratum, 1);
    }

    #[test]
    fn requests_carry_a_random_transmit_timestamp_and_nothing_else() {
        let mut s = Source::new(config(false), 0.0, -20);
        let req = s.transmit(0.0, 0xdead_beef_0000_0001).unwrap();
        let h = Header::parse(&req).unwrap();
        assert_eq!(h.mode(), Mode::Client);
        assert_eq!(h.version, 4);
        assert_eq!(h.transmit_ts.to_bits(), 0xdead_beef_0000_0001);
        assert_eq!(
            &req[1..40].iter().filter(|b| **b != 0).count(),
            &1,
            "only the poll byte is set: {req:?}"
        );
    }

    #[test]
    fn replies_are_checked_strictly() {
        type Edit = Box<dyn Fn(&mut Header)>;
        let cases: Vec<(Edit, ReplyError)> = vec![
            (
                Box::new(|h| h.origin_ts = ts(1.0)),
                ReplyError::OriginMismatch,
            ),
            (Box::new(|h| h.mode = 3), ReplyError::NotServerReply),
            (Box::new(|h| h.version = 5), ReplyError::NotServerReply),
            (
                Box::new(|h| h.leap = LeapIndicator::Unsynchronized),
                ReplyError::Unsynchronized,
            ),
            (Box::new(|h| h.stratum = 16), ReplyError::Unsynchronized),
            (
                Box::new(|h| h.reference_ts = NtpTimestamp::ZERO),
                ReplyError::Unsynchronized,
            ),
            (
                Box::new(|h| h.transmit_ts = NtpTimestamp::ZERO),
                ReplyError::BadTimestamps,
            ),
            (
                Box::new(|h| h.transmit_ts = h.receive_ts.add_secs(-0.5)),
                ReplyError::BadTimestamps,
            ),
            (
                Box::new(|h| h.receive_ts = h.receive_ts.add_secs(-0.1)),
                ReplyError::BadTimestamps,
            ),
            (
                Box::new(|h| h.root_dispersion = NtpShort::from_secs_f64(2.0)),
                ReplyError::TooFar,
            ),
            (
                Box::new(|h| {
                    h.stratum = 0;
                    h.reference_id = RefId(*b"INIT");
                }),
                ReplyError::Unsynchronized,
            ),
            (
                Box::new(|h| h.precision = 5),
                ReplyError::ImplausiblePrecision,
            ),
            (
                Box::new(|h| h.precision = 127),
                ReplyError::ImplausiblePrecision,
            ),
            // Synchronized to us: its refid is the address we polled from.
            (
                Box::new(|h| {
                    h.stratum = 3;
                    h.reference_id = RefId([192, 0, 2, 200]);
                }),
                ReplyError::Loop,
            ),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            let mut s = Source::new(config(false), 0.0, -20);
            assert_eq!(exchange(&mut s, 0.0, edit), Err(want), "case {i}");
            assert_eq!(
                s.reach(),
                0,
                "case {i}: a bad reply does not count as reached"
            );
        }
        let mut s = Source::new(config(false), 0.0, -20);
        assert_eq!(
            s.receive(&[0u8; 20], ts(0.0), 0.0),
            Err(ReplyError::TooShort)
        );
    }

    #[test]
    fn a_reply_is_used_once() {
        let mut s = Source::new(config(false), 0.0, -20);
        let req = s.transmit(0.0, 77).unwrap();
        s.sent_at(ts(0.0), None);
        let rep = reply(&req, 0.0, 0.01, 0.0, |_| {});
        assert!(s.receive(&rep, ts(0.01), 0.01).is_ok());
        assert_eq!(
            s.receive(&rep, ts(0.02), 0.02),
            Err(ReplyError::OriginMismatch)
        );
    }

    #[test]
    fn burst_then_regular_polls_and_reach_register() {
        let mut s = Source::new(config(true), 0.0, -20);
        let mut times = Vec::new();
        let mut t = 0.0;
        while times.len() < 10 {
            if s.transmit(t, 1).is_some() {
                times.push(t);
            }
            t += 0.5;
        }
        assert_eq!(&times[..8], &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]);
        assert_eq!(times[8], 16.0);
        // Never answered: backing off already.
        assert_eq!(times[9], 16.0 + 128.0);
        assert_eq!(s.reach(), 0);
        assert!(!s.in_initial_burst());
    }

    #[test]
    fn kod_rate_backs_off_and_deny_stops_polling() {
        let mut s = Source::new(config(true), 0.0, -20);
        let r = exchange(&mut s, 0.0, |h| {
            h.stratum = 0;
            h.reference_id = RefId::RATE;
        });
        assert_eq!(r, Err(ReplyError::KissOfDeath(Kiss::Rate)));
        assert_eq!(s.poll(), 7);
        assert!(s.next_send() >= 128.0, "no more burst, longer interval");

        let mut s = Source::new(config(false), 0.0, -20);
        let r = exchange(&mut s, 0.0, |h| {
            h.stratum = 0;
            h.reference_id = RefId::DENY;
        });
        assert_eq!(r, Err(ReplyError::KissOfDeath(Kiss::Deny)));
        assert_eq!(s.refused(), Some(Kiss::Deny));
        assert_eq!(s.transmit(1e6, 1), None);
        assert_eq!(s.next_send(), f64::INFINITY);
    }

    #[test]
    fn unreachable_sources_back_off_to_max_poll() {
        let mut s = Source::new(config(false), 0.0, -20);
        let mut t = 0.0;
        for _ in 0..40 {
            t = s.next_send();
            s.transmit(t, 1).unwrap();
        }
        assert!(t > 0.0);
        assert_eq!(s.poll(), 10);
        assert!(!s.reachable());
    }

    #[test]
    fn a_spike_is_dropped_and_a_jump_is_followed() {
        let mut s = Source::new(config(false), 0.0, -20);
        let sample = |t: f64, offset: f64| Sample {
            time: t,
            offset,
            delay: 0.01,
            dispersion: 1e-6,
        };
        for i in 0..10 {
            s.add_sample(
                sample(i as f64 * 16.0, 0.001 * ((i % 3) as f64 - 1.0) * 0.1),
                0.0,
            );
        }
        s.add_sample(sample(160.0, 0.05), 0.0);
        s.add_sample(sample(176.0, 0.0), 0.0);
        assert!(
            s.estimate().unwrap().offset_at(176.0).abs() < 0.0005,
            "spike dropped"
        );
        s.add_sample(sample(192.0, 0.3), 0.0);
        assert!(
            s.estimate().unwrap().offset_at(192.0).abs() < 0.0005,
            "held back"
        );
        s.add_sample(sample(208.0, 0.3), 0.0);
        let e = s.estimate().unwrap();
        assert!(
            (e.offset_at(208.0) - 0.3).abs() < 0.0005,
            "jump followed: {e:?}"
        );
        assert!(e.freq.abs() < 1e-6, "frequency kept: {}", e.freq);
    }

    #[test]
    fn ipv6_refid_is_the_md5_prefix() {
        assert_eq!(
            refid_of("192.0.2.7".parse().unwrap()),
            RefId([192, 0, 2, 7])
        );
        assert_eq!(
            refid_of("::ffff:192.0.2.7".parse().unwrap()),
            RefId([192, 0, 2, 7])
        );
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d = Md5::digest(v6.octets());
        assert_eq!(refid_of(v6.into()), RefId([d[0], d[1], d[2], d[3]]));
        // A known vector: MD5 of sixteen zero bytes is 4ae71336e44bf9bf...
        assert_eq!(
            refid_of("::".parse().unwrap()),
            RefId([0x4a, 0xe7, 0x13, 0x36])
        );
    }

    #[test]
    fn a_secondary_server_with_another_peer_is_not_a_loop() {
        let mut s = Source::new(config(false), 0.0, -20);
        let r = exchange(&mut s, 0.0, |h| {
            h.stratum = 2;
            h.reference_id = RefId([192, 0, 2, 201]);
        });
        assert!(r.is_ok(), "{r:?}");
        // IPv6: the refid is the MD5 prefix of our address.
        let ours: IpAddr = "2001:db8::5".parse().unwrap();
        let mut s = Source::new(config(false), 0.0, -20);
        let req = s.transmit(0.0, 99).unwrap();
        s.sent_at(ts(0.0), Some(ours));
        let rep = reply(&req, 0.0, 0.01, 0.0, |h| {
            h.stratum = 2;
            h.reference_id = refid_of(ours);
        });
        assert_eq!(s.receive(&rep, ts(0.01), 0.01), Err(ReplyError::Loop));
    }

    #[test]
    fn a_request_in_flight_is_not_counted_as_lost() {
        let mut s = Source::new(config(false), 0.0, -20);
        let mut t = 0.0;
        // Answered once, then two requests lost.
        exchange(&mut s, t, |_| {}).unwrap();
        for _ in 0..2 {
            t = s.next_send();
            s.transmit(t, 7).unwrap();
        }
        // The third request is on its way: two of the last three completed
        // polls were lost, one answered.
        t = s.next_send();
        s.transmit(t, 8).unwrap();
        assert!(s.awaiting_reply());
        assert!(s.usable(), "reach {:08b}", s.reach());
        // Lost too: now three in a row.
        t = s.next_send();
        s.transmit(t, 9).unwrap();
        assert!(!s.usable(), "reach {:08b}", s.reach());
    }

    #[test]
    fn the_kernel_transmit_stamp_replaces_the_clock_read() {
        let mut s = Source::new(config(false), 100.0, -20);
        let req = s.transmit(100.0, 5).unwrap();
        s.sent_at(ts(100.0), None);
        // The kernel stamped the request 200 µs after the clock read.
        s.refine_t1(ts(100.0002));
        let rep = reply(&req, 100.0002, 0.010, 0.5, |_| {});
        let m = s.receive(&rep, ts(100.01021), 100.0102).unwrap();
        assert!((m.delay - 0.010).abs() < 2e-6, "{m:?}");
        assert!((m.offset - 0.5).abs() < 2e-6, "{m:?}");
    }
}
