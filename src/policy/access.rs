//! Access lists (like ntpd's `restrict` and chrony's `allow` / `deny`):
//! which client addresses are served. The most specific prefix that holds
//! the address decides; between an `allow` and a `deny` of the same prefix,
//! `deny` wins; an address no prefix holds gets the default. IPv4 rules
//! match IPv4 clients and IPv4-mapped IPv6 clients; IPv6 rules match IPv6
//! clients only.
//!
//! Lookup walks a binary trie of the prefixes, one node per bit and no
//! further than the longest prefix on the address's path: its cost depends
//! on the prefix lengths (at most 32 steps for IPv4, 128 for IPv6), not on
//! how many prefixes there are; nothing allocates.

use super::cidr::{is_v4, Cidr};

/// What the access list says about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    /// Served.
    #[default]
    Allow,
    /// Not served (ignored, or answered with a KoD DENY).
    Deny,
}

/// The access rules as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// For addresses no prefix holds.
    pub default: Access,
    /// Prefixes served.
    pub allow: Vec<Cidr>,
    /// Prefixes not served.
    pub deny: Vec<Cidr>,
}

/// No child: node 0 is the root, never anyone's child.
const NONE: u32 = 0;

#[derive(Clone, Copy, Debug, Default)]
struct Node {
    child: [u32; 2],
    rule: Option<Access>,
}

/// A binary trie over the first `width` bits of addresses placed in the
/// high bits of a `u128`.
#[derive(Clone, Debug)]
struct Trie {
    nodes: Vec<Node>,
    width: u8,
}

impl Trie {
    fn new(width: u8) -> Trie {
        Trie {
            nodes: vec![Node::default()],
            width,
        }
    }

    /// Adds the prefix of the first `len` bits of `bits`; a deny on the
    /// same prefix as an allow wins, in either order.
    fn insert(&mut self, bits: u128, len: u8, rule: Access) {
        let mut n = 0usize;
        for depth in 0..len.min(self.width) {
            let bit = (bits >> (127 - depth)) as usize & 1;
            let next = self.nodes[n].child[bit];
            n = if next == NONE {
                let new = self.nodes.len();
                self.nodes.push(Node::default());
                // The trie has fewer nodes than 128 per prefix in a
                // configuration file: far below u32::MAX.
                self.nodes[n].child[bit] = new as u32;
                new
            } else {
                next as usize
            };
        }
        let slot = &mut self.nodes[n].rule;
        if *slot != Some(Access::Deny) {
            *slot = Some(rule);
        }
    }

    /// The rule of the longest prefix holding `bits`, if any.
    #[inline]
    fn lookup(&self, bits: u128) -> Option<Access> {
        let root = self.nodes.first()?;
        let mut best = root.rule;
        let mut node = root;
        for depth in 0..self.width {
            let bit = (bits >> (127 - depth)) as usize & 1;
            match self.nodes.get(node.child[bit] as usize) {
                Some(next) if node.child[bit] != NONE => node = next,
                _ => break,
            }
            if node.rule.is_some() {
                best = node.rule;
            }
        }
        best
    }
}

/// The compiled access list, shared read-only by the workers.
#[derive(Clone, Debug)]
pub struct AccessList {
    default: Access,
    v4: Trie,
    v6: Trie,
    /// No prefixes at all: every address gets the default, without a walk.
    empty: bool,
}

impl Default for AccessList {
    /// Everyone served.
    fn default() -> Self {
        AccessList::new(&AccessRules::default())
    }
}

impl AccessList {
    /// Compiles `rules`.
    pub fn new(rules: &AccessRules) -> AccessList {
        let mut list = AccessList {
            default: rules.default,
            v4: Trie::new(32),
            v6: Trie::new(128),
            empty: rules.allow.is_empty() && rules.deny.is_empty(),
        };
        let tagged = rules.allow.iter().map(|c| (c, Access::Allow));
        for (cidr, rule) in tagged.chain(rules.deny.iter().map(|c| (c, Access::Deny))) {
            if is_v4(cidr.bits()) && cidr.prefix_len() >= 96 {
                list.v4
                    .insert(cidr.bits() << 96, cidr.prefix_len() - 96, rule);
            } else {
                list.v6.insert(cidr.bits(), cidr.prefix_len(), rule);
            }
        }
        list
    }

    /// Whether the client at `addr` (128 bits, see
    /// [`to_bits`](super::cidr::to_bits)) is served.
    #[inline]
    pub fn check(&self, addr: u128) -> Access {
        if self.empty {
            return self.default;
        }
        let found = if is_v4(addr) {
            self.v4.lookup(addr << 96)
        } else {
            self.v6.lookup(addr)
        };
        found.unwrap_or(self.default)
    }

    /// Whether every address gets the default (no prefixes listed).
    pub fn is_empty(&self) -> bool {
        self.empty
    }
}

#[cfg(test)]
mod tests {
    use super::super::cidr::to_bits;
    use super::*;
    use proptest::prelude::*;

    fn rules(default: Access, allow: &[&str], deny: &[&str]) -> AccessList {
        let parse = |l: &[&str]| l.iter().map(|s| s.parse().unwrap()).collect();
        AccessList::new(&AccessRules {
            default,
            allow: parse(allow),
            deny: parse(deny),
        })
    }

    fn check(list: &AccessList, addr: &str) -> Access {
        list.check(to_bits(addr.parse().unwrap()))
    }

    #[test]
    fn the_most_specific_prefix_wins_in_both_families() {
        let list = rules(
            Access::Deny,
            &[
                "10.0.0.0/8",
                "10.1.2.0/24",
                "2001:db8::/32",
                "2001:db8:1:2::/64",
            ],
            &["10.1.0.0/16", "10.1.2.3", "2001:db8:1::/48"],
        );
        use Access::{Allow, Deny};
        for (addr, want) in [
            ("10.9.9.9", Allow),           // /8
            ("10.1.9.9", Deny),            // /16 inside the /8
            ("10.1.2.9", Allow),           // /24 inside the /16
            ("10.1.2.3", Deny),            // /32 inside the /24
            ("::ffff:10.1.2.9", Allow),    // mapped: the v4 rules
            ("11.0.0.1", Deny),            // default
            ("2001:db8:5::1", Allow),      // /32
            ("2001:db8:1:5::1", Deny),     // /48 inside it
            ("2001:db8:1:2::abcd", Allow), // /64 inside the /48
            ("2001:db9::1", Deny),         // default
        ] {
            assert_eq!(check(&list, addr), want, "{addr}");
        }
    }

    #[test]
    fn deny_wins_over_allow_of_the_same_prefix_in_any_order() {
        let list = rules(Access::Allow, &["192.0.2.0/24"], &["192.0.2.0/24"]);
        assert_eq!(check(&list, "192.0.2.1"), Access::Deny);
        let list = rules(Access::Allow, &["2001:db8::/32"], &["2001:db8::/32"]);
        assert_eq!(check(&list, "2001:db8::1"), Access::Deny);
        // The lists compile allow first; a deny inserted first holds too.
        let mut trie = Trie::new(32);
        trie.insert(0xc000_0200u128 << 96, 24, Access::Deny);
        trie.insert(0xc000_0200u128 << 96, 24, Access::Allow);
        assert_eq!(trie.lookup(0xc000_0201u128 << 96), Some(Access::Deny));
    }

    #[test]
    fn v6_rules_do_not_match_v4_clients_and_default_prefixes_work() {
        let list = rules(Access::Allow, &[], &["::/0"]);
        assert_eq!(check(&list, "192.0.2.1"), Access::Allow);
        assert_eq!(check(&list, "2001:db8::1"), Access::Deny);
        let list = rules(Access::Allow, &[], &["0.0.0.0/0"]);
        assert_eq!(check(&list, "192.0.2.1"), Access::Deny);
        assert_eq!(check(&list, "::ffff:192.0.2.1"), Access::Deny);
        assert_eq!(check(&list, "::1"), Access::Allow);
    }

    #[test]
    fn an_empty_list_gives_everyone_the_default() {
        assert_eq!(check(&AccessList::default(), "192.0.2.1"), Access::Allow);
        let deny_all = rules(Access::Deny, &[], &[]);
        assert!(deny_all.is_empty());
        assert_eq!(check(&deny_all, "2001:db8::1"), Access::Deny);
    }

    proptest! {
        /// The trie agrees with a linear scan for the longest match.
        #[test]
        fn trie_matches_a_linear_scan(
            prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32, any::<bool>()), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut rules = AccessRules { default: Access::Allow, ..Default::default() };
            for &(addr, len, deny) in &prefixes {
                let cidr = Cidr::new(to_bits(std::net::Ipv4Addr::from(addr).into()), 96 + len);
                if deny { rules.deny.push(cidr) } else { rules.allow.push(cidr) }
            }
            let list = AccessList::new(&rules);
            for probe in probes {
                let bits = to_bits(std::net::Ipv4Addr::from(probe).into());
                let mut best: Option<(u8, Access)> = None;
                for (cidr, rule) in rules.allow.iter().map(|c| (c, Access::Allow))
                    .chain(rules.deny.iter().map(|c| (c, Access::Deny)))
                {
                    if cidr.contains(bits) {
                        best = match best {
                            Some((l, r)) if l > cidr.prefix_len() || (l == cidr.prefix_len() && r == Access::Deny) => Some((l, r)),
                            _ => Some((cidr.prefix_len(), rule)),
                        };
                    }
                }
                let want = best.map(|b| b.1).unwrap_or(Access::Allow);
                prop_assert_eq!(list.check(bits), want);
            }
        }
    }
}
