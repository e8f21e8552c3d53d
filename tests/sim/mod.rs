//! Simulation harness: the discipline engine driven in virtual time against
//! a [`FakeClock`] (frequency error, wander) and virtual upstreams (delay,
//! jitter, asymmetry, their own offset, outages, kiss codes). Packets are
//! real NTP bytes; only time and the network are simulated. Hours of
//! simulated time take well under a second.
#![allow(dead_code)]

use std::net::SocketAddr;

use fastntp::config::{ClockConfig, DisciplineMode};
use fastntp::discipline::engine::{Engine, Now};
use fastntp::discipline::kernel_clock::{FakeClock, KernelStatus};
use fastntp::discipline::leapfile::LeapTable;
use fastntp::discipline::source::{PollParams, SourceParams};
use fastntp::discipline::status::{Status, SyncState, Tally};
use fastntp::discipline::{engine_params, KernelSteering};
use fastntp::proto::{LeapIndicator, NtpTimestamp, RefId, ServerState, UnixTime};
use testkit::packet::{short_from_secs, Reply};

/// Unix time where simulated true time starts by default
/// (2027-01-15T08:00:00Z).
pub const EPOCH_UNIX: i64 = 1_800_000_000;

fn ntp_of_unix(secs: i64) -> NtpTimestamp {
    NtpTimestamp::from_unix(UnixTime::new(secs, 0))
}

/// A virtual upstream server.
#[derive(Clone, Debug)]
pub struct VirtualUpstream {
    /// Its address (only a name here).
    pub addr: SocketAddr,
    /// Its clock minus true time, s.
    pub offset: f64,
    /// Mean one-way delay, s.
    pub one_way: f64,
    /// Each leg's delay varies uniformly by ± this, s.
    pub jitter: f64,
    /// Extra delay on the way to it (asymmetry), s.
    pub asymmetry: f64,
    /// True-time intervals (s since the epoch) during which it is silent.
    pub outages: Vec<(f64, f64)>,
    /// Its stratum.
    pub stratum: u8,
    /// The root dispersion it advertises, s.
    pub root_dispersion: f64,
    /// Its leap indicator.
    pub leap: LeapIndicator,
    /// Answer every request with this kiss code instead.
    pub kiss: Option<RefId>,
    /// From this true time (s since the epoch) on, its clock reads this
    /// much more (a leap second: -1 after an insertion).
    pub leap_step: Option<(f64, f64)>,
    /// True-time intervals `(from, to, late)` during which it is slow to
    /// answer, like a server process on a busy host: it takes its receive
    /// timestamp, and sends, `late` s after the request arrived. Its
    /// replies then read `late / 2` ahead, within half their extra delay,
    /// as NTP's error bound allows.
    pub stalls: Vec<(f64, f64, f64)>,
}

impl VirtualUpstream {
    /// Stratum 1, 10 ms ± 1 ms round trip, symmetric, never down.
    pub fn new(n: u8) -> Self {
        VirtualUpstream {
            addr: SocketAddr::from(([192, 0, 2, n], 123)),
            offset: 0.0,
            one_way: 0.005,
            jitter: 0.0005,
            asymmetry: 0.0,
            outages: Vec::new(),
            stratum: 1,
            root_dispersion: 0.0001,
            leap: LeapIndicator::NoWarning,
            kiss: None,
            leap_step: None,
            stalls: Vec::new(),
        }
    }

    fn down_at(&self, t: f64) -> bool {
        self.outages.iter().any(|&(a, b)| t >= a && t < b)
    }

    fn late_at(&self, t: f64) -> f64 {
        self.stalls
            .iter()
            .filter(|&&(a, b, _)| t >= a && t < b)
            .map(|&(_, _, late)| late)
            .sum()
    }

    fn offset_at(&self, t: f64) -> f64 {
        match self.leap_step {
            Some((at, step)) if t >= at => self.offset + step,
            _ => self.offset,
        }
    }
}

struct InFlight {
    arrives: f64,
    id: u64,
    bytes: [u8; 48],
}

/// One point of the record.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// True time since the epoch, s.
    pub t: f64,
    /// Served time minus true time, s.
    pub error: f64,
    /// Frequency error of the served clock (oscillator + correction,
    /// without slews).
    pub freq_error: f64,
    /// What was served.
    pub state: ServerState,
    /// In a word.
    pub sync: SyncState,
}

/// Unix times of midnights that end a day with a leap second, in NTP era 0
/// (2016-12-31), era 1 (2036-06-30) and past 2091, where a pivot fixed
/// near 2023 would put the era wrong (2100-06-30).
pub const LEAP_MIDNIGHTS: [i64; 3] = [1_483_228_800, 2_098_483_200, 4_118_083_200];

/// A leap-second list whose last entry inserts a second just before Unix
/// time `midnight` (and valid for 100 days after it).
pub fn leap_table_inserting_at(midnight: i64) -> LeapTable {
    let ntp = midnight + fastntp::proto::time::NTP_UNIX_OFFSET;
    LeapTable::parse(&format!(
        "#@ {}\n{} 36\n{ntp} 37\n",
        ntp + 100 * 86_400,
        ntp - 200 * 86_400
    ))
    .expect("a valid list")
}

/// The refid that names virtual upstream `n` (192.0.2.n).
pub fn refid_of_upstream(n: u8) -> RefId {
    RefId([192, 0, 2, n])
}

/// The simulated world.
pub struct Sim {
    /// The oscillator / kernel clock.
    pub clock: FakeClock,
    /// The engine under test.
    pub engine: Engine,
    /// Kernel mode: what carries out the engine's commands.
    pub kernel: Option<KernelSteering<FakeClock>>,
    /// The upstreams, by source id order.
    pub upstreams: Vec<(u64, VirtualUpstream)>,
    flight: Vec<InFlight>,
    rng: u64,
    /// Everything observed, one point per step.
    pub record: Vec<Point>,
    /// The tally codes of the sources (in the order they were added), with
    /// the true time they took effect: one entry per change.
    pub tallies: Vec<(f64, String)>,
    /// True time at the start.
    pub epoch: NtpTimestamp,
    clock_cfg: ClockConfig,
    polls: (i8, i8),
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

impl Sim {
    /// A clock `offset` s off running `freq` fast with `wander` per √s,
    /// disciplined in `mode` with `clock_cfg`, polling `upstreams` with
    /// `min_poll..=max_poll` and iburst.
    pub fn new(
        clock_cfg: ClockConfig,
        offset: f64,
        freq: f64,
        wander: f64,
        upstreams: Vec<VirtualUpstream>,
        polls: (i8, i8),
        seed: u64,
    ) -> Sim {
        Self::new_at(
            EPOCH_UNIX, clock_cfg, offset, freq, wander, upstreams, polls, seed,
        )
    }

    /// Like [`Sim::new`], with true time starting at Unix time `start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_at(
        start: i64,
        clock_cfg: ClockConfig,
        offset: f64,
        freq: f64,
        wander: f64,
        upstreams: Vec<VirtualUpstream>,
        polls: (i8, i8),
        seed: u64,
    ) -> Sim {
        let epoch = ntp_of_unix(start);
        let clock = FakeClock::new(UnixTime::new(start, 0), offset, freq, wander, seed);
        let now = Now::new(clock.mono(), clock.kernel_unix());
        let kernel = (clock_cfg.discipline == DisciplineMode::Kernel)
            .then(|| KernelSteering::new(clock.clone(), 0.0));
        let mut sim = Sim {
            engine: Engine::new(engine_params(&clock_cfg, -24, 0.0, true), &now),
            clock,
            kernel,
            upstreams: Vec::new(),
            flight: Vec::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            record: Vec::new(),
            tallies: Vec::new(),
            epoch,
            clock_cfg,
            polls,
        };
        sim.build_engine(0.0, upstreams);
        sim
    }

    /// A fresh engine counting from kernel frequency `base_ppm`, with
    /// `upstreams` as its sources.
    fn build_engine(&mut self, base_ppm: f64, upstreams: Vec<VirtualUpstream>) {
        let now = self.now();
        let params = engine_params(&self.clock_cfg, -24, base_ppm, true);
        self.engine = Engine::new(params, &now);
        let polls = self.polls;
        self.upstreams = upstreams
            .into_iter()
            .map(|u| {
                let id = self.engine.add_source(
                    SourceParams {
                        name: u.addr.to_string(),
                        addr: u.addr,
                        pool: false,
                        poll: PollParams {
                            iburst: true,
                            min_poll: polls.0,
                            max_poll: polls.1,
                        },
                    },
                    &now,
                );
                (id, u)
            })
            .collect();
    }

    /// Kernel mode, before running: the discipline starts the kernel clock
    /// at `ppm` (as from a drift file, through the PLL reset of a real
    /// start) and takes that as its zero; the engine is rebuilt with the
    /// frequency limits that follow from it.
    pub fn set_kernel_base(&mut self, ppm: f64) {
        self.kernel = Some(KernelSteering::start(self.clock.clone(), ppm).expect("fake clock"));
        let upstreams = self.upstreams.drain(..).map(|(_, u)| u).collect();
        self.build_engine(ppm, upstreams);
    }

    /// What fastntpd does at exit: the engine's last commands carried out.
    pub fn shutdown(&mut self) {
        let now = self.now();
        let commands = self.engine.shutdown(&now);
        if let Some(k) = &mut self.kernel {
            for c in commands {
                k.apply(c).expect("fake clock accepts everything");
            }
        }
    }

    fn uniform(&mut self) -> f64 {
        (xorshift(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// The engine's clocks now.
    pub fn now(&self) -> Now {
        Now::new(self.clock.mono(), self.clock.kernel_unix())
    }

    /// External mode: what the other daemon's kernel clock status reads
    /// now.
    pub fn set_kernel_status(&mut self, status: KernelStatus) {
        let now = self.now();
        self.engine.set_kernel_status(status, &now);
    }

    /// Served time minus true time now.
    pub fn error(&self) -> f64 {
        let now = self.now();
        let served = self.engine.server_state(&now).correction.apply(now.kernel);
        served.diff_secs(self.clock.true_time())
    }

    /// Status now.
    pub fn status(&self) -> Status {
        self.engine.status(&self.now())
    }

    /// Tally of upstream `i`.
    pub fn tally(&self, i: usize) -> Tally {
        self.status().sources[i].tally
    }

    /// Mutable access to upstream `i` (e.g. to schedule an outage).
    pub fn upstream(&mut self, i: usize) -> &mut VirtualUpstream {
        &mut self.upstreams[i].1
    }

    /// Upstream `i` dies now: it never answers again (requests already
    /// answered still arrive).
    pub fn kill(&mut self, i: usize) {
        let t = self.clock.elapsed();
        self.upstream(i).outages.push((t, f64::INFINITY));
    }

    /// The tally codes at every change in `[from, to)` s (the codes in
    /// force at `from` first).
    pub fn tallies_between(&self, from: f64, to: f64) -> Vec<(f64, String)> {
        let start = self
            .tallies
            .iter()
            .rposition(|(t, _)| *t <= from)
            .unwrap_or(0);
        self.tallies[start..]
            .iter()
            .filter(|(t, _)| *t < to)
            .cloned()
            .collect()
    }

    fn step(&mut self, until: f64) {
        let now = self.now();
        self.engine.tick(&now);
        let mut rng = self.rng;
        let requests = self.engine.poll(&now, || xorshift(&mut rng));
        self.rng = rng;
        let t = self.clock.elapsed();
        for r in requests {
            self.engine.sent(r.id, now.kernel, None);
            let Some(u) = self
                .upstreams
                .iter()
                .find(|(id, _)| *id == r.id)
                .map(|(_, u)| u.clone())
            else {
                continue;
            };
            let out = u.one_way + u.asymmetry + u.jitter * self.uniform();
            let back = u.one_way + u.jitter * self.uniform();
            if u.down_at(t) || u.down_at(t + out) {
                continue;
            }
            let late = u.late_at(t + out);
            let t2 = self.epoch.add_secs(t + out + late + u.offset_at(t + out));
            let t3 = t2.add_secs(0.00001);
            let mut reply = Reply {
                leap: u.leap.to_bits(),
                stratum: u.stratum,
                precision: -24,
                root_dispersion: short_from_secs(u.root_dispersion),
                reference: t2.add_secs(-10.0).to_bits(),
                transmit: t3.to_bits(),
                ..Reply::answering(&r.packet, t2.to_bits())
            };
            if let Some(code) = u.kiss {
                reply = reply.kiss(code.0);
            }
            let bytes = reply.bytes();
            self.flight.push(InFlight {
                arrives: t + out + late + 0.00001 + back,
                id: r.id,
                bytes,
            });
        }
        self.apply_commands();
        self.observe();
        let wake = t + (self.engine.next_wakeup(&now) - now.mono).max(0.0);
        let next_arrival = self
            .flight
            .iter()
            .map(|f| f.arrives)
            .fold(f64::INFINITY, f64::min);
        let next = wake.min(next_arrival).min(until).max(t);
        self.clock.advance(next - t);
        let due: Vec<InFlight> = {
            let (due, rest) = self
                .flight
                .drain(..)
                .partition(|f| f.arrives <= next + 1e-12);
            self.flight = rest;
            due
        };
        for f in due {
            let now = self.now();
            let _ = self.engine.receive(f.id, &f.bytes, now.kernel, &now);
        }
        self.apply_commands();
    }

    fn apply_commands(&mut self) {
        let commands = self.engine.take_commands();
        if let Some(k) = &mut self.kernel {
            for c in commands {
                k.apply(c).expect("fake clock accepts everything");
            }
        }
    }

    fn observe(&mut self) {
        let now = self.now();
        let state = self.engine.server_state(&now);
        let served = state.correction.apply(now.kernel);
        let codes: String = self
            .engine
            .status(&now)
            .sources
            .iter()
            .map(|s| s.tally.code())
            .collect();
        if self.tallies.last().is_none_or(|(_, last)| *last != codes) {
            self.tallies.push((self.clock.elapsed(), codes));
        }
        let point = Point {
            t: self.clock.elapsed(),
            error: served.diff_secs(self.clock.true_time()),
            freq_error: self.clock.natural_freq() + self.engine.trajectory().freq,
            state,
            sync: self.engine.state(),
        };
        self.record.push(point);
    }

    /// Runs until `t` s of true time since the epoch.
    pub fn run_until(&mut self, t: f64) {
        let mut guard = 0u64;
        while self.clock.elapsed() < t {
            self.step(t);
            guard += 1;
            assert!(guard < 10_000_000, "simulation does not advance");
        }
        self.observe();
    }

    /// Points recorded in `[from, to)` s.
    pub fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &Point> {
        self.record.iter().filter(move |p| p.t >= from && p.t < to)
    }

    /// Largest |error| in `[from, to)`.
    pub fn max_error(&self, from: f64, to: f64) -> f64 {
        self.between(from, to)
            .map(|p| p.error.abs())
            .fold(0.0, f64::max)
    }

    /// The last point.
    pub fn last(&self) -> Point {
        *self.record.last().expect("observed")
    }

    /// The points from the end of start-up on (the first that is not
    /// `Starting`: normally the first synchronization).
    pub fn after_startup(&self) -> impl Iterator<Item = &Point> {
        self.record
            .iter()
            .skip_while(|p| p.sync == SyncState::Starting)
    }
}
