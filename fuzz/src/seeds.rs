//! The `respond` seeds: requests of every shape a server meets (v1–v4
//! clients, extension fields, MACs, other modes, short and junk datagrams)
//! under a few scenarios, encoded with [`Case::encode`] so they stay in step
//! with the input layout. The tests check that `corpus/respond/` holds them
//! and replay both corpora through the checks; `FUZZ_WRITE_SEEDS=1 cargo
//! test` (in `fuzz/`) rewrites the generated files after a layout change.
//! The `config` seeds are plain files (the example configurations and edge
//! cases), not generated.

use crate::respond::Case;
use fastntp::proto::UnixTime;

/// Scenario byte: synchronized, no correction, stratum 2.
const SYNCED: u8 = 0b0010_0000;
/// Scenario byte: unsynchronized.
const UNSYNCED: u8 = 1;
/// Synchronized, offset and frequency correction.
const CORRECTED: u8 = SYNCED | 0b010;
/// Synchronized, announcing and inserting a leap second.
const LEAP_INSERT: u8 = SYNCED | 0b0_1100;
/// Synchronized, announcing and deleting a leap second.
const LEAP_DELETE: u8 = SYNCED | 0b1_0110;

/// A header with `first` as its first byte (LI, version, mode) and a
/// client's typical fields, transmit timestamp included.
fn header(first: u8) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = first;
    h[2] = 6; // poll
    h[3] = 0x20; // precision
    h[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]); // root delay, dispersion
    h[40..48].copy_from_slice(&[0x9c, 0x3b, 0x41, 0x0e, 0x5a, 0x8d, 0x7f, 0x21]);
    h
}

/// An RFC 7822 extension field of `len` bytes (type 0x0104).
fn extension(len: u16) -> Vec<u8> {
    let mut ef = vec![0xab; usize::from(len)];
    ef[..4].copy_from_slice(&[0x01, 0x04, (len >> 8) as u8, len as u8]);
    ef
}

/// A legacy MAC: key id 1 and a digest, `len` bytes in all.
fn mac(len: usize) -> Vec<u8> {
    let mut m = vec![0x5c; len];
    m[..4].copy_from_slice(&[0, 0, 0, 1]);
    m
}

/// A request: a header with first byte `first`, then `tail`'s parts.
fn ntp(first: u8, tail: &[&[u8]]) -> Vec<u8> {
    [&header(first)[..], &tail.concat()].concat()
}

/// One seed before encoding.
struct Seed {
    name: &'static str,
    scenario: u8,
    received: UnixTime,
    delay_us: i16,
    protection: u8,
    source: u128,
    repeats: u8,
    request: Vec<u8>,
}

impl Seed {
    /// `request` to a synchronized server, received now, stamped 20 µs later.
    fn new(name: &'static str, request: Vec<u8>) -> Self {
        Seed {
            name,
            scenario: SYNCED,
            received: UnixTime::new(1_800_000_000, 123_456_789),
            delay_us: 20,
            protection: 0,
            source: fastntp::policy::cidr::to_bits([192, 0, 2, 1].into()),
            repeats: 1,
            request,
        }
    }

    /// Sent `repeats` times from `source` to a server with `protection`.
    fn protected(self, protection: u8, source: &str, repeats: u8) -> Self {
        let source = source.parse().map_or(0, fastntp::policy::cidr::to_bits);
        Seed {
            protection,
            source,
            repeats,
            ..self
        }
    }

    fn scenario(self, scenario: u8) -> Self {
        Seed { scenario, ..self }
    }

    fn at(self, secs: i64, nanos: u32, delay_us: i16) -> Self {
        let received = UnixTime::new(secs, nanos);
        Seed {
            received,
            delay_us,
            ..self
        }
    }
}

/// The generated `respond` seeds: file name and contents.
pub fn respond_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const V4: u8 = 0x23;
    const V3: u8 = 0x1b;
    let s = Seed::new;
    let now = 1_800_000_000;
    let junk = (0..48).map(|i: u8| i.wrapping_mul(37) ^ 0x5a).collect();
    let seeds = [
        s("v4-client", ntp(V4, &[])),
        s("v4-client-unsynced", ntp(V4, &[])).scenario(UNSYNCED),
        s("v3-client-corrected", ntp(V3, &[])).scenario(CORRECTED),
        s("v2-client-leap-insert", ntp(0x13, &[]))
            .scenario(LEAP_INSERT)
            .at(now, 999_999_900, 500),
        s("v1-client-leap-delete", ntp(0x0b, &[]))
            .scenario(LEAP_DELETE)
            .at(now, 999_999_900, 500),
        s("v4-li3-client", ntp(0xe3, &[])),
        s("v4-ef16", ntp(V4, &[&extension(16)])),
        s("v4-ef-ef", ntp(V4, &[&extension(28), &extension(16)])).scenario(CORRECTED),
        s("v4-ef-mac20", ntp(V4, &[&extension(16), &mac(20)])),
        s("v4-mac24", ntp(V4, &[&mac(24)])),
        s("v4-crypto-nak", ntp(V4, &[&[0; 4]])),
        s("v4-ef-too-short", ntp(V4, &[&extension(16)[..12]])),
        s("v4-ef-overruns", ntp(V4, &[&extension(64)[..32]])),
        s("v3-mac20", ntp(V3, &[&mac(20)])),
        s("v3-mac68", ntp(V3, &[&mac(68)])),
        s("v3-ms-sntp72", ntp(V3, &[&mac(72)])),
        s("v3-ef-not-allowed", ntp(V3, &[&extension(16)])),
        s("v4-47-bytes", ntp(V4, &[])[..47].to_vec()),
        s("v4-50-bytes", ntp(V4, &[&[0, 0]])),
        s("empty", Vec::new()),
        s("one-byte", vec![V4]),
        s("v0", ntp(0x03, &[])),
        s("v5", ntp(0x2b, &[])),
        s("mode1-symmetric", ntp(0x21, &[])),
        s("mode4-server-reply", ntp(0x24, &[])),
        s("mode5-broadcast", ntp(0x25, &[])),
        s(
            "mode6-control",
            vec![0x16, 0x01, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        s("mode7-private", vec![0x17, 0x00, 0x03, 0x2a, 0, 0, 0, 0]),
        s("junk-48", junk),
        s("stamped-before-received", ntp(V4, &[])).at(now, 5_000, -2000),
        s("era-boundary-2036", ntp(V4, &[])).at(2_085_978_495, 999_999_000, 20),
        s("before-1970", ntp(V4, &[]))
            .scenario(CORRECTED)
            .at(-1, 500_000_000, 20),
        s("denied-v4-kod", ntp(V4, &[])).protected(0b101, "192.0.2.9", 2),
        s("denied-v6-ignore", ntp(V4, &[])).protected(0b001, "2001:db8::7", 1),
        s("nested-allowed-v4", ntp(V3, &[])).protected(0b111, "192.0.2.130", 1),
        s("nested-denied-mapped", ntp(V4, &[])).protected(0b111, "::ffff:192.0.2.200", 1),
        s("allow-list-v6-loopback", ntp(V4, &[])).protected(0b010, "::1", 1),
        s("rate-limited-kod", ntp(V4, &[])).protected(0b1011_1000, "198.51.100.1", 12),
        s("rate-limited-leak-replies", ntp(V4, &[&extension(16)])).protected(
            0b0010_1000,
            "2001:db8:5::1",
            16,
        ),
        s("rate-limited-denied-kod", ntp(V4, &[])).protected(0b1111_1101, "192.0.2.5", 16),
    ];
    seeds
        .into_iter()
        .map(|seed| {
            let case = Case {
                scenario: seed.scenario,
                received: seed.received,
                delay_us: seed.delay_us,
                protection: seed.protection,
                source: seed.source,
                repeats: seed.repeats,
                request: &seed.request,
            };
            (seed.name, case.encode())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastntp::proto::{DropReason, Kiss, Verdict};
    use std::fs;
    use std::path::{Path, PathBuf};

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
    }

    /// Every file of a corpus, sorted by name.
    fn files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(corpus(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn committed_respond_corpus_holds_the_seeds() {
        let dir = corpus("respond");
        let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
        for (name, bytes) in respond_seeds() {
            let path = dir.join(name);
            if write {
                fs::write(&path, &bytes).unwrap();
            }
            let committed = fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} differs from its seed: FUZZ_WRITE_SEEDS=1 cargo test rewrites it",
                path.display()
            );
        }
    }

    #[test]
    fn respond_corpus_passes_and_reaches_every_verdict() {
        let mut seen: Vec<(bool, Verdict)> = Vec::new();
        for (path, bytes) in files("respond") {
            println!("{}", path.display());
            crate::respond::check(&bytes);
            let case = Case::split(&bytes).unwrap();
            let synced = case.state().is_synchronized();
            seen.extend(case.run().into_iter().map(|(v, _)| (synced, v)));
        }
        assert!(seen.contains(&(true, Verdict::Reply)));
        assert!(seen.contains(&(false, Verdict::Reply)));
        for kiss in [Kiss::Deny, Kiss::Rate] {
            assert!(
                seen.iter().any(|&(_, v)| v == Verdict::Kod(kiss)),
                "{kiss:?}"
            );
        }
        for reason in [
            DropReason::TooShort,
            DropReason::BadLength,
            DropReason::UnsupportedVersion,
            DropReason::NotClientMode,
            DropReason::MalformedExtension,
            DropReason::Denied,
            DropReason::RateLimited,
        ] {
            let drop = Verdict::Drop(reason);
            assert!(seen.iter().any(|&(_, v)| v == drop), "{reason:?}");
        }
    }

    #[test]
    fn config_corpus_passes_with_good_and_bad_files() {
        let (mut good, mut bad) = (0, 0);
        for (path, bytes) in files("config") {
            println!("{}", path.display());
            crate::config::check(&bytes);
            let text = String::from_utf8(bytes).unwrap();
            match fastntp::config::Config::parse(&text, &path) {
                Ok(_) => good += 1,
                Err(_) => bad += 1,
            }
        }
        assert!(good >= 4 && bad >= 4, "{good} good, {bad} bad");
    }
}
