//! Running `fastntpd`: bind every listen address once per worker, start one
//! pinned thread per worker and the discipline thread (the only writer of
//! the served state), log statistics, and stop cleanly when asked.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::clock;
use crate::config::{Config, Timestamping, Workers};
use crate::discipline::status::StatusHandle;
use crate::discipline::{self, Discipline, DisciplineError};
use crate::io::counters::{Counters, SharedCounters};
use crate::io::queue::QueueBound;
use crate::io::socket::{self, ListenSocket, SocketError, SocketOptions};
use crate::io::worker::Worker;
use crate::io::{self as io_backend, select_backend, Backend, BackendError};
use crate::snapshot;
use crate::sys::cpu;
use crate::sys::reuseport;
use crate::sys::socket::kernel_drops;

/// How often the statistics line is logged.
pub const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// How long the kernel may take to switch receive timestamping on (the
/// first datagrams after enabling it can come without a stamp).
const TIMESTAMPING_SETTLE: Duration = Duration::from_millis(50);
/// How often the supervising thread wakes up.
const TICK: Duration = Duration::from_millis(100);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configured I/O backend cannot run.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A listen address could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Every listen address was skipped.
    #[error("none of the `[server] listen` addresses could be opened")]
    NothingToListenOn,
    /// A worker thread could not be created.
    #[error("cannot start worker thread: {0}")]
    Spawn(io::Error),
    /// A worker stopped on an I/O error.
    #[error("worker {id} failed: {source}")]
    Worker {
        /// Worker number.
        id: usize,
        /// The error.
        source: io::Error,
    },
    /// A worker panicked (a bug).
    #[error("worker {id} panicked")]
    WorkerPanicked {
        /// Worker number.
        id: usize,
    },
    /// The program steering each client address to one worker could not
    /// be attached (on a kernel that has the option).
    #[error(
        "cannot steer each client of {addr} to one worker (SO_ATTACH_REUSEPORT_CBPF): {source}"
    )]
    Steering {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The discipline could not start.
    #[error(transparent)]
    Discipline(#[from] DisciplineError),
    /// The discipline thread ended on its own (a bug): the served state
    /// would go stale, so the server stops.
    #[error("the discipline thread stopped unexpectedly")]
    DisciplineStopped,
}

struct WorkerHandle {
    id: usize,
    core: Option<usize>,
    counters: Arc<SharedCounters>,
    /// Duplicates of the worker's sockets, to read their kernel drop counts.
    sockets: Vec<std::net::UdpSocket>,
    thread: JoinHandle<io::Result<()>>,
}

impl WorkerHandle {
    /// The worker's counters plus the kernel's drops on its sockets.
    fn counters(&self) -> Counters {
        worker_counters(&self.counters, &self.sockets)
    }
}

/// A worker's published counters plus the kernel's drops on its sockets.
fn worker_counters(shared: &SharedCounters, sockets: &[std::net::UdpSocket]) -> Counters {
    let mut c = shared.load();
    c.kernel_drops = sockets
        .iter()
        .filter_map(|s| kernel_drops(s).ok())
        .map(u64::from)
        .sum();
    c
}

/// A started server: workers running, state published.
pub struct Server {
    workers: Vec<WorkerHandle>,
    discipline: Discipline,
    listening: Vec<SocketAddr>,
    backend: Backend,
    stop: Arc<AtomicBool>,
}

/// The workers `workers` asks for (capped to the usable cores by the
/// caller, with a warning).
fn worker_count(workers: Workers, cores: &[usize]) -> usize {
    match workers {
        Workers::Auto => cores.len().max(1),
        Workers::Count(n) => n,
    }
}

impl Server {
    /// Binds the sockets and starts the workers. Workers run until `stop`
    /// is set (by a signal handler, or by [`Server::run`] on a worker error).
    pub fn start(config: &Config, stop: Arc<AtomicBool>) -> Result<Server, ServerError> {
        let (backend, note) = select_backend(config.server.io)?;
        if let Some(note) = note {
            warn!("{note}");
        }
        let cores = cpu::usable_cores();
        let count = worker_count(config.server.workers, &cores);
        if count > cores.len().max(1) {
            warn!(
                "`[server] workers = {count}` but this process may run on {} core(s): starting \
                 {} (a worker is pinned to its core; more would only take memory and contend)",
                cores.len(),
                cores.len().max(1)
            );
        }
        let count = count.min(cores.len().max(1));
        let timestamps = config.server.timestamping == Timestamping::Software;
        let queue_limit = config.server.max_queue_delay();
        let opts = SocketOptions {
            timestamps,
            receive_queue: crate::io::queue::MAX_BYTES,
        };

        let mut steering = Steering::new(client_steering(config), count);
        let mut per_worker: Vec<Vec<ListenSocket>> = (0..count).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        for &addr in &config.server.listen {
            let group = match socket::bind_group(addr, count, opts) {
                Ok(group) => group,
                Err(e @ SocketError::FamilyNotSupported { .. }) => {
                    warn!("skipping {addr}: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            steering.attach(&group)?;
            listening.push(group[0].local);
            for (sockets, sock) in per_worker.iter_mut().zip(group) {
                sockets.push(sock);
            }
        }
        if listening.is_empty() {
            return Err(ServerError::NothingToListenOn);
        }
        if timestamps {
            std::thread::sleep(TIMESTAMPING_SETTLE);
        }

        let precision = clock::measure_precision();
        let prepared = discipline::prepare(config, precision)?;
        let (publisher, reader) = snapshot::new(&prepared.initial_state());

        let protection = config.protection();
        let mut workers = Vec::with_capacity(count);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (id, sockets) in per_worker.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let counters = Arc::new(SharedCounters::default());
            let mut worker = Worker::new(
                reader.clone(),
                timestamps,
                Arc::clone(&counters),
                QueueBound::new(queue_limit),
                protection.for_worker(count),
            );
            worker.set_ready_signal(ready_tx.clone());
            let duplicates = sockets
                .iter()
                .map(|s| s.socket.try_clone())
                .collect::<io::Result<Vec<_>>>()
                .map_err(ServerError::Spawn)?;
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("fastntp-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !cpu::pin_current_thread(core) {
                            warn!("worker {id}: cannot pin to core {core}; running unpinned");
                        }
                    }
                    let result = io_backend::serve(backend, &mut worker, &sockets, &stop);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
                .map_err(ServerError::Spawn)?;
            workers.push(WorkerHandle {
                id,
                core,
                counters,
                sockets: duplicates,
                thread,
            });
        }
        drop(ready_tx);
        wait_until_ready(&workers, &ready_rx);
        for addr in &listening {
            info!(
                "listening on {addr} ({count} workers, {} backend)",
                backend.name()
            );
        }
        info!("{}", config.protection_summary());
        steering.log();
        let discipline = prepared.spawn(publisher, Arc::clone(&stop))?;
        // What is served, and why, the discipline logs at each change (once);
        // this line only says what it works with.
        let fallback = match config.clock.local_stratum {
            Some(s) => format!("the local clock at stratum {s}"),
            None => "unsynchronized".to_owned(),
        };
        let upstreams = match config.upstreams.len() {
            0 => "no upstreams".to_owned(),
            1 => "1 upstream entry".to_owned(),
            n => format!("{n} upstream entries"),
        };
        info!(
            "{} discipline, {upstreams}, without a usable upstream: {fallback}; \
             clock precision 2^{precision} s",
            config.clock.discipline.name(),
        );
        Ok(Server {
            workers,
            discipline,
            listening,
            backend,
            stop,
        })
    }

    /// The bound addresses (with real ports where 0 was configured).
    pub fn listening(&self) -> &[SocketAddr] {
        &self.listening
    }

    /// The backend the workers run.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The synchronization status (sources and system), for the control
    /// interface.
    pub fn status(&self) -> StatusHandle {
        self.discipline.status()
    }

    /// Each worker's counters, in worker order.
    pub fn counters(&self) -> Vec<Counters> {
        self.workers.iter().map(WorkerHandle::counters).collect()
    }

    fn total(&self) -> Counters {
        let mut total = Counters::default();
        for c in self.counters() {
            total.add(&c);
        }
        total
    }

    /// Supervises until `stop` is set or a worker or the discipline thread
    /// fails, logging statistics every [`STATS_INTERVAL`]. Then stops and
    /// joins every thread and logs the final counts.
    pub fn run(self) -> Result<(), ServerError> {
        let mut next_stats = Instant::now() + STATS_INTERVAL;
        let mut last = Counters::default();
        let mut discipline_failed = false;
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            if self.workers.iter().any(|w| w.thread.is_finished()) {
                break;
            }
            if self.discipline.is_finished() && !self.stop.load(Ordering::Relaxed) {
                discipline_failed = true;
                break;
            }
            let now = Instant::now();
            if now >= next_stats {
                let total = self.total();
                log_rates(&last, &total, STATS_INTERVAL);
                last = total;
                next_stats = now + STATS_INTERVAL;
            }
        }
        self.shutdown(discipline_failed)
    }

    /// Stops and joins the workers, logging each one's final counts, and
    /// the discipline thread.
    fn shutdown(self, discipline_failed: bool) -> Result<(), ServerError> {
        self.stop.store(true, Ordering::Relaxed);
        let discipline_ok = self.discipline.join();
        let mut first_error =
            (discipline_failed || !discipline_ok).then_some(ServerError::DisciplineStopped);
        for w in self.workers {
            let core = w
                .core
                .map_or("unpinned".to_owned(), |c| format!("core {c}"));
            let outcome = w.thread.join();
            info!(
                "worker {} ({core}): {}",
                w.id,
                worker_counters(&w.counters, &w.sockets)
            );
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(source)) => Some(ServerError::Worker { id: w.id, source }),
                Err(_) => Some(ServerError::WorkerPanicked { id: w.id }),
            };
            if first_error.is_none() {
                first_error = error;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                info!("stopped");
                Ok(())
            }
        }
    }
}

/// Everything `fastntpd` would warn about when starting with `config`,
/// short of running it: the configuration's own warnings and the state of
/// the files it names (a leap-second list that cannot be read or has
/// expired, a drift file that cannot be used). `--check-config` prints
/// them.
pub fn preflight(config: &Config) -> Vec<String> {
    use crate::config::DisciplineMode;
    use crate::discipline::{drift, leapfile::LeapTable};
    let mut out = config.warnings();
    if let Some(path) = &config.clock.leap_file {
        match LeapTable::load(path) {
            Ok(table) if table.expired(clock::now().secs) => out.push(format!(
                "the leap-second file {} has expired; update it (tzdata) — the upstreams' \
                 leap indicator is used meanwhile",
                path.display()
            )),
            Ok(_) => {}
            Err(e) => out.push(format!("{e}; leap seconds come from the upstreams only")),
        }
    }
    if let (Some(path), DisciplineMode::Kernel) =
        (&config.clock.drift_file, config.clock.discipline)
    {
        if let Err(e) = drift::read(path) {
            out.push(format!(
                "{e}; the kernel's current frequency is used instead"
            ));
        }
    }
    out
}

/// Which client addresses count as one client for steering, as `(IPv4
/// prefix, IPv6 prefix)`, or `None` to let the kernel spread datagrams by
/// their 4-tuple (see [`crate::sys::reuseport`]). Steering is on with rate
/// limiting, whose per-worker client tables need each client on one
/// worker; without it, one busy client (a big NAT, a load generator) is
/// better spread over every worker.
fn client_steering(config: &Config) -> Option<(u8, u8)> {
    let limit = &config.rate_limit;
    limit
        .enabled
        .then_some((limit.ipv4_prefix, limit.ipv6_prefix))
}

/// Steering each client address to one worker, group by group.
struct Steering {
    /// The prefixes, while steering is wanted and possible.
    prefixes: Option<(u8, u8)>,
    /// Workers (sockets per group).
    workers: u32,
    /// Whether a group was steered.
    attached: bool,
}

impl Steering {
    /// Steering with `prefixes` over `workers` workers; with one worker
    /// there is nothing to steer.
    fn new(prefixes: Option<(u8, u8)>, workers: usize) -> Steering {
        Steering {
            prefixes: prefixes.filter(|_| workers > 1),
            workers: u32::try_from(workers).unwrap_or(u32::MAX),
            attached: false,
        }
    }

    /// Attaches the steering program to a newly bound `group` (socket `i`
    /// being worker `i`'s). On a kernel without the option, warns once and
    /// steers no further group; any other failure is an error.
    fn attach(&mut self, group: &[ListenSocket]) -> Result<(), ServerError> {
        let (Some((v4, v6)), Some(first)) = (self.prefixes, group.first()) else {
            return Ok(());
        };
        match reuseport::attach_client_steering(&first.socket, self.workers, v4, v6) {
            Ok(()) => self.attached = true,
            Err(e) if reuseport::steering_unsupported(&e) => {
                warn!(
                    "this kernel cannot steer each client to one worker \
                     (SO_ATTACH_REUSEPORT_CBPF: {e}); a client's requests are spread over \
                     the workers by source port, so per-client limits count per worker"
                );
                self.prefixes = None;
            }
            Err(source) => {
                return Err(ServerError::Steering {
                    addr: first.local,
                    source,
                })
            }
        }
        Ok(())
    }

    /// Logs what is steered, once.
    fn log(&self) {
        if let (true, Some((v4, v6))) = (self.attached, self.prefixes) {
            info!(
                "each client (IPv4 /{v4}, IPv6 /{v6}) is served by one worker \
                 (kernel steering)"
            );
        }
    }
}

/// Longest wait for the workers to set their backends up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until every worker has set its backend up (so that start-up is
/// announced only once requests are read, and the first ones do not sit
/// in the queue while rings are built), or one of them has ended (its
/// error is reported by [`Server::run`]), or [`READY_TIMEOUT`] passed.
fn wait_until_ready(workers: &[WorkerHandle], ready: &std::sync::mpsc::Receiver<()>) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pending = workers.len();
    while pending > 0 && Instant::now() < deadline {
        match ready.recv_timeout(TICK) {
            Ok(()) => pending -= 1,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if workers.iter().any(|w| w.thread.is_finished()) {
                    return;
                }
            }
        }
    }
    if pending > 0 {
        warn!(
            "{pending} worker(s) not ready after {} s; going on",
            READY_TIMEOUT.as_secs()
        );
    }
}

fn log_rates(last: &Counters, now: &Counters, over: Duration) {
    let secs = over.as_secs_f64();
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    info!(
        "{:.1} req/s, {:.1} replies/s, {:.1} KoD/s, {:.1} drops/s; totals: {now}",
        rate(now.received, last.received),
        rate(now.replied, last.replied),
        rate(now.kod_total(), last.kod_total()),
        rate(now.dropped_total(), last.dropped_total()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_workers_is_one_per_usable_core() {
        assert_eq!(worker_count(Workers::Auto, &[0, 1, 2]), 3);
        assert_eq!(worker_count(Workers::Auto, &[]), 1);
        assert_eq!(worker_count(Workers::Count(5), &[0]), 5);
    }

    fn group(count: usize) -> Vec<ListenSocket> {
        let opts = SocketOptions {
            timestamps: false,
            ..SocketOptions::default()
        };
        socket::bind_group("127.0.0.1:0".parse().unwrap(), count, opts).unwrap()
    }

    #[test]
    fn a_group_of_several_workers_is_steered_and_one_worker_is_not() {
        let mut two = Steering::new(Some((32, 64)), 2);
        two.attach(&group(2)).unwrap();
        assert!(two.attached);
        let mut one = Steering::new(Some((32, 64)), 1);
        one.attach(&group(1)).unwrap();
        assert!(!one.attached);
        let mut unwanted = Steering::new(None, 2);
        unwanted.attach(&group(2)).unwrap();
        assert!(!unwanted.attached);
    }

    #[test]
    fn clients_are_steered_only_with_rate_limiting_and_by_its_prefixes() {
        let parse = |text: &str| Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        assert_eq!(client_steering(&parse("")), None);
        assert_eq!(
            client_steering(&parse("[access]\ndeny = [\"192.0.2.0/24\"]")),
            None
        );
        let on = parse("[rate-limit]\nenabled = true\nipv4-prefix = 24\nipv6-prefix = 56");
        assert_eq!(client_steering(&on), Some((24, 56)));
    }
}
