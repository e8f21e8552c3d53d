//! What a load thread counts and records during a step: plain integer
//! counters (every request ends in exactly one of valid, invalid, KoD,
//! late, lost; other datagrams are duplicates, unmatched, stale, from a
//! wrong source or malformed) and HDR histograms of round-trip time,
//! offset and server residence, in nanoseconds. Recording never allocates:
//! the histograms have fixed bounds and saturate. With `--timeline`, a
//! [`Timeline`] also counts requests sent and answered validly per interval
//! of send time (its buckets are allocated once per step).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::validate::{Invalid, KissCounts, Sample};

/// Largest value a histogram holds: one hour in nanoseconds.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept (0.1 % resolution).
const HIST_DIGITS: u8 = 3;

/// Counters of one thread (or their sum) for one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests due by the schedule when sending stopped.
    pub scheduled: u64,
    /// Requests the kernel accepted.
    pub sent: u64,
    /// Requests that failed to send for good (not a full buffer).
    pub send_errors: u64,
    /// Send calls that found the socket buffer full (retried later).
    pub send_would_block: u64,
    /// Send calls refused because of an ICMP error from an earlier one
    /// (ECONNREFUSED: nothing listening at the target).
    pub refused: u64,
    /// Send calls (GSO sends or sendmmsg) that sent something.
    pub send_calls: u64,
    /// Requests answered validly within the timeout.
    pub valid: u64,
    /// Of `valid`, replies from a server that says it is unsynchronized,
    /// counted as valid by `--accept-unsynchronized`.
    pub valid_unsynchronized: u64,
    /// Requests answered after the timeout (but within twice it).
    pub late: u64,
    /// Requests without a matched reply within twice the timeout.
    pub lost: u64,
    /// Requests answered with an invalid reply, by [`Invalid::index`].
    pub invalid: [u64; Invalid::ALL.len()],
    /// Requests answered with a kiss-o'-death, by code.
    pub kod: KissCounts,
    /// Datagrams read, and those that answer no outstanding request.
    pub other: Others,
    /// Replies without a kernel RX timestamp (a clock read stood in).
    pub missing_rx_stamps: u64,
    /// Matched replies whose T1 is a kernel TX stamp.
    pub tx_stamps_used: u64,
    /// Matched replies with `--precise-tx` whose TX stamp never came (a
    /// clock read stood in).
    pub tx_stamps_missing: u64,
    /// TX stamps read that matched no outstanding request.
    pub tx_stamps_unmatched: u64,
    /// Valid replies with a negative round trip: the server's T3 − T2
    /// exceeds our T4 − T1, which causality forbids when both sides stamp
    /// honestly (a server T3 in the future, or T2 in the past).
    pub negative_rtt: u64,
    /// Datagrams the kernel dropped at our sockets (`SO_RXQ_OVFL` /
    /// `SO_MEMINFO` drop counts).
    pub own_drops: u64,
    /// recvmmsg calls that returned data.
    pub recv_calls: u64,
    /// Largest lag of the send schedule, nanoseconds.
    pub max_lag_ns: u64,
    /// CPU time the load thread used while sending, nanoseconds.
    pub cpu_ns: u64,
    /// Times the load thread was preempted while sending (involuntary
    /// context switches: something else wanted its core).
    pub preempted: u64,
}

impl Counters {
    /// Requests answered invalidly, all reasons.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }

    /// Adds another thread's counters (maxima take the larger).
    pub fn merge(&mut self, o: &Counters) {
        self.scheduled += o.scheduled;
        self.sent += o.sent;
        self.send_errors += o.send_errors;
        self.send_would_block += o.send_would_block;
        self.refused += o.refused;
        self.send_calls += o.send_calls;
        self.valid += o.valid;
        self.valid_unsynchronized += o.valid_unsynchronized;
        self.late += o.late;
        self.lost += o.lost;
        for (a, b) in self.invalid.iter_mut().zip(o.invalid) {
            *a += b;
        }
        self.kod.merge(&o.kod);
        self.other.merge(&o.other);
        self.missing_rx_stamps += o.missing_rx_stamps;
        self.tx_stamps_used += o.tx_stamps_used;
        self.tx_stamps_missing += o.tx_stamps_missing;
        self.tx_stamps_unmatched += o.tx_stamps_unmatched;
        self.negative_rtt += o.negative_rtt;
        self.own_drops += o.own_drops;
        self.recv_calls += o.recv_calls;
        self.max_lag_ns = self.max_lag_ns.max(o.max_lag_ns);
        self.cpu_ns += o.cpu_ns;
        self.preempted += o.preempted;
    }
}

/// All datagrams read, and those that answer no outstanding request (the
/// report's `other_datagrams`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Others {
    /// All datagrams read.
    pub received: u64,
    /// Second and later replies to one request.
    pub duplicates: u64,
    /// Origin matches no request (wrong origin, garbage, or a reply to a
    /// request so old its slot was reused).
    pub unmatched: u64,
    /// Replies to requests already counted lost (after twice the timeout).
    pub stale: u64,
    /// From an address other than the target.
    pub wrong_source: u64,
    /// Shorter than an NTP header.
    pub malformed: u64,
}

impl Others {
    /// Adds another thread's counts.
    pub fn merge(&mut self, o: &Others) {
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.unmatched += o.unmatched;
        self.stale += o.stale;
        self.wrong_source += o.wrong_source;
        self.malformed += o.malformed;
    }
}

/// Requests sent and validly answered, by the interval of the step in
/// which they were sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Bucket width, nanoseconds.
    pub interval_ns: u64,
    /// The step's start, nanoseconds since 1970 (the clock of T1).
    pub start_ns: i64,
    /// Requests sent per bucket.
    pub sent: Vec<u64>,
    /// Of those, requests that got a valid reply.
    pub valid: Vec<u64>,
}

impl Timeline {
    /// Empty buckets covering `duration_ns` from `start_ns`.
    pub fn new(interval_ns: u64, start_ns: i64, duration_ns: u64) -> Timeline {
        let interval_ns = interval_ns.max(1);
        let n = duration_ns.div_ceil(interval_ns).max(1) as usize;
        Timeline {
            interval_ns,
            start_ns,
            sent: vec![0; n],
            valid: vec![0; n],
        }
    }

    /// The bucket of a request sent at `t1_ns` (sends after the end count
    /// in the last bucket, before the start in the first).
    #[inline]
    pub fn bucket(&self, t1_ns: i64) -> usize {
        let offset = t1_ns.saturating_sub(self.start_ns).max(0) as u64;
        ((offset / self.interval_ns) as usize).min(self.sent.len() - 1)
    }

    /// Counts `n` requests sent at `t1_ns`.
    #[inline]
    pub fn sent_at(&mut self, t1_ns: i64, n: u64) {
        let b = self.bucket(t1_ns);
        self.sent[b] += n;
    }

    /// Counts a valid reply to a request sent at `t1_ns`.
    #[inline]
    pub fn valid_at(&mut self, t1_ns: i64) {
        let b = self.bucket(t1_ns);
        self.valid[b] += 1;
    }

    /// Adds another thread's buckets (same step, same width).
    pub fn merge(&mut self, o: &Timeline) {
        if self.sent.len() < o.sent.len() {
            self.sent.resize(o.sent.len(), 0);
            self.valid.resize(o.valid.len(), 0);
        }
        for (i, (s, v)) in o.sent.iter().zip(&o.valid).enumerate() {
            self.sent[i] += s;
            self.valid[i] += v;
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low 1, high ≥ 2,
    // digits ≤ 5); a failure here is a bug caught by the tests.
    Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// A histogram of signed values: negatives are kept by magnitude in a
/// second histogram so percentiles keep their sign.
#[derive(Clone, Debug)]
pub struct SignedHistogram {
    pos: Histogram<u64>,
    neg: Histogram<u64>,
}

impl Default for SignedHistogram {
    fn default() -> Self {
        SignedHistogram {
            pos: new_hist(),
            neg: new_hist(),
        }
    }
}

impl SignedHistogram {
    /// Records one value (saturating at ±1 h).
    #[inline]
    pub fn record(&mut self, v: i64) {
        if v >= 0 {
            self.pos.saturating_record(v as u64);
        } else {
            self.neg.saturating_record(v.unsigned_abs());
        }
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.pos.len() + self.neg.len()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, o: &SignedHistogram) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.pos.add(&o.pos);
        let _ = self.neg.add(&o.neg);
    }

    /// Forgets every value (keeps the memory).
    pub fn reset(&mut self) {
        self.pos.reset();
        self.neg.reset();
    }

    /// The value at quantile `q` (0..=1) in signed order (nearest rank),
    /// or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let neg = self.neg.len();
        if rank <= neg {
            // The rank-th smallest signed value is the (neg − rank + 1)-th
            // smallest magnitude among the negatives.
            Some(-(value_at_rank(&self.neg, neg - rank + 1) as i64))
        } else {
            Some(value_at_rank(&self.pos, rank - neg) as i64)
        }
    }

    /// Smallest value.
    pub fn min(&self) -> Option<i64> {
        self.quantile(0.0)
    }

    /// Largest value.
    pub fn max(&self) -> Option<i64> {
        self.quantile(1.0)
    }

    /// The magnitude at quantile `q` (0..=1) of the values' magnitudes
    /// (nearest rank), or `None` when empty: `abs_quantile(0.99)` is the
    /// bound that 99 % of the values stay within on either side.
    pub fn abs_quantile(&self, q: f64) -> Option<u64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut magnitudes = self.pos.clone();
        // Same bounds on both sides, so adding cannot fail.
        let _ = magnitudes.add(&self.neg);
        Some(value_at_rank(&magnitudes, rank))
    }

    /// Largest magnitude.
    pub fn max_abs(&self) -> Option<u64> {
        match (self.pos.is_empty(), self.neg.is_empty()) {
            (true, true) => None,
            (false, true) => Some(self.pos.max()),
            (true, false) => Some(self.neg.max()),
            (false, false) => Some(self.pos.max().max(self.neg.max())),
        }
    }
}

/// The value at 1-based `rank` of a histogram (its bucket's highest
/// equivalent value, as HDR percentiles report).
fn value_at_rank(h: &Histogram<u64>, rank: u64) -> u64 {
    let mut seen = 0;
    for v in h.iter_recorded() {
        seen += v.count_at_value();
        if seen >= rank {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    h.max()
}

/// The histograms of one thread (or their merge) for one step.
#[derive(Clone, Debug, Default)]
pub struct Histograms {
    /// Round-trip time δ.
    pub rtt: SignedHistogram,
    /// Offset θ.
    pub theta: SignedHistogram,
    /// Server residence T3 − T2 (never negative: validation rejects that).
    pub residence: SignedHistogram,
    /// The client's wait for the reply, T4 − T1.
    pub wait: SignedHistogram,
}

impl Histograms {
    /// Records one valid exchange.
    #[inline]
    pub fn record(&mut self, s: &Sample) {
        self.rtt.record(s.rtt_ns);
        self.theta.record(s.theta_ns);
        self.residence.record(s.residence_ns);
        self.wait.record(s.wait_ns);
    }

    /// Adds another set.
    pub fn merge(&mut self, o: &Histograms) {
        self.rtt.merge(&o.rtt);
        self.theta.merge(&o.theta);
        self.residence.merge(&o.residence);
        self.wait.merge(&o.wait);
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.rtt.reset();
        self.theta.reset();
        self.residence.reset();
        self.wait.reset();
    }
}

/// Percentiles of a signed histogram in microseconds, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_us: Option<f64>,
    /// 1st percentile.
    pub p1_us: Option<f64>,
    /// Median.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// Largest.
    pub max_us: Option<f64>,
    /// 99th percentile of the magnitudes: 99 % of the values lie within
    /// ± this.
    pub abs_p99_us: Option<f64>,
    /// Largest magnitude.
    pub max_abs_us: Option<f64>,
}

impl Percentiles {
    /// Summarises `h`.
    pub fn of(h: &SignedHistogram) -> Percentiles {
        let us = |v: Option<i64>| v.map(|ns| ns as f64 / 1000.0);
        Percentiles {
            count: h.len(),
            min_us: us(h.min()),
            p1_us: us(h.quantile(0.01)),
            p50_us: us(h.quantile(0.50)),
            p99_us: us(h.quantile(0.99)),
            max_us: us(h.max()),
            abs_p99_us: h.abs_quantile(0.99).map(|ns| ns as f64 / 1000.0),
            max_abs_us: h.max_abs().map(|ns| ns as f64 / 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_quantiles_keep_their_sign() {
        let mut h = SignedHistogram::default();
        for v in -50..=49 {
            h.record(v * 1000);
        }
        let near = |got: Option<i64>, want: i64| {
            let got = got.unwrap();
            assert!(
                (got - want).abs() <= want.abs() / 1000 + 1,
                "{got} vs {want}"
            );
        };
        assert_eq!(h.len(), 100);
        near(h.min(), -50_000);
        near(h.quantile(0.01), -50_000);
        near(h.quantile(0.02), -49_000);
        near(h.quantile(0.5), -1000);
        near(h.quantile(0.51), 0);
        near(h.max(), 49_000);
        assert_eq!(h.max_abs().map(|v| v / 1000), Some(50));
    }

    #[test]
    fn magnitude_quantiles_pool_both_signs() {
        // 97 values near zero, a tail of three on the negative side only:
        // the signed p99 stays small, the magnitudes' p99 shows the tail.
        let mut h = SignedHistogram::default();
        for v in 0..97 {
            h.record(100 + v);
        }
        for v in [-8_000, -9_000, -10_000] {
            h.record(v);
        }
        assert!(h.quantile(0.99).unwrap() < 200);
        let p99 = h.abs_quantile(0.99).unwrap();
        assert!((9_000..9_100).contains(&p99), "{p99}");
        assert!((10_000..10_100).contains(&h.abs_quantile(1.0).unwrap()));
        assert_eq!(SignedHistogram::default().abs_quantile(0.99), None);
    }

    #[test]
    fn all_negative_and_all_positive_sets_work() {
        let mut neg = SignedHistogram::default();
        for v in [-3, -2, -1] {
            neg.record(v);
        }
        assert_eq!(neg.min(), Some(-3));
        assert_eq!(neg.quantile(0.5), Some(-2));
        assert_eq!(neg.max(), Some(-1));
        let mut pos = SignedHistogram::default();
        pos.record(0);
        pos.record(7);
        assert_eq!(pos.min(), Some(0));
        assert_eq!(pos.max(), Some(7));
        assert_eq!(SignedHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn merge_and_reset() {
        let mut a = Histograms::default();
        let s = Sample {
            rtt_ns: 10_000,
            theta_ns: -300,
            residence_ns: 2_000,
            wait_ns: 12_000,
        };
        a.record(&s);
        let mut b = Histograms::default();
        b.merge(&a);
        b.merge(&a);
        assert_eq!(b.rtt.len(), 2);
        assert_eq!(b.theta.max(), Some(-300));
        let p = Percentiles::of(&b.residence);
        assert_eq!(p.count, 2);
        assert_eq!(p.p50_us, Some(2.0));
        b.reset();
        assert!(b.rtt.is_empty());
        // Values beyond an hour saturate rather than fail.
        b.rtt.record(i64::MAX);
        assert!(b.rtt.max().unwrap() >= HIST_MAX_NS as i64);
    }

    #[test]
    fn timelines_count_by_send_time() {
        let ms = 1_000_000i64;
        let mut t = Timeline::new(500 * ms as u64, 10_000 * ms, 2_000 * ms as u64);
        assert_eq!(t.sent.len(), 4);
        t.sent_at(10_000 * ms, 3);
        t.sent_at(10_499 * ms, 1);
        t.sent_at(11_700 * ms, 2);
        t.sent_at(12_100 * ms, 5); // the tail, after the end
        t.sent_at(9_000 * ms, 1); // before the start: the first bucket
        t.valid_at(10_100 * ms);
        t.valid_at(11_999 * ms);
        assert_eq!(t.sent, [5, 0, 0, 7]);
        assert_eq!(t.valid, [1, 0, 0, 1]);
        let mut all = Timeline::new(500 * ms as u64, 10_000 * ms, 2_000 * ms as u64);
        all.merge(&t);
        all.merge(&t);
        assert_eq!(all.sent, [10, 0, 0, 14]);
        assert_eq!(Timeline::new(300_000_000, 0, 1_000_000_000).sent.len(), 4);
    }

    #[test]
    fn counters_merge() {
        let mut a = Counters {
            sent: 5,
            valid: 4,
            max_lag_ns: 7,
            ..Counters::default()
        };
        a.invalid[Invalid::BadMode.index()] = 1;
        let b = Counters {
            sent: 1,
            max_lag_ns: 3,
            ..a
        };
        a.merge(&b);
        assert_eq!(a.sent, 6);
        assert_eq!(a.valid, 8);
        assert_eq!(a.invalid_total(), 2);
        assert_eq!(a.max_lag_ns, 7);
    }
}
