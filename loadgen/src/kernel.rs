//! The host's UDP counters (`/proc/net/snmp` `Udp:` plus `/proc/net/snmp6`
//! `Udp6*`), read before and after a step so the load generator's own
//! counts can be checked against the kernel's. They are host-wide: on
//! loopback they count both directions (requests and replies), and any
//! other UDP traffic on the host during the step.

use serde::Serialize;

/// The UDP counters we compare (IPv4 + IPv6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams to ports nobody listens on.
    pub no_ports: u64,
    /// Datagrams dropped on receive for any reason (includes the buffer
    /// and checksum errors below).
    pub in_errors: u64,
    /// Datagrams sent.
    pub out_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Sends refused for lack of send buffer.
    pub sndbuf_errors: u64,
    /// Datagrams with bad checksums.
    pub in_csum_errors: u64,
    /// Datagrams dropped for lack of memory.
    pub mem_errors: u64,
}

impl UdpCounters {
    /// `self − before`, field by field (saturating).
    pub fn since(&self, before: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            no_ports: self.no_ports.saturating_sub(before.no_ports),
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            out_datagrams: self.out_datagrams.saturating_sub(before.out_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
            in_csum_errors: self.in_csum_errors.saturating_sub(before.in_csum_errors),
            mem_errors: self.mem_errors.saturating_sub(before.mem_errors),
        }
    }

    fn set(&mut self, name: &str, v: u64) {
        match name {
            "InDatagrams" => self.in_datagrams += v,
            "NoPorts" => self.no_ports += v,
            "InErrors" => self.in_errors += v,
            "OutDatagrams" => self.out_datagrams += v,
            "RcvbufErrors" => self.rcvbuf_errors += v,
            "SndbufErrors" => self.sndbuf_errors += v,
            "InCsumErrors" => self.in_csum_errors += v,
            "MemErrors" => self.mem_errors += v,
            _ => {}
        }
    }
}

/// Adds the `Udp:` section of a `/proc/net/snmp` text (a header line of
/// names and a line of values) to `c`.
pub fn parse_snmp(text: &str, c: &mut UdpCounters) {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return;
    };
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        if let Ok(v) = value.parse() {
            c.set(name, v);
        }
    }
}

/// Adds the `Udp6…` lines of a `/proc/net/snmp6` text to `c`.
pub fn parse_snmp6(text: &str, c: &mut UdpCounters) {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Some(name), Ok(v)) = (key.strip_prefix("Udp6"), value.parse()) {
            c.set(name, v);
        }
    }
}

/// Reads the current counters; `None` when `/proc/net/snmp` is unreadable
/// (IPv6 counters are optional).
pub fn read() -> Option<UdpCounters> {
    let mut c = UdpCounters::default();
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_snmp(&v4, &mut c);
    if let Ok(v6) = std::fs::read_to_string("/proc/net/snmp6") {
        parse_snmp6(&v6, &mut c);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
Udp: 100 2 3 90 1 4 0 0 5\n\
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
UdpLite: 9 9 9 9 9 9 9 9 9\n";

    const SNMP6: &str = "Ip6InReceives 5\nUdp6InDatagrams 10\nUdp6NoPorts 1\nUdp6OutDatagrams 20\nUdp6RcvbufErrors 2\nUdpLite6InDatagrams 99\n";

    #[test]
    fn v4_and_v6_counters_add_up() {
        let mut c = UdpCounters::default();
        parse_snmp(SNMP, &mut c);
        parse_snmp6(SNMP6, &mut c);
        assert_eq!(c.in_datagrams, 110);
        assert_eq!(c.no_ports, 3);
        assert_eq!(c.out_datagrams, 110);
        assert_eq!(c.rcvbuf_errors, 3);
        assert_eq!(c.sndbuf_errors, 4);
        assert_eq!(c.mem_errors, 5);
        let later = UdpCounters {
            in_datagrams: 150,
            ..c
        };
        assert_eq!(later.since(&c).in_datagrams, 40);
        assert_eq!(c.since(&later).in_datagrams, 0);
    }

    #[test]
    fn this_host_has_counters() {
        let c = read().expect("/proc/net/snmp");
        let _ = c.out_datagrams; // present; values depend on the host
    }
}
