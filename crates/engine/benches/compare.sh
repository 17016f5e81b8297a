#!/usr/bin/env bash
# Two engine builds side by side, with dockerd in the same run: latency.sh against BEFORE and
# AFTER (alternating, so a change in the machine's load hits both), on host cgroups and on
# cgroup v2 as in the guest, then dockerd 20.10 (dockerd-env.sh); ROUNDS rounds (2); then
# durability.sh for `run --rm` and `load`. The machine is noisy: read ratios within a round.
#
# Usage (as root, from the workspace root), with release builds of engine and runtime in both:
#   crates/engine/benches/compare.sh BEFORE_TARGET_DIR AFTER_TARGET_DIR
set -euo pipefail
before=$1 after=$2
dir=$(dirname "$0")
for round in $(seq "${ROUNDS:-2}"); do
    for cgroup in host v2; do
        for build in before after; do
            target=$before
            [ "$build" = after ] && target=$after
            echo "### round $round, cgroups $cgroup, $build"
            CGROUP=$([ "$cgroup" = v2 ] && echo v2 || true) "$dir/latency.sh" "$target" | tail -4
        done
    done
    echo "### round $round, dockerd 20.10"
    ENGINE=dockerd "$dir/latency.sh" | tail -4
done
echo "### durability"
"$dir/durability.sh" "$before" "$after" | tail -4
