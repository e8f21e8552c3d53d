//! Heap arrays of C structs for batched system calls (`msghdr`, `mmsghdr`,
//! `iovec`, `sockaddr_storage`): allocated once per worker, boxed so that
//! message headers may point into them (a box never moves its contents).

/// `n` values of `T` with every byte zero.
///
/// # Safety
/// All-zero bytes must be a valid `T`: true for the C structs of integers
/// and raw pointers this crate passes to the kernel (`msghdr`, `mmsghdr`,
/// `iovec`, `sockaddr_storage`, `pollfd`), not for references, `NonZero`
/// types or most enums.
pub unsafe fn zeroed_slice<T>(n: usize) -> Box<[T]> {
    // SAFETY: the caller promises that all-zero bytes are a valid `T`.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_starts_empty() {
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let hdrs: Box<[libc::mmsghdr]> = unsafe { zeroed_slice(4) };
        assert_eq!(hdrs.len(), 4);
        assert!(hdrs
            .iter()
            .all(|h| h.msg_len == 0 && h.msg_hdr.msg_name.is_null() && h.msg_hdr.msg_iovlen == 0));
    }
}
