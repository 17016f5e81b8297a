#!/usr/bin/env bash
# Builds the rmachine guest image: guest/out/{manifest.json,vmlinuz,initrd.img}.
#
#   guest/build.sh                 # ARCH=x86_64 by default
#   ARCH=x86_64 guest/build.sh
#
# Inputs, all from Debian's package mirror (cached in guest/work/, re-runs reuse them):
#   - the Debian 12 generic kernel (linux-image-<debarch> → linux-image-6.1.0-*-<debarch>): the
#     cloud flavour has no 9p, which host folder shares need; only the modules in MODULES (and
#     their dependencies) are copied, so the larger module tree does not reach the image
#   - busybox-static (one static /bin/busybox plus applet links)
#   - e2fsprogs (mke2fs, e2fsck, tune2fs for the ext4 data disk) with exactly the shared
#     libraries they link (libext2fs2, libcom-err2, libblkid1, libuuid1, libc6) and the loader:
#     Debian builds e2fsprogs only dynamically
# and our static musl binaries (rmachine-init as /init, rmachine-engine).
# Contract of the output: docs/internals.md, "Guest image".
set -euo pipefail

ARCH="${ARCH:-x86_64}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="$(cd "$HERE/.." && pwd)"
WORK="$HERE/work/$ARCH"
OUT="${OUT:-$HERE/out}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WORKSPACE/target}"

case "$ARCH" in
  x86_64)
    DEB_ARCH=amd64
    MULTIARCH=x86_64-linux-gnu
    RUST_TARGET=x86_64-unknown-linux-musl
    # ring's C parts need a musl C compiler (Debian's musl-tools).
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
    ;;
  aarch64)
    # TODO(aarch64): untested. Needs `dpkg --add-architecture arm64 && apt-get update` so that
    # `apt-get download pkg:arm64` works, the rust target `aarch64-unknown-linux-musl`
    # (linked with rust-lld) and a C cross compiler for ring (e.g. clang --target=aarch64-linux-musl).
    DEB_ARCH=arm64
    MULTIARCH=aarch64-linux-gnu
    RUST_TARGET=aarch64-unknown-linux-musl
    ;;
  *)
    echo "build.sh: unsupported ARCH=$ARCH (x86_64 or aarch64)" >&2
    exit 2
    ;;
esac

# Modules the guest loads at boot, by module name; depmod's modules.dep adds their dependencies.
MODULES=(
  # devices: virtio over PCI (pc/q35) and MMIO (microvm), disks, NIC, entropy, console, scsi
  virtio_pci virtio_mmio virtio_blk virtio_net virtio_rng virtio_console virtio_scsi
  # the data disk's filesystem (built in in the cloud kernel, a module in the generic one);
  # crc32c is looked up by name (metadata checksums, libcrc32c), not a symbol dependency
  ext4 crc32c_generic
  # ACPI power button → input event device (clean shutdown on QMP system_powerdown)
  button evdev
  # containers: overlay rootfs, veth pairs, bridge, NAT and filtering for published ports
  overlay veth bridge br_netfilter tun
  nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_compat nft_reject_inet
  ip_tables iptable_nat iptable_filter iptable_mangle iptable_raw
  nf_nat nf_conntrack xt_MASQUERADE xt_conntrack xt_addrtype xt_nat xt_tcpudp
  xt_comment xt_mark xt_multiport
  # host folder shares (QEMU virtio-9p, virtio-fs with virtiofsd): docs/internals.md, "Shares"
  9p 9pnet 9pnet_virtio netfs virtiofs
)

log() { printf 'build.sh: %s\n' "$*" >&2; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    log "missing tools: ${missing[*]} (apt-get install cpio zstd kmod jq musl-tools binutils)"
    exit 1
  fi
}
need apt-get apt-cache dpkg-deb cpio zstd depmod sha256sum cargo jq readelf

mkdir -p "$WORK/debs" "$OUT"

# --- 1. Debian packages (cached) ----------------------------------------------------------
# Downloads PKG into $WORK/debs unless a .deb of it is already there; prints its path.
fetch_deb() {
  local pkg="$1" deb
  deb="$(ls "$WORK"/debs/"${pkg}"_*_"${DEB_ARCH}".deb 2>/dev/null | head -n1 || true)"
  if [[ -z "$deb" ]]; then
    log "downloading $pkg ($DEB_ARCH)"
    local spec="$pkg"
    [[ "$DEB_ARCH" != "$(dpkg --print-architecture)" ]] && spec="$pkg:$DEB_ARCH"
    (cd "$WORK/debs" && apt-get download -q "$spec" >&2)
    deb="$(ls "$WORK"/debs/"${pkg}"_*_"${DEB_ARCH}".deb | head -n1)"
  fi
  printf '%s\n' "$deb"
}

# The metapackage names the real versioned kernel package; resolve it once and remember it,
# so that a re-run does not depend on the mirror (offline rebuilds reuse the cache).
if [[ -s "$WORK/kernel-package" && "$(cat "$WORK/kernel-package")" != *-cloud-* ]]; then
  KPKG="$(cat "$WORK/kernel-package")"
else
  KPKG="$(apt-cache depends "linux-image-$DEB_ARCH" \
    | sed -n "s/^ *Depends: \(linux-image-[0-9.]*-[0-9]*-$DEB_ARCH\)$/\1/p" | head -n1)"
  if [[ -z "$KPKG" ]]; then
    log "cannot resolve linux-image-$DEB_ARCH (run apt-get update)"
    exit 1
  fi
  echo "$KPKG" >"$WORK/kernel-package"
fi
KVER="${KPKG#linux-image-}"
KDEB="$(fetch_deb "$KPKG")"
BBDEB="$(fetch_deb busybox-static)"
# e2fsprogs and the packages holding the libraries its programs link; which files of them are
# shipped is decided below from the ELF headers (DT_NEEDED, PT_INTERP), not from this list.
# nftables (nft, the engine's NAT: crates/engine/src/network/nat.rs) is shipped the same way.
E2FS_PACKAGES=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libc6
               nftables libnftables1 libedit2 libmnl0 libnftnl11 libxtables12 libjansson4
               libgmp10 libtinfo6 libbsd0 libmd0)
E2FS_DEBS=()
for pkg in "${E2FS_PACKAGES[@]}"; do E2FS_DEBS+=("$(fetch_deb "$pkg")"); done

if [[ ! -d "$WORK/kernel/lib/modules/$KVER" ]]; then
  log "unpacking $KPKG"
  rm -rf "$WORK/kernel"
  dpkg-deb -x "$KDEB" "$WORK/kernel"
  # The .deb ships no modules.dep: compute it on the full tree once.
  depmod -b "$WORK/kernel" "$KVER"
fi
if [[ ! -x "$WORK/busybox/bin/busybox" ]]; then
  rm -rf "$WORK/busybox"
  dpkg-deb -x "$BBDEB" "$WORK/busybox"
fi
E2FS="$WORK/e2fsprogs"
if [[ ! -x "$E2FS/sbin/e2fsck" || ! -x "$E2FS/usr/sbin/nft" ]]; then
  rm -rf "$E2FS"
  for deb in "${E2FS_DEBS[@]}"; do dpkg-deb -x "$deb" "$E2FS"; done
fi
if ! grep -q '^CONFIG_RD_ZSTD=y' "$WORK/kernel/boot/config-$KVER"; then
  log "kernel $KVER cannot unpack a zstd initramfs"
  exit 1
fi

# --- 2. Static binaries ----------------------------------------------------------------------
log "building static binaries for $RUST_TARGET"
BINS=(rmachine-init)
if (cd "$WORKSPACE" && cargo build --release --target "$RUST_TARGET" \
  -p rmachine-init -p rmachine-engine >&2); then
  BINS+=(rmachine-engine)
else
  # The engine is optional for a guest build: without it the guest still boots with SSH.
  log "WARNING: rmachine-engine did not build; building the image without it"
  (cd "$WORKSPACE" && cargo build --release --target "$RUST_TARGET" -p rmachine-init >&2)
fi
BIN_DIR="$CARGO_TARGET_DIR/$RUST_TARGET/release"

# --- 3. Root filesystem ----------------------------------------------------------------------
ROOT="$WORK/root"
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,tmp,root,mnt/data,var/lib,var/run}
mkdir -p "$ROOT"/{lib/modules,usr/share/udhcpc}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"

install -m 0755 "$BIN_DIR/rmachine-init" "$ROOT/init"
if [[ " ${BINS[*]} " == *" rmachine-engine "* ]]; then
  install -m 0755 "$BIN_DIR/rmachine-engine" "$ROOT/usr/bin/rmachine-engine"
fi
# rmachine-init is a multi-call binary: argv0 rmachine-runtime runs the container runtime.
ln -s /init "$ROOT/usr/bin/rmachine-runtime"
ln -s /init "$ROOT/usr/bin/rmachine-init"

# e2fsprogs, before the busybox links: busybox's own mke2fs/tune2fs (ext2 only) must not win.
# The data disk is ext4 with a journal (crates/init/src/disk.rs); /etc/mtab lets e2fsck see
# whether the disk is mounted.
E2FS_PROGS=(mke2fs e2fsck tune2fs)
for prog in "${E2FS_PROGS[@]}"; do install -m 0755 "$E2FS/sbin/$prog" "$ROOT/sbin/$prog"; done
ln -s mke2fs "$ROOT/sbin/mkfs.ext4"
ln -s e2fsck "$ROOT/sbin/fsck.ext4"
install -m 0644 "$E2FS/etc/mke2fs.conf" "$ROOT/etc/mke2fs.conf"
ln -s /proc/self/mounts "$ROOT/etc/mtab"
# The libraries they need, transitively, found in the unpacked packages: a library missing
# from E2FS_PACKAGES fails the build here rather than the guest at boot.
e2fs_lib() {
  local name="$1" dir
  for dir in "lib/$MULTIARCH" "usr/lib/$MULTIARCH"; do
    if [[ -e "$E2FS/$dir/$name" ]]; then
      printf '%s\n' "$E2FS/$dir/$name"
      return
    fi
  done
  log "e2fsprogs: no $name in ${E2FS_PACKAGES[*]}"
  exit 1
}
declare -A e2fs_done=()
install -m 0755 "$E2FS/usr/sbin/nft" "$ROOT/usr/sbin/nft"
e2fs_queue=("${E2FS_PROGS[@]/#/$ROOT/sbin/}" "$ROOT/usr/sbin/nft")
while ((${#e2fs_queue[@]})); do
  elf="${e2fs_queue[0]}"
  e2fs_queue=("${e2fs_queue[@]:1}")
  while read -r needed; do
    [[ -n "${e2fs_done[$needed]:-}" ]] && continue
    e2fs_done[$needed]=1
    lib="$(e2fs_lib "$needed")"
    install -D -m 0755 "$(readlink -f "$lib")" "$ROOT/lib/$MULTIARCH/$needed"
    e2fs_queue+=("$ROOT/lib/$MULTIARCH/$needed")
  done < <(readelf -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
done
# The dynamic loader: with the libraries (libc names it), and at the path the programs name
# (PT_INTERP) as a link to it, as Debian lays it out.
INTERP="$(readelf -l "$ROOT/sbin/e2fsck" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')"
if [[ -z "$INTERP" ]]; then
  log "e2fsprogs: e2fsck names no program interpreter"
  exit 1
fi
LOADER="/lib/$MULTIARCH/$(basename "$INTERP")"
if [[ -z "${e2fs_done[$(basename "$INTERP")]:-}" ]]; then
  install -D -m 0755 "$(readlink -f "$(e2fs_lib "$(basename "$INTERP")")")" "$ROOT$LOADER"
fi
if [[ "$INTERP" != "$LOADER" ]]; then
  mkdir -p "$ROOT/$(dirname "$INTERP")"
  ln -s "$LOADER" "$ROOT$INTERP"
fi
log "e2fsprogs: ${E2FS_PROGS[*]} + ${!e2fs_done[*]}, $(du -ck "$ROOT"/sbin/{mke2fs,e2fsck,tune2fs} "$ROOT/lib/$MULTIARCH" | tail -1 | cut -f1) KiB"

install -m 0755 "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
# Applet links; never shadow our own binaries (busybox has an `init` applet of its own).
while read -r applet; do
  case "$applet" in
    */init | linuxrc | '') continue ;;
  esac
  [[ -e "$ROOT/$applet" || -L "$ROOT/$applet" ]] && continue
  mkdir -p "$ROOT/$(dirname "$applet")"
  ln -s /bin/busybox "$ROOT/$applet"
done < <("$ROOT/bin/busybox" --list-full)

# /etc skeleton
VERSION_BASE="$(cd "$WORKSPACE" && cargo metadata --no-deps --format-version 1 \
  | jq -r '.packages[] | select(.name == "rmachine-init") | .version')"
cat >"$ROOT/etc/os-release" <<EOF
NAME="rmachine"
ID=rmachine
VERSION_ID=$VERSION_BASE
PRETTY_NAME="rmachine guest $VERSION_BASE"
HOME_URL="https://example.invalid/rmachine"
EOF
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
docker:x:999:
nogroup:x:65534:
EOF
printf 'root:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"
chmod 0600 "$ROOT/etc/shadow"
printf 'rmachine\n' >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\u@\h:\w\$ '
EOF
printf '/bin/sh\n/bin/ash\n' >"$ROOT/etc/shells"
cat >"$ROOT/etc/nsswitch.conf" <<'EOF'
hosts: files dns
EOF
# The udhcpc script is rendered by rmachine-init (crates/init/src/net.rs) so that the
# program and the image cannot disagree about it.
"$BIN_DIR/rmachine-init" udhcpc-script >"$ROOT/etc/udhcpc.script"
chmod 0755 "$ROOT/etc/udhcpc.script"

# Kernel modules: the closure of $MODULES over the full tree's modules.dep.
MODDIR="$WORK/kernel/lib/modules/$KVER"
mkdir -p "$ROOT/lib/modules/$KVER"
declare -A want=()
for m in "${MODULES[@]}"; do
  # modules.dep names files; module names treat '-' and '_' alike (virtio_rng → virtio-rng.ko).
  pattern="${m//_/[-_]}"
  line="$(grep -E "(^|/)${pattern}\.ko:" "$MODDIR/modules.dep" || true)"
  if [[ -z "$line" ]]; then
    if grep -qE "(^|/)${pattern}\.ko$" "$MODDIR/modules.builtin"; then
      continue
    fi
    log "module $m is neither in modules.dep nor built in"
    exit 1
  fi
  for path in ${line/:/}; do want["$path"]=1; done
done
for path in "${!want[@]}"; do
  mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$path")"
  cp "$MODDIR/$path" "$ROOT/lib/modules/$KVER/$path"
done
cp "$MODDIR"/modules.{builtin,builtin.modinfo,order} "$ROOT/lib/modules/$KVER/"
depmod -b "$ROOT" "$KVER"
# Only modules.dep (and what modprobe reads for built-ins) is needed at run time.
find "$ROOT/lib/modules/$KVER" -maxdepth 1 -name 'modules.*' \
  ! -name modules.dep ! -name modules.builtin ! -name modules.order ! -name modules.alias \
  -delete
MOD_COUNT="${#want[@]}"
MOD_SIZE="$(du -sk "$ROOT/lib/modules" | cut -f1)"
log "modules: $MOD_COUNT files, ${MOD_SIZE} KiB"

# --- 4. Initramfs (cpio newc, zstd) ----------------------------------------------------------
# Deterministic archive: sorted names, clamped times, root ownership.
find "$ROOT" -exec touch -h -d @0 {} +
INITRD_TMP="$WORK/initrd.img.tmp"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort \
  | cpio --quiet -o -H newc --owner 0:0 --reproducible) \
  | zstd -q -19 -T0 -f -o "$INITRD_TMP"

# --- 5. Output + manifest --------------------------------------------------------------------
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv -f "$INITRD_TMP" "$OUT/initrd.img"
SHA_KERNEL="$(sha256sum "$OUT/vmlinuz" | cut -d' ' -f1)"
SHA_INITRD="$(sha256sum "$OUT/initrd.img" | cut -d' ' -f1)"
HASH="$(printf '%s %s' "$SHA_KERNEL" "$SHA_INITRD" | sha256sum | cut -c1-8)"
VERSION="$VERSION_BASE-$HASH"
# console: serial log (ttyS0 → console.log); quiet: only our lines; panic=-1: a kernel panic
# reboots at once instead of hanging.
CMDLINE="console=ttyS0 quiet panic=-1"

jq -n \
  --arg version "$VERSION" --arg arch "$ARCH" --arg cmdline "$CMDLINE" \
  --arg kver "$KVER" --arg k "$SHA_KERNEL" --arg i "$SHA_INITRD" \
  '{version: $version, arch: $arch, kernel: "vmlinuz", initrd: "initrd.img",
    cmdline: $cmdline, kernelVersion: $kver,
    sha256: {vmlinuz: $k, "initrd.img": $i}}' >"$OUT/manifest.json.tmp"
mv -f "$OUT/manifest.json.tmp" "$OUT/manifest.json"

log "guest $VERSION ($ARCH, kernel $KVER)"
log "  vmlinuz    $(du -h "$OUT/vmlinuz" | cut -f1)"
log "  initrd.img $(du -h "$OUT/initrd.img" | cut -f1) (unpacked $(du -sh "$ROOT" | cut -f1))"
log "  manifest   $OUT/manifest.json"
