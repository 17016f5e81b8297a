#!/usr/bin/env bash
# Command-level tests of the Windows build of rmachine (x86_64-pc-windows-gnu), run under Wine:
# `env --shell powershell|cmd`, `ls`, the store under %APPDATA%, and the QEMU command line the
# driver chooses on Windows (whpx, q35, QMP over TCP), seen through a stand-in QEMU
# (fake-qemu.c) that records its arguments. Needs what .ci/setup installs (mingw-w64, wine64,
# the rustup target) and `cargo build --target x86_64-pc-windows-gnu -p rmachine [--profile NAME]`
# first (CI builds it with the `portable` profile).
#
#   tests/windows/run.sh [--profile NAME]   (the build's profile; dev by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
usage() { echo "usage: tests/windows/run.sh [--profile NAME]" >&2; exit 2; }
profile_dir=debug
case "$#:${1:-}" in
  0:) ;;
  2:--profile)
    [ -n "$2" ] || usage
    # cargo's directory for a profile: dev and test build into debug/, release and bench into
    # release/, a custom profile into its own name.
    case "$2" in
      dev|test) profile_dir=debug ;;
      release|bench) profile_dir=release ;;
      *) profile_dir=$2 ;;
    esac ;;
  *) usage ;;
esac
exe="$(realpath -m "${CARGO_TARGET_DIR:-target}")/x86_64-pc-windows-gnu/$profile_dir/rmachine.exe"
[ -f "$exe" ] || { echo "windows tests: $exe is missing; build it first" >&2; exit 1; }
WINE="$(command -v wine64 || echo /usr/lib/wine/wine64)"
[ -x "$WINE" ] || { echo "windows tests: wine64 is missing (.ci/setup installs it)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'wineserver -k >/dev/null 2>&1 || /usr/lib/wine/wineserver -k >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# bcryptprimitives=n: the DLL built below, not Wine's (Wine 8 has none).
export WINEPREFIX="$work/prefix" WINEDEBUG=-all DISPLAY= \
  WINEDLLOVERRIDES="mscoree,mshtml=;bcryptprimitives=n"
unset RMACHINE_STORAGE_PATH RMACHINE_GUEST_IMAGE RMACHINE_DRIVER DOCKER_HOST SHELL
failures=0

# Runs rmachine.exe; stdout without Windows line ends into $work/out, stderr into $work/err,
# the exit status into $code.
win() {
  code=0
  "$WINE" "$exe" "$@" >"$work/out.raw" 2>"$work/err.raw" || code=$?
  tr -d '\r' <"$work/out.raw" >"$work/out"
  tr -d '\r' <"$work/err.raw" >"$work/err"
}
# expect NAME EXPECTED-FILE ACTUAL-FILE
expect() {
  if diff -u "$2" "$3" >"$work/diff"; then
    echo "ok: $1"
  else
    echo "FAILED: $1"; cat "$work/diff"; echo "stderr:"; cat "$work/err"
    failures=$((failures + 1))
  fi
}

x86_64-w64-mingw32-gcc -O1 -o "$work/fake-qemu.exe" tests/windows/fake-qemu.c
"$WINE" wineboot -i >/dev/null 2>&1 || true
x86_64-w64-mingw32-gcc -O1 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  tests/windows/bcryptprimitives.c -ladvapi32

# env -u: docker-machine's PowerShell and cmd syntax; Windows also unsets
# COMPOSE_CONVERT_WINDOWS_PATHS.
win env -u --shell powershell
cat >"$work/want" <<'OUT'
Remove-Item Env:\\DOCKER_TLS_VERIFY
Remove-Item Env:\\DOCKER_HOST
Remove-Item Env:\\DOCKER_CERT_PATH
Remove-Item Env:\\DOCKER_MACHINE_NAME
Remove-Item Env:\\COMPOSE_CONVERT_WINDOWS_PATHS
Remove-Item Env:\\DOCKER_BUILDKIT
OUT
grep -v '^#' "$work/out" >"$work/got"
expect "env -u --shell powershell" "$work/want" "$work/got"

win env -u --shell cmd
cat >"$work/want" <<'OUT'
SET DOCKER_TLS_VERIFY=
SET DOCKER_HOST=
SET DOCKER_CERT_PATH=
SET DOCKER_MACHINE_NAME=
SET COMPOSE_CONVERT_WINDOWS_PATHS=
SET DOCKER_BUILDKIT=
OUT
grep -v '^REM' "$work/out" >"$work/got"
expect "env -u --shell cmd" "$work/want" "$work/got"

win ls
printf 'NAME   ACTIVE   DRIVER   STATE   URL   SWARM   DOCKER   ERRORS\n' >"$work/want"
expect "ls on an empty store" "$work/want" "$work/out"

# create with the stand-in QEMU: the store lands under %APPDATA%, the driver picks whpx/q35
# and QMP over TCP, QEMU "fails", and the half-made machine is removed.
image="$work/image"
mkdir -p "$image"
printf kernel >"$image/vmlinuz"
printf initrd >"$image/initrd.img"
jq -n --arg k "$(sha256sum "$image/vmlinuz" | cut -d' ' -f1)" \
      --arg i "$(sha256sum "$image/initrd.img" | cut -d' ' -f1)" \
  '{version: "w1", arch: "x86_64", kernel: "vmlinuz", initrd: "initrd.img", cmdline: "console=ttyS0",
    sha256: {vmlinuz: $k, "initrd.img": $i}}' >"$image/manifest.json"
fake="Z:${work//\//\\}\\fake-qemu.exe"
wimage="Z:${image//\//\\}"
export FAKE_QEMU_LOG="Z:${work//\//\\}\\qemu.args"
win create --no-progress --guest-image "$wimage" --qemu-program "$fake" --qemu-img "$fake" \
    --qemu-accel whpx --no-share w1
appdata='C:\users\'"$(id -un)"'\AppData\Roaming\rmachine\data'
if [ "$code" = 1 ] && grep -qxF "Creating CA: $appdata\\certs\\ca.pem" "$work/out"; then
  echo "ok: the store is under %APPDATA% ($appdata)"
else
  echo "FAILED: create (exit $code) did not make the CA under $appdata"; cat "$work/out" "$work/err"
  failures=$((failures + 1))
fi
# The last recorded command line is the VM's; one option and its value a line.
tr -d '\r' <"$work/qemu.args" | awk 'BEGIN { RS = "--\n" } { last = $0 } END { printf "%s", last }' \
  | paste -sd' ' >"$work/cmdline"
for want in "-accel whpx" "-machine q35" "-qmp tcp:127.0.0.1:" "-kernel $appdata\\cache\\guest\\w1-x86_64\\vmlinuz" \
            "-nodefaults" ; do
  if grep -qF -- "$want" "$work/cmdline"; then
    echo "ok: QEMU command line has $want"
  else
    echo "FAILED: QEMU command line lacks $want: $(cat "$work/cmdline")"; failures=$((failures + 1))
  fi
done
if grep -qF -- "-daemonize" "$work/cmdline"; then
  echo "FAILED: QEMU for Windows cannot -daemonize: $(cat "$work/cmdline")"; failures=$((failures + 1))
fi
win ls -q
: >"$work/want"
expect "the failed create left no machine" "$work/want" "$work/out"

[ "$failures" = 0 ] || { echo "windows tests: $failures failed" >&2; exit 1; }
echo "windows tests: all passed"
