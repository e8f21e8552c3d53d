//! The single-writer, lock-free cell that publishes the current
//! [`ServerState`] to every worker.
//!
//! It is a sequence lock over atomic words: the one [`Publisher`] bumps a
//! sequence number to odd, stores the state's words, and bumps it to even;
//! a [`Reader`] copies the words and retries if the sequence moved or was
//! odd. Readers never block the writer, never block each other and never
//! allocate; a read costs a handful of loads. Because every word is an
//! atomic, there is no data race and no `unsafe`.
//!
//! Built with `--cfg loom`, the atomics, fences and the spin hint are
//! loom's, and the `model` test checks every interleaving (up to two
//! preemptions) and every value the memory model lets a load return (see
//! `.ci/run`).

#[cfg(loom)]
use loom::{
    hint,
    sync::atomic::{fence, AtomicU64, Ordering},
};
#[cfg(not(loom))]
use std::{
    hint,
    sync::atomic::{fence, AtomicU64, Ordering},
};

use std::sync::Arc;

use crate::proto::{Correction, LeapIndicator, NtpShort, NtpTimestamp, RefId, ServerState};

const WORDS: usize = 8;

/// `ServerState` packed into words (and back); the only place that knows
/// the layout.
fn encode(s: &ServerState) -> [u64; WORDS] {
    [
        (s.leap.to_bits() as u64) << 56
            | (s.stratum as u64) << 48
            | (s.precision as u8 as u64) << 40
            | (s.correction.leap_step as u8 as u64) << 32
            | s.reference_id.to_u32() as u64,
        s.reference_time.to_bits(),
        (s.root_delay.to_bits() as u64) << 32 | s.root_dispersion.to_bits() as u64,
        s.dispersion_base.to_bits(),
        s.correction.base.to_bits(),
        s.correction.offset as u64,
        s.correction.freq.to_bits(),
        s.correction.leap_at.to_bits(),
    ]
}

fn decode(w: &[u64; WORDS]) -> ServerState {
    ServerState {
        leap: LeapIndicator::from_bits((w[0] >> 56) as u8),
        stratum: (w[0] >> 48) as u8,
        precision: (w[0] >> 40) as u8 as i8,
        reference_id: RefId((w[0] as u32).to_be_bytes()),
        reference_time: NtpTimestamp::from_bits(w[1]),
        root_delay: NtpShort::from_bits((w[2] >> 32) as u32),
        root_dispersion: NtpShort::from_bits(w[2] as u32),
        dispersion_base: NtpTimestamp::from_bits(w[3]),
        correction: Correction {
            base: NtpTimestamp::from_bits(w[4]),
            offset: w[5] as i64,
            freq: f64::from_bits(w[6]),
            leap_at: NtpTimestamp::from_bits(w[7]),
            leap_step: (w[0] >> 32) as u8 as i8,
        },
    }
}

/// Keeps the shared words on their own cache lines, away from whatever the
/// allocator puts next to them.
#[repr(align(128))]
struct Cell {
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// The one writer of a snapshot. Not `Clone`: a second writer would break
/// the sequence lock.
pub struct Publisher {
    cell: Arc<Cell>,
}

/// A handle that reads the latest published state. Cheap to clone; give
/// each worker its own.
#[derive(Clone)]
pub struct Reader {
    cell: Arc<Cell>,
}

/// Creates a snapshot holding `initial`, with its writer and a first reader.
pub fn new(initial: &ServerState) -> (Publisher, Reader) {
    let words = encode(initial).map(AtomicU64::new);
    let cell = Arc::new(Cell {
        seq: AtomicU64::new(0),
        words,
    });
    (
        Publisher {
            cell: Arc::clone(&cell),
        },
        Reader { cell },
    )
}

impl Publisher {
    /// Makes `state` what every reader sees from now on.
    pub fn publish(&mut self, state: &ServerState) {
        let seq = self.cell.seq.load(Ordering::Relaxed);
        self.cell.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd sequence before any word store.
        fence(Ordering::Release);
        for (slot, word) in self.cell.words.iter().zip(encode(state)) {
            slot.store(word, Ordering::Relaxed);
        }
        self.cell.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A new reader of this snapshot.
    pub fn reader(&self) -> Reader {
        Reader {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl Reader {
    /// A number that changes whenever a new state is published: a reader
    /// that kept the state it loaded with an older version knows it is
    /// current while the version stays the same (one load instead of a
    /// copy and decode).
    pub fn version(&self) -> u64 {
        self.cell.seq.load(Ordering::Acquire)
    }

    /// The latest published state. Retries only while a publish is in
    /// flight, which takes nanoseconds and happens rarely.
    pub fn load(&self) -> ServerState {
        loop {
            let before = self.cell.seq.load(Ordering::Acquire);
            let mut words = [0u64; WORDS];
            for (w, slot) in words.iter_mut().zip(&self.cell.words) {
                *w = slot.load(Ordering::Relaxed);
            }
            // Orders the word loads before the second sequence load.
            fence(Ordering::Acquire);
            let after = self.cell.seq.load(Ordering::Relaxed);
            if before == after && before % 2 == 0 {
                return decode(&words);
            }
            hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::time::UnixTime;

    /// A state whose every field derives from `n` (`root_delay` is `n`);
    /// `state(n)` and `state(n + 1)` differ in every word, so a mix of the
    /// two is neither.
    pub(super) fn state(n: u64) -> ServerState {
        let t = NtpTimestamp::from_unix(UnixTime::new(1_800_000_000 + n as i64, 0));
        ServerState {
            leap: LeapIndicator::from_bits(n as u8),
            stratum: (n % 16) as u8,
            precision: -((n % 30) as i8),
            reference_id: RefId((n as u32).to_be_bytes()),
            reference_time: t,
            root_delay: NtpShort::from_bits(n as u32),
            root_dispersion: NtpShort::from_bits(!(n as u32)),
            dispersion_base: t,
            correction: Correction {
                base: t,
                offset: -(n as i64),
                freq: n as f64 * 1e-9,
                leap_at: t.add_secs(n as f64),
                leap_step: [-1, 0, 1][(n % 3) as usize],
            },
        }
    }

    #[test]
    fn encode_decode_round_trips_every_field() {
        for n in [0, 1, 7, 1 << 20, u32::MAX as u64] {
            let s = state(n);
            assert_eq!(decode(&encode(&s)), s);
        }
        let mut s = ServerState::unsynchronized(-30);
        s.precision = i8::MIN;
        assert_eq!(decode(&encode(&s)), s);
    }

    #[cfg(not(loom))] // loom's atomics live only inside a model
    #[test]
    fn readers_see_the_latest_publish() {
        let (mut publisher, reader) = new(&state(1));
        assert_eq!(reader.load(), state(1));
        publisher.publish(&state(2));
        assert_eq!(reader.load(), state(2));
        assert_eq!(publisher.reader().load(), state(2));
    }

    #[cfg(not(loom))]
    #[test]
    fn the_version_changes_with_every_publish() {
        let (mut publisher, reader) = new(&state(1));
        let v1 = reader.version();
        assert_eq!(reader.version(), v1);
        publisher.publish(&state(2));
        assert_ne!(reader.version(), v1);
    }

    #[cfg(not(loom))]
    #[test]
    fn concurrent_readers_never_see_a_torn_state() {
        use std::sync::atomic::AtomicUsize;
        let (mut publisher, reader) = new(&state(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Readers that have read at least once: the publisher goes on until
        // both run, so that reads overlap publishes even on a busy host
        // where a thread may start late.
        let started = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let reader = reader.clone();
                let stop = Arc::clone(&stop);
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    loop {
                        let s = reader.load();
                        let n = s.root_delay.to_bits() as u64;
                        assert_eq!(s, state(n), "torn read");
                        seen += 1;
                        if seen == 1 {
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return seen;
                        }
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut n = 0u64;
        while started.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
            publisher.publish(&state(n));
            n += 1;
        }
        assert_eq!(started.load(Ordering::Relaxed), 2, "readers never ran");
        for _ in 0..200_000u64 {
            publisher.publish(&state(n));
            n += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader panicked") > 0);
        }
    }
}

/// Loom model of the sequence lock: one writer, one reader, one publish,
/// explored in seconds. (Each relaxed load of the eight words may return
/// any value the memory model allows, so a second publish or a second load
/// multiplies the space past what CI can afford; removing either fence, or
/// accepting an odd sequence, fails this one.)
#[cfg(all(test, loom))]
mod model {
    use super::tests::state;
    use super::*;
    use loom::thread;

    /// The `n` of a `state(n)` (its root delay).
    fn n(s: &ServerState) -> u64 {
        s.root_delay.to_bits() as u64
    }

    /// Runs `f` under loom with a preemption bound that keeps the model
    /// small.
    fn check(f: impl Fn() + Send + Sync + 'static) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(f);
    }

    /// Whatever the interleaving, a load returns a state that was
    /// published whole; and the writer never waits for the reader: with
    /// the reader paused anywhere inside its load, it finishes its publish
    /// (loom reports a deadlock or livelock otherwise) and then reads its
    /// own state.
    #[test]
    fn a_reader_never_returns_a_torn_state_nor_blocks_the_writer() {
        check(|| {
            let (mut publisher, reader) = new(&state(1));
            let t = thread::spawn(move || {
                let s = reader.load();
                assert!((1..=2).contains(&n(&s)), "unknown state {s:?}");
                assert_eq!(s, state(n(&s)), "torn read");
            });
            publisher.publish(&state(2));
            assert_eq!(publisher.reader().load(), state(2));
            t.join().expect("reader");
        });
    }
}
