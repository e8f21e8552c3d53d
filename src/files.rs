//! Reading the small text files an operator points fastntpd at (the
//! configuration, the leap-second list, the drift file) with a size bound,
//! so that a mistake such as `leap-file = "/dev/zero"` gives a clear error
//! instead of reading until memory runs out.

use std::io::Read;
use std::path::Path;

/// Largest configuration file read (1 MiB: a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest leap-second list read (1 MiB: the IERS list is about 10 KiB).
pub const MAX_LEAP_FILE_BYTES: u64 = 1 << 20;
/// Largest drift file read (it holds one number).
pub const MAX_DRIFT_FILE_BYTES: u64 = 4096;

/// Reads `path` as UTF-8 text of at most `limit` bytes. A longer file (or
/// an endless one, like a device) is an [`std::io::ErrorKind::FileTooLarge`]
/// error whose message names the limit; bytes that are not UTF-8 are an
/// [`std::io::ErrorKind::InvalidData`] error.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes; is this the right file?"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_and_oversized_files_are_refused_and_small_ones_read() {
        let err = read_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("1024 bytes"), "{err}");
        let dir = std::env::temp_dir().join(format!("fastntp-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("small");
        std::fs::write(&path, "12.5\n").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), "12.5\n");
        assert_eq!(
            read_bounded(&path, 4).unwrap_err().kind(),
            std::io::ErrorKind::FileTooLarge
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_bounded(&path, 5).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
