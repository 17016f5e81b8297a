#!/usr/bin/env bash
# Issue 18's build benchmark: a 3-step classic build (FROM busybox, RUN, COPY) with
# --no-cache, and the same build again with nothing changed (every step from the cache),
# medians measured by hyperfine.
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/build.sh [TARGET_DIR]      # default: target/release
# ENGINE=dockerd measures Debian's dockerd 20.10 the same way (dockerd-env.sh).
# RUNS=N changes the number of runs (5). Needs: docker CLI, hyperfine, jq, busybox-static.
set -euo pipefail
DEFAULT_RUNS=5
if [ "${ENGINE:-rmachine}" = dockerd ]; then
    # shellcheck source=dockerd-env.sh
    source "$(dirname "$0")/dockerd-env.sh"
else
    # shellcheck source=engine-env.sh
    source "$(dirname "$0")/engine-env.sh"
fi
export DOCKER_BUILDKIT=0

mkdir -p "$work/ctx"
printf 'FROM busybox\nRUN echo built > /built\nCOPY file /file\n' >"$work/ctx/Dockerfile"
head -c 65536 /dev/urandom >"$work/ctx/file"

median_ms() { jq -r '.results[0].median * 1000 | . * 10 | round / 10' "$1"; }
hyperfine -N --style none --runs "$runs" --warmup 1 --export-json "$work/nocache.json" \
    "docker build -q --no-cache -t bench $work/ctx" >/dev/null
docker build -q -t bench "$work/ctx" >/dev/null
hyperfine -N --style none --runs "$runs" --warmup 1 --export-json "$work/cached.json" \
    "docker build -q -t bench $work/ctx" >/dev/null
printf '%s build --no-cache (3 steps): %s ms; no-change rebuild: %s ms (median of %s)\n' \
    "${ENGINE:-rmachine}" "$(median_ms "$work/nocache.json")" "$(median_ms "$work/cached.json")" "$runs"
