#!/usr/bin/env python3
"""A sampling profile of a guest's boot under TCG: which kernel functions the vCPU is in.

Boots QEMU by hand as preclock.py does (a machine's own argv, `-S`, drives `snapshot=on`),
then asks QMP `info registers` for RIP as fast as it answers (1-3 kHz here; each question
briefly takes QEMU's main lock, so the boot runs a little slower) until `InitStarted` or
SECONDS (or until the console shows the stage UNTIL names: `UNTIL=TlsListening` profiles
the whole boot), and names each RIP from the guest's symbol table. The Debian image ships no real
System.map: read `/proc/kallsyms` from a running machine of the same image (`rmachine ssh M
cat /proc/kallsyms > kallsyms`); the kernel entered through PVH is not relocated, so its
addresses hold for every boot. Addresses below the kernel's are user space (`user`).

Usage: guest-profile.py ARGV_FILE KALLSYMS [SECONDS [FROM TO]]
  FROM TO   only count samples between these seconds since `cont` (default: all)
Environment: APPEND, NOQUIET, EXTRA as for preclock.py; UNTIL (default InitStarted).
Prints the 30 most sampled functions, then the 3 most sampled per 50 ms.
"""
import bisect
import collections
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("preclock", os.path.join(HERE, "preclock.py"))
preclock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(preclock)


def symbols(path):
    table = []
    for line in open(path):
        fields = line.split()
        if len(fields) >= 3 and fields[1] in "tTwW":
            table.append((int(fields[0], 16), fields[2]))
    table.sort()
    return [a for a, _ in table], [n for _, n in table]


def sample(argv, seconds):
    samples, console, stages = [], b"", []
    with tempfile.TemporaryDirectory(prefix="guest-profile.") as scratch:
        qemu, chan = preclock.start_paused(argv, scratch)
        try:
            chan.write('{"execute":"cont"}\n')
            chan.flush()
            os.set_blocking(qemu.stdout.fileno(), False)
            cont = time.monotonic()
            question = '{"execute":"human-monitor-command","arguments":' \
                '{"command-line":"info registers"}}\n'
            until = os.environ.get("UNTIL", "InitStarted").encode()
            while time.monotonic() - cont < seconds and until not in console:
                chan.write(question)
                chan.flush()
                while True:
                    answer = json.loads(chan.readline())
                    # Skips events and the earlier commands' empty answers.
                    if isinstance(answer.get("return"), str):
                        break
                found = re.search(r"RIP=([0-9a-f]+)", answer["return"])
                if found:
                    samples.append((time.monotonic() - cont, int(found.group(1), 16)))
                try:
                    chunk = os.read(qemu.stdout.fileno(), 65536)
                except BlockingIOError:
                    chunk = b""
                now = time.monotonic() - cont
                for found in re.finditer(rb'"Stage":"(\w+)"', console[-64:] + chunk):
                    if found.group(1).decode() not in (name for _, name in stages):
                        stages.append((now, found.group(1).decode()))
                console += chunk
        finally:
            qemu.kill()
            qemu.wait()
    return samples, stages


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    argv = [a for a in open(sys.argv[1]).read().split("\n") if a]
    addrs, names = symbols(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    lo, hi = (float(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 5 else (0.0, seconds)

    def name(ip):
        i = bisect.bisect_right(addrs, ip) - 1
        return names[i] if ip >= 0xffffffff80000000 and i >= 0 else "user"

    samples, stages = sample(argv, seconds)
    print("stages (host ms since cont, when read): " +
          ", ".join(f"{name} {1000 * t:.0f}" for t, name in stages))
    counted = collections.Counter(name(ip) for t, ip in samples if lo <= t < hi)
    total = sum(counted.values()) or 1
    print(f"{len(samples)} samples, {total} between {lo} and {hi} s")
    for fn, n in counted.most_common(30):
        print(f"{n:6d} {100 * n / total:5.1f}% {fn}")
    buckets = collections.defaultdict(collections.Counter)
    for t, ip in samples:
        buckets[int(t * 20)][name(ip)] += 1
    for b in sorted(buckets):
        print(f"{50 * b:6d} ms  " + ", ".join(f"{k} {v}" for k, v in buckets[b].most_common(3)))


if __name__ == "__main__":
    main()
