#!/usr/bin/env bash
# Boot speed side by side: a previous guest image against this tree's, under the same QEMU and
# host CLI, runs alternating so that the machine's load hits both alike. Per run and image:
#   create   `rmachine create` until `docker version` answers through `rmachine env` (the
#            first run's create, which imports the image and takes the QEMU boot snapshot
#            the later creates and starts of that store load, as first-create)
#   stop     `rmachine stop` (power button, clean unmount)
#   start    cold `rmachine start` until `docker version` answers
#   save     `rmachine stop --save` with a container running (the guest's state to a file)
#   resume   `rmachine start` from that state until `docker version` answers
# plus QEMU's CPU time (user + sys, from its start until docker answered: far less sensitive to
# the host's load than wall time) for create and start, the guest's time for its device
# modules at create (its console line),
# and once per image, after the last start: QEMU's RSS, the guest's used memory
# (MemTotal - MemAvailable) and QEMU's host CPU use over IDLE_SECS of an idle machine.
# Medians and ratios (new / old) at the end. The figures go to docs/benchmarks.md.
#
# Usage (workspace root, after `cargo build -p rmachine` and `guest/build.sh`):
#   drivers/qemu/benches/boot.sh [RUNS]          (default 5)
# Environment:
#   NEW_GUEST    this tree's image (default guest/out)
#   OLD_GUEST    the previous image; unset: built from OLD_REV (default 1abc218) in a
#                temporary worktree with its own target dir (a release musl build: minutes)
#   RMACHINE     the host CLI (default target/debug/rmachine); both images use it, so the
#                difference measured is the guest image and what the driver does with it
#   OLD_RMACHINE the host CLI for the old image instead (e.g. main's build in another
#                worktree): then host-side changes are measured too
#   IDLE_SECS    idle window (default 60)
#   FIXTURES     rmachine-fixtures, which builds the busybox image run before the save
#                (default target/debug/rmachine-fixtures; missing: the save holds no container)
#   VARIANTS     which images run (default "old new"; "new" alone needs no previous image)
#   SHARE        the share option of the creates (default --no-share; empty: the default
#                home-folder share, which the guest mounts at boot; then no save and resume,
#                which QEMU refuses with a mounted virtio-fs share)
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-5}
idle_secs=${IDLE_SECS:-60}
share=${SHARE---no-share}
rmachine=${RMACHINE:-target/debug/rmachine}
new_guest=${NEW_GUEST:-guest/out}
fixtures=${FIXTURES:-target/debug/rmachine-fixtures}
[ -x "$rmachine" ] || { echo "missing $rmachine: cargo build -p rmachine" >&2; exit 1; }
[ -f "$new_guest/manifest.json" ] || { echo "missing $new_guest: guest/build.sh" >&2; exit 1; }

scratch=$(mktemp -d /tmp/rmachine-boot-bench.XXXXXX)
old_worktree=""
cleanup() {
    for variant in old new; do
        RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$rmachine" rm -f -y "bench-$variant" \
            >/dev/null 2>&1 || true
    done
    if [ -n "$old_worktree" ]; then git worktree remove --force "$old_worktree" >/dev/null 2>&1 || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

variants=${VARIANTS:-old new}
if [ -z "${OLD_GUEST:-}" ] && [[ " $variants " == *" old "* ]]; then
    old_rev=${OLD_REV:-1abc218}
    old_worktree="$scratch/old-src"
    echo "building the previous guest from $old_rev (own target dir; this takes minutes)" >&2
    git worktree add --detach "$old_worktree" "$old_rev" >/dev/null
    CARGO_TARGET_DIR="$scratch/old-target" OUT="$scratch/old-guest" "$old_worktree/guest/build.sh" \
        2>"$scratch/old-build.log" || { tail -20 "$scratch/old-build.log" >&2; exit 1; }
    OLD_GUEST="$scratch/old-guest"
    rm -rf "$scratch/old-target"
fi

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2f'; }

old_rmachine=${OLD_RMACHINE:-$rmachine}
[ -x "$old_rmachine" ] || { echo "missing $old_rmachine" >&2; exit 1; }
# Runs the CLI for VARIANT's store.
rm_() {
    local variant=$1 cli=$rmachine; shift
    [ "$variant" = old ] && cli=$old_rmachine
    RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$cli" "$@"
}
# QEMU's CPU time so far (user + sys, seconds) for VARIANT's machine.
qemu_cpu() {
    local pid
    pid=$(cat "$scratch/store-$1/machines/bench-$1/qemu.pid")
    awk -v tck="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / tck}' "/proc/$pid/stat"
}
# Waits until docker answers through the machine's environment (at most 300 s).
docker_answers() {
    local variant=$1 env
    env=$(rm_ "$variant" env --shell bash "bench-$variant")
    (
        eval "$env"
        export DOCKER_CONFIG="$scratch/docker-config"
        for _ in $(seq 3000); do
            docker version >/dev/null 2>&1 && exit 0
            sleep 0.1
        done
        exit 1
    )
}

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }
# The first host mark named $2 in the timeline JSON $1 (ms).
host_ms() { jq -r --arg s "$2" '[.Host[] | select(.Stage == $s) | .Ms] | first // empty' <<<"$1"; }
# The boot's timeline (`inspect`): the host's VmStarting and VmRunning marks, and the host's
# delay after the guest's signal, GuestSignalled - VmRunning - the guest's TlsListening (ms):
# what lies between QEMU running and the guest clock's zero, plus the host's console reading.
record_timeline() {
    local variant=$1 what=$2 timeline
    timeline=$(rm_ "$variant" inspect -f '{{json .Timeline}}' "bench-$variant")
    local starting running signalled tls
    starting=$(host_ms "$timeline" VmStarting); running=$(host_ms "$timeline" VmRunning)
    signalled=$(host_ms "$timeline" GuestSignalled)
    tls=$(jq -r '[.Guest[] | select(.Stage == "TlsListening") | .Ms] | last // empty' <<<"$timeline")
    record "$variant-$what-vmstarting-ms" "$starting"
    record "$variant-$what-vmrunning-ms" "$running"
    if [ -n "$signalled" ] && [ -n "$tls" ]; then
        record "$variant-$what-signal-gap-ms" "$((signalled - running - tls))"
    fi
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(qemu-system-x86_64 --version | head -1)"
echo "old image: $(jq -r .version "${OLD_GUEST:-$new_guest}/manifest.json"), new image: $(jq -r .version "$new_guest/manifest.json")"
echo "old CLI: $old_rmachine, new CLI: $rmachine"
for i in $(seq "$runs"); do
    for variant in $variants; do
        image=$new_guest
        [ "$variant" = old ] && image=$OLD_GUEST
        t0=$(now)
        # shellcheck disable=SC2086
        rm_ "$variant" create -d qemu $share --no-progress --guest-image "$image" "bench-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        # A store's first create also imports the image and, with boot snapshots, boots the
        # kernel and takes the snapshot the later ones start from: counted on its own.
        kind=create; [ "$i" = 1 ] && kind=first-create
        record "$variant-$kind" "$(secs "$t0" "$t1")"
        record "$variant-$kind-qemu-cpu" "$(qemu_cpu "$variant")"
        record_timeline "$variant" create
        # The guest's own figure for its device modules ("device modules: … in N ms").
        record "$variant-device-modules-ms" "$(grep -o 'device modules: .* in [0-9]* ms' \
            "$scratch/store-$variant/machines/bench-$variant/console.log" | tail -1 | awk '{print $(NF-1)}')"
        t0=$(now); rm_ "$variant" stop "bench-$variant" >/dev/null; t1=$(now)
        record "$variant-stop" "$(secs "$t0" "$t1")"
        t0=$(now)
        rm_ "$variant" start --no-progress "bench-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-start" "$(secs "$t0" "$t1")"
        record "$variant-start-qemu-cpu" "$(qemu_cpu "$variant")"
        record_timeline "$variant" start
        if [ "$i" = "$runs" ]; then
            pid=$(cat "$scratch/store-$variant/machines/bench-$variant/qemu.pid")
            tck=$(getconf CLK_TCK)
            # utime + stime of the QEMU process, in ticks.
            cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
            c0=$(cpu); t0=$(now)
            sleep "$idle_secs"
            c1=$(cpu); t1=$(now)
            record "$variant-idle-cpu" "$(echo "100 * ($c1 - $c0) / $tck / ($t1 - $t0)" | bc -l | xargs printf '%.2f')"
            rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
            record "$variant-rss-mib" "$((rss_kb / 1024))"
            # Of which anonymous memory (guest RAM, TCG's translation cache, QEMU's heap with
            # the kernel it read for fw_cfg) and file pages (the mapped initramfs, libraries).
            record "$variant-rss-anon-mib" "$(( $(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status") / 1024 ))"
            record "$variant-rss-file-mib" "$(( $(awk '/^RssFile:/ {print $2}' "/proc/$pid/status") / 1024 ))"
            used_kb=$(rm_ "$variant" ssh "bench-$variant" cat /proc/meminfo \
                | awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}')
            record "$variant-guest-used-mib" "$((used_kb / 1024))"
        fi
        (
            eval "$(rm_ "$variant" env --shell bash "bench-$variant")"
            export DOCKER_CONFIG="$scratch/docker-config"
            # A running container, so the state holds what a user's would.
            if [ -x "$fixtures" ]; then
                [ -f "$scratch/busybox.tar" ] || "$fixtures" busybox "$scratch/busybox.tar" >/dev/null
                docker load -i "$scratch/busybox.tar" >/dev/null
                docker run -d --name sleeper busybox sleep 100000 >/dev/null
            fi
        )
        # QEMU cannot save a guest with a mounted virtio-fs share: with one, no save/resume.
        if [ "$share" = --no-share ]; then
            t0=$(now); rm_ "$variant" stop --save "bench-$variant" >/dev/null; t1=$(now)
            record "$variant-save" "$(secs "$t0" "$t1")"
            record "$variant-state-mib" "$(( $(stat -c %s "$scratch/store-$variant/machines/bench-$variant/vmstate.bin") / 1048576 ))"
            t0=$(now)
            rm_ "$variant" start --no-progress "bench-$variant" >/dev/null
            docker_answers "$variant"
            t1=$(now)
            record "$variant-resume" "$(secs "$t0" "$t1")"
        fi
        rm_ "$variant" rm -f -y "bench-$variant" >/dev/null
        echo "run $i $variant: $kind $(echo "${results[$variant-$kind]}" | awk '{print $NF}') s," \
            "stop $(echo "${results[$variant-stop]}" | awk '{print $NF}') s," \
            "start $(echo "${results[$variant-start]}" | awk '{print $NF}') s," \
            "QEMU CPU $kind $(echo "${results[$variant-$kind-qemu-cpu]}" | awk '{print $NF}') s," \
            "start $(echo "${results[$variant-start-qemu-cpu]}" | awk '{print $NF}') s," \
            "save $(echo "${results[$variant-save]:--}" | awk '{print $NF}') s," \
            "resume $(echo "${results[$variant-resume]:--}" | awk '{print $NF}') s"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n| what | old | new | new/old |\n| --- | --- | --- | --- |\n'
# A variant that did not run shows "-" and no ratio.
ratio_or_dash() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else ratio "$1" "$2"; fi; }
for what in first-create first-create-qemu-cpu create create-qemu-cpu device-modules-ms create-vmstarting-ms create-vmrunning-ms \
    create-signal-gap-ms start start-qemu-cpu start-vmrunning-ms start-signal-gap-ms stop save \
    resume; do
    o=-; n=-
    [ -n "${results[old-$what]:-}" ] && o=$(printf '%s\n' ${results[old-$what]} | median)
    [ -n "${results[new-$what]:-}" ] && n=$(printf '%s\n' ${results[new-$what]} | median)
    unit=s; [[ $what == *-ms ]] && unit=ms
    count=$(printf '%s\n' ${results[new-$what]:-${results[old-$what]:-}} | grep -c . || true)
    printf '| %s (median of %s, %s) | %s | %s | %s |\n' "$what" "$count" "$unit" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
for what in idle-cpu rss-mib rss-anon-mib rss-file-mib guest-used-mib; do
    o=${results[old-$what]:- -}; o=${o# }
    n=${results[new-$what]:- -}; n=${n# }
    printf '| %s | %s | %s | %s |\n' "$what" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
for what in state-mib; do
    o=-; n=-
    [ -n "${results[old-$what]:-}" ] && o=$(printf '%s\n' ${results[old-$what]} | median)
    [ -n "${results[new-$what]:-}" ] && n=$(printf '%s\n' ${results[new-$what]} | median)
    printf '| %s (median) | %s | %s | %s |\n' "$what" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
