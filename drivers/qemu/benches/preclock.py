#!/usr/bin/env python3
"""Where the time between QEMU's `cont` and the guest's clock goes (docs/boot-timings.md).

Runs QEMU by hand with a machine's own argv (one argument per line, e.g.
`tr '\\0' '\\n' < /proc/$(cat MACHINE_DIR/qemu.pid)/cmdline > argv.txt` while it runs, then
`rmachine stop`), started with `-S`, its drives with `snapshot=on` (the machine's disks are not
written), the clock port on a null chardev and the serial console on a pipe. It times QMP `cont`
and stamps every console line with the host's milliseconds since `cont`, then kills QEMU at the
`InitStarted` line (or at "Run /init" when the console is not quiet).

Usage: preclock.py ARGV_FILE [RUNS]
Environment:
  APPEND   extra kernel command-line options (e.g. `earlyprintk=serial,ttyS0,115200`)
  NOQUIET  set: drop `quiet` (every kernel line is stamped; slower boot)
  EXTRA    extra QEMU arguments (e.g. `-trace fw_cfg_select -msg timestamp=on`)
  LOG      where the stamped console of the last run goes (default: none)
Prints per run, in ms since `cont`: the first console byte, the host arrival of `InitStarted`
and its guest ms (their difference is what the guest's CLOCK_BOOTTIME did not count), for a
non-quiet console the first line with a running clock and the longest stretch of lines whose
printk stamp stood still, and QEMU's CPU time (user + sys) up to that point.
"""
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time


def qemu_args(argv, scratch):
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-daemonize":
            i += 1
        elif a in ("-pidfile", "-serial", "-qmp"):
            i += 2
        elif a == "-append":
            line = argv[i + 1]
            if os.environ.get("NOQUIET"):
                line = " ".join(w for w in line.split() if w != "quiet")
            out += [a, (line + " " + os.environ.get("APPEND", "")).strip()]
            i += 2
        elif a == "-drive":
            out += [a, argv[i + 1] + ",snapshot=on"]
            i += 2
        elif a == "-chardev" and argv[i + 1].startswith("pipe,"):
            out += [a, "null," + ",".join(p for p in argv[i + 1].split(",") if p.startswith("id="))]
            i += 2
        else:
            out.append(a)
            i += 1
    qmp = os.path.join(scratch, "qmp.sock")
    return out + ["-S", "-serial", "stdio", "-qmp", f"unix:{qmp},server=on,wait=off"] + \
        os.environ.get("EXTRA", "").split(), qmp


def start_paused(argv, scratch):
    """Starts QEMU with `qemu_args` and returns it with its QMP channel, capabilities
    negotiated, the guest not yet running (the caller sends `cont`)."""
    args, qmp = qemu_args(argv, scratch)
    qemu = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=open(os.path.join(scratch, "qemu.err"), "w"))
    deadline = time.monotonic() + 10
    while not os.path.exists(qmp):
        if qemu.poll() is not None or time.monotonic() > deadline:
            qemu.kill()
            sys.exit(open(os.path.join(scratch, "qemu.err")).read() or "no QMP socket")
        time.sleep(0.002)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(qmp)
    chan = sock.makefile("rw")
    chan.readline()
    chan.write('{"execute":"qmp_capabilities"}\n')
    chan.flush()
    chan.readline()
    return qemu, chan


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(argv):
    with tempfile.TemporaryDirectory(prefix="preclock.") as scratch:
        qemu, chan = start_paused(argv, scratch)
        try:
            chan.write('{"execute":"cont"}\n')
            chan.flush()
            cont = time.monotonic()
            print(f"cont at {time.time():.6f} (wall clock, for -trace stamps)", file=sys.stderr)
            buf, lines, first = b"", [], None
            done = False
            while not done and time.monotonic() < cont + 30:
                ready, _, _ = select.select([qemu.stdout], [], [], 0.5)
                if not ready:
                    continue
                data = os.read(qemu.stdout.fileno(), 65536)
                if not data:
                    break
                now = time.monotonic()
                first = first or now
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace").rstrip("\r")
                    lines.append((round(1000 * (now - cont)), text))
                    done = done or "InitStarted" in text or \
                        (os.environ.get("NOQUIET") and "Run /init" in text)
            cpu = cpu_seconds(qemu.pid)
        finally:
            qemu.kill()
            qemu.wait()
    result = {"first_byte_ms": round(1000 * (first - cont)) if first else None, "qemu_cpu_s": cpu}
    stamped = []
    for host_ms, text in lines:
        m = re.search(r'"InitStarted","Ms":(\d+)', text)
        if m:
            result.update(init_arrival_ms=host_ms, init_guest_ms=int(m.group(1)),
                          uncounted_ms=host_ms - int(m.group(1)))
        m = re.match(r"\[\s*(\d+\.\d+)\]", text)
        if m:
            stamped.append((host_ms, float(m.group(1))))
    running = [h for h, t in stamped if t > 0]
    if os.environ.get("NOQUIET") and running:
        result["first_running_stamp_ms"] = running[0]
        longest, i = (0, None), 0
        while i < len(stamped):
            j = i
            while j + 1 < len(stamped) and stamped[j + 1][1] == stamped[i][1]:
                j += 1
            span = stamped[j][0] - stamped[i][0]
            if stamped[i][1] > 0 and span > longest[0]:
                longest = (span, stamped[i][0])
            i = j + 1
        result["clock_stood_ms"], result["clock_stood_from_ms"] = longest
    if os.environ.get("LOG"):
        with open(os.environ["LOG"], "w") as log:
            log.writelines(f"{h:7d} {t}\n" for h, t in lines)
    return result


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    argv = [a for a in open(sys.argv[1]).read().split("\n") if a]
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
        print(json.dumps(one_run(argv)), flush=True)


if __name__ == "__main__":
    main()
