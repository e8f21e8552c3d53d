//! When does a queued reply actually leave? A batch of replies goes to the
//! kernel in one call (`sendmmsg`, or one `io_uring_enter`), which sends
//! them one after another; each send costs microseconds (on loopback it
//! even runs the receiver's side). Stamping every reply with the moment the
//! batch is stamped would make the k-th reply's transmit timestamp early by
//! the time to get into the kernel plus k sends.
//!
//! Replies are stamped and handed over in chunks of at most [`SEND_CHUNK`]:
//! the kernel sends a chunk's replies one after another, and an interrupt
//! or preemption in the middle delays the rest of the chunk past any
//! prediction, so smaller chunks bound that error, at one system call per
//! chunk. Measured on loopback (io_uring, kernel 6.18), offset error
//! |θ| p99 at 275k req/s and system calls per reply at 100k req/s:
//!
//! | chunk | \|θ\| p99 at 275k | system calls per reply at 100k |
//! |---|---|---|
//! | 4 | 5.66 µs | 0.34 |
//! | 3 | 3.81 µs | 0.41 |
//! | 2 | 3.44 µs | 0.54 |
//!
//! (at 300k req/s, whole batches of ~60 had put p1 at −49 µs). Three keeps
//! both under the targets (≤ 5 µs, ≤ 0.5). Below [`ONE_BY_ONE_BELOW`]
//! replies per second ([`ChunkLength`]) each reply goes on its own,
//! stamped right before its own send: at 20k req/s that took |θ| p99 from
//! 3.8 µs (chunks of 4) to 1.4 µs, better than chronyd's 1.85 µs in the
//! same run, and the extra system calls cost little at such rates.
//!
//! [`TxSchedule`] predicts the departure of the k-th reply of a chunk
//! stamped at `t0` as `t0 + lead + k × per_send`, and learns both terms from
//! the kernel itself: a few times a second, one chunk is sent with software
//! transmit timestamps switched on for its socket (`SO_TIMESTAMPING`
//! `TX_SOFTWARE`, on just before and off again right after; taken as each
//! datagram is handed to the device: the moment a client's own stamps
//! refer to). Its replies go out exactly as the others do, with no
//! per-message request that would make them slower than the replies the
//! prediction is for, and each stamp comes back numbered (`OPT_ID`, see
//! [`ProbeKeys`](crate::sys::txstamp::ProbeKeys)):
//!
//! - `lead` = departure of the first − `t0`;
//! - `per_send` = (departure of the last − departure of the first) /
//!   (chunk length − 1), from chunks of two or more.
//!
//! Measurements are noisy in one direction only (interrupts and preemption
//! add time, nothing removes it), so each term follows the lower envelope
//! of its samples, allowed to creep up slowly to follow real changes. A
//! transmit timestamp later than the real departure would show the client
//! a negative round trip, so everything errs early: until measured, the
//! lead is zero and the per-send cost a low default.

use std::time::Duration;

use crate::proto::UnixTime;

/// Samples before a term is trusted.
const MIN_SAMPLES: u16 = 8;
/// How fast a term's lower envelope creeps up per sample: by this share of
/// itself (at ~10 samples a second it tracks the minimum of the last
/// minutes, so a reply leaving faster than predicted is rare)…
const CREEP: f64 = 0.001;
/// …plus this much (ns), so that an envelope that met a zero sample does
/// not stay at zero for good.
const CREEP_FLOOR_NANOS: f64 = 2.0;
/// Longest believable lead (nanoseconds); longer samples were preempted.
const MAX_LEAD_NANOS: f64 = 50_000.0;
/// Per-send samples are kept in this range (nanoseconds).
const MIN_PER_SEND_NANOS: f64 = 50.0;
const MAX_PER_SEND_NANOS: f64 = 10_000.0;
/// How much earlier than the lead's envelope a chunk's first reply is
/// stamped. The kernel takes a probed reply's transmit stamp only after
/// allocating the stamp's own buffer, so probes measure a little more than
/// a plain reply takes, and a plain reply sometimes leaves sooner than any
/// probe did; on loopback, where a reply reaches its client a few hundred
/// nanoseconds after leaving, a stamp late by more than that shows the
/// client a negative round trip. 700 ns: in interleaved runs at 20k and
/// 150k req/s (bench/README.md) 0.00 % of replies had δ < 0 against
/// 1–9 % before, with |θ| p99 within the host's noise of before.
const LEAD_MARGIN_NANOS: f64 = 700.0;
/// Share of the measured per-send cost used for the replies after the
/// first of a chunk: in a probed chunk every reply is stamped, and each
/// stamp's work delays the next send, so the measurement runs high.
const PER_SEND_SHARE: f64 = 0.75;
/// Per-send cost used until measured: low, so that stamps err early.
const DEFAULT_PER_SEND_NANOS: f64 = 1_000.0;
/// Replies stamped and handed to the kernel together (see the module
/// documentation).
pub const SEND_CHUNK: usize = 3;
/// Reply rate (per second) below which replies are sent one by one: one
/// system call each (about a microsecond) then costs under 5 % of a core.
pub const ONE_BY_ONE_BELOW: f64 = 50_000.0;
/// How long the reply rate is measured before the chunk length is chosen
/// again (nanoseconds).
const RATE_WINDOW_NANOS: f64 = 100_000_000.0;

/// Chooses how many replies are stamped and handed to the kernel together,
/// from the reply rate of the last window: one at a time while the rate is
/// below [`ONE_BY_ONE_BELOW`], [`SEND_CHUNK`] above it.
#[derive(Clone, Copy, Debug)]
pub struct ChunkLength {
    window_start: UnixTime,
    replies: u64,
    len: usize,
}

impl Default for ChunkLength {
    fn default() -> Self {
        ChunkLength {
            window_start: UnixTime::default(),
            replies: 0,
            len: 1,
        }
    }
}

impl ChunkLength {
    /// The chunk length for a batch of `replies` replies, handled at about
    /// `now`.
    pub fn for_batch(&mut self, now: UnixTime, replies: usize) -> usize {
        self.replies += replies as u64;
        let elapsed = nanos_between(self.window_start, now);
        // A window is over when it has lasted long enough, or when the
        // clock went back (then its length is unknown: assume the minimum).
        if !(0.0..RATE_WINDOW_NANOS).contains(&elapsed) {
            let rate = self.replies as f64 * 1e9 / elapsed.max(RATE_WINDOW_NANOS);
            self.len = if rate < ONE_BY_ONE_BELOW {
                1
            } else {
                SEND_CHUNK
            };
            self.window_start = now;
            self.replies = 0;
        }
        self.len
    }
}

/// When the replies of one probed chunk left: their kernel transmit
/// timestamps, as a backend reads them back for [`TxSchedule::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departures {
    /// When the chunk was stamped.
    pub t0: UnixTime,
    len: usize,
    at: [Option<UnixTime>; SEND_CHUNK],
}

impl Departures {
    /// A chunk of `len` replies (at most [`SEND_CHUNK`] are followed)
    /// stamped at `t0`, none seen leaving yet.
    pub fn new(t0: UnixTime, len: usize) -> Self {
        Departures {
            t0,
            len: len.min(SEND_CHUNK),
            at: [None; SEND_CHUNK],
        }
    }

    /// When each reply left, where a stamp came back.
    pub fn stamps(&self) -> &[Option<UnixTime>] {
        &self.at[..self.len]
    }

    /// The same, to be filled in.
    pub fn stamps_mut(&mut self) -> &mut [Option<UnixTime>] {
        &mut self.at[..self.len]
    }
}

/// The lower envelope of a one-sidedly noisy measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Envelope {
    nanos: f64,
    samples: u16,
}

impl Envelope {
    fn observe(&mut self, sample: f64) {
        self.nanos = if self.samples == 0 {
            sample
        } else {
            sample.min(self.nanos * (1.0 + CREEP) + CREEP_FLOOR_NANOS)
        };
        self.samples = self.samples.saturating_add(1);
    }

    fn get(&self) -> Option<f64> {
        (self.samples >= MIN_SAMPLES).then_some(self.nanos)
    }
}

/// Predicts when each reply of a batch leaves, from measured departures.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxSchedule {
    lead: Envelope,
    per_send: Envelope,
}

fn nanos_between(from: UnixTime, to: UnixTime) -> f64 {
    (to.secs - from.secs) as f64 * 1e9 + to.nanos as f64 - from.nanos as f64
}

impl TxSchedule {
    /// The current lead (zero until measured).
    pub fn lead(&self) -> Duration {
        Duration::from_nanos(self.lead.get().unwrap_or(0.0) as u64)
    }

    /// The current per-send cost (a low default until measured).
    pub fn per_send(&self) -> Duration {
        Duration::from_nanos(self.per_send_nanos() as u64)
    }

    fn per_send_nanos(&self) -> f64 {
        self.per_send.get().unwrap_or(DEFAULT_PER_SEND_NANOS)
    }

    /// Predicted departure of the reply at `position` (0-based) of a batch
    /// stamped at `t0`.
    pub fn departure(&self, t0: UnixTime, position: usize) -> UnixTime {
        let lead = self.lead.get().unwrap_or(0.0);
        let early = (lead - LEAD_MARGIN_NANOS).max(0.0);
        let offset = (early + position as f64 * self.per_send_nanos() * PER_SEND_SHARE) as u64;
        let nanos = t0.nanos as u64 + offset;
        UnixTime::new(
            t0.secs + (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// Learns from a probed chunk stamped at `t0`: `departed[k]` is the
    /// kernel transmit timestamp of its k-th reply, where one came back.
    pub fn observe(&mut self, t0: UnixTime, departed: &[Option<UnixTime>]) {
        let Some(Some(first)) = departed.first() else {
            return;
        };
        let lead = nanos_between(t0, *first);
        if (0.0..=MAX_LEAD_NANOS).contains(&lead) {
            self.lead.observe(lead);
        }
        let last = departed.len() - 1;
        if let (true, Some(end)) = (last > 0, departed[last]) {
            let per_send = nanos_between(*first, end) / last as f64;
            if (MIN_PER_SEND_NANOS..=MAX_PER_SEND_NANOS).contains(&per_send) {
                self.per_send.observe(per_send);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = UnixTime::new(100, 999_995_000);

    fn after(nanos: u64) -> UnixTime {
        let n = T0.nanos as u64 + nanos;
        UnixTime::new(
            T0.secs + (n / 1_000_000_000) as i64,
            (n % 1_000_000_000) as u32,
        )
    }

    /// Feeds a probed chunk of `len` whose first reply leaves `lead` after
    /// t0 and the others every `per_send` ns, the last `stretch` ns later.
    fn probe(s: &mut TxSchedule, len: usize, lead: u64, per_send: u64, stretch: u64) {
        let departed: Vec<Option<UnixTime>> = (0..len)
            .map(|k| {
                let extra = if k + 1 == len && k > 0 { stretch } else { 0 };
                Some(after(lead + k as u64 * per_send + extra))
            })
            .collect();
        s.observe(T0, &departed);
    }

    /// Feeds `ChunkLength` batches of `batch` replies at `rate` per second
    /// for `secs` seconds from `start`; returns the last chunk length and
    /// the time reached.
    fn feed(
        c: &mut ChunkLength,
        start: UnixTime,
        rate: u64,
        batch: usize,
        secs: u64,
    ) -> (usize, UnixTime) {
        let gap = 1_000_000_000 * batch as u64 / rate;
        let mut t = start;
        let mut len = 0;
        for _ in 0..secs * rate / batch as u64 {
            let n = t.nanos as u64 + gap;
            t = UnixTime::new(
                t.secs + (n / 1_000_000_000) as i64,
                (n % 1_000_000_000) as u32,
            );
            len = c.for_batch(t, batch);
        }
        (len, t)
    }

    #[test]
    fn replies_go_one_by_one_at_low_rates_and_in_chunks_at_high_rates() {
        let mut c = ChunkLength::default();
        assert_eq!(c.for_batch(T0, 8), 1, "one by one until a rate is known");
        let (len, t) = feed(&mut c, T0, 20_000, 8, 1);
        assert_eq!(len, 1);
        let (len, t) = feed(&mut c, t, 100_000, 8, 1);
        assert_eq!(len, SEND_CHUNK);
        let (len, t) = feed(&mut c, t, 40_000, 2, 1);
        assert_eq!(len, 1, "back to one by one when the load falls");
        // After a long pause, the first batch is sent one by one.
        let later = UnixTime::new(t.secs + 10, t.nanos);
        assert_eq!(c.for_batch(later, 64), 1);
    }

    #[test]
    fn a_clock_stepped_back_starts_a_new_window() {
        let mut c = ChunkLength::default();
        let (len, t) = feed(&mut c, T0, 200_000, 16, 1);
        assert_eq!(len, SEND_CHUNK);
        // Stepped back 5 s: had the window not restarted there, it would
        // stay open (and the length stuck) for the next 5 s.
        let back = UnixTime::new(t.secs - 5, t.nanos);
        c.for_batch(back, 16);
        let (len, _) = feed(&mut c, back, 20_000, 4, 1);
        assert_eq!(len, 1);
    }

    #[test]
    fn until_measured_stamps_err_early() {
        let s = TxSchedule::default();
        assert_eq!(s.departure(T0, 0), T0);
        assert_eq!(s.lead(), Duration::ZERO);
        assert_eq!(
            s.per_send(),
            Duration::from_nanos(DEFAULT_PER_SEND_NANOS as u64)
        );
    }

    #[test]
    fn lead_and_per_send_cost_are_learned_from_departures() {
        let mut s = TxSchedule::default();
        for i in 0..60 {
            probe(&mut s, SEND_CHUNK, 2_000 + (i as u64 % 5) * 100, 1_900, 0);
        }
        let lead = s.lead().as_nanos() as u64;
        let per_send = s.per_send().as_nanos() as u64;
        assert!((2_000..2_100).contains(&lead), "{lead}");
        assert!((1_880..1_990).contains(&per_send), "{per_send}");
        // Across the second boundary, from the start of the first slot on,
        // and early: the margin off the lead, a share of the per-send cost.
        let d3 = s.departure(T0, 3);
        assert_eq!(d3.secs, 101);
        let expected = lead as f64 - LEAD_MARGIN_NANOS + 3.0 * per_send as f64 * PER_SEND_SHARE;
        assert!((nanos_between(T0, d3) - expected).abs() <= 4.0, "{d3:?}");
        assert!(nanos_between(T0, d3) < (lead + 3 * per_send) as f64);
    }

    #[test]
    fn chunks_of_one_only_measure_the_lead_and_missing_stamps_are_skipped() {
        let mut s = TxSchedule::default();
        for _ in 0..MIN_SAMPLES {
            probe(&mut s, 1, 3_000, 0, 0);
        }
        assert_eq!(s.lead(), Duration::from_nanos(3_000));
        assert_eq!(
            s.per_send(),
            Duration::from_nanos(DEFAULT_PER_SEND_NANOS as u64)
        );
        // The first stamp missing: nothing learned at all.
        s.observe(T0, &[None, Some(after(9_000)), Some(after(12_000))]);
        // The last missing: the lead only.
        s.observe(T0, &[Some(after(3_000)), Some(after(5_000)), None]);
        assert_eq!(
            s.per_send(),
            Duration::from_nanos(DEFAULT_PER_SEND_NANOS as u64)
        );
    }

    #[test]
    fn stretched_chunks_do_not_raise_the_estimates() {
        let mut s = TxSchedule::default();
        for _ in 0..40 {
            probe(&mut s, SEND_CHUNK, 2_000, 1_900, 0);
        }
        for _ in 0..20 {
            // Preempted between stamping and sending.
            probe(&mut s, SEND_CHUNK, 30_000, 1_900, 0);
            // Interrupted in the middle of the chunk.
            probe(&mut s, SEND_CHUNK, 2_000, 1_900, 40_000);
        }
        // A clock read that makes no sense.
        s.observe(T0, &[Some(UnixTime::new(90, 0))]);
        // At most the creep of the later samples above the true values.
        assert!(
            s.lead() < Duration::from_nanos(2_000 * 14 / 10),
            "{:?}",
            s.lead()
        );
        assert!(
            s.per_send() < Duration::from_nanos(1_900 * 14 / 10),
            "{:?}",
            s.per_send()
        );
        assert!(s.lead() >= Duration::from_nanos(2_000));
    }
}
