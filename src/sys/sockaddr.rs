//! The sender's address of a received datagram, read from the
//! `sockaddr_in` / `sockaddr_in6` the kernel wrote (as bytes, so it works
//! on io_uring's unaligned receive buffers as well as on a
//! `sockaddr_storage`).

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const FAMILY_AT: usize = offset_of!(libc::sockaddr_in, sin_family);
const V4_AT: usize = offset_of!(libc::sockaddr_in, sin_addr);
const V6_AT: usize = offset_of!(libc::sockaddr_in6, sin6_addr);

/// The IP address in socket address bytes `name`; `None` for another
/// family or too few bytes.
#[inline]
pub fn ip_of(name: &[u8]) -> Option<IpAddr> {
    let family = name.get(FAMILY_AT..FAMILY_AT + 2)?;
    let family = libc::sa_family_t::from_ne_bytes([family[0], family[1]]);
    match i32::from(family) {
        libc::AF_INET => {
            let a: [u8; 4] = name.get(V4_AT..V4_AT + 4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = name.get(V6_AT..V6_AT + 16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

/// The IP address in `storage`, of which the kernel filled `len` bytes.
#[inline]
pub fn ip_of_storage(storage: &libc::sockaddr_storage, len: u32) -> Option<IpAddr> {
    let len = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `sockaddr_storage` is plain old data without padding that
    // could be uninitialised (it is zeroed at allocation and written by
    // the kernel); `len` is capped at its size, so the slice lies within
    // the borrowed struct for the borrow's lifetime.
    let bytes = unsafe {
        std::slice::from_raw_parts((storage as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    ip_of(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket address as the kernel lays it out, byte by byte.
    fn name(addr: IpAddr) -> Vec<u8> {
        let (family, at, octets, len) = match addr {
            IpAddr::V4(a) => (libc::AF_INET, V4_AT, a.octets().to_vec(), 16),
            IpAddr::V6(a) => (libc::AF_INET6, V6_AT, a.octets().to_vec(), 28),
        };
        let mut b = vec![0u8; len];
        b[FAMILY_AT..FAMILY_AT + 2].copy_from_slice(&(family as libc::sa_family_t).to_ne_bytes());
        b[2..4].copy_from_slice(&123u16.to_be_bytes());
        b[at..at + octets.len()].copy_from_slice(&octets);
        b
    }

    #[test]
    fn both_families_are_read_back() {
        for a in ["192.0.2.7", "2001:db8::9", "::ffff:192.0.2.7"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(ip_of(&name(ip)), Some(ip));
        }
    }

    #[test]
    fn short_or_foreign_names_are_none() {
        assert_eq!(ip_of(&[]), None);
        let v4 = name("192.0.2.7".parse().unwrap());
        assert_eq!(ip_of(&v4[..6]), None);
        let mut unix = [0u8; 16];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as libc::sa_family_t).to_ne_bytes());
        assert_eq!(ip_of(&unix), None);
    }

    #[test]
    fn a_storage_is_read_up_to_its_length() {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        storage.ss_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(
            ip_of_storage(&storage, 16),
            Some("0.0.0.0".parse().unwrap())
        );
        assert_eq!(ip_of_storage(&storage, 6), None);
        assert_eq!(
            ip_of_storage(&storage, 1000),
            Some("0.0.0.0".parse().unwrap())
        );
    }
}
