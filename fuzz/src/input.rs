//! Splitting a fuzz input front to back: fixed-size fields first (the
//! scenario: clock readings, state choices, later a source address), then
//! the rest (the datagram). Fields at the front keep the datagram's bytes
//! where the mutator finds them and let a new field be added with one line.

/// Takes fixed-size fields off the front of an input.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads `data` from its first byte.
    pub fn new(data: &'a [u8]) -> Self {
        Reader(data)
    }

    /// The next `N` bytes, or `None` when fewer are left (nothing is taken).
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    /// The next byte.
    pub fn byte(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    /// Everything not taken yet.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_off_the_front_in_order() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(r.byte(), Some(1));
        assert_eq!(r.array::<2>(), Some([2, 3]));
        assert_eq!(r.rest(), &[4, 5, 6]);
    }

    #[test]
    fn a_field_longer_than_the_input_takes_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.array::<4>(), None);
        assert_eq!(r.array::<3>(), Some([1, 2, 3]));
        assert_eq!(r.byte(), None);
        assert!(r.rest().is_empty());
    }
}
