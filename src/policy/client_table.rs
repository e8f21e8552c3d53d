//! The bounded table of clients a worker has heard from: what the rate
//! limiter remembers about each. Fixed size, allocated once (the pages are
//! touched only as clients arrive), never grown: a flood of spoofed
//! addresses evicts old entries instead of taking memory.
//!
//! Set-associative like chrony's client log: a keyed hash (folded
//! multiplications with random keys per table, as foldhash and ahash do:
//! an attacker who cannot see the keys cannot aim addresses at one set)
//! picks a set of [`WAYS`] entries; a client is looked for in its set only,
//! and a new client takes the set's empty or least recently allowed entry.
//! One entry is [`ENTRY_BYTES`] bytes.

use std::hash::{BuildHasher, RandomState};

/// Entries per set.
pub const WAYS: usize = 4;

/// What the table keeps per client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    /// The client (see [`super::cidr::client_key`]).
    pub key: u128,
    /// The rate limiter's theoretical arrival time, nanoseconds since the
    /// epoch; 0 marks an empty entry. It only moves forward while a client
    /// is allowed, so the smallest one in a set is the stalest client.
    pub tat: u64,
    /// Requests over the allowance so far (wrapping; the leak count).
    pub limited: u32,
}

/// Bytes per client entry.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Set([Entry; WAYS]);

/// A fixed-size table of [`Entry`] by client key.
pub struct ClientTable {
    sets: Box<[Set]>,
    /// `sets.len() - 1` (a power of two).
    mask: usize,
    keys: [u64; 3],
    evictions: u64,
}

/// The 128-bit product of `a` and `b`, high half folded onto the low.
#[inline]
const fn folded_multiply(a: u64, b: u64) -> u64 {
    let m = a as u128 * b as u128;
    m as u64 ^ (m >> 64) as u64
}

impl ClientTable {
    /// A table for at least `clients` entries (rounded up to a power of
    /// two, at least one set).
    pub fn new(clients: usize) -> ClientTable {
        let sets = clients.div_ceil(WAYS).max(1).next_power_of_two();
        // std's hasher is seeded from the OS's randomness: three keys.
        let random = RandomState::new();
        ClientTable {
            sets: vec![Set::default(); sets].into_boxed_slice(),
            mask: sets - 1,
            keys: [1u8, 2, 3].map(|i| random.hash_one(i)),
            evictions: 0,
        }
    }

    /// How many clients fit.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Clients that lost their entry to a newer one so far (the table is
    /// too small for the clients it sees if this grows fast).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The entry of `key`: its own if the table remembers it, else a fresh
    /// one (zeroed but for the key) in place of its set's empty or stalest
    /// entry.
    #[inline]
    pub fn entry(&mut self, key: u128) -> &mut Entry {
        let index = self.set_of(key);
        // `mask` keeps the index within the table: never out of bounds.
        let set = &mut self.sets[index].0;
        if let Some(i) = set.iter().position(|e| e.tat != 0 && e.key == key) {
            return &mut set[i];
        }
        let victim = (0..WAYS).min_by_key(|&i| set[i].tat).unwrap_or(0);
        if set[victim].tat != 0 {
            self.evictions += 1;
        }
        set[victim] = Entry {
            key,
            ..Entry::default()
        };
        &mut set[victim]
    }

    /// The set `key` lives in.
    #[inline]
    fn set_of(&self, key: u128) -> usize {
        let [k0, k1, k2] = self.keys;
        let h = folded_multiply(key as u64 ^ k0, (key >> 64) as u64 ^ k1);
        // A second round spreads the product's bits over the whole word.
        folded_multiply(h ^ k2, 0x9e37_79b9_7f4a_7c15) as usize & self.mask
    }

    /// The entries in use, in no particular order (for a view of the top
    /// talkers).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.sets
            .iter()
            .flat_map(|s| s.0.iter())
            .filter(|e| e.tat != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_32_bytes_and_a_set_one_or_two_cache_lines() {
        assert_eq!(ENTRY_BYTES, 32);
        assert_eq!(std::mem::size_of::<Set>(), 128);
    }

    #[test]
    fn clients_spread_over_the_sets() {
        let t = ClientTable::new(4096);
        let sets = t.capacity() / WAYS;
        let mut count = vec![0u32; sets];
        // Neighbouring IPv4 clients and IPv6 /64s, as keys.
        for i in 0..sets as u128 * 8 {
            count[t.set_of(0xffff_0000_0000 | i)] += 1;
            count[t.set_of((0x2001_0db8_0000_0000 | i) << 64)] += 1;
        }
        // 16 per set on average: none empty, none far over.
        assert!(count.iter().all(|&c| (2..=48).contains(&c)), "{count:?}");
    }

    #[test]
    fn a_client_finds_its_entry_again() {
        let mut t = ClientTable::new(64);
        t.entry(7).tat = 100;
        t.entry(7).limited = 3;
        assert_eq!(
            *t.entry(7),
            Entry {
                key: 7,
                tat: 100,
                limited: 3
            }
        );
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn the_table_never_grows_and_evicts_the_stalest() {
        let mut t = ClientTable::new(100);
        assert_eq!(t.capacity(), 128);
        for key in 0..10_000u128 {
            t.entry(key).tat = 1 + key as u64;
        }
        assert!(t.iter().count() <= t.capacity());
        assert!(t.evictions() >= 10_000 - 128);
        // The latest clients are remembered: every set holds its newest.
        let newest = t.iter().map(|e| e.key).max();
        assert_eq!(newest, Some(9_999));
        // A fresh client in a full set takes the stalest entry of it.
        let before: Vec<u64> = t.iter().map(|e| e.tat).collect();
        let min = *before.iter().min().unwrap();
        t.entry(1_000_000).tat = u64::MAX;
        let after: Vec<u64> = t.iter().map(|e| e.tat).collect();
        assert_eq!(after.len(), before.len());
        assert!(after.contains(&u64::MAX));
        assert!(*after.iter().filter(|&&x| x != u64::MAX).min().unwrap() >= min);
    }
}
