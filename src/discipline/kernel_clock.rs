//! Access to the kernel clock's discipline interface behind one trait,
//! [`KernelClock`], with two implementations:
//!
//! - [`SystemClock`]: the real thing, `adjtimex`/`clock_adjtime` on
//!   `CLOCK_REALTIME`. Reading (modes = 0) needs no privilege; every write
//!   needs CAP_SYS_TIME and happens only in `kernel` discipline mode.
//! - [`FakeClock`]: a simulated oscillator with an initial offset,
//!   frequency error and random-walk wander, in virtual time, which records
//!   every adjustment, inserts or deletes an armed leap second at its
//!   midnight like the kernel, and can start with a kernel PLL left running
//!   by a previous daemon. Tests and the simulation harness steer it;
//!   nothing in the test suite ever writes to the real clock.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::{LeapIndicator, NtpTimestamp, UnixTime};

/// Why the kernel clock could not be read or adjusted.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The system call failed.
    #[error("{call} failed: {source}{hint}")]
    Os {
        /// What was attempted.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// Advice for an operator.
        hint: &'static str,
    },
}

const EPERM_HINT: &str = "; steering the kernel clock needs CAP_SYS_TIME (run as root, or \
     AmbientCapabilities=CAP_SYS_TIME), or use `[clock] discipline = \"software\"`";

/// The kernel clock's discipline status, as `adjtimex` reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelStatus {
    /// STA_UNSYNC is clear.
    pub synchronized: bool,
    /// Maximum error, s (the kernel adds 500 µs to it every second).
    pub maxerror: f64,
    /// Estimated error, s.
    pub esterror: f64,
    /// Leap second armed (STA_INS / STA_DEL), else `NoWarning`.
    pub leap: LeapIndicator,
    /// Frequency correction, ppm.
    pub frequency_ppm: f64,
}

/// The kernel clock's discipline interface.
pub trait KernelClock {
    /// Reads the status without changing anything (modes = 0).
    fn status(&self) -> Result<KernelStatus, ClockError>;
    /// Sets the frequency correction, ppm (the kernel takes ±500).
    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError>;
    /// Steps the clock by `secs`.
    fn step(&mut self, secs: f64) -> Result<(), ClockError>;
    /// Arms (or disarms, with `NoWarning`) a leap second at the next UTC
    /// midnight; the kernel inserts or deletes it itself.
    fn set_leap(&mut self, leap: LeapIndicator) -> Result<(), ClockError>;
    /// Marks the clock synchronized with the given error bounds (s), or
    /// unsynchronized with `None`.
    fn set_sync(&mut self, errors: Option<(f64, f64)>) -> Result<(), ClockError>;
    /// Takes the clock over from whoever steered it before (like chronyd
    /// at start): cancels any `adjtime()` slew and any offset the kernel
    /// PLL still has to work off, switches the PLL, FLL and PPS discipline
    /// off, disarms leap seconds and marks the clock unsynchronized.
    fn reset_pll(&mut self) -> Result<(), ClockError>;
}

/// The real `CLOCK_REALTIME`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Kernel frequency units per ppm (16-bit binary fraction).
const FREQ_UNITS_PER_PPM: f64 = 65_536.0;

fn zeroed_timex() -> libc::timex {
    // SAFETY: `timex` is a plain C struct of integers (and padding); all
    // zeroes is a valid value of it, and modes = 0 means "change nothing".
    unsafe { std::mem::zeroed() }
}

fn adjtime(tx: &mut libc::timex, call: &'static str) -> Result<i32, ClockError> {
    // SAFETY: `tx` is a valid, exclusively borrowed timex for the duration
    // of the call; the kernel reads and writes only that struct.
    let rc = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        let hint = if source.raw_os_error() == Some(libc::EPERM) {
            EPERM_HINT
        } else {
            ""
        };
        return Err(ClockError::Os { call, source, hint });
    }
    Ok(rc)
}

impl SystemClock {
    fn modify(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&mut libc::timex),
    ) -> Result<(), ClockError> {
        let mut tx = zeroed_timex();
        f(&mut tx);
        adjtime(&mut tx, call).map(|_| ())
    }
}

impl KernelClock for SystemClock {
    fn status(&self) -> Result<KernelStatus, ClockError> {
        let mut tx = zeroed_timex();
        adjtime(&mut tx, "clock_adjtime (read)")?;
        let leap = if tx.status & libc::STA_INS != 0 {
            LeapIndicator::InsertSecond
        } else if tx.status & libc::STA_DEL != 0 {
            LeapIndicator::DeleteSecond
        } else {
            LeapIndicator::NoWarning
        };
        Ok(KernelStatus {
            synchronized: tx.status & libc::STA_UNSYNC == 0,
            maxerror: tx.maxerror as f64 * 1e-6,
            esterror: tx.esterror as f64 * 1e-6,
            leap,
            frequency_ppm: tx.freq as f64 / FREQ_UNITS_PER_PPM,
        })
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError> {
        let units = (ppm.clamp(-500.0, 500.0) * FREQ_UNITS_PER_PPM).round();
        self.modify("clock_adjtime (frequency)", |tx| {
            tx.modes = libc::ADJ_FREQUENCY;
            tx.freq = units as _;
        })
    }

    fn step(&mut self, secs: f64) -> Result<(), ClockError> {
        // ADJ_SETOFFSET takes a normalized timespec-like value: whole
        // seconds rounded down, nanoseconds in [0, 1e9).
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0);
        self.modify("clock_adjtime (step)", |tx| {
            tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
            tx.time.tv_sec = whole as _;
            tx.time.tv_usec = nanos as _;
        })
    }

    fn set_leap(&mut self, leap: LeapIndicator) -> Result<(), ClockError> {
        let mut tx = zeroed_timex();
        adjtime(&mut tx, "clock_adjtime (read)")?;
        let mut status = tx.status & !(libc::STA_INS | libc::STA_DEL);
        status |= match leap {
            LeapIndicator::InsertSecond => libc::STA_INS,
            LeapIndicator::DeleteSecond => libc::STA_DEL,
            _ => 0,
        };
        self.modify("clock_adjtime (leap)", |tx| {
            tx.modes = libc::ADJ_STATUS;
            tx.status = status;
        })
    }

    fn set_sync(&mut self, errors: Option<(f64, f64)>) -> Result<(), ClockError> {
        let mut tx = zeroed_timex();
        adjtime(&mut tx, "clock_adjtime (read)")?;
        let (status, maxerror, esterror) = match errors {
            Some((max, est)) => (tx.status & !libc::STA_UNSYNC, max, est),
            None => (tx.status | libc::STA_UNSYNC, 16.0, 16.0),
        };
        self.modify("clock_adjtime (sync status)", |tx| {
            tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
            tx.status = status;
            tx.maxerror = (maxerror * 1e6).min(16e6) as _;
            tx.esterror = (esterror * 1e6).min(16e6) as _;
        })
    }

    fn reset_pll(&mut self) -> Result<(), ClockError> {
        // adjtime()'s slew: ADJ_OFFSET_SINGLESHOT alone sets it (to 0).
        self.modify("clock_adjtime (cancel adjtime)", |tx| {
            tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
            tx.offset = 0;
        })?;
        // The PLL's offset: the kernel takes ADJ_OFFSET only with STA_PLL
        // on, and applies ADJ_STATUS first; a zero offset leaves the
        // frequency alone.
        self.modify("clock_adjtime (PLL offset)", |tx| {
            tx.modes = libc::ADJ_STATUS | libc::ADJ_OFFSET;
            tx.status = libc::STA_PLL;
            tx.offset = 0;
        })?;
        // PLL, FLL, PPS and leap flags off; unsynchronized until we are.
        self.modify("clock_adjtime (status)", |tx| {
            tx.modes = libc::ADJ_STATUS;
            tx.status = libc::STA_UNSYNC;
        })
    }
}

/// One adjustment made to a [`FakeClock`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FakeOp {
    /// `step(secs)`.
    Step(f64),
    /// `set_frequency(ppm)`.
    Frequency(f64),
    /// `set_leap(leap)`.
    Leap(LeapIndicator),
    /// `set_sync(Some(..))` (true) or `set_sync(None)` (false).
    Sync(bool),
    /// `reset_pll()`.
    ResetPll,
}

#[derive(Debug)]
struct FakeState {
    /// Unix time where true time starts.
    epoch: UnixTime,
    /// Virtual true time since `epoch`, s.
    now: f64,
    /// Kernel clock minus true time, s.
    error: f64,
    /// Monotonic clock reading, s.
    mono: f64,
    natural_freq: f64,
    wander: f64,
    rng: u64,
    freq_ppm: f64,
    leap: LeapIndicator,
    /// Unix time of the midnight whose leap second was applied.
    leap_applied_at: Option<i64>,
    leaps: u32,
    /// A kernel PLL left running, with the offset it still has to apply.
    pll: bool,
    pll_offset: f64,
    sync: Option<(f64, f64)>,
    ops: Vec<FakeOp>,
}

impl FakeState {
    fn normal(&mut self) -> f64 {
        // xorshift64* and Box–Muller: reproducible, dependency-free noise.
        let mut uniform = || {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u1, u2) = (uniform(), uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The kernel clock as Unix seconds.
    fn kernel_unix(&self) -> f64 {
        self.epoch.as_secs_f64() + self.now + self.error
    }

    /// `secs` after the epoch, as an NTP timestamp.
    fn at(&self, secs: f64) -> NtpTimestamp {
        NtpTimestamp::from_unix(self.epoch).add_secs(secs)
    }

    /// What the kernel does with an armed leap second as its clock goes
    /// from `before` to `after` (Unix s): an insertion repeats the last
    /// second of the day (the clock goes back 1 s at midnight), a deletion
    /// skips it (forward 1 s at 23:59:59). Once per midnight.
    fn apply_leap(&mut self, before: f64, after: f64) {
        let midnight = (before.div_euclid(86_400.0) as i64 + 1) * 86_400;
        let (at, jump) = match self.leap {
            LeapIndicator::InsertSecond => (midnight as f64, -1.0),
            LeapIndicator::DeleteSecond => (midnight as f64 - 1.0, 1.0),
            _ => return,
        };
        if before < at && after >= at && self.leap_applied_at != Some(midnight) {
            self.error += jump;
            self.leap_applied_at = Some(midnight);
            self.leaps += 1;
        }
    }

    /// A running PLL works its remaining offset off, at most 500 ppm.
    fn apply_pll(&mut self, dt: f64) {
        if self.pll && self.pll_offset != 0.0 {
            let chunk = self.pll_offset.clamp(-500e-6 * dt, 500e-6 * dt);
            self.error += chunk;
            self.pll_offset -= chunk;
        }
    }
}

/// A simulated kernel clock in virtual time. Cloning gives another handle
/// to the same clock (the simulation advances it, the discipline steers
/// it).
#[derive(Clone, Debug)]
pub struct FakeClock {
    state: Arc<Mutex<FakeState>>,
}

impl FakeClock {
    /// A clock whose true time starts at Unix time `epoch`, `offset` s
    /// ahead of true time, running `freq` fast (1e-6 = 1 ppm), with a
    /// random-walk frequency wander of `wander` per √s, noise seeded by
    /// `seed`.
    pub fn new(epoch: UnixTime, offset: f64, freq: f64, wander: f64, seed: u64) -> Self {
        FakeClock {
            state: Arc::new(Mutex::new(FakeState {
                epoch,
                now: 0.0,
                error: offset,
                mono: 1000.0,
                natural_freq: freq,
                wander,
                rng: seed | 1,
                freq_ppm: 0.0,
                leap: LeapIndicator::NoWarning,
                leap_applied_at: None,
                leaps: 0,
                pll: false,
                pll_offset: 0.0,
                sync: None,
                ops: Vec::new(),
            })),
        }
    }

    /// Leaves the kernel PLL running with `offset` s still to apply, as
    /// another daemon might have (not an adjustment: not recorded).
    pub fn leave_pll_running(&self, offset: f64) {
        let mut s = self.lock();
        s.pll = true;
        s.pll_offset = offset;
    }

    /// Whether a PLL runs, and the offset it has left to apply, s.
    pub fn pll(&self) -> (bool, f64) {
        let s = self.lock();
        (s.pll, s.pll_offset)
    }

    /// Leap seconds the clock inserted or deleted.
    pub fn leaps_applied(&self) -> u32 {
        self.lock().leaps
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock can only come from a test that is
        // failing anyway; keep using the state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `secs` of true time pass.
    pub fn advance(&self, secs: f64) {
        let mut s = self.lock();
        let mut left = secs.max(0.0);
        while left > 0.0 {
            let dt = left.min(1.0);
            let rate = s.natural_freq + s.freq_ppm * 1e-6;
            let before = s.kernel_unix();
            s.error += rate * dt;
            s.mono += (1.0 + rate) * dt;
            s.now += dt;
            s.apply_pll(dt);
            let after = s.kernel_unix();
            s.apply_leap(before, after);
            if s.wander > 0.0 {
                let step = s.wander * dt.sqrt() * s.normal();
                s.natural_freq += step;
            }
            left -= dt;
        }
    }

    /// Virtual true time since the epoch, s.
    pub fn elapsed(&self) -> f64 {
        self.lock().now
    }

    /// True time now.
    pub fn true_time(&self) -> NtpTimestamp {
        let s = self.lock();
        s.at(s.now)
    }

    /// What the kernel clock reads now.
    pub fn kernel_time(&self) -> NtpTimestamp {
        let s = self.lock();
        s.at(s.now + s.error)
    }

    /// What the kernel clock reads now, as Unix time (era and all).
    pub fn kernel_unix(&self) -> UnixTime {
        let s = self.lock();
        s.at(s.now + s.error).to_unix(s.epoch)
    }

    /// The monotonic clock (runs at the kernel clock's rate, never steps).
    pub fn mono(&self) -> f64 {
        self.lock().mono
    }

    /// Kernel clock minus true time, s.
    pub fn error(&self) -> f64 {
        self.lock().error
    }

    /// How fast the kernel clock runs against true time (oscillator error
    /// plus frequency correction; 1e-6 = 1 ppm fast).
    pub fn rate_error(&self) -> f64 {
        let s = self.lock();
        s.natural_freq + s.freq_ppm * 1e-6
    }

    /// The oscillator's own frequency error now.
    pub fn natural_freq(&self) -> f64 {
        self.lock().natural_freq
    }

    /// Every adjustment made so far, in order.
    pub fn operations(&self) -> Vec<FakeOp> {
        self.lock().ops.clone()
    }
}

impl KernelClock for FakeClock {
    fn status(&self) -> Result<KernelStatus, ClockError> {
        let s = self.lock();
        Ok(KernelStatus {
            synchronized: s.sync.is_some(),
            maxerror: s.sync.map_or(16.0, |e| e.0),
            esterror: s.sync.map_or(16.0, |e| e.1),
            leap: s.leap,
            frequency_ppm: s.freq_ppm,
        })
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError> {
        let mut s = self.lock();
        s.freq_ppm = ppm.clamp(-500.0, 500.0);
        s.ops.push(FakeOp::Frequency(ppm));
        Ok(())
    }

    fn step(&mut self, secs: f64) -> Result<(), ClockError> {
        let mut s = self.lock();
        s.error += secs;
        s.ops.push(FakeOp::Step(secs));
        Ok(())
    }

    fn set_leap(&mut self, leap: LeapIndicator) -> Result<(), ClockError> {
        let mut s = self.lock();
        s.leap = leap;
        s.ops.push(FakeOp::Leap(leap));
        Ok(())
    }

    fn set_sync(&mut self, errors: Option<(f64, f64)>) -> Result<(), ClockError> {
        let mut s = self.lock();
        s.sync = errors;
        s.ops.push(FakeOp::Sync(errors.is_some()));
        Ok(())
    }

    fn reset_pll(&mut self) -> Result<(), ClockError> {
        let mut s = self.lock();
        s.pll = false;
        s.pll_offset = 0.0;
        s.leap = LeapIndicator::NoWarning;
        s.sync = None;
        s.ops.push(FakeOp::ResetPll);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The real clock's read-only path (modes = 0) is exercised once, by
    // tests/kernel_discipline.rs.

    #[test]
    fn fake_clock_drifts_and_obeys_adjustments() {
        let epoch = UnixTime::new(1_550_000_000, 0);
        let mut c = FakeClock::new(epoch, 0.1, 50e-6, 0.0, 1);
        c.advance(100.0);
        assert!((c.error() - (0.1 + 0.005)).abs() < 1e-12);
        c.set_frequency(-50.0).unwrap();
        c.advance(100.0);
        assert!((c.error() - 0.105).abs() < 1e-12);
        assert!(c.rate_error().abs() < 1e-15);
        c.step(-0.105).unwrap();
        assert!(c.error().abs() < 1e-12);
        assert!((c.kernel_time().diff_secs(c.true_time())).abs() < 1e-9);
        assert_eq!(
            c.operations(),
            vec![FakeOp::Frequency(-50.0), FakeOp::Step(-0.105)]
        );
    }

    #[test]
    fn wander_moves_the_frequency_reproducibly() {
        let epoch = UnixTime::new(1_550_000_000, 0);
        let a = FakeClock::new(epoch, 0.0, 0.0, 1e-9, 7);
        let b = FakeClock::new(epoch, 0.0, 0.0, 1e-9, 7);
        a.advance(3600.0);
        b.advance(3600.0);
        assert_eq!(a.natural_freq(), b.natural_freq());
        assert!(a.natural_freq() != 0.0 && a.natural_freq().abs() < 1e-6);
    }

    #[test]
    fn fake_clock_applies_an_armed_leap_second_once() {
        // 2016-12-31T23:59:50Z.
        let epoch = UnixTime::new(1_483_228_790, 0);
        let mut c = FakeClock::new(epoch, 0.0, 0.0, 0.0, 1);
        c.set_leap(LeapIndicator::InsertSecond).unwrap();
        c.advance(20.0);
        assert_eq!(c.leaps_applied(), 1);
        assert!((c.error() + 1.0).abs() < 1e-9, "{}", c.error());
        // Still armed (the kernel leaves STA_INS set), but not again
        // until the next midnight.
        c.advance(3600.0);
        assert_eq!(c.leaps_applied(), 1);
        let mut d = FakeClock::new(epoch, 0.0, 0.0, 0.0, 1);
        d.set_leap(LeapIndicator::DeleteSecond).unwrap();
        d.advance(20.0);
        assert!((d.error() - 1.0).abs() < 1e-9, "{}", d.error());
    }

    #[test]
    fn a_leftover_pll_offset_moves_the_clock_until_reset() {
        let epoch = UnixTime::new(1_550_000_000, 0);
        let mut c = FakeClock::new(epoch, 0.0, 0.0, 0.0, 1);
        c.leave_pll_running(0.05);
        c.advance(10.0);
        assert!((c.error() - 0.005).abs() < 1e-9, "{}", c.error());
        c.reset_pll().unwrap();
        assert_eq!(c.pll(), (false, 0.0));
        c.advance(100.0);
        assert!((c.error() - 0.005).abs() < 1e-9, "{}", c.error());
    }
}
