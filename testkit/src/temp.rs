//! Temporary files and directories of a test, named after the test process
//! so that parallel tests and suites never share one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A path in the system temporary directory that no other call, thread or
/// test process returns.
fn unique_path(stem: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "fastntp-test-{}-{}-{stem}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `text` to a fresh temporary file and returns its path.
pub fn write_temp(stem: &str, text: &str) -> PathBuf {
    let path = unique_path(stem);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// A fresh temporary directory, removed with what it holds on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates one whose name ends in `stem`.
    pub fn new(stem: &str) -> TempDir {
        let path = unique_path(stem);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Its own path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_fresh_and_gone_after_drop() {
        let (a, b) = (TempDir::new("x"), TempDir::new("x"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), "1").unwrap();
        let kept = a.path().to_owned();
        drop(a);
        assert!(!kept.exists());
    }
}
