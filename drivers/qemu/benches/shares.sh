#!/usr/bin/env bash
# Host folder shares vs the machine's own disk, side by side in one run: virtio-fs, virtio-9p,
# SFTP over the machine's SSH connection (`--qemu-share-transport sftp`) and the data disk, each with 10,000 small files created (one tar extraction), a `find` over
# them, a 256 MB sequential write (with fsync) and read (after dropping the guest's caches).
#
#   drivers/qemu/benches/shares.sh        # needs guest/build.sh's image and target/debug/rmachine
#   TRANSPORTS="sftp" drivers/qemu/benches/shares.sh   # some of them (default: virtiofs 9p sftp)
#
# Three machines are made in a private store (one per share transport), each removed after its
# run;
# every figure is wall-clock seconds measured inside the guest (/proc/uptime, 10 ms steps:
# busybox `date` has no %N), so SSH's own cost is not counted (for SFTP the share's traffic
# itself rides SSH, and is counted). About 10 minutes under TCG. Results: docs/benchmarks.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
RMACHINE="${RMACHINE:-$ROOT/target/debug/rmachine}"
IMAGE="${GUEST_IMAGE:-$ROOT/guest/out}"
WORK="$(mktemp -d /tmp/rmachine-bench-shares.XXXXXX)"
export RMACHINE_STORAGE_PATH="$WORK/store"
export DOCKER_CONFIG="$WORK/docker"
SHARE="$WORK/share"
mkdir -p "$SHARE"
machines=()
cleanup() {
  for m in "${machines[@]}"; do "$RMACHINE" rm -f "$m" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# One script, run in the guest against a folder: prints "create find write read" in seconds.
GUEST_SCRIPT='
set -e
dir="$1"
t() { cut -d" " -f1 /proc/uptime; }
mkdir -p /mnt/data/bench-src && cd /mnt/data/bench-src
if [ ! -f tree.tar ]; then
  mkdir -p tree
  i=0
  while [ $i -lt 100 ]; do
    mkdir -p tree/d$i
    j=0
    while [ $j -lt 100 ]; do echo "file $i $j" > tree/d$i/f$j; j=$((j + 1)); done
    i=$((i + 1))
  done
  tar cf tree.tar tree && rm -rf tree
fi
rm -rf "$dir/bench" && mkdir -p "$dir/bench"
a=$(t); tar xf /mnt/data/bench-src/tree.tar -C "$dir/bench"; sync; b=$(t)
n=$(find "$dir/bench" -type f | wc -l); c=$(t)
[ "$n" = 10000 ] || { echo "found $n files" >&2; exit 1; }
dd if=/dev/zero of="$dir/bench/big" bs=1M count=256 conv=fsync 2>/dev/null; d=$(t)
echo 3 > /proc/sys/vm/drop_caches
dd if="$dir/bench/big" of=/dev/null bs=1M 2>/dev/null; e=$(t)
rm -rf "$dir/bench"
echo "$a $b $c $d $e" | awk "{printf \"%.2f %.2f %.2f %.2f\n\", \$2-\$1, \$3-\$2, \$4-\$3, \$5-\$4}"
'

run_in() { # machine folder
  "$RMACHINE" ssh "$1" "sh -c '$GUEST_SCRIPT' bench '$2'"
}

printf '%-10s %10s %10s %10s %10s\n' where "create(s)" "find(s)" "write(s)" "read(s)"
# The SFTP share is mounted by the host's port agent after `create` returns.
wait_mounted() { # machine folder
  for _ in $(seq 120); do
    if "$RMACHINE" ssh "$1" "grep -q ' $2 ' /proc/mounts" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "machine $1 never mounted $2" >&2
  exit 1
}

list=${TRANSPORTS:-virtiofs 9p sftp}
for transport in $list; do
  name="bench-$transport"
  extra=()
  [ "$transport" != virtiofs ] && extra=(--qemu-share-transport "$transport")
  "$RMACHINE" create -d qemu --no-progress --guest-image "$IMAGE" --share "$SHARE" \
    "${extra[@]}" "$name" >/dev/null
  machines+=("$name")
  got="$("$RMACHINE" inspect --format '{{range .Vm.shares}}{{.transport}}{{end}}' "$name")"
  [ "$got" = "$transport" ] || { echo "machine $name shares over $got, not $transport" >&2; exit 1; }
  wait_mounted "$name" "$SHARE"
  printf '%-10s %10s %10s %10s %10s\n' "$transport" $(run_in "$name" "$SHARE")
  # The machine's own disk, in the first machine of the run.
  if [ "$transport" = "${list%% *}" ]; then
    printf '%-10s %10s %10s %10s %10s\n' "data disk" $(run_in "$name" /mnt/data)
  fi
  "$RMACHINE" rm -f "$name" >/dev/null
  machines=()
done
