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

/// `pool` in [`upstream`].
const POOL: bool = true;
/// Not `pool` in [`upstream`].
const SERVER: bool = false;

/// Entry `address` (a pool or a server), port 123, iburst, polls 6..=10.
fn upstream(address: &str, pool: bool) -> UpstreamParams {
    UpstreamParams {
        name: address.into(),
        host: address.into(),
        port: 123,
        pool,
        poll: PollParams {
            iburst: true,
            min_poll: 6,
            max_poll: 10,
        },
    }
}

impl World {
    fn new(entries: &[UpstreamParams]) -> World {
        let now = Now::new(0.0, UnixTime::new(EPOCH, 0));
        World {
            engine: Engine::new(engine_params(ClockMode::Software), &now),
            upstreams: Upstreams::new(entries, 0.0),
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
    let mut w = World::new(&[upstream("pool.test", POOL)]);
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
    let mut w = World::new(&[upstream("pool.test", POOL)]);
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
    let mut w = World::new(&[upstream("pool.test", POOL)]);
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
    let mut w = World::new(&[upstream("pool1.test", POOL), upstream("pool2.test", POOL)]);
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
        upstream("ntp1.test", SERVER),
        upstream("pool.test", POOL),
        upstream("alias.test", SERVER),
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
    let mut w = World::new(&[upstream("nowhere.test", POOL)]);
    w.run_until(3600.0);
    // 5, 10, 20, ... 600 s: about a dozen queries in an hour.
    assert!(w.queries >= 6 && w.queries <= 14, "{}", w.queries);
}
