//! The `[[upstream]]` entries and the sources they put into the engine,
//! sans-IO: which names to resolve when, which resolved addresses to take,
//! and which pool members to replace. Time is an argument and DNS answers
//! are inputs; the discipline thread ([`super::runner`]) does the I/O.
//!
//! - One upstream, one vote: an address already polled (for any entry) is
//!   never added again, so two entries naming the same server, or a server
//!   that is also a pool member, count once in selection.
//! - Replacing a pool member is remembered per address (RFC 8633 §3.5:
//!   clients must not hammer servers that refuse or do not answer). A
//!   refusal (KoD DENY or RSTR) keeps the address out for [`REFUSED_BAN`];
//!   an unreachable one is kept out for a back-off that starts at
//!   [`UNREACHABLE_BACKOFF`]`.0` and doubles up to `.1`. The record holds at
//!   most [`MAX_PENALTIES`] addresses. Unreachability counts against a
//!   member only when one of its requests was lost after another source
//!   had answered: when nothing answers, the fault is more likely ours
//!   (network down), and the members back off to `max-poll` like servers
//!   until it is over.
//! - When a resolution offers nothing usable, the name is asked again only
//!   after [`RESOLVE_RETRY`]`.1`; failed resolutions back off from
//!   [`RESOLVE_RETRY`]`.0`.

use std::collections::HashMap;
use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::engine::{Engine, Now, SourceId};
use super::resolve::ResolveError;
use super::source::SourceConfig;
use crate::config::{UpstreamConfig, UpstreamKind};

/// Addresses used from one pool at a time.
pub const POOL_MEMBERS: usize = 4;
/// First and last delay before asking a name again, s: after a failed
/// resolution (doubling from the first), and after one that left an entry
/// short of addresses (the last).
pub const RESOLVE_RETRY: (f64, f64) = (5.0, 600.0);
/// How long an address that refused us (KoD DENY/RSTR) stays unused, s.
pub const REFUSED_BAN: f64 = 86_400.0;
/// First and longest back-off of an address dropped as unreachable, s.
pub const UNREACHABLE_BACKOFF: (f64, f64) = (1800.0, 86_400.0);
/// Most addresses remembered with a penalty.
pub const MAX_PENALTIES: usize = 256;

/// A name to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// Pass it back with the answer.
    pub tag: usize,
    /// The host name or address.
    pub host: String,
    /// The port the addresses get.
    pub port: u16,
}

/// One `[[upstream]]` entry and the sources it currently has.
#[derive(Debug)]
struct Entry {
    config: UpstreamConfig,
    host: String,
    port: u16,
    members: Vec<SourceId>,
    next_query: Option<f64>,
    retry: f64,
    failing: bool,
    duplicate_logged: bool,
}

impl Entry {
    fn wanted(&self) -> usize {
        match self.config.kind {
            UpstreamKind::Server => 1,
            UpstreamKind::Pool => POOL_MEMBERS,
        }
    }

    fn source_config(&self, addr: SocketAddr) -> SourceConfig {
        SourceConfig {
            name: self.config.address.clone(),
            addr,
            pool: self.config.kind == UpstreamKind::Pool,
            iburst: self.config.iburst,
            min_poll: self.config.min_poll,
            max_poll: self.config.max_poll,
        }
    }
}

/// Why an address is kept out, and until when.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Penalty {
    /// Monotonic time it may be used again.
    until: f64,
    /// Times it was dropped as unreachable (the back-off doubles each).
    strikes: u32,
}

/// Addresses kept out, bounded.
#[derive(Debug, Default)]
struct Penalties {
    map: HashMap<SocketAddr, Penalty>,
}

impl Penalties {
    fn blocks(&self, addr: &SocketAddr, now: f64) -> bool {
        self.map.get(addr).is_some_and(|p| now < p.until)
    }

    fn refused(&mut self, addr: SocketAddr, now: f64) {
        let strikes = self.map.get(&addr).map_or(0, |p| p.strikes);
        self.insert(
            addr,
            Penalty {
                until: now + REFUSED_BAN,
                strikes,
            },
        );
    }

    /// Records an unreachable address; returns its back-off, s.
    fn unreachable(&mut self, addr: SocketAddr, now: f64) -> f64 {
        let strikes = self.map.get(&addr).map_or(0, |p| p.strikes) + 1;
        let backoff =
            (UNREACHABLE_BACKOFF.0 * f64::from(strikes - 1).exp2()).min(UNREACHABLE_BACKOFF.1);
        self.insert(
            addr,
            Penalty {
                until: now + backoff,
                strikes,
            },
        );
        backoff
    }

    /// Inserts, making room by forgetting the record that ends first.
    fn insert(&mut self, addr: SocketAddr, penalty: Penalty) {
        if !self.map.contains_key(&addr) && self.map.len() >= MAX_PENALTIES {
            let first = self
                .map
                .iter()
                .min_by(|a, b| a.1.until.total_cmp(&b.1.until))
                .map(|(a, _)| *a);
            if let Some(first) = first {
                self.map.remove(&first);
            }
        }
        self.map.insert(addr, penalty);
    }
}

/// The `[[upstream]]` entries, their resolution schedule and members.
#[derive(Debug, Default)]
pub struct Upstreams {
    entries: Vec<Entry>,
    penalties: Penalties,
}

impl Upstreams {
    /// The entries of `configs`, each to be resolved at `now` (monotonic
    /// s). An entry whose address does not parse (validation prevents it)
    /// is left out, with a warning.
    pub fn new(configs: &[UpstreamConfig], now: f64) -> Self {
        let entries = configs
            .iter()
            .filter_map(|u| match u.host_port() {
                Ok((host, port)) => Some(Entry {
                    config: u.clone(),
                    host,
                    port,
                    members: Vec::new(),
                    next_query: Some(now),
                    retry: RESOLVE_RETRY.0,
                    failing: false,
                    duplicate_logged: false,
                }),
                Err(e) => {
                    warn!("upstream `{}`: {e}; ignored", u.address);
                    None
                }
            })
            .collect();
        Upstreams {
            entries,
            penalties: Penalties::default(),
        }
    }

    /// The names to resolve now; each is asked once until its answer comes.
    pub fn due_queries(&mut self, now: f64) -> Vec<Query> {
        let mut out = Vec::new();
        for (tag, entry) in self.entries.iter_mut().enumerate() {
            if entry.next_query.is_some_and(|t| now >= t) {
                entry.next_query = None;
                out.push(Query {
                    tag,
                    host: entry.host.clone(),
                    port: entry.port,
                });
            }
        }
        out
    }

    /// When a name is next due (monotonic s), if any is scheduled.
    pub fn next_query(&self) -> Option<f64> {
        self.entries
            .iter()
            .filter_map(|e| e.next_query)
            .min_by(f64::total_cmp)
    }

    /// The answer to query `tag`: adds the addresses the entry is short of
    /// to `engine`, schedules the next resolution.
    pub fn resolved(
        &mut self,
        tag: usize,
        result: Result<Vec<SocketAddr>, ResolveError>,
        engine: &mut Engine,
        now: &Now,
    ) {
        let Some(entry) = self.entries.get_mut(tag) else {
            return;
        };
        match result {
            Ok(addrs) => Self::take_addresses(entry, &self.penalties, addrs, engine, now),
            Err(e) => Self::resolution_failed(entry, &e, now.mono),
        }
    }

    fn resolution_failed(entry: &mut Entry, e: &ResolveError, now: f64) {
        if !entry.failing {
            warn!(
                "cannot resolve upstream `{}`: {e}; retrying",
                entry.config.address
            );
            entry.failing = true;
        }
        entry.next_query = Some(now + entry.retry);
        entry.retry = (entry.retry * 2.0).min(RESOLVE_RETRY.1);
    }

    /// Adds the addresses of `addrs` that no source polls yet and that are
    /// not kept out, as many as `entry` is short of.
    fn take_addresses(
        entry: &mut Entry,
        penalties: &Penalties,
        addrs: Vec<SocketAddr>,
        engine: &mut Engine,
        now: &Now,
    ) {
        if entry.failing {
            info!("upstream `{}` resolves again", entry.config.address);
            entry.failing = false;
        }
        entry.retry = RESOLVE_RETRY.0;
        let room = entry.wanted().saturating_sub(entry.members.len());
        let in_use: Vec<SocketAddr> = engine.sources().map(|(_, s)| s.addr()).collect();
        let duplicate = addrs.iter().copied().find(|a| in_use.contains(a));
        let choice: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !in_use.contains(a) && !penalties.blocks(a, now.mono))
            .take(room)
            .collect();
        for addr in choice {
            entry
                .members
                .push(engine.add_source(entry.source_config(addr), now));
        }
        let short = entry.members.len() < entry.wanted();
        if let Some(dup) = duplicate.filter(|_| entry.members.is_empty()) {
            if !entry.duplicate_logged {
                info!(
                    "upstream `{}` ({dup}) is already polled for another [[upstream]] entry; \
                     polling it once",
                    entry.config.address
                );
                entry.duplicate_logged = true;
            }
        }
        if short {
            debug!(
                "upstream `{}`: no more usable addresses; asking again in {} s",
                entry.config.address, RESOLVE_RETRY.1
            );
        }
        entry.next_query = short.then_some(now.mono + RESOLVE_RETRY.1);
    }

    /// Removes the pool members that refused us or stopped answering from
    /// `engine`, remembers why, and asks their names again for
    /// replacements. Returns the ids removed (their requests in flight are
    /// moot).
    pub fn replace_unusable(&mut self, engine: &mut Engine, now: &Now) -> Vec<SourceId> {
        let removed: Vec<SourceId> = engine
            .unusable_pool_members()
            .into_iter()
            .filter(|&id| {
                engine
                    .source(id)
                    .is_some_and(|s| s.refused().is_some() || s.failed_while_others_answered())
            })
            .collect();
        for &id in &removed {
            if let Some(source) = engine.source(id) {
                let addr = source.addr();
                match source.refused() {
                    Some(kiss) => {
                        self.penalties.refused(addr, now.mono);
                        info!(
                            "pool member {addr} refused us (KoD {}): not using it for {} h",
                            kiss.code(),
                            REFUSED_BAN / 3600.0
                        );
                    }
                    None => {
                        let backoff = self.penalties.unreachable(addr, now.mono);
                        info!(
                            "pool member {addr} does not answer: not using it for {} min",
                            backoff / 60.0
                        );
                    }
                }
            }
            engine.remove_source(id);
            for entry in &mut self.entries {
                if let Some(pos) = entry.members.iter().position(|m| *m == id) {
                    entry.members.remove(pos);
                    // Ask now: the name may offer a new address. If it does
                    // not, the answer schedules the slow retry.
                    if entry.next_query.is_none_or(|t| t > now.mono) {
                        entry.next_query = Some(now.mono);
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    //! Pools and servers in virtual time: a fake DNS answers every query at
    //! once, fake servers answer (or refuse, or stay silent) every request,
    //! and the real engine decides.

    use std::collections::HashMap;

    use super::*;
    use crate::discipline::engine::ClockMode;
    use crate::discipline::test_support::{engine_params, primary_reply};
    use crate::proto::{RefId, UnixTime};

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Behaviour {
        Answer,
        Deny,
        Silent,
    }

    struct World {
        engine: Engine,
        upstreams: Upstreams,
        dns: HashMap<String, Vec<SocketAddr>>,
        servers: HashMap<SocketAddr, Behaviour>,
        /// Requests each address received.
        requests: HashMap<SocketAddr, Vec<f64>>,
        /// Replies on their way: arrival time, source, bytes.
        flight: Vec<(f64, SourceId, [u8; 48])>,
        /// When each address was added as a source.
        added: HashMap<SocketAddr, Vec<f64>>,
        queries: usize,
        mono: f64,
        rng: u64,
    }

    const EPOCH: i64 = 1_800_000_000;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 123))
    }

    fn upstream(address: &str, kind: UpstreamKind) -> UpstreamConfig {
        UpstreamConfig {
            address: address.into(),
            kind,
            iburst: true,
            min_poll: 6,
            max_poll: 10,
        }
    }

    impl World {
        fn new(configs: &[UpstreamConfig]) -> World {
            let now = Now::new(0.0, UnixTime::new(EPOCH, 0));
            World {
                engine: Engine::new(engine_params(ClockMode::Software), &now),
                upstreams: Upstreams::new(configs, 0.0),
                dns: HashMap::new(),
                servers: HashMap::new(),
                requests: HashMap::new(),
                flight: Vec::new(),
                added: HashMap::new(),
                queries: 0,
                mono: 0.0,
                rng: 0x1234_5678,
            }
        }

        fn now(&self) -> Now {
            Now::new(0.0, UnixTime::new(EPOCH, 0)).later(self.mono)
        }

        fn reply(&self, request: &[u8; 48], behaviour: Behaviour) -> [u8; 48] {
            let receive = self.now().kernel.add_secs(0.005);
            primary_reply(request, receive, |h| {
                if behaviour == Behaviour::Deny {
                    h.stratum = 0;
                    h.reference_id = RefId::DENY;
                }
            })
        }

        /// Replies due by now, to the engine.
        fn deliver(&mut self) {
            let now = self.now();
            let (due, later) = self.flight.drain(..).partition(|f| f.0 <= now.mono);
            self.flight = later;
            let due: Vec<(f64, SourceId, [u8; 48])> = due;
            for (_, id, bytes) in due {
                let _ = self.engine.receive(id, &bytes, now.kernel, &now);
            }
        }

        /// One turn of the discipline thread at the current time.
        fn turn(&mut self) {
            self.deliver();
            let now = self.now();
            for q in self.upstreams.due_queries(now.mono) {
                self.queries += 1;
                let answer = self
                    .dns
                    .get(&q.host)
                    .cloned()
                    .filter(|a| !a.is_empty())
                    .ok_or(ResolveError::NoAddresses);
                let before: Vec<SourceId> = self.engine.sources().map(|(id, _)| id).collect();
                self.upstreams
                    .resolved(q.tag, answer, &mut self.engine, &now);
                for (id, s) in self.engine.sources() {
                    if !before.contains(&id) {
                        self.added.entry(s.addr()).or_default().push(now.mono);
                    }
                }
            }
            self.engine.tick(&now);
            self.upstreams.replace_unusable(&mut self.engine, &now);
            let mut rng = self.rng;
            let requests = self.engine.poll(&now, || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            });
            self.rng = rng;
            for r in requests {
                self.engine.sent(r.id, now.kernel, None);
                self.requests.entry(r.addr).or_default().push(now.mono);
                let behaviour = self
                    .servers
                    .get(&r.addr)
                    .copied()
                    .unwrap_or(Behaviour::Silent);
                if behaviour == Behaviour::Silent {
                    continue;
                }
                let bytes = self.reply(&r.packet, behaviour);
                self.flight.push((now.mono + 0.01, r.id, bytes));
            }
        }

        fn run_until(&mut self, t: f64) {
            let mut guard = 0;
            while self.mono < t {
                self.turn();
                let now = self.now();
                let wake = self.engine.next_wakeup(&now);
                let dns = self.upstreams.next_query().unwrap_or(f64::INFINITY);
                let reply = self
                    .flight
                    .iter()
                    .map(|f| f.0)
                    .fold(f64::INFINITY, f64::min);
                self.mono = wake.min(dns).min(reply).min(t).max(self.mono + 0.001);
                guard += 1;
                assert!(guard < 1_000_000, "no progress");
            }
        }

        fn sent_to(&self, a: SocketAddr) -> usize {
            self.requests.get(&a).map_or(0, Vec::len)
        }

        fn polled(&self) -> Vec<SocketAddr> {
            let mut v: Vec<SocketAddr> = self.engine.sources().map(|(_, s)| s.addr()).collect();
            v.sort();
            v
        }
    }

    #[test]
    fn a_pool_member_that_says_deny_is_not_asked_again_for_a_day() {
        let mut w = World::new(&[upstream("pool.test", UpstreamKind::Pool)]);
        w.dns.insert("pool.test".into(), vec![addr(1), addr(2)]);
        w.servers.insert(addr(1), Behaviour::Deny);
        w.servers.insert(addr(2), Behaviour::Answer);
        w.run_until(6.0 * 3600.0);
        assert_eq!(w.sent_to(addr(1)), 1, "DENY'ing server polled again");
        assert_eq!(w.polled(), vec![addr(2)]);
        // The name is asked again only at the slow retry: ~10 min apart.
        assert!(w.queries <= 2 + (6 * 6), "{} DNS queries", w.queries);
        // A day later it gets one more chance.
        w.run_until(6.0 * 3600.0 + REFUSED_BAN);
        assert_eq!(w.sent_to(addr(1)), 2);
    }

    #[test]
    fn a_dead_pool_member_is_retried_with_exponential_back_off() {
        let mut w = World::new(&[upstream("pool.test", UpstreamKind::Pool)]);
        w.dns.insert("pool.test".into(), vec![addr(1), addr(2)]);
        w.servers.insert(addr(2), Behaviour::Answer);
        w.run_until(12.0 * 3600.0);
        let lives = &w.added[&addr(1)];
        // Kept out 30 min, then 1 h, 2 h, 4 h after each removal: the
        // pauses between additions grow.
        assert!(lives.len() >= 3 && lives.len() <= 5, "{lives:?}");
        let gaps: Vec<f64> = lives.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps[0] >= UNREACHABLE_BACKOFF.0, "{gaps:?}");
        for pair in gaps.windows(2) {
            assert!(pair[1] > pair[0] + UNREACHABLE_BACKOFF.0 / 2.0, "{gaps:?}");
        }
        // Each time, a burst and a few polls until another source has
        // answered meanwhile: a dozen requests or so.
        let sent = w.sent_to(addr(1));
        assert!(sent <= 16 * lives.len(), "{sent} requests in {lives:?}");
        assert_eq!(w.added[&addr(2)].len(), 1, "the good one was dropped");
    }

    #[test]
    fn replacement_pool_members_do_not_hold_up_the_first_synchronization() {
        let mut w = World::new(&[upstream("pool.test", UpstreamKind::Pool)]);
        // Three good servers and one that refuses us, then many dead
        // addresses: the refusing one is replaced at once, and each
        // replacement bursts for 14 s before the next replaces it.
        let mut addrs: Vec<SocketAddr> = (1..=3).map(addr).collect();
        addrs.insert(1, addr(9));
        addrs.extend((10..60).map(addr));
        w.dns.insert("pool.test".into(), addrs);
        w.servers.insert(addr(9), Behaviour::Deny);
        for n in 1..=3 {
            w.servers.insert(addr(n), Behaviour::Answer);
        }
        // The good ones end their bursts at 14 s.
        w.run_until(20.0);
        assert_eq!(
            w.engine.state(),
            crate::discipline::status::SyncState::Synchronized
        );
        assert!(w.sent_to(addr(10)) > 0, "no replacement was tried");
    }

    #[test]
    fn an_outage_of_our_own_network_bans_nobody() {
        let mut w = World::new(&[
            upstream("pool1.test", UpstreamKind::Pool),
            upstream("pool2.test", UpstreamKind::Pool),
        ]);
        w.dns
            .insert("pool1.test".into(), (1..=4).map(addr).collect());
        for n in 1..=8 {
            w.servers.insert(addr(n), Behaviour::Answer);
        }
        // The second name resolves only after a few retries: its members
        // poll out of step with the first's.
        w.run_until(100.0);
        w.dns
            .insert("pool2.test".into(), (5..=8).map(addr).collect());
        w.run_until(3600.0);
        let before = w.polled();
        assert_eq!(before.len(), 8);
        // Our uplink fails for two hours: every server falls silent at once.
        for n in 1..=8 {
            w.servers.insert(addr(n), Behaviour::Silent);
        }
        w.run_until(3.0 * 3600.0);
        assert_eq!(w.polled(), before, "members were dropped");
        for n in 1..=8 {
            w.servers.insert(addr(n), Behaviour::Answer);
        }
        // Back: the same members answer at their next (backed-off) poll.
        w.run_until(3.0 * 3600.0 + 1200.0);
        assert_eq!(
            w.engine.state(),
            crate::discipline::status::SyncState::Synchronized
        );
        assert_eq!(w.polled(), before);
    }

    #[test]
    fn the_same_address_from_two_entries_is_polled_once() {
        let mut w = World::new(&[
            upstream("ntp1.test", UpstreamKind::Server),
            upstream("pool.test", UpstreamKind::Pool),
            upstream("alias.test", UpstreamKind::Server),
        ]);
        w.dns.insert("ntp1.test".into(), vec![addr(1)]);
        w.dns
            .insert("pool.test".into(), vec![addr(1), addr(2), addr(3)]);
        w.dns.insert("alias.test".into(), vec![addr(2)]);
        for n in 1..=3 {
            w.servers.insert(addr(n), Behaviour::Answer);
        }
        w.run_until(3600.0);
        assert_eq!(w.polled(), vec![addr(1), addr(2), addr(3)]);
        // Each polled as one source: a burst then every 64..1024 s.
        for n in 1..=3 {
            assert!(w.sent_to(addr(n)) < 8 + 3600 / 64 + 1, "{n}");
        }
    }

    #[test]
    fn failed_resolutions_back_off() {
        let mut w = World::new(&[upstream("nowhere.test", UpstreamKind::Pool)]);
        w.run_until(3600.0);
        // 5, 10, 20, ... 600 s: about a dozen queries in an hour.
        assert!(w.queries >= 6 && w.queries <= 14, "{}", w.queries);
    }

    #[test]
    fn the_penalty_record_is_bounded() {
        let mut p = Penalties::default();
        for i in 0..(MAX_PENALTIES as u32 + 50) {
            let a = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 123));
            p.unreachable(a, f64::from(i));
        }
        assert_eq!(p.map.len(), MAX_PENALTIES);
        // The oldest records went first.
        assert!(!p.map.contains_key(&SocketAddr::from(([10, 0, 0, 0], 123))));
    }
}
