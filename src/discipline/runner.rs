//! The discipline thread's loop. It does the I/O for the sans-IO parts —
//! name resolution ([`super::resolve`]), polling sockets ([`super::net`]),
//! the kernel clock ([`super::kernel_clock`]), the drift and leap-second files,
//! publishing the snapshot — and leaves every decision to them: the
//! [`Engine`] (what to send, what a reply means, how to steer), the
//! [`Upstreams`] (which addresses to poll), and [`InFlight`] with
//! [`deliver`] (which requests still wait for a reply).
//!
//! One turn: resolve → tick → replace pool members → send → carry out
//! clock commands → periodic work → publish → wait for replies (at most
//! [`MAX_WAIT`]) → read them → carry out the commands they caused (before
//! the next tick, which expects a commanded step done).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, error, warn};

use super::engine::{Engine, Now, SourceId};
use super::leapfile::LeapTable;
use super::pool::Upstreams;
use super::status::SyncState;
use super::{drift, net, random_u64, resolve, Prepared, Steering};
use crate::proto::NtpTimestamp;
use crate::snapshot::Publisher;

/// How often the state is re-published even when nothing changed (keeps
/// a local-clock reference time fresh), s.
const REPUBLISH: f64 = 16.0;
/// Longest sleep of the thread (stop flag, DNS answers, status refresh), s.
pub const MAX_WAIT: f64 = 0.25;
/// How often the drift file is written while synchronized (kernel mode), s.
const DRIFT_INTERVAL: f64 = 3600.0;
/// How often the leap-second file is re-read, s.
const LEAP_RELOAD: f64 = 3600.0;
/// How often the kernel status is read in external mode, s.
const EXTERNAL_READ: f64 = 1.0;
/// How often the status for the control interface is refreshed, s.
const STATUS_INTERVAL: f64 = 1.0;
/// Requests whose reply has not come after this long are abandoned, s.
pub const REQUEST_TIMEOUT: f64 = 8.0;
/// Most datagrams read from one request's socket per turn.
const MAX_DATAGRAMS: usize = 4;

/// Requests in flight: each source's socket (any type: tests use `()`)
/// and the monotonic time it was sent.
#[derive(Debug)]
pub struct InFlight<S> {
    map: HashMap<SourceId, (S, f64)>,
}

impl<S> Default for InFlight<S> {
    fn default() -> Self {
        InFlight {
            map: HashMap::new(),
        }
    }
}

impl<S> InFlight<S> {
    /// Source `id`'s request left at `now` on `socket` (replacing any
    /// earlier one: the engine no longer accepts its reply).
    pub fn insert(&mut self, id: SourceId, socket: S, now: f64) {
        self.map.insert(id, (socket, now));
    }

    /// Forgets source `id`'s request.
    pub fn remove(&mut self, id: SourceId) {
        self.map.remove(&id);
    }

    /// Drops the requests older than [`REQUEST_TIMEOUT`] at `now`.
    pub fn expire(&mut self, now: f64) {
        self.map
            .retain(|_, (_, sent)| now - *sent < REQUEST_TIMEOUT);
    }

    /// The requests in flight.
    pub fn sockets(&self) -> impl Iterator<Item = (SourceId, &S)> {
        self.map.iter().map(|(id, (s, _))| (*id, s))
    }

    /// Whether source `id` has a request in flight.
    pub fn contains(&self, id: SourceId) -> bool {
        self.map.contains_key(&id)
    }
}

/// Hands a datagram that came on source `id`'s socket to the engine;
/// returns whether the socket is still needed: until a valid reply (or a
/// kiss code) ends the exchange, a forged or garbled datagram must not.
pub fn deliver(
    engine: &mut Engine,
    id: SourceId,
    bytes: &[u8],
    t4: NtpTimestamp,
    now: &Now,
) -> bool {
    // Errors are counted in the source's state (reach) and logged by the
    // engine where it matters.
    let _ = engine.receive(id, bytes, t4, now);
    engine.awaiting_reply(id)
}

/// Monotonic times of the periodic jobs' last runs.
struct Timers {
    publish: f64,
    status: f64,
    drift: f64,
    leap_load: f64,
    external: f64,
}

/// The running discipline thread's state.
pub(super) struct Runner {
    p: Prepared,
    publisher: Publisher,
    resolver: resolve::Resolver,
    upstreams: Upstreams,
    in_flight: InFlight<net::Pending>,
    last: Timers,
}

impl Runner {
    pub(super) fn new(p: Prepared, publisher: Publisher) -> std::io::Result<Runner> {
        let resolver = resolve::Resolver::spawn()?;
        let start = p.clocks.now().mono;
        let upstreams = Upstreams::new(&p.upstreams, start);
        Ok(Runner {
            p,
            publisher,
            resolver,
            upstreams,
            in_flight: InFlight::default(),
            last: Timers {
                publish: start,
                status: start,
                drift: start,
                leap_load: start,
                external: start,
            },
        })
    }

    pub(super) fn run(&mut self, stop: &AtomicBool) {
        let mut force_publish = true;
        while !stop.load(Ordering::Relaxed) {
            let now = self.p.clocks.now();
            self.resolve(&now);
            self.p.engine.tick(&now);
            for id in self.upstreams.replace_unusable(&mut self.p.engine, &now) {
                self.in_flight.remove(id);
            }
            self.send_requests(&now);
            self.execute_commands();
            self.periodic(&now);
            self.publish(&now, force_publish);
            force_publish = false;
            let wake = self.p.engine.next_wakeup(&now);
            let wait = Duration::from_secs_f64((wake - now.mono).clamp(0.0, MAX_WAIT));
            net::wait(self.in_flight.sockets().map(|(_, p)| p), wait);
            self.read_replies();
            self.execute_commands();
        }
        self.shutdown();
    }

    fn resolve(&mut self, now: &Now) {
        for answer in self.resolver.answers() {
            self.upstreams
                .resolved(answer.tag, answer.result, &mut self.p.engine, now);
        }
        for q in self.upstreams.due_queries(now.mono) {
            self.resolver.query(q.tag, &q.host, q.port);
        }
    }

    fn send_requests(&mut self, now: &Now) {
        for req in self.p.engine.poll(now, random_u64) {
            self.in_flight.remove(req.id);
            match net::send(req.addr, &req.packet) {
                Ok((pending, t1)) => {
                    self.p.engine.sent(req.id, t1, pending.local_ip());
                    self.in_flight.insert(req.id, pending, now.mono);
                }
                Err(e) => {
                    debug!("cannot send to {}: {e}", req.addr);
                    self.p.engine.send_failed(req.id);
                }
            }
        }
        self.in_flight.expire(now.mono);
    }

    fn read_replies(&mut self) {
        let mut buf = [0u8; net::MAX_REPLY];
        let mut done = Vec::new();
        for (id, pending) in self.in_flight.sockets() {
            if let Some(tx) = pending.tx_stamp() {
                self.p.engine.tx_stamp(id, NtpTimestamp::from_unix(tx));
            }
            for _ in 0..MAX_DATAGRAMS {
                match pending.recv(&mut buf) {
                    Ok(Some((len, stamp))) => {
                        let now = self.p.clocks.now();
                        let t4 = NtpTimestamp::from_unix(stamp);
                        if !deliver(&mut self.p.engine, id, &buf[..len], t4, &now) {
                            done.push(id);
                            break;
                        }
                    }
                    Ok(None) => break,
                    // E.g. ICMP port unreachable on the connected socket.
                    Err(_) => {
                        done.push(id);
                        break;
                    }
                }
            }
        }
        for id in done {
            self.in_flight.remove(id);
        }
    }

    fn execute_commands(&mut self) {
        let commands = self.p.engine.take_commands();
        if let Steering::Kernel { kernel, .. } = &mut self.p.steering {
            for c in commands {
                if let Err(e) = kernel.apply(c) {
                    error!("kernel clock: {e}");
                }
            }
        }
    }

    fn periodic(&mut self, now: &Now) {
        if let Steering::External(clock) = &self.p.steering {
            if now.mono - self.last.external >= EXTERNAL_READ {
                self.last.external = now.mono;
                use super::kernel_clock::KernelClock;
                match clock.status() {
                    Ok(s) => self.p.engine.set_kernel_status(s, now),
                    Err(e) => warn!("{e}"),
                }
            }
        }
        if now.mono - self.last.leap_load >= LEAP_RELOAD {
            self.last.leap_load = now.mono;
            if let Some(path) = &self.p.leap_file {
                self.p.engine.leap_file_loaded(LeapTable::load(path));
            }
        }
        if now.mono - self.last.drift >= DRIFT_INTERVAL {
            self.last.drift = now.mono;
            if self.p.engine.state() == SyncState::Synchronized {
                self.write_drift();
            }
        }
        if now.mono - self.last.status >= STATUS_INTERVAL {
            self.last.status = now.mono;
            self.p.status.set(self.p.engine.status(now));
        }
    }

    fn publish(&mut self, now: &Now, force: bool) {
        if self.p.engine.take_dirty() || force || now.mono - self.last.publish >= REPUBLISH {
            self.publisher.publish(&self.p.engine.server_state(now));
            self.p.status.set(self.p.engine.status(now));
            self.last.publish = now.mono;
        }
    }

    /// At exit: the last clock commands (kernel mode: the frequency
    /// without the running slew), then the drift file.
    fn shutdown(&mut self) {
        let now = self.p.clocks.now();
        let commands = self.p.engine.shutdown(&now);
        if let Steering::Kernel { kernel, .. } = &mut self.p.steering {
            for c in commands {
                if let Err(e) = kernel.apply(c) {
                    error!("kernel clock at exit: {e}");
                }
            }
        }
        self.write_drift();
    }

    fn write_drift(&self) {
        if let Steering::Kernel {
            kernel,
            drift_file: Some(path),
        } = &self.p.steering
        {
            if self.p.engine.state() != SyncState::Starting {
                let ppm = kernel.drift_ppm(self.p.engine.trajectory().freq);
                if let Err(e) = drift::write(path, ppm) {
                    warn!("{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discipline::engine::ClockMode;
    use crate::discipline::source::{PollParams, SourceParams};
    use crate::discipline::test_support::{engine_params, primary_reply};
    use crate::proto::UnixTime;

    fn engine_with_source() -> (Engine, SourceId, Now) {
        let now = Now::new(0.0, UnixTime::new(1_800_000_000, 0));
        let mut e = Engine::new(engine_params(ClockMode::Software), &now);
        let id = e.add_source(
            SourceParams {
                name: "test".into(),
                addr: "192.0.2.1:123".parse().unwrap(),
                pool: false,
                poll: PollParams {
                    iburst: false,
                    min_poll: 6,
                    max_poll: 10,
                },
            },
            &now,
        );
        (e, id, now)
    }

    #[test]
    fn a_forged_datagram_does_not_end_the_exchange() {
        let (mut e, id, now) = engine_with_source();
        let req = e.poll(&now, || 0xfeed_beef).pop().expect("due");
        e.sent(id, now.kernel, None);
        let mut in_flight = InFlight::default();
        in_flight.insert(id, (), now.mono);
        let later = now.later(0.01);
        // An off-path attacker's guess, then garbage: both ignored.
        let forged = primary_reply(&req.packet, now.kernel, |h| {
            h.origin_ts = NtpTimestamp::from_bits(42)
        });
        assert!(deliver(&mut e, id, &forged, later.kernel, &later));
        assert!(deliver(&mut e, id, &[0u8; 12], later.kernel, &later));
        assert_eq!(e.source(id).unwrap().reach(), 0);
        // The real reply still counts, and ends the exchange.
        let real = primary_reply(&req.packet, now.kernel.add_secs(0.005), |_| {});
        assert!(!deliver(&mut e, id, &real, later.kernel, &later));
        assert_eq!(e.source(id).unwrap().reach(), 1);
    }

    #[test]
    fn requests_time_out() {
        let mut in_flight = InFlight::default();
        in_flight.insert(1, (), 100.0);
        in_flight.insert(2, (), 105.0);
        in_flight.expire(100.0 + REQUEST_TIMEOUT);
        assert!(!in_flight.contains(1));
        assert!(in_flight.contains(2));
    }
}
