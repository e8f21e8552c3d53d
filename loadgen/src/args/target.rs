//! Where the requests go and come from: the target (`HOST`, `HOST:PORT`,
//! an IPv6 address or `[IPV6]:PORT`, port 123 by default) resolved to one
//! address, and the `--source-range` the clients bind to, host by host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::error::ArgError;

/// The NTP port, used when the target names none.
pub const NTP_PORT: u16 = 123;

/// Splits a target into host and port (123 when absent).
pub fn split_target(text: &str) -> Result<(String, u16), ArgError> {
    let bad = || ArgError::BadTarget(text.to_owned());
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_string(), NTP_PORT));
    }
    if text.starts_with('[') {
        // `[v6]` without a port, or a malformed bracket form.
        let inner = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(bad)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| bad())?;
        return Ok((ip.to_string(), NTP_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (text, NTP_PORT),
    };
    let host_ok = !host.is_empty()
        && !host.contains(':')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Resolves a target to its first address. Port 0 is refused.
pub fn resolve_target(text: &str) -> Result<SocketAddr, ArgError> {
    let (host, port) = split_target(text)?;
    if port == 0 {
        return Err(ArgError::BadTarget(text.to_owned()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unknown = |reason: String| ArgError::UnknownHost {
        target: text.to_owned(),
        reason,
    };
    let mut addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unknown(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| unknown("no addresses".to_owned()))
}

/// A range of source addresses in CIDR notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRange {
    /// The network address (host bits cleared).
    pub base: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for SourceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl SourceRange {
    /// Parses `ADDR/LEN` (IPv4 or IPv6); host bits of ADDR are cleared.
    pub fn parse(text: &str) -> Result<SourceRange, String> {
        let bad = |why: &str| {
            format!("`{text}` is not a source range ({why}); expected e.g. 127.0.0.0/16")
        };
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| bad("no /prefix-length"))?;
        let ip: IpAddr = addr.trim().parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = len
            .trim()
            .parse()
            .map_err(|_| bad("prefix length is not a number"))?;
        let (bits, value, too_long) = match ip {
            IpAddr::V4(v4) => (
                32u32,
                u128::from(u32::from(v4)),
                "IPv4 prefix length above 32",
            ),
            IpAddr::V6(v6) => (128, u128::from(v6), "IPv6 prefix length above 128"),
        };
        let Some(host_bits) = bits.checked_sub(u32::from(prefix)) else {
            return Err(bad(too_long));
        };
        // The host bits cleared (all of them with a prefix of 0).
        let network = value.checked_shr(host_bits).map_or(0, |v| v << host_bits);
        let base = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(network as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(network)),
        };
        if base.is_unspecified() || base.is_multicast() {
            return Err(bad("unspecified or multicast"));
        }
        Ok(SourceRange { base, prefix })
    }

    /// Usable host addresses: the network and (IPv4) broadcast addresses
    /// are skipped unless the range is a single address or pair.
    pub fn host_count(&self) -> u128 {
        let bits = match self.base {
            IpAddr::V4(_) => 32 - self.prefix as u32,
            IpAddr::V6(_) => 128 - self.prefix as u32,
        };
        match (self.base, bits) {
            (_, 0) => 1,
            (_, 1) => 2,
            (IpAddr::V4(_), b) => (1u128 << b) - 2,
            (IpAddr::V6(_), 128) => u128::MAX,
            (IpAddr::V6(_), b) => (1u128 << b) - 1,
        }
    }

    /// The `i`-th usable host address (wrapping around the range).
    pub fn nth_host(&self, i: u128) -> IpAddr {
        let count = self.host_count();
        let i = i % count;
        let skip_network = count > 2;
        let offset = i + skip_network as u128;
        match self.base {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(offset as u32))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(offset))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_parse_and_enumerate_hosts() {
        let r = SourceRange::parse("127.0.0.0/16").unwrap();
        assert_eq!(r.host_count(), 65_534);
        assert_eq!(r.nth_host(0), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.nth_host(255), "127.0.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(r.nth_host(65_534), r.nth_host(0));
        let host_bits = SourceRange::parse("127.1.2.3/24").unwrap();
        assert_eq!(host_bits.base, "127.1.2.0".parse::<IpAddr>().unwrap());
        let single = SourceRange::parse("127.0.0.5/32").unwrap();
        assert_eq!(single.host_count(), 1);
        assert_eq!(single.nth_host(7), "127.0.0.5".parse::<IpAddr>().unwrap());
        let v6 = SourceRange::parse("fd00::/120").unwrap();
        assert_eq!(v6.host_count(), 255);
        assert_eq!(v6.nth_host(0), "fd00::1".parse::<IpAddr>().unwrap());
        for bad in [
            "127.0.0.0",
            "127.0.0.0/33",
            "300.0.0.0/8",
            "abc/8",
            "::/200",
            "0.0.0.0/8",
            "127.0.0.0/x",
        ] {
            assert!(SourceRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_split_into_host_and_port() {
        for (text, host, port) in [
            ("127.0.0.1:11123", "127.0.0.1", 11123),
            ("127.0.0.1", "127.0.0.1", 123),
            ("[::1]:500", "::1", 500),
            ("::1", "::1", 123),
            ("[::1]", "::1", 123),
            ("localhost:9", "localhost", 9),
            ("ntp.example", "ntp.example", 123),
        ] {
            assert_eq!(split_target(text).unwrap(), (host.into(), port), "{text}");
        }
        for bad in ["host:port", "host:70000", "a b:1", ":123", "[::1", "[zz]:1"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            resolve_target("127.0.0.1:0"),
            Err(ArgError::BadTarget(_))
        ));
        assert!(matches!(
            resolve_target("no-such-host.invalid:123"),
            Err(ArgError::UnknownHost { .. })
        ));
    }
}
