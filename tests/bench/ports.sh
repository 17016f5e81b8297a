#!/usr/bin/env bash
# Benchmarks a machine's published port from the host: requests per second (ApacheBench,
# REQUESTS requests, CONCURRENCY clients; defaults 200 and 1) and connect latency through the port agent
# (127.0.0.1:PORT → SSH direct-tcpip → the engine's proxy → the container), side by side with
# the same server reached the old way, OpenSSH's `ssh -L` to the same guest port.
#
# Usage (from the workspace root, after `cargo build -p rmachine -p rmachine-fixtures` and
# `guest/build.sh`):   tests/bench/ports.sh [PROFILE]     (default PROFILE=debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:-debug}
rmachine=target/$profile/rmachine
fixtures=target/$profile/rmachine-fixtures
for bin in "$rmachine" "$fixtures"; do
    [ -x "$bin" ] || { echo "missing $bin: cargo build -p rmachine -p rmachine-fixtures" >&2; exit 1; }
done
command -v ab >/dev/null || { echo "needs ab (apache2-utils)" >&2; exit 1; }
store=$(mktemp -d /tmp/rmachine-bench-ports.XXXXXX)
export RMACHINE_STORAGE_PATH="$store" DOCKER_CONFIG="$store/docker-config"
ssh_pid=
cleanup() {
    [ -z "$ssh_pid" ] || kill "$ssh_pid" 2>/dev/null || true
    "$rmachine" rm -f -y bench >/dev/null 2>&1 || true
    rm -rf "$store"
}
trap cleanup EXIT

echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
"$rmachine" create -d qemu --no-progress --guest-image guest/out bench >/dev/null
eval "$("$rmachine" env --shell bash bench)"
"$fixtures" busybox "$store/busybox.tar" >/dev/null
docker load -i "$store/busybox.tar" >/dev/null
port=18090
local_port=18091
docker run -d --name web --restart always -p "$port:80" busybox sh -c \
    'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done

ssh_port=$("$rmachine" inspect -f '{{.Driver.SSHPort}}' bench)
ssh -N -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes \
    -i "$store/machines/bench/id_ed25519" -p "$ssh_port" \
    -L "127.0.0.1:$local_port:127.0.0.1:$port" root@127.0.0.1 &
ssh_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$local_port/" >/dev/null && break; sleep 0.1; done

connect_ms() { # median of 20 connect+first-byte times
    for _ in $(seq 20); do
        curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://127.0.0.1:$1/"
    done | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]*1000}'
}
# busybox httpd closes every connection (no keep-alive), so each request is a new connection:
# through the agent, a new SSH channel.
requests=${REQUESTS:-200}
concurrency=${CONCURRENCY:-1}
for run in 1 2; do
    for what in "ssh -L:$local_port" "agent:$port"; do
        name=${what%%:*} p=${what##*:}
        # A fresh container for each measurement: it must run for the whole of it.
        docker restart -t 0 web >/dev/null
        for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/" >/dev/null && break; sleep 0.05; done
        first=$(connect_ms "$p")
        rps=$(ab -q -r -c "$concurrency" -n "$requests" "http://127.0.0.1:$p/" 2>/dev/null \
            | awk '/Requests per second/ {rps=$4} /Failed requests/ {failed=$3} END {print rps " (failed: " failed ")"}' || true)
        echo "run $run  $name  requests/s: $rps  first byte (median of 20): $first ms"
    done
done
