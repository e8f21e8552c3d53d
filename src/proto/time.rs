//! NTP time formats and their conversion to and from POSIX time.
//!
//! - [`NtpTimestamp`]: the 64-bit on-wire timestamp, 32.32 fixed point seconds
//!   since the start of the current NTP era (era 0 began 1900-01-01, era 1
//!   begins 2036-02-07T06:28:16Z). The era is not on the wire; it is
//!   recovered by choosing the value closest to a pivot time
//!   ([`NtpTimestamp::to_unix`]).
//! - [`NtpShort`]: the 32-bit 16.16 format of root delay and root dispersion.
//! - [`UnixTime`]: seconds and nanoseconds since 1970, what `struct timespec`
//!   (and so `clock_gettime` and `SO_TIMESTAMPING`) carries.
//!
//! Differences of timestamps use wrapping arithmetic, so they stay correct
//! across an era boundary as long as the two times are within ±68 years.

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Fraction units (2^-32 s) in one second.
const FRAC_PER_SEC: i64 = 1 << 32;

/// A POSIX time like `struct timespec`: whole seconds since 1970-01-01 UTC
/// (negative before) and nanoseconds within that second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds, always below 1 000 000 000.
    pub nanos: u32,
}

impl UnixTime {
    /// Builds a time, carrying nanoseconds of 1 s or more into the seconds.
    pub const fn new(secs: i64, nanos: u32) -> Self {
        let carry = (nanos as u64 / NANOS_PER_SEC) as i64;
        UnixTime {
            secs: secs.saturating_add(carry),
            nanos: (nanos as u64 % NANOS_PER_SEC) as u32,
        }
    }

    /// This time as floating-point seconds since 1970 (for logs and tests).
    pub fn as_secs_f64(self) -> f64 {
        self.secs as f64 + self.nanos as f64 * 1e-9
    }

    /// Nanoseconds since 1970, 0 for earlier times (for counting time in
    /// integers, e.g. rate limits).
    pub const fn as_nanos(self) -> u64 {
        if self.secs < 0 {
            return 0;
        }
        (self.secs as u64)
            .saturating_mul(NANOS_PER_SEC)
            .saturating_add(self.nanos as u64)
    }
}

/// A 64-bit NTP timestamp: seconds (high 32 bits) and fraction (low 32 bits,
/// units of 2^-32 s) since the start of its era. The raw value is exactly
/// what travels on the wire (big-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpTimestamp(u64);

impl NtpTimestamp {
    /// The all-zero timestamp, which NTP uses for "unknown".
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    /// Wraps a raw 64-bit on-wire value.
    pub const fn from_bits(bits: u64) -> Self {
        NtpTimestamp(bits)
    }

    /// The raw 64-bit value.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// Reads a timestamp from 8 big-endian bytes.
    pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
        NtpTimestamp(u64::from_be_bytes(bytes))
    }

    /// The timestamp as 8 big-endian bytes.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Seconds within the era (the high 32 bits).
    pub const fn era_seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fraction of a second in units of 2^-32 s (the low 32 bits).
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// Converts a POSIX time, dropping the era (the wire format has none).
    /// The fraction is rounded to the nearest 2^-32 s.
    pub const fn from_unix(t: UnixTime) -> Self {
        let secs = t.secs.wrapping_add(NTP_UNIX_OFFSET) as u32;
        // (nanos * 2^32 + 0.5e9) / 1e9 stays below 2^32 for nanos < 1e9.
        let nanos = if (t.nanos as u64) < NANOS_PER_SEC {
            t.nanos as u64
        } else {
            NANOS_PER_SEC - 1
        };
        let frac = ((nanos << 32) + NANOS_PER_SEC / 2) / NANOS_PER_SEC;
        NtpTimestamp(((secs as u64) << 32) | frac)
    }

    /// Converts to POSIX time, choosing the era that puts the result closest
    /// to `pivot` (any time known to be within 68 years of the true one,
    /// such as the local clock when the timestamp was received).
    pub const fn to_unix(self, pivot: UnixTime) -> UnixTime {
        let pivot_ntp = pivot.secs.wrapping_add(NTP_UNIX_OFFSET);
        let delta = (self.era_seconds().wrapping_sub(pivot_ntp as u32)) as i32 as i64;
        let secs = pivot_ntp.wrapping_add(delta).wrapping_sub(NTP_UNIX_OFFSET);
        // Rounded to the nearest nanosecond; 1e9 carries into the seconds.
        let nanos = ((self.fraction() as u64 * NANOS_PER_SEC) + (1 << 31)) >> 32;
        UnixTime::new(secs, nanos as u32)
    }

    /// `self - earlier` in units of 2^-32 s, correct across an era boundary
    /// when the two are within ±68 years of each other.
    pub const fn diff_units(self, earlier: NtpTimestamp) -> i64 {
        self.0.wrapping_sub(earlier.0) as i64
    }

    /// `self - earlier` in seconds (see [`Self::diff_units`]).
    pub fn diff_secs(self, earlier: NtpTimestamp) -> f64 {
        self.diff_units(earlier) as f64 / FRAC_PER_SEC as f64
    }

    /// This timestamp moved by `units` × 2^-32 s (wrapping into the next or
    /// previous era).
    pub const fn add_units(self, units: i64) -> Self {
        NtpTimestamp(self.0.wrapping_add(units as u64))
    }

    /// This timestamp moved by `secs` seconds (see [`Self::add_units`]).
    pub fn add_secs(self, secs: f64) -> Self {
        self.add_units(secs_to_units(secs))
    }
}

/// Seconds as 2^-32 s units, saturating at the i64 range (±68 years × 2^32).
pub fn secs_to_units(secs: f64) -> i64 {
    // `as` saturates and maps NaN to 0.
    (secs * FRAC_PER_SEC as f64).round() as i64
}

/// The 32-bit NTP short format: 16.16 fixed-point seconds, used for root
/// delay and root dispersion. Saturates rather than wraps: a dispersion that
/// overflows is "very large", never small.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpShort(u32);

impl NtpShort {
    /// Zero seconds.
    pub const ZERO: NtpShort = NtpShort(0);
    /// The largest value, just under 65 536 s.
    pub const MAX: NtpShort = NtpShort(u32::MAX);

    /// Wraps a raw on-wire value.
    pub const fn from_bits(bits: u32) -> Self {
        NtpShort(bits)
    }

    /// The raw on-wire value.
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Converts seconds, rounding to the nearest 2^-16 s; negative and NaN
    /// give zero, values beyond the range give [`NtpShort::MAX`].
    pub fn from_secs_f64(secs: f64) -> Self {
        // `as` saturates at 0 and u32::MAX and maps NaN to 0.
        NtpShort((secs * 65_536.0).round() as u32)
    }

    /// Converts a duration in 2^-32 s units, truncating; negative gives zero.
    pub const fn from_units(units: i64) -> Self {
        if units <= 0 {
            return NtpShort(0);
        }
        let v = (units as u64) >> 16;
        if v > u32::MAX as u64 {
            NtpShort::MAX
        } else {
            NtpShort(v as u32)
        }
    }

    /// The value in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 65_536.0
    }

    /// Sum, saturating at [`NtpShort::MAX`].
    pub const fn saturating_add(self, other: NtpShort) -> Self {
        NtpShort(self.0.saturating_add(other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2036-02-07T06:28:16Z: the first second of NTP era 1.
    const ERA1_START_UNIX: i64 = (1u64 << 32) as i64 - NTP_UNIX_OFFSET;

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        let t = NtpTimestamp::from_unix(UnixTime::new(0, 0));
        assert_eq!(t.era_seconds(), 2_208_988_800);
        assert_eq!(t.fraction(), 0);
    }

    #[test]
    fn half_second_is_half_fraction() {
        let t = NtpTimestamp::from_unix(UnixTime::new(0, 500_000_000));
        assert_eq!(t.fraction(), 1 << 31);
    }

    #[test]
    fn fraction_round_trip_is_within_one_nanosecond() {
        let pivot = UnixTime::new(1_700_000_000, 0);
        for nanos in [0, 1, 2, 499, 999_999_998, 999_999_999, 123_456_789] {
            let t = UnixTime::new(1_700_000_000, nanos);
            let back = NtpTimestamp::from_unix(t).to_unix(pivot);
            assert_eq!(back.secs, t.secs);
            assert!(
                (back.nanos as i64 - nanos as i64).abs() <= 1,
                "{nanos} -> {back:?}"
            );
        }
    }

    #[test]
    fn largest_fraction_rounds_into_the_next_second() {
        let t = NtpTimestamp::from_bits(0xFFFF_FFFF);
        let u = t.to_unix(UnixTime::new(-NTP_UNIX_OFFSET, 0));
        assert_eq!(u, UnixTime::new(-NTP_UNIX_OFFSET + 1, 0));
    }

    #[test]
    fn era_one_starts_at_zero_seconds() {
        let t = NtpTimestamp::from_unix(UnixTime::new(ERA1_START_UNIX, 0));
        assert_eq!(t.to_bits(), 0);
        let last_of_era0 = NtpTimestamp::from_unix(UnixTime::new(ERA1_START_UNIX - 1, 0));
        assert_eq!(last_of_era0.era_seconds(), u32::MAX);
    }

    #[test]
    fn era_is_recovered_from_a_pivot_on_either_side_of_2036() {
        for offset in [-3600 * 24 * 365, -10, -1, 0, 1, 10, 3600 * 24 * 365] {
            let truth = UnixTime::new(ERA1_START_UNIX + offset, 250_000_000);
            let wire = NtpTimestamp::from_unix(truth);
            for pivot_shift in [-1_000_000_000i64, -86_400, 0, 86_400, 1_000_000_000] {
                let pivot = UnixTime::new(truth.secs + pivot_shift, 0);
                assert_eq!(
                    wire.to_unix(pivot),
                    truth,
                    "offset {offset} pivot {pivot_shift}"
                );
            }
        }
    }

    #[test]
    fn difference_across_the_era_boundary_is_small_and_signed() {
        let before = NtpTimestamp::from_unix(UnixTime::new(ERA1_START_UNIX - 2, 0));
        let after = NtpTimestamp::from_unix(UnixTime::new(ERA1_START_UNIX + 3, 0));
        assert_eq!(after.diff_secs(before), 5.0);
        assert_eq!(before.diff_secs(after), -5.0);
        assert_eq!(before.add_secs(5.0), after);
    }

    #[test]
    fn times_before_1970_and_1900_convert() {
        let t = UnixTime::new(-NTP_UNIX_OFFSET, 0); // 1900-01-01: NTP 0 in era 0
        assert_eq!(NtpTimestamp::from_unix(t).to_bits(), 0);
        let pivot = UnixTime::new(-NTP_UNIX_OFFSET + 100, 0);
        assert_eq!(NtpTimestamp::ZERO.to_unix(pivot), t);
    }

    #[test]
    fn unix_time_new_carries_nanoseconds() {
        assert_eq!(
            UnixTime::new(1, 2_500_000_000),
            UnixTime::new(3, 500_000_000)
        );
    }

    #[test]
    fn short_format_saturates_and_rounds() {
        assert_eq!(NtpShort::from_secs_f64(1.0).to_bits(), 0x0001_0000);
        assert_eq!(NtpShort::from_secs_f64(-1.0), NtpShort::ZERO);
        assert_eq!(NtpShort::from_secs_f64(f64::NAN), NtpShort::ZERO);
        assert_eq!(NtpShort::from_secs_f64(1e9), NtpShort::MAX);
        assert_eq!(NtpShort::from_units(1 << 32).to_bits(), 0x0001_0000);
        assert_eq!(NtpShort::from_units(-5), NtpShort::ZERO);
        assert_eq!(NtpShort::from_units(i64::MAX), NtpShort::MAX);
        assert_eq!(
            NtpShort::MAX.saturating_add(NtpShort::from_bits(1)),
            NtpShort::MAX
        );
    }
}
