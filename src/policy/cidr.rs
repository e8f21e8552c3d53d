//! Address prefixes as operators write them (`192.0.2.0/24`,
//! `2001:db8::/32`, a bare address for one host) and the one address space
//! the policy works in: every address as 128 bits, IPv4 in its IPv4-mapped
//! IPv6 form (`::ffff:a.b.c.d`), so a v4-mapped client matches v4 rules and
//! one table holds both families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Bits before the IPv4 address in its IPv4-mapped IPv6 form.
const V4_MAPPED_BITS: u8 = 96;
/// The IPv4-mapped prefix `::ffff:0:0/96` as 128 bits.
const V4_MAPPED: u128 = 0xffff << 32;

/// An address as 128 bits: IPv6 as is, IPv4 (and IPv4-mapped IPv6) as
/// `::ffff:a.b.c.d`.
pub fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Whether 128-bit address `bits` is an IPv4 address (IPv4-mapped).
pub const fn is_v4(bits: u128) -> bool {
    bits >> 32 == V4_MAPPED >> 32
}

/// The mask keeping the first `len` of 128 bits.
pub const fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else if len >= 128 {
        u128::MAX
    } else {
        !(u128::MAX >> len)
    }
}

/// What counts as one client: an address cut to `ipv4_prefix` bits (IPv4)
/// or `ipv6_prefix` bits (IPv6), as 128 bits. IPv4 keys keep the mapped
/// prefix, so they never meet an IPv6 key.
pub const fn client_key(bits: u128, ipv4_prefix: u8, ipv6_prefix: u8) -> u128 {
    if is_v4(bits) {
        bits & mask(V4_MAPPED_BITS + if ipv4_prefix > 32 { 32 } else { ipv4_prefix })
    } else {
        bits & mask(ipv6_prefix)
    }
}

/// A prefix: the first `len` bits of `bits` (host bits are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    bits: u128,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is neither IPv4 nor IPv6.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    BadAddress(String),
    /// The length after `/` is not a number within the family's bits.
    #[error("`/{len}` is not a prefix length for {family} (0–{max})")]
    BadLength {
        /// As written.
        len: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits are set after the prefix length (`192.0.2.1/24`): the operator
    /// probably meant another prefix, so it is refused, not guessed.
    #[error("`{written}` has host bits set after /{len}: did you mean {suggest}?")]
    HostBits {
        /// The prefix as written.
        written: String,
        /// The length as written.
        len: u8,
        /// The prefix with the host bits cleared.
        suggest: String,
    },
}

impl Cidr {
    /// The prefix of the first `len` bits of the 128-bit `bits`, host bits
    /// cleared.
    pub const fn new(bits: u128, len: u8) -> Cidr {
        let len = if len > 128 { 128 } else { len };
        Cidr {
            bits: bits & mask(len),
            len,
        }
    }

    /// The prefix bits, in the 128-bit space of [`to_bits`].
    pub const fn bits(&self) -> u128 {
        self.bits
    }

    /// The prefix length in the 128-bit space (an IPv4 `/24` is 120).
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` (128 bits, see [`to_bits`]) lies inside.
    pub const fn contains(&self, addr: u128) -> bool {
        addr & mask(self.len) == self.bits
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS` (one host) or `ADDRESS/LEN`, IPv4 or IPv6; an IPv6 prefix
    /// inside `::ffff:0:0/96` is the IPv4 prefix it maps.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::BadAddress(addr.to_owned()))?;
        let (family, max, offset) = match ip {
            IpAddr::V4(_) => ("IPv4", 32u8, V4_MAPPED_BITS),
            IpAddr::V6(_) => ("IPv6", 128u8, 0),
        };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::BadLength {
                        len: l.to_owned(),
                        family,
                        max,
                    })
                }
            },
        };
        let bits = to_bits(ip);
        let cidr = Cidr::new(bits, offset + len);
        if cidr.bits != bits {
            let cleared = Cidr { len: 128, ..cidr };
            return Err(CidrError::HostBits {
                written: s.to_owned(),
                len,
                suggest: format!("{}/{len}", cleared.address()),
            });
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The prefix's address, IPv4 when it lies in the mapped space.
    fn address(&self) -> IpAddr {
        if is_v4(self.bits) && self.len >= V4_MAPPED_BITS {
            IpAddr::V4(Ipv4Addr::from(self.bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address() {
            IpAddr::V4(a) => write!(f, "{a}/{}", self.len - V4_MAPPED_BITS),
            IpAddr::V6(a) => write!(f, "{a}/{}", self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn bits(s: &str) -> u128 {
        to_bits(s.parse().unwrap())
    }

    #[test]
    fn v4_and_v4_mapped_v6_are_the_same_address() {
        assert_eq!(bits("192.0.2.7"), bits("::ffff:192.0.2.7"));
        assert!(is_v4(bits("192.0.2.7")));
        assert!(!is_v4(bits("2001:db8::1")));
        assert!(!is_v4(bits("::1")));
    }

    #[test]
    fn prefixes_parse_in_both_families() {
        let net = cidr("192.0.2.0/24");
        assert_eq!(net.prefix_len(), 120);
        assert!(net.contains(bits("192.0.2.200")));
        assert!(net.contains(bits("::ffff:192.0.2.1")));
        assert!(!net.contains(bits("192.0.3.1")));
        assert_eq!(net.to_string(), "192.0.2.0/24");
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(bits("2001:db8:ffff::1")));
        assert!(!v6.contains(bits("2001:db9::1")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert_eq!(cidr("192.0.2.7"), cidr("192.0.2.7/32"));
        assert_eq!(cidr("::ffff:192.0.2.0/120"), net);
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(cidr("::/0").contains(bits("192.0.2.1")));
    }

    #[test]
    fn bad_prefixes_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            err("192.0.2.1/24"),
            "`192.0.2.1/24` has host bits set after /24: did you mean 192.0.2.0/24?"
        );
        assert_eq!(
            err("192.0.2.0/33"),
            "`/33` is not a prefix length for IPv4 (0–32)"
        );
        assert_eq!(
            err("2001:db8::/129"),
            "`/129` is not a prefix length for IPv6 (0–128)"
        );
        assert_eq!(err("office/24"), "`office` is not an IPv4 or IPv6 address");
        assert_eq!(
            err("192.0.2.0/x"),
            "`/x` is not a prefix length for IPv4 (0–32)"
        );
    }

    #[test]
    fn client_keys_cut_each_family_to_its_prefix() {
        let (a, b) = (bits("192.0.2.1"), bits("192.0.2.200"));
        assert_ne!(client_key(a, 32, 64), client_key(b, 32, 64));
        assert_eq!(client_key(a, 24, 64), client_key(b, 24, 64));
        let (c, d) = (bits("2001:db8:1:2::1"), bits("2001:db8:1:2:ffff::9"));
        assert_eq!(client_key(c, 32, 64), client_key(d, 32, 64));
        assert_ne!(client_key(c, 32, 128), client_key(d, 32, 128));
        // An IPv4 key never equals an IPv6 one, even cut to nothing.
        assert_ne!(client_key(a, 0, 0), client_key(c, 0, 0));
    }
}
