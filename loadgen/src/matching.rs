//! Matching replies to requests in O(1) without allocating, robust against
//! servers that echo garbage.
//!
//! Each load thread keeps a power-of-two table of request slots; request
//! number `seq` uses slot `seq mod size`. Its transmit timestamp is random
//! except that the low `bits` carry the slot index, xor-scrambled with a
//! hash of the random high bits (so the value on the wire looks random).
//! A reply's origin timestamp gives the slot back in a few instructions;
//! the slot then has to hold exactly that 64-bit value (and the socket the
//! reply came in on), so a garbage origin matches only with probability
//! 2^-(64-bits) — at least 2^-40.
//!
//! A slot is reused only after `size` further requests, which the table
//! size keeps later than the late-reply window (twice the timeout at the
//! offered rate); a request still unanswered by then is lost.

use std::time::Duration;

/// Largest table per thread (2^24 slots of 24 bytes: 384 MiB).
pub const MAX_SLOTS: u64 = 1 << 24;
/// Smallest table.
pub const MIN_SLOTS: u64 = 1 << 12;

/// Slots a thread needs at `rate` requests per second with `timeout`: a
/// slot must not come round again within the late window (2 × timeout),
/// with a quarter to spare for catch-up bursts, plus a few batches.
pub fn slots_needed(rate: f64, timeout: Duration, max_batch: usize) -> u64 {
    let window = rate * 2.0 * timeout.as_secs_f64() * 1.25;
    window.ceil() as u64 + 4 * max_batch as u64
}

/// The table size for `needed` slots: a power of two, at least
/// [`MIN_SLOTS`].
pub fn table_size(needed: u64) -> u64 {
    needed.next_power_of_two().max(MIN_SLOTS)
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// Never used, or its request was not sent after all.
    #[default]
    Free = 0,
    /// Sent, no reply yet.
    Outstanding = 1,
    /// A reply was matched (further ones are duplicates).
    Answered = 2,
    /// Given up on: no reply within the late window.
    Lost = 3,
}

/// One request in flight (24 bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// The transmit timestamp sent (never 0 once used).
    pub tx: u64,
    /// T1 in nanoseconds since 1970: the clock read before the send call,
    /// replaced by the kernel TX stamp when one arrives.
    pub t1_ns: i64,
    /// The socket's `OPT_ID` key of the datagram (with `--precise-tx`).
    pub tskey: u32,
    /// Index of the sending socket within its thread.
    pub socket: u16,
    /// Where the request stands.
    pub state: SlotState,
    /// `t1_ns` is a kernel TX stamp.
    pub precise: bool,
}

/// What a reply's origin timestamp points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No request of ours carries this value on this socket.
    NoMatch,
    /// The request at this index, still waiting.
    Outstanding(usize),
    /// A request already answered: a duplicate.
    Answered,
    /// A request already given up on: a reply too late to count.
    Lost,
}

/// The slot table of one load thread.
pub struct SlotTable {
    slots: Box<[Slot]>,
    mask: u64,
    bits: u32,
    outstanding: u64,
}

const SCRAMBLE: u64 = 0x9e37_79b9_7f4a_7c15;

impl SlotTable {
    /// A table of `size` slots (rounded up to a power of two within
    /// [`MIN_SLOTS`]..=[`MAX_SLOTS`]), every page touched up front so the
    /// send path takes no page faults.
    pub fn new(size: u64) -> SlotTable {
        let size = table_size(size).min(MAX_SLOTS);
        let mut slots = vec![Slot::default(); size as usize].into_boxed_slice();
        // Zeroed allocations are mapped lazily; write one slot per page
        // (volatile, so the store of a zero is not optimised away).
        let per_page = (4096 / std::mem::size_of::<Slot>()).max(1);
        for slot in slots.iter_mut().step_by(per_page) {
            // SAFETY: `slot` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(&mut slot.state, SlotState::Free) };
        }
        SlotTable {
            slots,
            mask: size - 1,
            bits: size.trailing_zeros(),
            outstanding: 0,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a table has at least [`MIN_SLOTS`] slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Requests sent and neither answered nor given up on.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// The slot request number `seq` uses.
    #[inline]
    pub fn index_of_seq(&self, seq: u64) -> usize {
        (seq & self.mask) as usize
    }

    #[inline]
    fn scramble(&self, high: u64) -> u64 {
        high.wrapping_mul(SCRAMBLE) >> (64 - self.bits)
    }

    /// The transmit timestamp for slot `index` from 64 random bits.
    #[inline]
    pub fn encode(&self, index: usize, random: u64) -> u64 {
        let mut high = random & !self.mask;
        if high == 0 {
            high = self.mask + 1;
        }
        high | ((index as u64 ^ self.scramble(high)) & self.mask)
    }

    /// The slot an origin timestamp points at (checked by [`Self::lookup`]).
    #[inline]
    pub fn decode(&self, origin: u64) -> usize {
        let high = origin & !self.mask;
        ((origin ^ self.scramble(high)) & self.mask) as usize
    }

    /// Takes slot `index` for a new request. Returns true when the slot
    /// still held an unanswered request, which is thereby lost.
    #[inline]
    pub fn claim(&mut self, index: usize, tx: u64, socket: u16, tskey: u32) -> bool {
        let slot = &mut self.slots[index];
        let lost = slot.state == SlotState::Outstanding;
        *slot = Slot {
            tx,
            t1_ns: 0,
            tskey,
            socket,
            state: SlotState::Outstanding,
            precise: false,
        };
        if !lost {
            self.outstanding += 1;
        }
        lost
    }

    /// Sets the clock-read T1 of a just-claimed slot.
    #[inline]
    pub fn set_t1(&mut self, index: usize, t1_ns: i64) {
        self.slots[index].t1_ns = t1_ns;
    }

    /// Undoes [`Self::claim`] for a request the kernel did not take.
    #[inline]
    pub fn release_unsent(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.state == SlotState::Outstanding {
            self.outstanding -= 1;
        }
        *slot = Slot::default();
    }

    /// Records a kernel TX stamp for the datagram sent from `socket` with
    /// key `tskey` at slot `index`; false if the slot holds no such request.
    #[inline]
    pub fn set_precise_t1(&mut self, index: usize, socket: u16, tskey: u32, t1_ns: i64) -> bool {
        match self.slots.get_mut(index) {
            Some(slot)
                if slot.state == SlotState::Outstanding
                    && slot.socket == socket
                    && slot.tskey == tskey =>
            {
                slot.t1_ns = t1_ns;
                slot.precise = true;
                true
            }
            _ => false,
        }
    }

    /// Finds the request a reply with `origin`, read from `socket`, answers.
    #[inline]
    pub fn lookup(&self, origin: u64, socket: u16) -> Lookup {
        let index = self.decode(origin);
        let slot = &self.slots[index];
        if slot.tx != origin || slot.socket != socket {
            return Lookup::NoMatch;
        }
        match slot.state {
            SlotState::Outstanding => Lookup::Outstanding(index),
            SlotState::Answered => Lookup::Answered,
            SlotState::Lost => Lookup::Lost,
            SlotState::Free => Lookup::NoMatch,
        }
    }

    /// The slot at `index`.
    #[inline]
    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// Marks an outstanding request answered.
    #[inline]
    pub fn answer(&mut self, index: usize) {
        self.settle(index, SlotState::Answered);
    }

    /// Marks an outstanding request lost (its reply came too late).
    #[inline]
    pub fn give_up(&mut self, index: usize) {
        self.settle(index, SlotState::Lost);
    }

    fn settle(&mut self, index: usize, state: SlotState) {
        let slot = &mut self.slots[index];
        if slot.state == SlotState::Outstanding {
            self.outstanding -= 1;
        }
        slot.state = state;
    }

    /// Gives up on every outstanding request; returns how many there were.
    pub fn give_up_all(&mut self) -> u64 {
        if self.outstanding == 0 {
            return 0;
        }
        let mut n = 0;
        for slot in self.slots.iter_mut() {
            if slot.state == SlotState::Outstanding {
                slot.state = SlotState::Lost;
                n += 1;
            }
        }
        self.outstanding = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn slots_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn sizes_cover_the_late_window() {
        let needed = slots_needed(500_000.0, Duration::from_secs(1), 64);
        assert!(needed >= 1_250_000);
        assert_eq!(table_size(needed), 1 << 21);
        assert_eq!(table_size(5), MIN_SLOTS);
    }

    #[test]
    fn encode_decode_round_trips_and_looks_random() {
        let table = SlotTable::new(1 << 12);
        let mut rng = Rng::seeded(7);
        let mut low_bits_equal_index = 0;
        for index in 0..table.len() {
            let tx = table.encode(index, rng.next_u64());
            assert_ne!(tx, 0);
            assert_eq!(table.decode(tx), index);
            low_bits_equal_index += (tx as usize & (table.len() - 1) == index) as u32;
        }
        assert!(low_bits_equal_index < 10, "{low_bits_equal_index}");
        assert_eq!(table.decode(table.encode(3, 0)), 3);
    }

    #[test]
    fn replies_match_once_then_count_as_duplicates() {
        let mut t = SlotTable::new(MIN_SLOTS);
        let i = t.index_of_seq(5);
        let tx = t.encode(i, 0xdead_beef_0000_0000);
        assert!(!t.claim(i, tx, 2, 0));
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.lookup(tx, 2), Lookup::Outstanding(i));
        assert_eq!(t.lookup(tx, 3), Lookup::NoMatch, "other socket");
        assert_eq!(t.lookup(tx ^ 1 << 40, 2), Lookup::NoMatch, "other value");
        t.answer(i);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.lookup(tx, 2), Lookup::Answered);
    }

    #[test]
    fn garbage_origins_never_match() {
        let mut t = SlotTable::new(MIN_SLOTS);
        let mut rng = Rng::seeded(3);
        for seq in 0..t.len() as u64 {
            let i = t.index_of_seq(seq);
            let tx = t.encode(i, rng.next_u64());
            t.claim(i, tx, 0, 0);
        }
        let mut junk = Rng::seeded(99);
        for _ in 0..200_000 {
            assert_eq!(t.lookup(junk.next_u64(), 0), Lookup::NoMatch);
        }
        assert_eq!(t.lookup(0, 0), Lookup::NoMatch);
    }

    #[test]
    fn reuse_loses_the_old_request_and_give_up_all_settles_the_rest() {
        let mut t = SlotTable::new(MIN_SLOTS);
        let size = t.len() as u64;
        let i = t.index_of_seq(1);
        let old = t.encode(i, 1 << 40);
        t.claim(i, old, 0, 0);
        let j = t.index_of_seq(1 + size);
        assert_eq!(i, j);
        let new = t.encode(j, 2 << 40);
        assert!(t.claim(j, new, 0, 0), "old request lost");
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.lookup(old, 0), Lookup::NoMatch);
        let k = t.index_of_seq(2);
        t.claim(k, t.encode(k, 3 << 40), 0, 0);
        assert_eq!(t.give_up_all(), 2);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.lookup(new, 0), Lookup::Lost);
    }

    #[test]
    fn unsent_requests_are_released_and_precise_stamps_checked() {
        let mut t = SlotTable::new(MIN_SLOTS);
        let i = t.index_of_seq(9);
        let tx = t.encode(i, 5 << 40);
        t.claim(i, tx, 1, 77);
        assert!(!t.set_precise_t1(i, 1, 78, 5), "wrong key");
        assert!(!t.set_precise_t1(i, 0, 77, 5), "wrong socket");
        assert!(t.set_precise_t1(i, 1, 77, 5));
        assert!(t.slot(i).precise && t.slot(i).t1_ns == 5);
        t.release_unsent(i);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.lookup(tx, 1), Lookup::NoMatch);
        assert!(!t.set_precise_t1(i, 1, 77, 5));
    }
}
