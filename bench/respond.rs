//! Micro-benchmark of the protocol path: nanoseconds per datagram through
//! `proto::respond` and `proto::stamp_transmit` (validate + parse + build
//! the reply + stamp it), for the common
//! request shapes. Each case runs `RUNS` times; the median, min and max of
//! the per-run averages are printed.
//!
//! Run: `cargo bench --bench respond` (optionally `-- --quick`).

use std::hint::black_box;
use std::time::Instant;

use fastntp::clock;
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

fn bench(name: &str, iterations: u32, req: &[u8], state: &ServerState, real_clock: bool) {
    let rx = UnixTime::new(1_800_000_000, 5_000);
    let tx = UnixTime::new(1_800_000_000, 6_000);
    let mut out = [0u8; HEADER_LEN];
    let mut per_run = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        for _ in 0..iterations {
            let verdict = respond(black_box(req), black_box(rx), black_box(state), &mut out);
            if verdict == Verdict::Reply {
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
    bench("v4 request, fixed tx time", n, &plain, &state(0.0), false);
    bench(
        "v4 request, frequency correction",
        n,
        &plain,
        &state(12.5e-6),
        false,
    );
    bench(
        "v4 request + 3 extension fields (180 B)",
        n,
        &with_efs,
        &state(0.0),
        false,
    );
    bench("mode 6 (dropped)", n, &mode6, &state(0.0), false);
    bench(
        "v4 request, tx from clock_gettime (vDSO)",
        n,
        &plain,
        &state(0.0),
        true,
    );
}
