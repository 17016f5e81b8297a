#!/usr/bin/env bash
# Issue 18's closing comparison in one run: build.sh against this engine, then against Debian's
# dockerd 20.10 (dockerd-env.sh: extracted debs, --iptables=false --bridge=none, its own data
# root and socket), both inside one private network namespace; then the ratios
# rmachine / dockerd (the issue's target: at most 0.5 each).
#
# Usage (as root, from the workspace root), after
#   cargo build --release -p rmachine-engine -p rmachine-runtime
# and extracting dockerd's debs (see dockerd-env.sh):
#   crates/engine/benches/build-compare.sh [TARGET_DIR]      # default: target/release
# RUNS=N changes the number of runs of each (5).
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
if [ "${BUILD_COMPARE_IN_NETNS:-}" != 1 ]; then
    exec unshare --net env BUILD_COMPARE_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
ours=$("$dir/build.sh" "$@" | tail -1)
theirs=$(ENGINE=dockerd "$dir/build.sh" | tail -1)
printf '%s\n%s\n' "$ours" "$theirs"
figures() { sed -E 's/.*: ([0-9.]+) ms; no-change rebuild: ([0-9.]+) ms.*/\1 \2/'; }
read -r ours_nocache ours_cached <<<"$(figures <<<"$ours")"
read -r theirs_nocache theirs_cached <<<"$(figures <<<"$theirs")"
awk -v a="$ours_nocache" -v b="$theirs_nocache" -v c="$ours_cached" -v d="$theirs_cached" \
    'BEGIN { printf "rmachine / dockerd: --no-cache build %.2f, no-change rebuild %.2f\n", a / b, c / d }'
