#!/usr/bin/env bash
# What durability costs: `docker run --rm busybox true` and `docker load` (of the one-layer
# busybox image, removed before each load) against two engine builds, side by side in the
# same run, on the data root's real filesystem (mktemp -d under /tmp: check it is not tmpfs,
# where fsync is free). The two builds alternate (before, after, before, after) so that a
# change in the machine's load hits both.
#
# Usage (as root, from the workspace root), with release builds of engine and runtime:
#   crates/engine/benches/durability.sh BEFORE_TARGET_DIR AFTER_TARGET_DIR
# RUNS=N changes the number of runs per round (20). Needs: docker CLI, hyperfine, jq,
# busybox-static.
set -euo pipefail
if [ -z "${RMACHINE_BENCH_ONE:-}" ]; then
    before=$1 after=$2
    results=$(mktemp -d /tmp/rmachine-durability.XXXXXX)
    trap 'rm -rf "$results"' EXIT
    for round in 1 2; do
        RMACHINE_BENCH_ONE=1 "$0" "$before" >"$results/before-$round"
        RMACHINE_BENCH_ONE=1 "$0" "$after" >"$results/after-$round"
    done
    echo "runs per round: ${RUNS:-20}; medians in ms, round 1 / round 2"
    printf '%-34s %-18s %-18s\n' "" "before" "after"
    for key in run load; do
        row() { grep "^$key " "$results/$1-1" | cut -d' ' -f2; }
        row2() { grep "^$key " "$results/$1-2" | cut -d' ' -f2; }
        label="docker run --rm busybox true"
        [ "$key" = load ] && label="docker load -i busybox.tar"
        printf '%-34s %-18s %-18s\n' "$label" "$(row before) / $(row2 before)" \
            "$(row after) / $(row2 after)"
    done
    exit 0
fi

DEFAULT_RUNS=20
# shellcheck source=engine-env.sh
source "$(dirname "$0")/engine-env.sh" "$1" >/dev/null

median_ms() { jq -r '.results[0].median * 1000 | . * 10 | round / 10' "$1"; }
measure() { # NAME, then hyperfine arguments
    local name=$1
    shift
    hyperfine -N --style none --runs "$runs" --export-json "$work/$name.json" "$@" >/dev/null
}

measure run --warmup 3 'docker run --rm busybox true'
cat >"$work/unload" <<'SH'
#!/bin/sh
docker rmi -f busybox >/dev/null 2>&1 || true
SH
chmod +x "$work/unload"
measure load --prepare "$work/unload" "docker load -q -i $work/busybox.tar"
echo "run $(median_ms "$work/run.json")"
echo "load $(median_ms "$work/load.json")"
