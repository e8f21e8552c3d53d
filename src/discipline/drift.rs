//! The drift file: the kernel clock's frequency correction in ppm, one
//! number on one line (the format of ntpd's and chrony's drift files). Read
//! at start; written atomically (a new temporary file in the same
//! directory, created exclusively and never through a symlink, flushed,
//! renamed over the old one, then the directory flushed) so a crash never
//! leaves a truncated file and a planted link never redirects the write.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest frequency accepted from a drift file, ppm. Real oscillators are
/// within a few tens of ppm; a value near the kernel's ±500 ppm is stale or
/// corrupt and would leave no room to steer.
pub const MAX_DRIFT_PPM: f64 = 250.0;

/// Distinguishes the temporary files of successive writes.
static TEMP_SERIAL: AtomicU64 = AtomicU64::new(0);

/// Why the drift file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// Reading or writing failed.
    #[error("drift file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a frequency.
    #[error("drift file {path}: `{content}` is not a frequency in ppm")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed, shortened).
        content: String,
    },
    /// A frequency no healthy oscillator has.
    #[error("drift file {path}: {ppm} ppm is beyond ±{MAX_DRIFT_PPM} ppm")]
    Implausible {
        /// The file.
        path: PathBuf,
        /// The frequency it held, ppm.
        ppm: f64,
    },
}

/// Reads the frequency (ppm); `Ok(None)` when the file does not exist yet.
pub fn read(path: &Path) -> Result<Option<f64>, DriftError> {
    let text = match crate::files::read_bounded(path, crate::files::MAX_DRIFT_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::InvalidData
            ) =>
        {
            return Err(DriftError::Malformed {
                path: path.to_owned(),
                content: e.to_string(),
            })
        }
        Err(source) => {
            return Err(DriftError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let first = text.split_whitespace().next().unwrap_or("");
    match first.parse::<f64>() {
        Ok(ppm) if ppm.is_finite() && ppm.abs() <= MAX_DRIFT_PPM => Ok(Some(ppm)),
        Ok(ppm) if ppm.is_finite() => Err(DriftError::Implausible {
            path: path.to_owned(),
            ppm,
        }),
        _ => Err(DriftError::Malformed {
            path: path.to_owned(),
            content: text.trim().chars().take(40).collect(),
        }),
    }
}

/// Writes `ppm` atomically.
pub fn write(path: &Path, ppm: f64) -> Result<(), DriftError> {
    let io = |source| DriftError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io)?;
    let written = writeln!(file, "{ppm:.4}").and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    sync_directory(path).map_err(io)
}

/// A temporary name next to `path` that no earlier write used:
/// `.NAME.PID.SERIAL.tmp`.
fn temp_path(path: &Path) -> PathBuf {
    let serial = TEMP_SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.{serial}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Flushes the directory holding `path`, so the rename survives a crash.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fastntp-drift-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("drift")
    }

    #[test]
    fn round_trips_and_leaves_no_temporary_file() {
        let path = temp("rt");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, -12.3456).unwrap();
        assert_eq!(read(&path).unwrap(), Some(-12.3456));
        write(&path, 7.0).unwrap();
        assert_eq!(read(&path).unwrap(), Some(7.0));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("drift")]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn garbage_and_absurd_values_are_rejected() {
        let path = temp("bad");
        for content in ["", "abc", "nan", "inf"] {
            std::fs::write(&path, content).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("not a frequency"), "{content}: {err}");
        }
        // Frequencies no oscillator has: a stale or corrupt file.
        for content in ["600", "-1e9", "400", "-251"] {
            std::fs::write(&path, content).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("beyond ±250 ppm"), "{content}: {err}");
        }
        std::fs::write(&path, "249.5").unwrap();
        assert_eq!(read(&path).unwrap(), Some(249.5));
        std::fs::write(&path, "-3.25 extra words\n").unwrap();
        assert_eq!(read(&path).unwrap(), Some(-3.25));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let path = temp("link");
        let dir = path.parent().unwrap().to_owned();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        // Every name a writer might pick: the old fixed one and a few
        // that look like ours.
        for name in ["drift.tmp", ".drift.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        write(&path, 3.5).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(read(&path).unwrap(), Some(3.5));
        // A symlink in place of the temporary file itself is refused (the
        // next few names are planted: other tests may write meanwhile).
        let serial_now = TEMP_SERIAL.load(Ordering::Relaxed);
        for serial in serial_now..serial_now + 16 {
            let name = format!(".drift.{}.{serial}.tmp", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        assert!(write(&path, 4.0).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let err = write(Path::new("/nonexistent-dir/drift"), 1.0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/drift"));
    }
}
