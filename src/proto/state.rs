//! [`ServerState`]: everything a reply needs to know about the server's
//! synchronization, as one `Copy` value that the discipline side publishes
//! and every worker reads (see `crate::snapshot`).

use super::packet::{LeapIndicator, RefId};
use super::time::{NtpShort, NtpTimestamp};

/// Root dispersion growth rate: RFC 5905's PHI, 15 ppm of elapsed time.
pub const DISPERSION_RATE_PPM: i64 = 15;

/// How the served timeline differs from the kernel clock, for servers that
/// do not steer the kernel clock: served = kernel + offset + freq × (kernel −
/// base), plus a pending leap second. Zero when the kernel clock itself is
/// disciplined.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Correction {
    /// Kernel time at which `offset` holds.
    pub base: NtpTimestamp,
    /// Served minus kernel time at `base`, in 2^-32 s units.
    pub offset: i64,
    /// Frequency of the served timeline relative to the kernel clock
    /// (dimensionless: 1e-6 is 1 ppm faster).
    pub freq: f64,
    /// Served time (as it would be without the leap) at which a leap second
    /// takes effect; meaningless while `leap_step` is 0. Lets workers insert
    /// or delete the second exactly at midnight UTC without the writer
    /// having to publish at that instant.
    pub leap_at: NtpTimestamp,
    /// Whole seconds added to the served time from `leap_at` on: -1 inserts
    /// a second (NTP time repeats 23:59:59, the wire form of 23:59:60), +1
    /// deletes 23:59:59 (`leap_at` is then 23:59:59); 0 = no leap pending.
    pub leap_step: i8,
}

impl Correction {
    /// No correction: serve the kernel clock as is.
    pub const NONE: Correction = Correction {
        base: NtpTimestamp::ZERO,
        offset: 0,
        freq: 0.0,
        leap_at: NtpTimestamp::ZERO,
        leap_step: 0,
    };

    /// Maps a kernel-clock timestamp onto the served timeline.
    pub fn apply(&self, kernel: NtpTimestamp) -> NtpTimestamp {
        let served = if self.freq == 0.0 {
            kernel.add_units(self.offset)
        } else {
            let elapsed = kernel.diff_units(self.base) as f64;
            // `as` saturates; a frequency term beyond ±2^63 units is nonsense anyway.
            kernel.add_units(self.offset.saturating_add((elapsed * self.freq) as i64))
        };
        if self.leap_step != 0 && served.diff_units(self.leap_at) >= 0 {
            served.add_units((self.leap_step as i64) << 32)
        } else {
            served
        }
    }
}

/// Everything a reply needs, published by the single writer and copied by
/// each worker once per batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerState {
    /// Leap indicator to send; `Unsynchronized` means clients must not use us.
    pub leap: LeapIndicator,
    /// Stratum to send (0 when unsynchronized).
    pub stratum: u8,
    /// Precision of the clock (log2 seconds), measured at start-up.
    pub precision: i8,
    /// Reference identifier to send.
    pub reference_id: RefId,
    /// When the served time was last set or corrected.
    pub reference_time: NtpTimestamp,
    /// Round-trip delay to the primary reference.
    pub root_delay: NtpShort,
    /// Root dispersion at `dispersion_base`; grows by
    /// [`DISPERSION_RATE_PPM`] of the time elapsed since.
    pub root_dispersion: NtpShort,
    /// Served time at which `root_dispersion` held.
    pub dispersion_base: NtpTimestamp,
    /// Served time minus kernel time.
    pub correction: Correction,
}

impl ServerState {
    /// Not synchronized to anything: LI 3, stratum 0, refid `INIT`, so that
    /// clients never adopt our time.
    pub const fn unsynchronized(precision: i8) -> Self {
        ServerState {
            leap: LeapIndicator::Unsynchronized,
            stratum: 0,
            precision,
            reference_id: RefId::INIT,
            reference_time: NtpTimestamp::ZERO,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            dispersion_base: NtpTimestamp::ZERO,
            correction: Correction::NONE,
        }
    }

    /// Serving the undisciplined local clock at `stratum` (refid `LOCL`), as
    /// of `now`. The writer re-publishes this periodically so that the
    /// reference time stays recent and root dispersion small.
    pub const fn local_clock(stratum: u8, precision: i8, now: NtpTimestamp) -> Self {
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum,
            precision,
            reference_id: RefId::LOCL,
            reference_time: now,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            dispersion_base: now,
            correction: Correction::NONE,
        }
    }

    /// Whether clients may use our time.
    pub fn is_synchronized(&self) -> bool {
        self.leap != LeapIndicator::Unsynchronized
    }

    /// Root dispersion at served time `at`: the base value plus 15 ppm of the
    /// time elapsed since `dispersion_base` (never less than the base).
    pub fn root_dispersion_at(&self, at: NtpTimestamp) -> NtpShort {
        let elapsed = at.diff_units(self.dispersion_base);
        if elapsed <= 0 {
            return self.root_dispersion;
        }
        // elapsed < 2^63, so elapsed / 1e6 * 15 cannot overflow.
        let growth = elapsed / 1_000_000 * DISPERSION_RATE_PPM;
        self.root_dispersion
            .saturating_add(NtpShort::from_units(growth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: f64) -> NtpTimestamp {
        NtpTimestamp::from_bits(0xE000_0000_0000_0000).add_secs(secs)
    }

    #[test]
    fn dispersion_grows_at_15_ppm() {
        let mut s = ServerState::local_clock(10, -20, ts(0.0));
        s.root_dispersion = NtpShort::from_secs_f64(0.001);
        let after_1000s = s.root_dispersion_at(ts(1000.0)).as_secs_f64();
        assert!((after_1000s - 0.016).abs() < 1e-4, "{after_1000s}");
        assert_eq!(s.root_dispersion_at(ts(-5.0)), s.root_dispersion);
    }

    #[test]
    fn dispersion_saturates_instead_of_wrapping() {
        let s = ServerState::local_clock(10, -20, ts(0.0));
        let far = s.dispersion_base.add_units(i64::MAX);
        assert!(s.root_dispersion_at(far).as_secs_f64() > 1000.0);
    }

    #[test]
    fn correction_applies_offset_and_frequency() {
        let c = Correction {
            base: ts(0.0),
            offset: crate::proto::time::secs_to_units(2.5),
            freq: 100e-6,
            ..Correction::NONE
        };
        let served = c.apply(ts(1000.0));
        let expected = 1000.0 + 2.5 + 0.1;
        assert!((served.diff_secs(ts(0.0)) - expected).abs() < 1e-9);
        assert_eq!(Correction::NONE.apply(ts(7.0)), ts(7.0));
    }

    #[test]
    fn inserted_leap_second_repeats_the_last_second_exactly_at_midnight() {
        let midnight = ts(86_400.0);
        let c = Correction {
            offset: crate::proto::time::secs_to_units(0.25),
            leap_at: midnight,
            leap_step: -1,
            ..Correction::NONE
        };
        // Served 23:59:59.75 just before, then 23:59:59.0 again (23:59:60).
        assert_eq!(c.apply(ts(86_399.5)), ts(86_399.75));
        assert_eq!(c.apply(ts(86_399.75)), ts(86_399.0));
        assert_eq!(c.apply(ts(86_400.75)), ts(86_400.0));
    }

    #[test]
    fn deleted_leap_second_skips_23_59_59() {
        let c = Correction {
            leap_at: ts(86_399.0),
            leap_step: 1,
            ..Correction::NONE
        };
        assert_eq!(c.apply(ts(86_398.5)), ts(86_398.5));
        assert_eq!(c.apply(ts(86_399.0)), ts(86_400.0));
    }

    #[test]
    fn unsynchronized_state_says_so() {
        let s = ServerState::unsynchronized(-20);
        assert!(!s.is_synchronized());
        assert_eq!(s.reference_id, RefId::INIT);
        assert_eq!(s.stratum, 0);
        assert!(ServerState::local_clock(10, -20, ts(0.0)).is_synchronized());
    }
}
