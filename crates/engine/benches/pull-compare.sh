#!/usr/bin/env bash
# pull.sh against rmachine-engine and dockerd 20.10 in one run, alternating for ROUNDS (2)
# rounds so that a change in the machine's load hits both, then the ratios of the medians.
#
# Usage (as root, from the workspace root), after a release build of engine and runtime:
#   crates/engine/benches/pull-compare.sh [TARGET_DIR]     # default: target/release
set -euo pipefail
target=${1:-target/release}
dir=$(dirname "$0")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "${ROUNDS:-2}"); do
    for engine in rmachine dockerd; do
        echo "### round $round, $engine"
        ENGINE=$engine "$dir/pull.sh" "$target" 2>/dev/null | grep -E '^(engine|cold|warm|cpu)' |
            tee -a "$out"
    done
done
# Ratio rmachine/dockerd per measure, from the medians of the last round.
for measure in "cold push" "cold pull" "warm pull" "cpu push" "cpu pull"; do
    r=$(grep "^$measure" "$out" | tail -2 | head -1 | awk '{print $4}')
    d=$(grep "^$measure" "$out" | tail -1 | awk '{print $4}')
    echo "$measure: rmachine ${r} s, dockerd ${d} s, ratio $(echo "scale=2; $r / $d" | bc)"
done
