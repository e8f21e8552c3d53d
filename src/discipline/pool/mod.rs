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

mod penalties;

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::engine::{Engine, Now, SourceId};
use super::resolve::ResolveError;
use super::source::{PollParams, SourceParams};
use penalties::Penalties;

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

/// One `[[upstream]]` entry, as the pool sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamParams {
    /// The address as written: names the entry in logs and its sources in
    /// the status.
    pub name: String,
    /// The host name or address to resolve.
    pub host: String,
    /// The port its addresses get.
    pub port: u16,
    /// A pool (up to [`POOL_MEMBERS`] of its addresses, each replaced when
    /// it becomes unusable), or a single server.
    pub pool: bool,
    /// How its sources are polled.
    pub poll: PollParams,
}

/// One `[[upstream]]` entry and the sources it currently has.
#[derive(Debug)]
struct Entry {
    params: UpstreamParams,
    members: Vec<SourceId>,
    next_query: Option<f64>,
    retry: f64,
    failing: bool,
    duplicate_logged: bool,
}

impl Entry {
    fn wanted(&self) -> usize {
        if self.params.pool {
            POOL_MEMBERS
        } else {
            1
        }
    }

    fn source_params(&self, addr: SocketAddr) -> SourceParams {
        SourceParams {
            name: self.params.name.clone(),
            addr,
            pool: self.params.pool,
            poll: self.params.poll,
        }
    }
}

/// The `[[upstream]]` entries, their resolution schedule and members.
#[derive(Debug, Default)]
pub struct Upstreams {
    entries: Vec<Entry>,
    penalties: Penalties,
}

impl Upstreams {
    /// The entries `params`, each to be resolved at `now` (monotonic s).
    pub fn new(params: &[UpstreamParams], now: f64) -> Self {
        let entries = params
            .iter()
            .map(|p| Entry {
                params: p.clone(),
                members: Vec::new(),
                next_query: Some(now),
                retry: RESOLVE_RETRY.0,
                failing: false,
                duplicate_logged: false,
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
                    host: entry.params.host.clone(),
                    port: entry.params.port,
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
                entry.params.name
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
            info!("upstream `{}` resolves again", entry.params.name);
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
                .push(engine.add_source(entry.source_params(addr), now));
        }
        let short = entry.members.len() < entry.wanted();
        if let Some(dup) = duplicate.filter(|_| entry.members.is_empty()) {
            if !entry.duplicate_logged {
                info!(
                    "upstream `{}` ({dup}) is already polled for another [[upstream]] entry; \
                     polling it once",
                    entry.params.name
                );
                entry.duplicate_logged = true;
            }
        }
        if short {
            debug!(
                "upstream `{}`: no more usable addresses; asking again in {} s",
                entry.params.name, RESOLVE_RETRY.1
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
mod tests;
