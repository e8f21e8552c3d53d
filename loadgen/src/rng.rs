//! Random transmit timestamps. Real clients put a random value in the
//! transmit timestamp of a request (data minimization: the server learns
//! nothing about the client's clock, and only whoever saw the request can
//! forge its reply); the load generator does the same for every request.
//!
//! wyrand (64-bit state, a multiply and two xors per value) seeded from the
//! OS: fast enough for millions of values per second on the send path. It
//! is not a cryptographic generator; an on-path observer sees the requests
//! anyway, and off-path guessing still faces 40+ random bits per request.

/// A small, fast pseudo-random generator (wyrand).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the OS (`getrandom`), falling back to the
    /// clock and the thread's stack address if that fails.
    pub fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes owned by this frame and the
        // length passed is its size.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if got == seed.len() as isize {
            return Rng::seeded(u64::from_ne_bytes(seed));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        Rng::seeded(now ^ (&local as *const u8 as u64).rotate_left(32))
    }

    /// A generator with a fixed seed (tests).
    pub const fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_and_bits_are_balanced() {
        let mut rng = Rng::seeded(1);
        let mut ones = 0u64;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let v = rng.next_u64();
            ones += v.count_ones() as u64;
            assert!(seen.insert(v));
        }
        let share = ones as f64 / (64.0 * 10_000.0);
        assert!((0.49..0.51).contains(&share), "{share}");
    }

    #[test]
    fn os_seeds_differ() {
        assert_ne!(Rng::from_os().next_u64(), Rng::from_os().next_u64());
    }
}
