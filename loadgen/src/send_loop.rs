//! The paced send loop that a load thread ([`crate::engine`]) and the junk
//! flood ([`crate::flood`]) both run for one step: from the step's common
//! start, send what the open-loop [`Schedule`] says is due — in a bounded
//! number of calls per round, so replies are still read while catching up —,
//! let the sender read replies and sleep between rounds, and stop at the end
//! of the schedule or of the step, or on Ctrl-C. Past the end everything is
//! due: the tail goes out before the loop ends, however late the thread
//! woke up (a busy host must not turn a late wake-up into a short run).
//! Then [`linger`] waits a bounded time for the last replies.
//!
//! The loop itself neither allocates nor locks; what a call does is the
//! sender's.

use std::time::{Duration, Instant};

use crate::pacing::Schedule;
use crate::signals::Interrupt;
use crate::timing::{elapsed_ns, nanos, thread_usage, wait_until};

/// Longest single wait for replies while lingering (and while idle).
pub const MAX_WAIT_NS: u64 = 20_000_000;

/// A sender the loop drives.
pub trait PacedSender {
    /// Sends one call of at most `due` datagrams that are due; returns how
    /// many datagrams of the schedule it dealt with (0: none, retry later).
    fn send_call(&mut self, due: u64) -> u64;

    /// Between two rounds: reads what came back and waits for the next
    /// release (see [`Round`]).
    fn between_rounds(&mut self, round: &Round<'_>);

    /// Waits up to `timeout_ns` (0: just looks) for replies and reads them.
    fn await_replies(&mut self, timeout_ns: u64);

    /// Whether replies are still expected ([`linger`] ends early when not).
    fn expects_replies(&self) -> bool {
        true
    }
}

/// Where the loop stands after a round.
#[derive(Clone, Copy, Debug)]
pub struct Round<'a> {
    /// The schedule.
    pub sched: &'a Schedule,
    /// When sending started.
    pub start: Instant,
    /// How long sending lasts, nanoseconds.
    pub duration_ns: u64,
    /// Datagrams of the schedule dealt with so far.
    pub done: u64,
    /// Datagrams that were due when the round began (0: none was).
    pub due: u64,
    /// Of those, datagrams the round's calls left unsent.
    pub left: u64,
}

/// How a step's sending went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Sending stopped early on Ctrl-C.
    pub interrupted: bool,
    /// Datagrams due by the schedule when sending stopped.
    pub scheduled: u64,
    /// How long it sent: the step's duration unless interrupted.
    pub send_window: Duration,
    /// Largest lag behind the schedule, nanoseconds.
    pub max_lag_ns: u64,
    /// CPU time the thread used while sending, nanoseconds.
    pub cpu_ns: u64,
    /// Times the thread was preempted while sending.
    pub preempted: u64,
}

/// Runs `sender` on `sched` from `start` for `duration` (or until
/// `interrupt`), with at most `calls_per_round` send calls between two
/// looks at the replies.
pub fn run(
    sender: &mut impl PacedSender,
    sched: &Schedule,
    start: Instant,
    duration: Duration,
    calls_per_round: usize,
    interrupt: &Interrupt,
) -> Sent {
    let duration_ns = nanos(duration);
    wait_until(start);
    let usage_before = thread_usage();
    let mut done = 0u64;
    let mut interrupted = false;
    let mut max_lag_ns = 0;
    loop {
        if interrupt.stop_requested() {
            interrupted = true;
            break;
        }
        let el = elapsed_ns(start);
        let due = sched.to_send(done, el);
        let mut left = due;
        if due > 0 {
            max_lag_ns = max_lag_ns.max(sched.lag(done, el));
            for _ in 0..calls_per_round {
                if left == 0 {
                    break;
                }
                let consumed = sender.send_call(left);
                if consumed == 0 {
                    break;
                }
                done += consumed;
                left -= consumed;
            }
        }
        if done >= sched.total() || el >= duration_ns {
            break;
        }
        sender.between_rounds(&Round {
            sched,
            start,
            duration_ns,
            done,
            due,
            left,
        });
    }
    let send_end = Duration::from_nanos(elapsed_ns(start));
    let used = thread_usage().since(&usage_before);
    Sent {
        interrupted,
        scheduled: if interrupted {
            sched.due_by(nanos(send_end))
        } else {
            sched.total()
        },
        send_window: if interrupted { send_end } else { duration },
        max_lag_ns,
        cpu_ns: used.cpu_ns,
        preempted: used.preempted,
    }
}

/// Waits up to `limit_ns` for the last replies, in waits of at most
/// [`MAX_WAIT_NS`], until the sender expects none or a second Ctrl-C; then
/// reads whatever is already queued (it still counts).
pub fn linger(sender: &mut impl PacedSender, limit_ns: u64, interrupt: &Interrupt) {
    let began = Instant::now();
    while sender.expects_replies() && !interrupt.hurry() {
        let el = elapsed_ns(began);
        if el >= limit_ns {
            break;
        }
        sender.await_replies((limit_ns - el).min(MAX_WAIT_NS));
    }
    sender.await_replies(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends in calls of up to `call_max` (refusing the first call if
    /// asked to), sleeps through the waits.
    #[derive(Default)]
    struct Counting {
        call_max: u64,
        refuse_first: bool,
        calls: u64,
        sent: u64,
        rounds: u64,
        waits: u64,
    }

    impl PacedSender for Counting {
        fn send_call(&mut self, due: u64) -> u64 {
            self.calls += 1;
            if self.calls == 1 && self.refuse_first {
                return 0;
            }
            let k = due.min(self.call_max);
            self.sent += k;
            k
        }

        fn between_rounds(&mut self, round: &Round<'_>) {
            self.rounds += 1;
            assert!(round.left <= round.due);
            if let Some(next) = round.sched.next_release(round.done) {
                let now = elapsed_ns(round.start);
                self.await_replies(next.saturating_sub(now));
            }
        }

        fn await_replies(&mut self, timeout_ns: u64) {
            self.waits += 1;
            std::thread::sleep(Duration::from_nanos(timeout_ns));
        }
    }

    /// Runs `s` at `rate` for `duration` from `start`, in rounds of four
    /// calls.
    fn send(
        s: &mut Counting,
        rate: f64,
        duration: Duration,
        start: Instant,
        interrupt: &Interrupt,
    ) -> Sent {
        let sched = Schedule::new(rate, nanos(duration), 64);
        run(s, &sched, start, duration, 4, interrupt)
    }

    #[test]
    fn a_late_start_sends_the_whole_schedule_and_lingers_briefly() {
        let mut s = Counting {
            call_max: 30,
            ..Counting::default()
        };
        let start = Instant::now() - Duration::from_millis(150);
        let sent = send(
            &mut s,
            1000.0,
            Duration::from_millis(100),
            start,
            &Interrupt::default(),
        );
        assert_eq!((s.sent, s.calls), (100, 4), "one round of calls");
        assert_eq!(sent.scheduled, 100);
        assert_eq!(sent.send_window, Duration::from_millis(100));
        assert!(!sent.interrupted);
        assert!(sent.max_lag_ns >= 50_000_000, "{sent:?}");
        let waits = s.waits;
        let began = Instant::now();
        linger(&mut s, 30_000_000, &Interrupt::default());
        assert!(began.elapsed() >= Duration::from_millis(30));
        assert!(s.waits >= waits + 3, "waits of at most 20 ms, then a look");
    }

    #[test]
    fn a_refused_call_ends_the_round_and_the_next_one_retries() {
        let mut s = Counting {
            call_max: 64,
            refuse_first: true,
            ..Counting::default()
        };
        let sent = send(
            &mut s,
            10_000.0,
            Duration::from_millis(20),
            Instant::now(),
            &Interrupt::default(),
        );
        assert_eq!((s.sent, sent.scheduled), (200, 200));
        assert!(s.rounds >= 1);
    }

    #[test]
    fn ctrl_c_stops_sending_and_a_second_one_the_linger() {
        let mut s = Counting {
            call_max: 64,
            ..Counting::default()
        };
        let stop = Interrupt::default();
        stop.trigger();
        let sent = send(
            &mut s,
            1000.0,
            Duration::from_secs(1),
            Instant::now(),
            &stop,
        );
        assert!(sent.interrupted);
        assert_eq!((s.sent, sent.scheduled), (0, 1));
        assert!(sent.send_window < Duration::from_secs(1));
        stop.trigger();
        let waits = s.waits;
        linger(&mut s, 10_000_000_000, &stop);
        assert_eq!(s.waits, waits + 1, "only the last look");
    }
}
