//! Public-server protection (issue 12) against the real `fastntpd`, once
//! per I/O backend:
//!
//! - access lists: the most specific prefix decides who is served, for
//!   IPv4 (clients on their own 127/8 addresses) and IPv6 (`::1` inside
//!   nested prefixes); a denied client gets nothing, or with
//!   `deny-action = "kod"` one KoD DENY per request; the final counters
//!   agree with what the clients saw (acceptance 1);
//! - rate limiting: one client address sending from 1000 source ports at
//!   10× its allowed rate gets `burst + duration / interval` normal
//!   replies, one in 2^leak of the rest let through (as KoD RATE or a
//!   normal reply), the same with one worker or two, and the counters agree
//!   with the load generator's (acceptance 2);
//! - no amplification: no client gets more answers than it sent requests,
//!   and no answer is longer than its request.
//!
//! Servers listen on ephemeral ports; every wait is bounded; nothing here
//! times the server beyond what the rate limit itself is about.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_request, skip, total, Fastntpd, Io, WorkerStats};
use testkit::{client_from, ntp_now, output_within, TempDir};

/// The stratum the servers serve their local clock at.
const STRATUM: u8 = 10;
/// How long to wait for the answers a client should get (a busy host is
/// slow; answers normally take well under a millisecond).
const ANSWER_WAIT: Duration = Duration::from_secs(5);

fn backends() -> Vec<Io> {
    let mut v = vec![Io::Mmsg];
    v.extend(Io::uring_or_skip());
    v
}

/// Whether this host has the IPv6 loopback address; if not, says why the
/// IPv6 half is skipped (a failure in CI).
fn ipv6_loopback() -> bool {
    match UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => true,
        Err(e) => {
            skip(format!(
                "no IPv6 loopback here (bind [::1]:0: {e}): IPv6 access rules untested"
            ));
            false
        }
    }
}

fn server_config(io: Io, workers: usize, v6: bool, extra: &str) -> String {
    let listen = if v6 {
        r#""127.0.0.1:0", "[::1]:0""#
    } else {
        r#""127.0.0.1:0""#
    };
    format!(
        "[server]\nlisten = [{listen}]\nworkers = {workers}\nio = \"{io}\"\n\
         [clock]\nlocal-stratum = {STRATUM}\n{extra}"
    )
}

/// A TOML list of strings.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

// ---------------------------------------------------------------------
// Requests and answers, byte by byte.

/// A client request of `version` with one 36-byte extension field after
/// the header (84 bytes): the server must skip it and answer with 48.
fn extended_request(version: u8, transmit: u64) -> Vec<u8> {
    let mut r = client_request(version, transmit).to_vec();
    // Field type 0x0104 (unassigned), length 36 including this header.
    r.extend_from_slice(&[0x01, 0x04, 0x00, 36]);
    r.resize(48 + 36, 0xab);
    r
}

/// A transmit timestamp no other request of this test process carries.
fn fresh_transmit() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    ntp_now().wrapping_add(N.fetch_add(1, Ordering::Relaxed) << 12)
}

/// What a datagram back from the server was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A normal reply.
    Served,
    /// A kiss-o'-death with this code.
    Kiss([u8; 4]),
}

const KOD_DENY: Answer = Answer::Kiss(*b"DENY");
const KOD_RATE: Answer = Answer::Kiss(*b"RATE");

/// Checks `reply` against the request it answers (the one whose transmit
/// timestamp it echoes) and says what it is; `Err` says what is wrong.
/// Every answer is 48 bytes, never longer than its request, mode 4, of the
/// request's version, with origin = the request's transmit timestamp. A
/// normal reply is synchronized at the server's stratum; a KoD is stratum
/// 0, LI 3, the code as refid, and tells nothing of the server's time
/// (receive and transmit timestamps 0).
fn classify(reply: &[u8], request: &[u8]) -> Result<Answer, String> {
    let fail = |what: &str| Err(format!("{what}: {reply:02x?}"));
    if reply.len() != 48 || reply.len() > request.len() {
        return fail(&format!(
            "{}-byte answer to a {}-byte request",
            reply.len(),
            request.len()
        ));
    }
    let (li, version, mode) = (reply[0] >> 6, reply[0] >> 3 & 7, reply[0] & 7);
    if mode != 4 || version != request[0] >> 3 & 7 {
        return fail("not a mode-4 answer of the request's version");
    }
    if reply[24..32] != request[40..48] {
        return fail("origin is not the request's transmit timestamp");
    }
    if reply[1] == 0 {
        if li != 3 || reply[32..48] != [0; 16] {
            return fail("a KoD must say LI 3 and carry no receive/transmit time");
        }
        Ok(Answer::Kiss(reply[12..16].try_into().expect("4 bytes")))
    } else if reply[1] != STRATUM || li == 3 || reply[32..40] == [0; 8] {
        fail("not a synchronized reply at the server's stratum")
    } else {
        Ok(Answer::Served)
    }
}

/// Client sockets of one address and the requests each sent.
struct Client {
    addr: IpAddr,
    socks: Vec<UdpSocket>,
    /// Per socket, the requests it sent.
    sent: Vec<Vec<Vec<u8>>>,
    /// Per socket, the answers read so far (request index, answer).
    answers: Vec<Vec<(usize, Answer)>>,
    /// What was wrong with any datagram read.
    errors: Vec<String>,
}

impl Client {
    /// `sockets` sockets on `addr`.
    fn new(addr: IpAddr, sockets: usize) -> Client {
        Client {
            addr,
            socks: (0..sockets).map(|_| client_from(addr)).collect(),
            sent: vec![Vec::new(); sockets],
            answers: vec![Vec::new(); sockets],
            errors: Vec::new(),
        }
    }

    /// Sends `request` from socket `i` to `server`.
    fn send(&mut self, i: usize, server: SocketAddr, request: Vec<u8>) {
        self.socks[i]
            .send_to(&request, server)
            .unwrap_or_else(|e| panic!("send from {}: {e}", self.addr));
        self.sent[i].push(request);
    }

    fn answered(&self) -> usize {
        self.answers.iter().map(Vec::len).sum()
    }

    /// Reads answers until `expected` came or `deadline` passed.
    fn wait_for(&mut self, expected: usize, deadline: Instant) {
        while self.answered() < expected && Instant::now() < deadline {
            let before = self.answered();
            for i in 0..self.socks.len() {
                self.read(i, false);
            }
            if self.answered() == before {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Reads every datagram already queued on every socket (call once the
    /// server has stopped: nothing more can come).
    fn drain(&mut self) {
        for i in 0..self.socks.len() {
            self.read(i, true);
        }
    }

    fn read(&mut self, i: usize, all: bool) {
        self.socks[i].set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socks[i].recv_from(&mut buf) {
            let reply = &buf[..n];
            let matched = self.sent[i]
                .iter()
                .position(|r| n >= 32 && r[40..48] == reply[24..32]);
            match matched {
                None => self.errors.push(format!(
                    "{}: a datagram from {from} answering nothing it sent: {reply:02x?}",
                    self.addr
                )),
                Some(k) if self.answers[i].iter().any(|(j, _)| *j == k) => {
                    self.errors.push(format!(
                        "{}: a second answer to request {k} of one socket (amplification)",
                        self.addr
                    ))
                }
                Some(k) => match classify(reply, &self.sent[i][k]) {
                    Ok(a) => self.answers[i].push((k, a)),
                    Err(e) => self.errors.push(format!("{}: {e}", self.addr)),
                },
            }
            if !all {
                break;
            }
        }
    }

    /// How many answers of each kind: (served, KoD DENY, KoD RATE).
    fn counts(&self) -> (usize, usize, usize) {
        let all = self.answers.iter().flatten().map(|(_, a)| *a);
        let n = |kind| all.clone().filter(|a| *a == kind).count();
        (n(Answer::Served), n(KOD_DENY), n(KOD_RATE))
    }

    fn requests(&self) -> usize {
        self.sent.iter().map(Vec::len).sum()
    }
}

// ---------------------------------------------------------------------
// Acceptance 1: access lists.

/// IPv4 rules: prefixes nested four deep, an `allow` and a `deny` of the
/// same prefix, and room for an address no rule holds.
const V4_ALLOW: [&str; 3] = ["127.0.0.0/16", "127.0.1.128/25", "127.0.2.0/24"];
const V4_DENY: [&str; 3] = ["127.0.1.0/24", "127.0.1.200/32", "127.0.2.0/24"];

/// IPv4 clients: whether the rules above serve them (`None`: no rule holds
/// the address, the default decides), and why.
const V4_CLIENTS: [(&str, Option<bool>, &str); 8] = [
    ("127.0.0.2", Some(true), "allow /16"),
    ("127.0.1.5", Some(false), "deny /24 inside the allowed /16"),
    (
        "127.0.1.127",
        Some(false),
        "deny /24, just below its allowed /25",
    ),
    ("127.0.1.130", Some(true), "allow /25 inside the denied /24"),
    ("127.0.1.255", Some(true), "allow /25, its last address"),
    (
        "127.0.1.200",
        Some(false),
        "deny /32 inside the allowed /25",
    ),
    (
        "127.0.2.9",
        Some(false),
        "allow and deny of one /24: deny wins",
    ),
    ("127.1.0.5", None, "no rule holds it: the default"),
];

/// One set of IPv6 rules around `::1` (the only IPv6 loopback address):
/// `default` (for both families), the IPv6 prefixes, and whether `::1` is
/// served.
struct V6Case {
    default: &'static str,
    allow: &'static [&'static str],
    deny: &'static [&'static str],
    served: bool,
    why: &'static str,
}

const V6_CASES: [V6Case; 6] = [
    V6Case {
        default: "deny",
        allow: &["::/0", "::1/128"],
        deny: &["::/64"],
        served: true,
        why: "allow /128 inside deny /64 inside allow /0",
    },
    V6Case {
        default: "deny",
        allow: &["::/0"],
        deny: &["::/64"],
        served: false,
        why: "deny /64 inside allow /0",
    },
    V6Case {
        default: "allow",
        allow: &["::/64"],
        deny: &["::/0"],
        served: true,
        why: "allow /64 inside deny /0",
    },
    V6Case {
        default: "deny",
        allow: &["::1/128"],
        deny: &["::1/128"],
        served: false,
        why: "allow and deny of one /128: deny wins",
    },
    V6Case {
        default: "deny",
        allow: &["2001:db8::/32"],
        deny: &[],
        served: false,
        why: "no rule holds ::1: default deny",
    },
    V6Case {
        default: "allow",
        allow: &[],
        deny: &["::2/127", "2001:db8::/32"],
        served: true,
        why: "::2/127 stops just after ::1: default allow",
    },
];

/// Requests each client sends: (version, with an extension field).
const PROBES: [(u8, bool); 3] = [(4, false), (3, false), (4, true)];

/// Starts a server with the IPv4 rules and `case`'s IPv6 rules, sends
/// [`PROBES`] from every IPv4 client (and `::1` when `v6`), and returns
/// what went wrong: a client answered otherwise than its most specific
/// prefix says, or counters that disagree with what the clients saw.
fn check_access(io: Io, kod: bool, case: &V6Case, v6: bool) -> Vec<String> {
    let action = if kod { "kod" } else { "ignore" };
    let allow: Vec<&str> = V4_ALLOW.iter().chain(case.allow).copied().collect();
    let deny: Vec<&str> = V4_DENY.iter().chain(case.deny).copied().collect();
    let access = format!(
        "[access]\ndefault = \"{}\"\nallow = {}\ndeny = {}\ndeny-action = \"{action}\"\n",
        case.default,
        list(&allow),
        list(&deny)
    );
    let server = Fastntpd::start(&server_config(io, 2, v6, &access));
    let default_serves = case.default == "allow";
    let mut clients: Vec<(Client, bool, String)> = V4_CLIENTS
        .iter()
        .map(|(addr, rule, why)| {
            let client = Client::new(addr.parse().expect("address"), 1);
            (client, rule.unwrap_or(default_serves), why.to_string())
        })
        .collect();
    if v6 {
        let client = Client::new(Ipv6Addr::LOCALHOST.into(), 1);
        clients.push((client, case.served, case.why.to_string()));
    }
    for (client, _, _) in &mut clients {
        let target = server.addrs[usize::from(client.addr.is_ipv6())];
        for (version, extended) in PROBES {
            let t = fresh_transmit();
            let request = if extended {
                extended_request(version, t)
            } else {
                client_request(version, t).to_vec()
            };
            client.send(0, target, request);
        }
    }
    let deadline = Instant::now() + ANSWER_WAIT;
    for (client, served, _) in &mut clients {
        let expected = if *served || kod { PROBES.len() } else { 0 };
        client.wait_for(expected, deadline);
    }
    let stats = total(&server.stop());
    let mut failures = Vec::new();
    let (mut served_n, mut denied_n, mut requests) = (0, 0, 0);
    for (client, served, why) in &mut clients {
        client.drain();
        let n = client.requests();
        requests += n;
        let want = match (*served, kod) {
            (true, _) => (n, 0, 0),
            (false, true) => (0, n, 0),
            (false, false) => (0, 0, 0),
        };
        if *served {
            served_n += n;
        } else {
            denied_n += n;
        }
        let got = client.counts();
        if got != want || !client.errors.is_empty() {
            failures.push(format!(
                "{io} {action}, {}: {} ({why}) got (served, KoD DENY, KoD RATE) = {got:?} for \
                 {n} requests, expected {want:?}; {:?}",
                case.why, client.addr, client.errors
            ));
        }
    }
    let (want_denied, want_kod) = if kod { (0, denied_n) } else { (denied_n, 0) };
    let counted = (
        stats.received,
        stats.replied,
        stats.dropped_for("denied"),
        stats.kod_deny,
        stats.kod_rate,
    );
    let expected = (
        requests as u64,
        served_n as u64,
        want_denied as u64,
        want_kod as u64,
        0,
    );
    eprintln!(
        "{io} {action:6} IPv6 {:45} served {served_n:2}, denied {denied_n:2}; server: \
         received {}, replied {}, dropped denied {}, KoD DENY {}, KoD RATE {}",
        case.why, counted.0, counted.1, counted.2, counted.3, counted.4
    );
    if counted != expected {
        failures.push(format!(
            "{io} {action}, {}: counters (received, replied, dropped denied, KoD DENY, KoD \
             RATE) = {counted:?}, the clients saw {expected:?}",
            case.why
        ));
    }
    failures
}

/// Acceptance 1: for IPv4 and IPv6, with nested prefixes, each client is
/// served or refused as its most specific prefix says, a denied client
/// gets nothing (`ignore`) or one KoD DENY per request (`kod`), and the
/// final counters say the same.
#[test]
fn the_most_specific_prefix_decides_who_is_served() {
    let v6 = ipv6_loopback();
    let mut failures = Vec::new();
    for io in backends() {
        for kod in [false, true] {
            for case in &V6_CASES {
                failures.extend(check_access(io, kod, case, v6));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------
// No amplification, exactly: a long interval makes the limiter's verdicts
// independent of timing.

/// Requests per client, each from its own source port.
const PORTS: usize = 12;

/// One allowed and one denied client (with `deny-action = "kod"`) each
/// send 12 requests from 12 source ports (half of them 84 bytes long) to
/// a server with two workers, under a rate limit of burst 4, leak 1 and an
/// interval far longer than the test. Each gets at most one answer per
/// request, none longer than 48 bytes: the allowed client its burst of 4
/// normal replies, then of its 8 refused requests every second one a KoD
/// RATE; the denied client a KoD DENY for what the limit lets through
/// (4 + 4), nothing for the rest. The limit holds across the two workers
/// although every request comes from another port.
#[test]
fn no_client_gets_more_answers_than_requests_nor_longer_ones() {
    let mut failures = Vec::new();
    for io in backends() {
        let extra = "[access]\ndefault = \"allow\"\ndeny = [\"127.0.4.0/24\"]\n\
                     deny-action = \"kod\"\n[rate-limit]\nenabled = true\ninterval = 600.0\n\
                     burst = 4\nleak = 1\nkod = true\n";
        let server = Fastntpd::start(&server_config(io, 2, false, extra));
        let target = server.addrs[0];
        let mut allowed = Client::new("127.0.5.1".parse().expect("address"), PORTS);
        let mut denied = Client::new("127.0.4.1".parse().expect("address"), PORTS);
        for client in [&mut allowed, &mut denied] {
            for i in 0..PORTS {
                let t = fresh_transmit();
                let request = if i % 2 == 1 {
                    extended_request(4, t)
                } else {
                    client_request(4, t).to_vec()
                };
                client.send(i, target, request);
            }
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        allowed.wait_for(8, deadline);
        denied.wait_for(8, deadline);
        let stats = server.stop();
        allowed.drain();
        denied.drain();
        let t = total(&stats);
        // The first four requests (back to back: the burst) get the replies.
        let burst_served = (0..4)
            .filter(|&i| allowed.answers[i] == [(0, Answer::Served)])
            .count();
        eprintln!(
            "{io}: allowed client (served, KoD DENY, KoD RATE) = {:?}, burst served {burst_served}/4; \
             denied client {:?}; server: received {}, replied {}, KoD RATE {}, KoD DENY {}, \
             dropped rate_limited {}, denied {}",
            allowed.counts(),
            denied.counts(),
            t.received,
            t.replied,
            t.kod_rate,
            t.kod_deny,
            t.dropped_for("rate_limited"),
            t.dropped_for("denied")
        );
        for c in [&allowed, &denied] {
            failures.extend(c.errors.iter().map(|e| format!("{io}: {e}")));
            if let Some(i) = c.answers.iter().position(|a| a.len() > 1) {
                failures.push(format!("{io}: {} port {i} got {:?}", c.addr, c.answers[i]));
            }
        }
        if allowed.counts() != (4, 0, 4) || burst_served != 4 {
            failures.push(format!(
                "{io}: the allowed client got {:?} (served, KoD DENY, KoD RATE), burst \
                 served {burst_served}/4; expected (4, 0, 4) with the first 4 served",
                allowed.counts()
            ));
        }
        if denied.counts() != (0, 8, 0) {
            failures.push(format!(
                "{io}: the denied client got {:?}, expected (0, 8, 0)",
                denied.counts()
            ));
        }
        let counted = (
            t.received,
            t.replied,
            t.kod_rate,
            t.kod_deny,
            t.dropped_for("rate_limited"),
            t.dropped_for("denied"),
        );
        if counted != (24, 4, 4, 8, 4, 4) {
            failures.push(format!(
                "{io}: counters (received, replied, KoD RATE, KoD DENY, rate_limited, denied) \
                 = {counted:?}, expected (24, 4, 4, 8, 4, 4); per worker {stats:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------
// Acceptance 2: one address, 1000 source ports, 10× its allowed rate.

/// The limit: 100 requests/s on average, bursts of 8, one in 4 of the
/// refused let through.
const INTERVAL_S: f64 = 0.01;
const BURST: u64 = 8;
const LEAK: u32 = 2;
/// The client: 10× its allowed rate, for 3 s, from 1000 ports of one
/// address.
const OFFERED_RATE: u64 = 1000;
const DURATION_S: u64 = 3;
const SOURCE_PORTS: usize = 1000;
const SOURCE: &str = "127.0.3.7";
/// How far normal replies may be from the expected allowance: 10 % or 30
/// requests, whichever is more.
const ALLOWANCE_TOLERANCE: (f64, f64) = (0.10, 30.0);
/// How far normal replies with one worker and with two may differ.
const WORKERS_TOLERANCE: f64 = 0.05;
/// How far the server's counters may be from the load generator's, as a
/// share of the requests sent (see [`check_rate_run`]).
const AGREEMENT_TOLERANCE: f64 = 0.01;
/// Below this achieved rate (5× the allowed one) the client was not
/// really flooding: the run proves nothing and fails.
const MIN_ACHIEVED: f64 = 500.0;

/// Requests a token bucket of `burst`, refilled by one per interval, lets
/// through given the requests sent in each interval (the load generator's
/// timeline at a width of one interval): the allowance the limiter owes
/// the send pattern the load generator really achieved. Sending steadily
/// at 10× the allowed rate for D seconds that is `burst + D / interval −
/// 1` (the last request leaves one interval before the end); a stall of
/// the load generator longer than `burst` intervals (a busy host) makes it
/// catch up later in one batch, and forfeits allowance a steady client
/// would have had; this counts it, where `burst + duration / interval`
/// would not.
fn allowance(sent_per_interval: &[u64], burst: u64) -> u64 {
    let mut tokens = burst;
    let mut allowed = 0;
    for (k, &n) in sent_per_interval.iter().enumerate() {
        if k > 0 {
            tokens = (tokens + 1).min(burst);
        }
        let a = tokens.min(n);
        allowed += a;
        tokens -= a;
    }
    allowed
}

/// One run's figures, from both sides.
struct RateRun {
    io: Io,
    workers: usize,
    kod: bool,
    report: serde_json::Value,
    stats: Vec<WorkerStats>,
}

impl RateRun {
    fn step(&self) -> &serde_json::Value {
        &self.report["steps"][0]
    }

    fn figure(&self, path: &[&str]) -> u64 {
        let mut v = self.step();
        for key in path {
            v = &v[*key];
        }
        v.as_u64().unwrap_or(0)
    }

    fn sent(&self) -> u64 {
        self.figure(&["requests", "sent"])
    }

    /// Normal replies the client saw (late ones too: they were sent).
    fn normal(&self) -> u64 {
        self.figure(&["requests", "valid"]) + self.figure(&["requests", "late"])
    }

    fn kod_rate(&self) -> u64 {
        self.figure(&["kod_by_code", "RATE"])
    }

    /// The allowance the run's real send pattern is owed.
    fn allowed(&self) -> u64 {
        let sent: Vec<u64> = self.step()["timeline"]["sent"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        allowance(&sent, BURST)
    }

    /// Normal replies expected: the allowance, plus with `kod = false` the
    /// let-through share of the rest.
    fn expected_normal(&self) -> f64 {
        let a = self.allowed() as f64;
        if self.kod {
            a
        } else {
            a + (self.sent() as f64 - a) / f64::from(1u32 << LEAK)
        }
    }
}

/// One ntp-loadgen run against `target` from [`SOURCE`]; its JSON report.
fn loadgen(bin: &Path, target: SocketAddr) -> serde_json::Value {
    let dir = TempDir::new("protection-loadgen");
    let json = dir.join("report.json");
    let child = Command::new(bin)
        .arg(target.to_string())
        .args(["--rate", &OFFERED_RATE.to_string()])
        .args(["--duration", &DURATION_S.to_string()])
        .args(["--clients", &SOURCE_PORTS.to_string()])
        .args(["--source-range", &format!("{SOURCE}/32")])
        .args(["--timeline", &INTERVAL_S.to_string()])
        .args(["--timeout", "500ms", "--no-progress", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ntp-loadgen");
    let out = output_within(child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from ntp-loadgen ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&text).expect("JSON report")
}

fn rate_run(bin: &Path, io: Io, workers: usize, kod: bool) -> RateRun {
    let extra = format!(
        "[rate-limit]\nenabled = true\ninterval = {INTERVAL_S}\nburst = {BURST}\n\
         leak = {LEAK}\nkod = {kod}\n"
    );
    let server = Fastntpd::start(&server_config(io, workers, false, &extra));
    let report = loadgen(bin, server.addrs[0]);
    let stats = server.stop();
    RateRun {
        io,
        workers,
        kod,
        report,
        stats,
    }
}

/// Checks one run; returns what is wrong.
///
/// - Normal replies within [`ALLOWANCE_TOLERANCE`] of the allowance owed
///   to the real send pattern (see [`allowance`]; with `kod = false` plus
///   1/2^leak of the rest). The tolerance covers the gap between the
///   load generator's send clock (the timeline) and the kernel's receive
///   stamps the server limits by, a few intervals at the edges of stalls.
/// - With `kod = true`: KoD RATE = 1/2^leak of the refused requests, on
///   the client's side (within the agreement tolerance) and exactly in each
///   worker's counters; with `kod = false` no KoD at all.
/// - The server's counters agree with the load generator's within
///   [`AGREEMENT_TOLERANCE`] of the requests sent: on loopback a datagram
///   is lost only at a full socket buffer (the server's kernel drops, the
///   load generator's own drops, both printed), which only a process
///   stalled on an overloaded host lets happen.
/// - No amplification: datagrams read ≤ requests sent, no duplicates;
///   replies + KoDs ≤ requests received.
/// - The one client address is served by one worker (steered there by the
///   kernel, whatever its source port), as the docs say of one big client.
fn check_rate_run(run: &RateRun) -> Vec<String> {
    let label = format!("{} workers={} kod={}", run.io, run.workers, run.kod);
    let t = total(&run.stats);
    let sent = run.sent();
    let normal = run.normal();
    let kod = run.kod_rate();
    let lost = run.figure(&["requests", "lost"]);
    let read = run.figure(&["other_datagrams", "received"]) + run.figure(&["own_receive_drops"]);
    let achieved = run.step()["achieved_rate"].as_f64().unwrap_or(0.0);
    let expected = run.expected_normal();
    let naive = BURST as f64 + DURATION_S as f64 / INTERVAL_S;
    let limited = t.dropped_for("rate_limited");
    let received: Vec<u64> = run.stats.iter().map(|s| s.received).collect();
    eprintln!(
        "{label:28} sent {sent} ({achieved:.0}/s, max lag {:.0} ms, preempted {}), normal \
         replies {normal} (expected {expected:.0}: allowance {} from the timeline, burst + \
         duration/interval = {naive:.0}), KoD RATE {kod}, lost {lost}, read {read}; server: \
         received {} (per worker {received:?}), replied {}, KoD RATE {}, rate_limited {}, \
         kernel drops {}",
        run.step()["send"]["max_lag_ms"].as_f64().unwrap_or(0.0),
        run.figure(&["send", "preempted"]),
        run.allowed(),
        t.received,
        t.replied,
        t.kod_rate,
        limited,
        t.kernel_drops,
    );
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("{label}: {what}"));
        }
    };
    check(
        received.iter().filter(|&&n| n > 0).count() == 1,
        format!("one client address's requests reached workers {received:?}: not steered to one"),
    );
    check(
        achieved >= MIN_ACHIEVED,
        format!("the load generator sent only {achieved:.0}/s: the host is too busy"),
    );
    let (share, floor) = ALLOWANCE_TOLERANCE;
    let tolerance = (share * expected).max(floor);
    check(
        (normal as f64 - expected).abs() <= tolerance,
        format!("{normal} normal replies, expected {expected:.0} ± {tolerance:.0}"),
    );
    let agree = AGREEMENT_TOLERANCE * sent as f64;
    let near = |a: u64, b: u64| (a as f64 - b as f64).abs() <= agree;
    if run.kod {
        let refused = sent.saturating_sub(normal);
        check(
            near(kod, refused >> LEAK),
            format!(
                "{kod} KoD RATE for {refused} refused requests: expected 1 in {}",
                1 << LEAK
            ),
        );
        for s in &run.stats {
            let limited = s.dropped_for("rate_limited") + s.kod_rate;
            check(
                s.kod_rate == limited >> LEAK,
                format!(
                    "worker {} sent {} KoD RATE for {limited} limited requests, not 1 in {}",
                    s.id,
                    s.kod_rate,
                    1 << LEAK
                ),
            );
        }
    } else {
        check(
            kod == 0 && t.kod_rate == 0,
            format!(
                "KoD RATE with kod = false: client {kod}, server {}",
                t.kod_rate
            ),
        );
    }
    check(
        run.figure(&["requests", "invalid"]) == 0,
        format!("invalid replies: {}", run.step()["invalid_by_reason"]),
    );
    check(
        near(t.received, sent),
        format!("server received {}, client sent {sent}", t.received),
    );
    check(
        near(t.replied, normal),
        format!("server replied {}, client saw {normal}", t.replied),
    );
    check(
        near(t.kod_rate, kod),
        format!("server KoD RATE {}, client saw {kod}", t.kod_rate),
    );
    check(
        near(limited, lost),
        format!("server rate-limited {limited}, client lost {lost}"),
    );
    check(
        read <= sent && run.figure(&["other_datagrams", "duplicates"]) == 0,
        format!("client read {read} datagrams for {sent} requests: amplification"),
    );
    check(
        t.replied + t.kod_rate + t.kod_deny <= t.received,
        format!(
            "server answered {} of {} requests",
            t.replied + t.kod_rate + t.kod_deny,
            t.received
        ),
    );
    failures
}

/// Acceptance 2 (and 3 for the flood): one client address, 1000 source
/// ports, 10× its allowed rate for 3 s, per backend, with `kod = true` and
/// `false`, with one worker and two. Each run is checked on its own (see
/// [`check_rate_run`]); then the normal replies with one worker and with
/// two, each relative to the allowance its send pattern was owed, may
/// differ by at most 5 % (on an idle host that is the raw count: both
/// allowances are `burst + duration / interval`). Two workers without
/// steering each keep their own allowance for the client: twice as many
/// replies.
#[test]
fn one_address_from_1000_ports_gets_its_allowance_with_one_worker_or_two() {
    let Some(bin) = testkit::built_binary("ntp-loadgen") else {
        return;
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for io in backends() {
        for kod in [true, false] {
            let runs: Vec<RateRun> = [1, 2]
                .into_iter()
                .map(|workers| rate_run(&bin, io, workers, kod))
                .collect();
            for run in &runs {
                failures.extend(check_rate_run(run));
            }
            let ratio = |r: &RateRun| r.normal() as f64 / r.expected_normal().max(1.0);
            let (one, two) = (ratio(&runs[0]), ratio(&runs[1]));
            eprintln!(
                "{io} kod={kod}: normal replies {} with 1 worker, {} with 2; of the expected: \
                 {one:.3} and {two:.3}, 2 vs 1: {:+.1} %",
                runs[0].normal(),
                runs[1].normal(),
                (two / one - 1.0) * 100.0
            );
            if (two / one - 1.0).abs() > WORKERS_TOLERANCE {
                failures.push(format!(
                    "{io} kod={kod}: normal replies {} with 1 worker, {} with 2 ({one:.3} and \
                     {two:.3} of what their send patterns were owed): more than {} % apart",
                    runs[0].normal(),
                    runs[1].normal(),
                    WORKERS_TOLERANCE * 100.0
                ));
            }
        }
    }
    eprintln!(
        "rate-limit runs took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_allowance_model_counts_a_steady_flood_and_a_stall() {
    // 3 s at 10 requests per interval: burst + 299 intervals.
    assert_eq!(allowance(&[10; 300], 8), 307);
    // A stall of 50 intervals, then the backlog in one go: the bucket
    // holds at most `burst`, so of the 51 intervals' allowance only 8 are
    // used.
    let mut stalled = vec![10; 300];
    stalled[100..150].fill(0);
    stalled[150] = 510;
    assert_eq!(allowance(&stalled, 8), 307 - (51 - 8));
    // Below the allowed rate everything is allowed.
    assert_eq!(allowance(&[1; 300], 8), 300);
}
