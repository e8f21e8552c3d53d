//! The open-loop send schedule of one thread: request k is due at k / rate
//! after the start, whatever the server does. Requests go out in batches
//! sized to the rate — as many as fall due in one [`TICK_NS`], at most the
//! largest batch — so a batch is released when that many are due; a thread
//! that falls behind sends what is overdue in full batches (catching up)
//! and its lag is recorded. Pure arithmetic on nanoseconds since the start.

/// The pacing granularity: a batch holds about this much of the schedule.
pub const TICK_NS: u64 = 50_000;

/// One thread's schedule for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
    batch: u64,
}

impl Schedule {
    /// `rate` requests per second for `duration_ns`, batches of at most
    /// `max_batch`.
    pub fn new(rate: f64, duration_ns: u64, max_batch: usize) -> Schedule {
        Schedule::with_tick(rate, duration_ns, max_batch, TICK_NS)
    }

    /// The same with batches of about `tick_ns` of the schedule.
    pub fn with_tick(rate: f64, duration_ns: u64, max_batch: usize, tick_ns: u64) -> Schedule {
        let exact = rate * duration_ns as f64 * 1e-9;
        let total = ((exact - 1e-9).ceil() as u64).max(1);
        let batch =
            ((rate * tick_ns as f64 * 1e-9).round() as u64).clamp(1, max_batch.max(1) as u64);
        Schedule { rate, total, batch }
    }

    /// Requests in the whole schedule.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Requests per batch when on time.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Offset of request `k` from the start, in nanoseconds.
    pub fn time_of(&self, k: u64) -> u64 {
        (k as f64 * 1e9 / self.rate) as u64
    }

    /// Requests due by `elapsed_ns` (request 0 is due at once).
    pub fn due_by(&self, elapsed_ns: u64) -> u64 {
        let due = (elapsed_ns as f64 * 1e-9 * self.rate).floor() as u64 + 1;
        due.min(self.total)
    }

    /// How many to send now, having sent `sent`: everything due once a
    /// batch's worth (or the rest of the schedule) is due, else nothing.
    pub fn to_send(&self, sent: u64, elapsed_ns: u64) -> u64 {
        let due = self.due_by(elapsed_ns);
        let backlog = due.saturating_sub(sent);
        let want = self.batch.min(self.total.saturating_sub(sent));
        if backlog >= want {
            backlog
        } else {
            0
        }
    }

    /// When (offset from the start, ns) the next batch falls due, having
    /// sent `sent`; `None` when the schedule is done.
    pub fn next_release(&self, sent: u64) -> Option<u64> {
        if sent >= self.total {
            return None;
        }
        let want = self.batch.min(self.total - sent);
        Some(self.time_of(sent + want - 1))
    }

    /// How far behind schedule (ns) a thread is that has sent `sent` by
    /// `elapsed_ns`: the age of the oldest request due but not sent.
    pub fn lag(&self, sent: u64, elapsed_ns: u64) -> u64 {
        if sent >= self.due_by(elapsed_ns) {
            0
        } else {
            elapsed_ns.saturating_sub(self.time_of(sent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn totals_and_batches_follow_the_rate() {
        let s = Schedule::new(20_000.0, 5 * SEC, 64);
        assert_eq!(s.total(), 100_000);
        assert_eq!(s.batch(), 1);
        assert_eq!(Schedule::new(450_000.0, SEC, 64).batch(), 23);
        assert_eq!(Schedule::new(5e6, SEC, 64).batch(), 64);
        assert_eq!(Schedule::new(0.5, SEC, 64).total(), 1);
        assert_eq!(Schedule::new(1000.0, SEC / 2, 64).total(), 500);
        assert_eq!(
            Schedule::with_tick(150_000.0, SEC, 256, 1_000_000).batch(),
            150
        );
        assert_eq!(Schedule::with_tick(1e6, SEC, 256, 1_000_000).batch(), 256);
    }

    #[test]
    fn requests_fall_due_at_k_over_rate() {
        let s = Schedule::new(1000.0, SEC, 64);
        assert_eq!(s.due_by(0), 1);
        assert_eq!(s.due_by(999_999), 1);
        assert_eq!(s.due_by(1_000_000), 2);
        assert_eq!(s.due_by(10 * SEC), 1000);
        assert_eq!(s.time_of(500), SEC / 2);
    }

    #[test]
    fn batches_are_released_when_full_and_the_tail_goes_out() {
        let s = Schedule::new(400_000.0, SEC, 64); // 20 per 50 µs
        assert_eq!(s.batch(), 20);
        assert_eq!(s.to_send(0, 0), 0);
        assert_eq!(s.next_release(0), Some(s.time_of(19)));
        assert_eq!(s.to_send(0, s.time_of(19)), 20);
        // Behind schedule: everything overdue at once.
        assert_eq!(s.to_send(0, 1_000_000), 401);
        assert_eq!(s.lag(0, 1_000_000), 1_000_000);
        assert_eq!(s.lag(401, 1_000_000), 0);
        // The last, partial batch is released as soon as it is all due.
        let total = s.total();
        assert_eq!(s.to_send(total - 5, s.time_of(total - 1)), 5);
        assert_eq!(s.next_release(total), None);
    }
}
