#!/usr/bin/env bash
# Wall time of `docker run --rm busybox true` against rmachine-engine on this host.
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/run-latency.sh [TARGET_DIR]     # default: target/release
# Needs: docker CLI, /usr/bin/busybox (busybox-static), hyperfine (apt-get install hyperfine);
# without hyperfine it falls back to timing a loop. RUNS=N changes the number of runs (10).
set -euo pipefail
DEFAULT_RUNS=10
# shellcheck source=engine-env.sh
source "$(dirname "$0")/engine-env.sh"

if command -v hyperfine >/dev/null; then
    hyperfine --warmup 2 --runs "$runs" --export-json "$work/result.json" \
        'docker run --rm busybox true'
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("median: %.1f ms" % (r["median"]*1000))' "$work/result.json"
else
    times=()
    for _ in $(seq "$runs"); do
        start=$(date +%s%N)
        docker run --rm busybox true
        times+=($(( ($(date +%s%N) - start) / 1000000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " ms"}'
fi
