#!/usr/bin/env bash
# Hunts a boot that never gets ready (docs/boot-timings.md, "the 2-vCPU hang"): ROUNDS rounds of
# two `create --cpus 2 --memory 1024` at once, as the e2e tier runs them, with the TCG CPU model
# `max` or `max,-erms` (a --qemu-program wrapper rewrites `-cpu max`). A create that fails or
# takes longer than LIMIT seconds leaves its console log and five `info registers -a` of the
# running QEMU (each vCPU's RIP: name them with the guest's /proc/kallsyms) in OUT.
#
#   drivers/qemu/benches/hang-loop.sh RMACHINE GUEST_IMAGE ROUNDS max|noerms [LIMIT] [OUT]
# Each variant's results: OUT/VARIANT.log, one line per create (exit status, seconds).
set -u
[ $# -ge 4 ] || { sed -n 2,9p "$0" >&2; exit 2; }
rm_bin=$1; image=$2; rounds=$3; variant=$4; limit=${5:-150}; out=${6:-/tmp/rmachine-hang-loop}
case "$variant" in max|noerms) ;; *) echo "variant: max or noerms" >&2; exit 2;; esac
mkdir -p "$out"
store=$out/store-$variant; mkdir -p "$store"
export RMACHINE_STORAGE_PATH=$store
wrapper=$out/qemu-$variant
# QEMU with the `-cpu` argument `max` rewritten for this variant.
cat > "$wrapper" <<W
#!/bin/sh
cpu=max
[ "$variant" = noerms ] && cpu=max,-erms
for a in "\$@"; do
  case "\$a" in max) a=\$cpu;; esac
  set -- "\$@" "\$a"; shift
done
exec qemu-system-x86_64 "\$@"
W
chmod +x "$wrapper"
log=$out/$variant.log
for r in $(seq "$rounds"); do
  for m in a b; do
    ( start=$(date +%s.%N)
      timeout "$limit" "$rm_bin" create -d qemu --cpus 2 --memory 1024 --guest-image "$image" \
        --qemu-program "$wrapper" "h$variant$r$m" >"$out/out-$variant-$r$m.txt" 2>&1
      rc=$?
      end=$(date +%s.%N)
      echo "round $r $m rc=$rc $(echo "$end - $start" | bc) s" >> "$log"
      if [ $rc != 0 ]; then
        dir=$store/machines/h$variant$r$m
        cp "$dir/console.log" "$out/console-$variant-$r$m.log" 2>/dev/null
        if [ -S "$dir/qmp.sock" ]; then
          python3 - "$dir/qmp.sock" > "$out/regs-$variant-$r$m.txt" 2>&1 <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a} if a else {"execute": c}) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m: return m
f.readline(); cmd("qmp_capabilities")
for _ in range(5):
    print(cmd("human-monitor-command", **{"command-line": "info registers -a"})["return"])
print(cmd("human-monitor-command", **{"command-line": "info cpus"})["return"])
PY
        fi
      fi
      "$rm_bin" rm -f -y "h$variant$r$m" >/dev/null 2>&1 ) &
  done
  wait
done
