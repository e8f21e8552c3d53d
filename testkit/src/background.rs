//! A thread a test runs beside the code under test (a fake server, a
//! counting sink) until told to stop: stopped and joined on drop, so it
//! never outlives its test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running background thread and its stop flag.
pub struct Background<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Background<T> {
    /// Runs `body` on a new thread; `body` returns soon after the flag it
    /// is given is set.
    pub fn spawn(body: impl FnOnce(&AtomicBool) -> T + Send + 'static) -> Background<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        Background {
            stop,
            thread: Some(std::thread::spawn(move || body(&flag))),
        }
    }
}

impl<T> Background<T> {
    /// Sets the stop flag and waits for the thread: what `body` returned,
    /// or `None` if it panicked (or was stopped before).
    pub fn stop(&mut self) -> Option<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_the_loop_and_returns_its_result() {
        let mut bg = Background::spawn(|stop| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                std::thread::yield_now();
            }
            n
        });
        assert!(bg.stop().is_some());
        assert_eq!(bg.stop(), None, "stopped once");
    }
}
