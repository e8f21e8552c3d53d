//! The addresses a pool keeps out, and until when: a refusal (KoD DENY or
//! RSTR) for [`REFUSED_BAN`], an unreachable address for a back-off that
//! starts at [`UNREACHABLE_BACKOFF`]`.0` and doubles up to `.1`; at most
//! [`MAX_PENALTIES`] addresses are remembered.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{MAX_PENALTIES, REFUSED_BAN, UNREACHABLE_BACKOFF};

/// Why an address is kept out, and until when.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Penalty {
    /// Monotonic time it may be used again.
    until: f64,
    /// Times it was dropped as unreachable (the back-off doubles each).
    strikes: u32,
}

/// Addresses kept out, bounded.
#[derive(Debug, Default)]
pub(super) struct Penalties {
    map: HashMap<SocketAddr, Penalty>,
}

impl Penalties {
    pub(super) fn blocks(&self, addr: &SocketAddr, now: f64) -> bool {
        self.map.get(addr).is_some_and(|p| now < p.until)
    }

    pub(super) fn refused(&mut self, addr: SocketAddr, now: f64) {
        let strikes = self.map.get(&addr).map_or(0, |p| p.strikes);
        self.insert(
            addr,
            Penalty {
                until: now + REFUSED_BAN,
                strikes,
            },
        );
    }

    /// Records an unreachable address; returns its back-off, s.
    pub(super) fn unreachable(&mut self, addr: SocketAddr, now: f64) -> f64 {
        let strikes = self.map.get(&addr).map_or(0, |p| p.strikes) + 1;
        let backoff =
            (UNREACHABLE_BACKOFF.0 * f64::from(strikes - 1).exp2()).min(UNREACHABLE_BACKOFF.1);
        self.insert(
            addr,
            Penalty {
                until: now + backoff,
                strikes,
            },
        );
        backoff
    }

    /// Inserts, making room by forgetting the record that ends first.
    fn insert(&mut self, addr: SocketAddr, penalty: Penalty) {
        if !self.map.contains_key(&addr) && self.map.len() >= MAX_PENALTIES {
            let first = self
                .map
                .iter()
                .min_by(|a, b| a.1.until.total_cmp(&b.1.until))
                .map(|(a, _)| *a);
            if let Some(first) = first {
                self.map.remove(&first);
            }
        }
        self.map.insert(addr, penalty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_penalty_record_is_bounded() {
        let mut p = Penalties::default();
        for i in 0..(MAX_PENALTIES as u32 + 50) {
            let a = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 123));
            p.unreachable(a, f64::from(i));
        }
        assert_eq!(p.map.len(), MAX_PENALTIES);
        // The oldest records went first.
        assert!(!p.map.contains_key(&SocketAddr::from(([10, 0, 0, 0], 123))));
    }
}
