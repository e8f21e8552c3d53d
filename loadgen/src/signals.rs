//! Ctrl-C and SIGTERM: the first one stops sending (the run then waits for
//! outstanding replies as usual and reports what it measured); a second one
//! also cuts that wait short. Threads poll the counter; the handler only
//! increments an atomic, which is async-signal-safe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many stop signals arrived.
#[derive(Debug, Default)]
pub struct Interrupt {
    count: AtomicUsize,
}

impl Interrupt {
    /// A counter with SIGINT and SIGTERM handlers installed.
    pub fn install() -> std::io::Result<Arc<Interrupt>> {
        let it = Arc::new(Interrupt::default());
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let target = Arc::clone(&it);
            // SAFETY: the handler only performs an atomic increment, which
            // is async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                signal_hook::low_level::register(signal, move || {
                    target.count.fetch_add(1, Ordering::SeqCst);
                })?;
            }
        }
        Ok(it)
    }

    /// Counts one stop request (what the handler does; also for tests).
    pub fn trigger(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Stop sending.
    #[inline]
    pub fn stop_requested(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= 1
    }

    /// Stop waiting for replies too.
    #[inline]
    pub fn hurry(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_trigger_stops_second_hurries() {
        let i = Interrupt::default();
        assert!(!i.stop_requested());
        i.trigger();
        assert!(i.stop_requested() && !i.hurry());
        i.trigger();
        assert!(i.hurry());
    }
}
