#!/usr/bin/env bash
# A bounded fuzz pass (the fuzzing step of .ci/run; also by hand): installs
# afl.rs if missing, builds the targets, replays the committed corpus
# through the checks, fuzzes each target for SECS seconds (default 30)
# starting from it, and fails if AFL saved any crash or hang. Runs as root
# without a terminal; safe to re-run.
#   bash fuzz/ci.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}

# afl.rs: coverage-guided AFL++ on the stable toolchain (rustc's own
# SanitizerCoverage pass, no -Z flags). Installing cargo-afl builds AFL++
# from the source it ships (needs cc and make only); `config --build`
# rebuilds that for a new rustc and refuses when nothing is to be done.
afl_version=0.17.1 # = the afl dependency in Cargo.toml
if [ "$(cargo afl --version 2>/dev/null | cut -d' ' -f2)" != "$afl_version" ]; then
    cargo install --locked --force cargo-afl --version "$afl_version"
fi
if ! out=$(cargo afl config --build 2>&1); then
    case $out in
    *"already built"*) ;;
    *) printf '%s\n' "$out" >&2; exit 1 ;;
    esac
fi

# --target keeps build scripts and proc macros out of the instrumented,
# optimised build (half the compile time).
target=$(rustc -vV | sed -n 's/^host: //p')
cargo fmt --check
cargo afl build --release --locked --target "$target"
cargo afl test --release --locked --target "$target"

# Non-interactive AFL on a shared 2-core box: no UI, no CPU pinning, no
# demands on the CPU governor or core_pattern (may be read-only here). A
# case that exceeds -t (1 s) is run again with AFL_HANG_TMOUT (10 s) and is
# a hang only if that times out too: one stall of the host is not a hang
# (a 1-second stall was seen once in 6 M executions here).
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 \
    AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SUPPRESS_SYSTEM_CONFIG=1 \
    AFL_HANG_TMOUT=10000
mkdir -p out/ci
failed=0
for t in config respond; do
    out=out/ci/$t
    rm -rf "$out"
    dict=()
    [ -f "dict/$t.dict" ] && dict=(-x "dict/$t.dict")
    cargo afl fuzz -V "$secs" -t 1000 "${dict[@]}" -i "corpus/$t" -o "$out" \
        "target/$target/release/$t" >"$out.log" 2>&1 || {
        tail -n 30 "$out.log" >&2
        echo "fuzz $t: afl-fuzz failed (log: fuzz/$out.log)" >&2
        exit 1
    }
    stats=$out/default/fuzzer_stats
    stat() { sed -n "s/^$1 *: //p" "$stats"; }
    echo "fuzz $t: $(stat execs_done) executions in $(stat run_time) s" \
        "($(stat execs_per_sec)/s), corpus $(stat corpus_count)," \
        "crashes $(stat saved_crashes), hangs $(stat saved_hangs)"
    found=$(find "$out/default/crashes" "$out/default/hangs" -type f ! -name README.txt)
    if [ -n "$found" ]; then
        while IFS= read -r f; do
            echo "fuzz $t: crash or hang input: fuzz/$f" >&2
        done <<<"$found"
        failed=1
    fi
done
exit $failed
