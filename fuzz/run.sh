#!/bin/sh
# Builds husk's fuzz targets with libFuzzer's coverage instrumentation on stable Rust and
# runs them.
#
#   fuzz/run.sh TARGET SECONDS   fuzz one target; new inputs go to fuzz/artifacts/corpus/TARGET,
#                                the committed seeds in fuzz/corpus/TARGET are read too
#   fuzz/run.sh --ci [SECONDS]   every target for SECONDS (default 15) on its committed corpus
#                                only; fails on the first crash
#   fuzz/run.sh --build          build every target
#   fuzz/run.sh --list           the targets
#
# Needs a C++ compiler (libfuzzer-sys builds libFuzzer; Debian: g++) and what the
# workspace needs (libseccomp-dev for the agent). CARGO_TARGET_DIR is honoured.
#
# The flags are what cargo-fuzz passes, minus its nightly-only sanitizer flags: coverage
# counters, the PC table and comparison tracing make the search coverage-guided; the
# explicit --target keeps them off build scripts and proc macros, which do not link
# libFuzzer.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
triple=$(rustc -vV | sed -n 's/^host: //p')
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^husk-fuzz$')

build() {
    RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing" \
        cargo build --locked --profile "$profile" --target "$triple" --bins "$@"
}

bin_dir() {
    echo "${CARGO_TARGET_DIR:-$here/target}/$triple/$profile"
}

# run TARGET SECONDS WORK_CORPUS: fuzz, reading WORK_CORPUS and the committed seeds.
run() {
    # libFuzzer reads 0 as "no limit".
    [ "$2" -gt 0 ] || { echo "SECONDS must be at least 1" >&2; exit 2; }
    mkdir -p "$3" "$here/artifacts/$1"
    seeds="$here/corpus/$1"
    [ -d "$seeds" ] || seeds=
    "$(bin_dir)/$1" -max_total_time="$2" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$here/artifacts/$1/" -print_final_stats=1 \
        "$3" $seeds
}

# findings TARGET: whether libFuzzer left a failing input for TARGET.
findings() {
    for f in "$here/artifacts/$1"/crash-* "$here/artifacts/$1"/leak-* \
        "$here/artifacts/$1"/timeout-* "$here/artifacts/$1"/oom-*; do
        [ -e "$f" ] && return 0
    done
    return 1
}

# Long runs want fast code; the CI run wants a fast build. FUZZ_PROFILE overrides.
profile=fuzz
[ "${1:-}" = --ci ] && profile=fuzz-ci
profile=${FUZZ_PROFILE:-$profile}

case "${1:-}" in
--build)
    build
    ;;
--list)
    echo "$targets"
    ;;
--ci)
    secs=${2:-15}
    build
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # Two targets at a time (the CI machine has two cores); each from its committed seeds.
    set -- $targets
    while [ $# -gt 0 ]; do
        pair="$1 ${2:-}"
        for t in $pair; do
            run "$t" "$secs" "$work/$t" >"$work/$t.log" 2>&1 &
        done
        wait
        for t in $pair; do
            echo "== $t: $(grep -a 'DONE' "$work/$t.log" | tail -1)"
            # libFuzzer writes crash-*, leak-*, timeout-* or oom-* when a run fails.
            if ! grep -aq 'DONE' "$work/$t.log" || findings "$t"; then
                tail -40 "$work/$t.log" >&2
                echo "fuzz target $t failed; inputs in $here/artifacts/$t" >&2
                exit 1
            fi
        done
        if [ $# -ge 2 ]; then shift 2; else shift; fi
    done
    ;;
'' | -*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
*)
    t=$1
    secs=${2:-600}
    build --bin "$t"
    run "$t" "$secs" "$here/artifacts/corpus/$t"
    ;;
esac
