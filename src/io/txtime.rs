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
//! chunk (measured at 300k req/s on loopback, offset error at p1: −49 µs
//! for whole batches of ~60, −13 µs for chunks of 8, −9 µs for 4, −3.5 µs
//! for 2; 4 keeps a 100k req/s load under half a system call per reply).
//!
//! [`TxSchedule`] predicts the departure of the k-th reply of a chunk
//! stamped at `t0` as `t0 + lead + k × per_send`, and learns both terms from
//! the kernel itself: a few times a second one reply of a chunk asks for its
//! software transmit timestamp (taken as the datagram is handed to the
//! device: the moment a client's own stamps refer to), alternately
//!
//! - the first ([`Probe::Lead`]): `lead` = departure − `t0`, less what
//!   asking for the timestamp cost that reply before it was stamped
//!   ([`SendProbe`]);
//! - the last of a full chunk ([`Probe::Slope`]): `per_send` = (departure −
//!   `t0` − probe cost − `lead`) / position.
//!
//! One probe per chunk, so no probe's own work delays another's stamp.
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
/// How fast a term's lower envelope creeps up per sample.
const CREEP: f64 = 0.01;
/// Longest believable lead (nanoseconds); longer samples were preempted.
const MAX_LEAD_NANOS: f64 = 50_000.0;
/// Per-send samples are kept in this range (nanoseconds).
const MIN_PER_SEND_NANOS: f64 = 50.0;
const MAX_PER_SEND_NANOS: f64 = 10_000.0;
/// Per-send cost used until measured: low, so that stamps err early.
const DEFAULT_PER_SEND_NANOS: f64 = 1_000.0;
/// Replies stamped and handed to the kernel together (see the module
/// documentation).
pub const SEND_CHUNK: usize = 4;
/// Smallest position whose departure teaches the per-send cost (closer to
/// the start, the lead's noise weighs too much).
const MIN_SLOPE_POSITION: usize = 3;

/// Which reply of a chunk asks for its transmit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The first: measures the lead.
    Lead,
    /// The last, at this position: measures the per-send cost.
    Slope(usize),
}

impl Probe {
    /// Position of the probed reply in its chunk.
    pub fn position(self) -> usize {
        match self {
            Probe::Lead => 0,
            Probe::Slope(position) => position,
        }
    }
}

/// What asking for a transmit timestamp costs a sampled datagram before it
/// is stamped, per backend (measured on loopback, kernel 6.18: parsing the
/// request, and for io_uring a SendMsg where unsampled replies use the
/// lighter Send). A plain sendmsg arrived 2.38 µs after the clock read, one
/// asking for a timestamp 3.10 µs (its stamp at 2.62 µs); the round trips
/// ntp-loadgen sees through fastntpd put the cost at ≈ 1 µs for sendmmsg
/// and ≈ 1.8 µs for io_uring.
#[derive(Clone, Copy, Debug)]
pub struct SendProbe;

impl SendProbe {
    /// Through `sendmmsg` (the mmsg backend).
    pub const MMSG: Duration = Duration::from_nanos(1_000);
    /// Through io_uring (SendMsg for the probe, Send for the others).
    pub const IO_URING: Duration = Duration::from_nanos(1_800);
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
            sample.min(self.nanos * (1.0 + CREEP))
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
    /// The next probe measures the per-send cost (when the chunk allows).
    slope_next: bool,
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
        let offset = (lead + position as f64 * self.per_send_nanos()) as u64;
        let nanos = t0.nanos as u64 + offset;
        UnixTime::new(
            t0.secs + (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// Which reply of a chunk of `len` replies the next probe should be:
    /// alternately the first and, once the lead is known and the chunk is
    /// long enough, the last.
    pub fn next_probe(&mut self, len: usize) -> Probe {
        self.slope_next = !self.slope_next;
        if self.slope_next && len > MIN_SLOPE_POSITION && self.lead.get().is_some() {
            Probe::Slope(len - 1)
        } else {
            Probe::Lead
        }
    }

    /// Learns from `probe`, the reply of a chunk stamped at `t0` that left
    /// at `departed` (kernel transmit timestamp); `probe_cost` is what
    /// asking for the timestamp cost it before it was stamped (see
    /// [`SendProbe`]).
    pub fn observe(
        &mut self,
        probe: Probe,
        t0: UnixTime,
        departed: UnixTime,
        probe_cost: Duration,
    ) {
        let since = nanos_between(t0, departed) - probe_cost.as_nanos() as f64;
        match probe {
            Probe::Lead => {
                if (0.0..=MAX_LEAD_NANOS).contains(&since) {
                    self.lead.observe(since);
                }
            }
            Probe::Slope(position) => {
                let Some(lead) = self.lead.get() else { return };
                if position < MIN_SLOPE_POSITION {
                    return;
                }
                let per_send = (since - lead) / position as f64;
                if (MIN_PER_SEND_NANOS..=MAX_PER_SEND_NANOS).contains(&per_send) {
                    self.per_send.observe(per_send);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = UnixTime::new(100, 999_995_000);
    const COST: Duration = Duration::from_nanos(500);

    fn after(nanos: u64) -> UnixTime {
        let n = T0.nanos as u64 + nanos;
        UnixTime::new(
            T0.secs + (n / 1_000_000_000) as i64,
            (n % 1_000_000_000) as u32,
        )
    }

    /// Feeds a probe of a chunk whose first reply leaves `lead` after t0
    /// and then one every `per_send` ns, plus `stretch` ns.
    fn probe(s: &mut TxSchedule, len: usize, lead: u64, per_send: u64, stretch: u64) {
        let p = s.next_probe(len);
        let at = lead + COST.as_nanos() as u64 + p.position() as u64 * per_send + stretch;
        s.observe(p, T0, after(at), COST);
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
        assert!((1_880..1_960).contains(&per_send), "{per_send}");
        // Across the second boundary, from the start of the first slot on.
        let d3 = s.departure(T0, 3);
        assert_eq!(d3.secs, 101);
        let expected = lead + 3 * per_send;
        assert!(
            (nanos_between(T0, d3) - expected as f64).abs() <= 4.0,
            "{d3:?}"
        );
    }

    #[test]
    fn probes_alternate_and_short_chunks_only_measure_the_lead() {
        let mut s = TxSchedule::default();
        // Until the lead is known, every probe is a lead probe.
        for _ in 0..MIN_SAMPLES {
            let p = s.next_probe(SEND_CHUNK);
            assert_eq!(p, Probe::Lead);
            s.observe(p, T0, after(3_000), COST);
        }
        assert_eq!(s.next_probe(SEND_CHUNK), Probe::Slope(SEND_CHUNK - 1));
        assert_eq!(s.next_probe(SEND_CHUNK), Probe::Lead);
        assert_eq!(s.next_probe(2), Probe::Lead);
        assert_eq!(s.next_probe(2), Probe::Lead);
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
        s.observe(Probe::Lead, T0, UnixTime::new(90, 0), COST);
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
