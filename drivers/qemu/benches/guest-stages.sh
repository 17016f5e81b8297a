#!/usr/bin/env bash
# The guest's side of boot speed, side by side: two guest images under the same host CLI and
# QEMU, runs alternating (old, new, old, new, …) so that the machine's load hits both alike.
# Per run and image: `create` and a cold `start`, each until `docker version` answers through
# `rmachine env`, with
#   - the wall time of the command until docker answers,
#   - QEMU's CPU time (user + sys) until then: far less sensitive to the host's load,
#   - the guest's stage times (ms of its CLOCK_BOOTTIME: `inspect`'s Timeline.Guest),
#   - the guest's own figures from its console: the container modules' load time (the phase
#     the engine waits for), the share and deferred modules' (loaded beside the engine's
#     start: work moved, not removed) and, at create, the data disk's format time.
# Medians and ratios (new / old) at the end. boot.sh measures more (stop, save, resume, idle
# CPU and RSS); this one is for the guest's stages only and takes a few minutes.
#
# Usage (workspace root, after `cargo build -p rmachine` and `guest/build.sh`):
#   OLD_GUEST=DIR drivers/qemu/benches/guest-stages.sh [RUNS]      (default 3)
# Environment:
#   OLD_GUEST  the previous image (a guest/out directory), required
#   NEW_GUEST  this tree's image (default guest/out)
#   RMACHINE   the host CLI (default target/debug/rmachine)
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-3}
rmachine=${RMACHINE:-target/debug/rmachine}
new_guest=${NEW_GUEST:-guest/out}
old_guest=${OLD_GUEST:?set OLD_GUEST to the previous image}
for image in "$old_guest" "$new_guest"; do
    [ -f "$image/manifest.json" ] || { echo "missing $image/manifest.json" >&2; exit 1; }
done
[ -x "$rmachine" ] || { echo "missing $rmachine: cargo build -p rmachine" >&2; exit 1; }

scratch=$(mktemp -d /tmp/rmachine-guest-stages.XXXXXX)
cleanup() {
    for variant in old new; do
        RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$rmachine" rm -f -y "gs-$variant" \
            >/dev/null 2>&1 || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2f'; }
rm_() {
    local variant=$1; shift
    RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$rmachine" "$@"
}
machine_dir() { echo "$scratch/store-$1/machines/gs-$1"; }
qemu_cpu() {
    awk -v tck="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / tck}' \
        "/proc/$(cat "$(machine_dir "$1")/qemu.pid")/stat"
}
docker_answers() {
    local variant=$1 env
    env=$(rm_ "$variant" env --shell bash "gs-$variant")
    (
        eval "$env"
        export DOCKER_CONFIG="$scratch/docker-config"
        for _ in $(seq 3000); do
            docker version >/dev/null 2>&1 && exit 0
            sleep 0.05
        done
        exit 1
    )
}

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }
stages="InitStarted ModulesLoaded NetworkUp DataDiskMounted SshUp EngineStarted EngineUp TlsListening"
# The share + deferred modules' ms of CONSOLE's last boot, -1 without its `deferred modules:`.
later_modules_ms() {
    awk '
        /container modules: / { d = 0; seen = 0 }
        match($0, /(share|deferred) modules: .* in [0-9]+ ms/) {
            n = split(substr($0, RSTART, RLENGTH), w, " "); d += w[n - 1]
            if ($0 ~ /deferred modules: /) seen = 1
        }
        END { print (seen ? d : -1) }' "$1"
}
# Records the guest's stages and console figures of VARIANT's last boot under KIND.
record_guest() {
    local variant=$1 kind=$2 timeline console stage ms
    timeline=$(rm_ "$variant" inspect --format '{{range .Timeline.Guest}}{{.Stage}}={{.Ms}} {{end}}' "gs-$variant")
    for stage in $stages; do
        ms=$(tr ' ' '\n' <<<"$timeline" | sed -n "s/^$stage=//p" | tail -1)
        record "$variant-$kind-$stage" "${ms:--1}"
    done
    console="$(machine_dir "$variant")/console.log"
    record "$variant-$kind-container-modules-ms" \
        "$(grep -o 'container modules: .* in [0-9]* ms' "$console" | tail -1 | awk '{print $(NF-1)}')"
    # The later phases (share and deferred modules, images after 0.1.0-fa80bf16) run beside
    # the engine's start: work moved, not removed. Their sum for this boot (the lines after
    # its last `container modules:` line), waited for up to 10 s once docker answers (nothing
    # in the guest waits for them); -1 for an image that prints no `deferred modules:` line.
    local later=-1
    for _ in $(seq 100); do
        later=$(later_modules_ms "$console")
        [ "$later" != -1 ] && break
        sleep 0.1
    done
    record "$variant-$kind-deferred-modules-ms" "$later"
    if [ "$kind" = create ]; then
        record "$variant-$kind-format-ms" \
            "$(grep -o 'disk: formatted .* in [0-9]* ms' "$console" | tail -1 | awk '{print $(NF-1)}')"
    fi
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(qemu-system-x86_64 --version | head -1)"
echo "old image: $(jq -r .version "$old_guest/manifest.json"), new image: $(jq -r .version "$new_guest/manifest.json")"
for i in $(seq "$runs"); do
    for variant in old new; do
        image=$new_guest
        [ "$variant" = old ] && image=$old_guest
        t0=$(now)
        rm_ "$variant" create -d qemu --no-share --no-progress --guest-image "$image" "gs-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-create" "$(secs "$t0" "$t1")"
        record "$variant-create-qemu-cpu" "$(qemu_cpu "$variant")"
        record_guest "$variant" create
        rm_ "$variant" stop "gs-$variant" >/dev/null
        t0=$(now)
        rm_ "$variant" start --no-progress "gs-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-start" "$(secs "$t0" "$t1")"
        record "$variant-start-qemu-cpu" "$(qemu_cpu "$variant")"
        record_guest "$variant" start
        rm_ "$variant" rm -f -y "gs-$variant" >/dev/null
        echo "run $i $variant: create $(echo "${results[$variant-create]}" | awk '{print $NF}') s" \
            "(QEMU CPU $(echo "${results[$variant-create-qemu-cpu]}" | awk '{print $NF}') s)," \
            "start $(echo "${results[$variant-start]}" | awk '{print $NF}') s" \
            "(QEMU CPU $(echo "${results[$variant-start-qemu-cpu]}" | awk '{print $NF}') s)," \
            "load $(cut -d' ' -f1 /proc/loadavg)"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n| what (median of %s) | old | new | new/old |\n| --- | --- | --- | --- |\n' "$runs"
rows="create create-qemu-cpu"
for stage in $stages; do rows="$rows create-$stage"; done
rows="$rows create-container-modules-ms create-deferred-modules-ms create-format-ms"
rows="$rows start start-qemu-cpu"
for stage in $stages; do rows="$rows start-$stage"; done
rows="$rows start-container-modules-ms start-deferred-modules-ms"
for what in $rows; do
    o=$(printf '%s\n' ${results[old-$what]:-} | median)
    n=$(printf '%s\n' ${results[new-$what]:-} | median)
    unit=ms
    case $what in create | start | *-qemu-cpu) unit=s ;; esac
    printf '| %s (%s) | %s | %s | %s |\n' "$what" "$unit" "$o" "$n" "$(ratio "$o" "$n")"
done
