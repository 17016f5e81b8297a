#!/usr/bin/env bash
# Requests per second to a container's HTTP server (busybox httpd, a 1 KiB page; ApacheBench,
# SECONDS_EACH seconds per measurement, default 10, CONCURRENCY clients, default 4), reached
# three ways from the engine's own network namespace, side by side: the container's address
# (direct), a published port on the bridge's address (the kernel's DNAT), and a port published
# on 127.0.0.1 (the engine's userland proxy). RUNS rounds (default 2).
#
# Usage (from the workspace root, as root, after `cargo build -p rmachine-engine -p
# rmachine-init --bins`): crates/engine/benches/ports.sh [TARGET_DIR]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v ab >/dev/null || { echo "needs ab (apache2-utils)" >&2; exit 1; }
DEFAULT_RUNS=2
# shellcheck source=engine-env.sh
source crates/engine/benches/engine-env.sh "${1:-target/debug}" >/dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
# One server port per path: all three reach the container from the bridge's address, and a
# connection of one path must not meet the server's TIME_WAIT sockets of another (measured in
# sequence on one port, DNAT after direct showed up to 60 % fewer requests/s; likely because
# their TCP timestamps have other random offsets, keyed on the addresses the client sees, so a
# SYN reusing such a 4-tuple is dropped and retried a second later).
docker run -d --name web -p 18080:81 -p 127.0.0.1:18081:82 busybox sh -c \
    'mkdir -p /www && head -c 1024 /dev/zero > /www/index.html &&
     httpd -p 81 -h /www && httpd -p 82 -h /www && exec httpd -f -p 80 -h /www' \
    >/dev/null
ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' web)
gw=$(docker inspect -f '{{.NetworkSettings.Gateway}}' web)
in_engine() { nsenter --net="/proc/$engine_pid/ns/net" "$@"; }
for _ in $(seq 100); do in_engine ab -q -n 1 "http://$ip:80/" >/dev/null 2>&1 && break; sleep 0.1; done
seconds=${SECONDS_EACH:-10}
concurrency=${CONCURRENCY:-4}
for run in $(seq "$runs"); do
    for what in "direct:$ip:80" "published-dnat:$gw:18080" "published-proxy:127.0.0.1:18081"; do
        name=${what%%:*} addr=${what#*:}
        rps=$(in_engine ab -q -r -t "$seconds" -n 1000000 -c "$concurrency" "http://$addr/" 2>/dev/null \
            | awk '/Requests per second/ {rps=$4} /Failed requests/ {failed=$3} END {print rps " (failed: " failed ")"}')
        echo "run $run  $name ($addr)  requests/s: $rps"
    done
done
