//! Micro-benchmark of the protocol path: nanoseconds per datagram through
//! `proto::respond` and `proto::stamp_transmit` (access list + rate limit
//! when configured, validate + parse + build the reply + stamp it), for the
//! common request shapes, and with the protection of a public server (an
//! access list of 10 000 prefixes, a rate limit over 200 000 clients). Each
//! case runs `RUNS` times; the median, min and max of the per-run averages
//! are printed.
//!
//! Run: `cargo bench --bench respond` (optionally `-- --quick`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use fastntp::clock;
use fastntp::policy::{Access, AccessRules, Cidr, DenyAction, Policy, Protection, RateLimit};
use fastntp::proto::{
    respond, stamp_transmit, Correction, LeapIndicator, NtpShort, NtpTimestamp, RefId, ServerState,
    UnixTime, Verdict, HEADER_LEN,
};

const RUNS: usize = 9;

fn state(freq: f64) -> ServerState {
    let now = NtpTimestamp::from_unix(UnixTime::new(1_800_000_000, 0));
    ServerState {
        leap: LeapIndicator::NoWarning,
        stratum: 2,
        precision: -25,
        reference_id: RefId::from_ipv4([192, 0, 2, 1].into()),
        reference_time: now,
        root_delay: NtpShort::from_secs_f64(0.01),
        root_dispersion: NtpShort::from_secs_f64(0.001),
        dispersion_base: now,
        correction: Correction {
            base: now,
            offset: 1 << 20,
            freq,
            ..Correction::NONE
        },
    }
}

fn request(extra: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    r[0] = 0x23;
    r[2] = 6;
    r[40..48].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    r.extend_from_slice(extra);
    r
}

fn nts_like_extensions() -> Vec<u8> {
    let mut v = Vec::new();
    for (kind, len) in [(0x0104u16, 36u16), (0x0204, 104), (0x0404, 40)] {
        let mut ef = vec![0u8; len as usize];
        ef[..2].copy_from_slice(&kind.to_be_bytes());
        ef[2..4].copy_from_slice(&len.to_be_bytes());
        v.extend(ef);
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Clients sending, in turn: one address, or many.
const ONE_CLIENT: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];

/// `n` distinct client addresses, half IPv4 and half IPv6, in a scattered
/// order (so that the client table is read all over).
fn clients(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9);
            if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(x))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(x) << 64 | 0x1))
            }
        })
        .collect()
}

/// A public server's protection: 10 000 access prefixes (allow and deny,
/// /16 to /28 and /32 to /64, none holding the bench's clients so every
/// lookup walks the trie and falls to the default) and a rate limit that
/// every client stays within (the full cost: lookup, update, reply).
fn protected(access: bool, rate_limit: bool) -> Policy {
    let mut rules = AccessRules {
        default: Access::Allow,
        ..AccessRules::default()
    };
    for i in 0..if access { 10_000u32 } else { 0 } {
        let x = i.wrapping_mul(0x85eb_ca6b) | 1;
        let cidr = if i % 2 == 0 {
            let v4 = IpAddr::V4(Ipv4Addr::from(x));
            Cidr::new(fastntp::policy::cidr::to_bits(v4), 96 + 16 + (i % 13) as u8)
        } else {
            let v6 = IpAddr::V6(Ipv6Addr::from(u128::from(x) << 96 | 0x2001 << 112));
            Cidr::new(fastntp::policy::cidr::to_bits(v6), 32 + (i % 33) as u8)
        };
        if i % 3 == 0 {
            rules.deny.push(cidr);
        } else {
            rules.allow.push(cidr);
        }
    }
    let limit = RateLimit {
        interval_nanos: 1,
        burst: 1_000_000,
        leak: 2,
        kod: true,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        clients: 1 << 20,
    };
    let limit = rate_limit.then_some(limit);
    Protection::new(&rules, DenyAction::Ignore, limit).for_worker(1)
}

#[allow(clippy::too_many_arguments)]
fn bench(
    name: &str,
    iterations: u32,
    req: &[u8],
    state: &ServerState,
    real_clock: bool,
    policy: &mut Policy,
    from: &[IpAddr],
) {
    let rx = UnixTime::new(1_800_000_000, 5_000);
    let tx = UnixTime::new(1_800_000_000, 6_000);
    let mut out = [0u8; HEADER_LEN];
    let mut per_run = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut next = 0;
        for _ in 0..iterations {
            let client = from[next];
            next = if next + 1 == from.len() { 0 } else { next + 1 };
            let verdict = respond(
                black_box(req),
                black_box(client),
                black_box(rx),
                black_box(state),
                policy,
                &mut out,
            );
            if matches!(verdict, Verdict::Reply | Verdict::Kod(_)) {
                let transmit = if real_clock { clock::now() } else { tx };
                stamp_transmit(&mut out, black_box(state), black_box(transmit));
            }
            black_box((verdict, &out));
        }
        per_run.push(start.elapsed().as_nanos() as f64 / iterations as f64);
    }
    let min = per_run.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per_run.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<44} {:>8.1} ns  (min {min:.1}, max {max:.1}, {RUNS} runs × {iterations})",
        median(per_run)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 200_000 } else { 5_000_000 };
    let plain = request(&[]);
    let with_efs = request(&nts_like_extensions());
    let mut mode6 = request(&[]);
    mode6[0] = 0x26;
    println!("{:<44} {:>11}", "case", "median");
    let open = &mut Policy::default();
    let fixed = state(0.0);
    bench(
        "v4 request, fixed tx time",
        n,
        &plain,
        &fixed,
        false,
        open,
        &ONE_CLIENT,
    );
    let freq = state(12.5e-6);
    bench(
        "v4 request, frequency correction",
        n,
        &plain,
        &freq,
        false,
        open,
        &ONE_CLIENT,
    );
    let efs = "v4 request + 3 extension fields (180 B)";
    bench(efs, n, &with_efs, &fixed, false, open, &ONE_CLIENT);
    bench(
        "mode 6 (dropped)",
        n,
        &mode6,
        &fixed,
        false,
        open,
        &ONE_CLIENT,
    );
    let vdso = "v4 request, tx from clock_gettime (vDSO)";
    bench(vdso, n, &plain, &fixed, true, open, &ONE_CLIENT);
    let many = clients(200_000);
    bench(
        "  same, 200k clients, no protection",
        n,
        &plain,
        &fixed,
        false,
        open,
        &many,
    );
    for (access, limit, name) in [
        (true, false, "  + 10k-prefix access list"),
        (false, true, "  + rate limit (1M-entry table)"),
        (true, true, "  + both"),
    ] {
        let mut guarded = protected(access, limit);
        bench(name, n, &plain, &fixed, false, &mut guarded, &many);
    }
}
