#!/usr/bin/env bash
# Builds the rmachine guest image: guest/out/{manifest.json,vmlinuz,initrd.img,rmachine.iso} for
# x86_64, guest/out-aarch64/ (no ISO) for the arm64 guest (Apple Silicon hosts; QEMU `virt`).
#
#   guest/build.sh                 # ARCH=x86_64 by default
#   ARCH=x86_64 guest/build.sh
#   ARCH=aarch64 guest/build.sh    # or ARCH=arm64: cross-built on an x86_64 host
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
# rmachine.iso boots the same kernel, initramfs and command line on hypervisors that boot no
# bare kernel (VirtualBox, Hyper-V): BIOS through isolinux, UEFI through a GRUB EFI image, one
# hybrid image (host packages: xorriso isolinux syslinux-common grub-efi-amd64-bin mtools).
# Contract of the output: docs/internals.md, "Guest image".
set -euo pipefail

ARCH="${ARCH:-x86_64}"
# Debian's and Docker's names are accepted too; the manifest says x86_64 or aarch64.
case "$ARCH" in
  amd64) ARCH=x86_64 ;;
  arm64) ARCH=aarch64 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="$(cd "$HERE/.." && pwd)"
WORK="$HERE/work/$ARCH"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WORKSPACE/target}"

# Modules only one architecture needs (added to MODULES below).
EXTRA_MODULES=()
case "$ARCH" in
  x86_64)
    DEB_ARCH=amd64
    MULTIARCH=x86_64-linux-gnu
    RUST_TARGET=x86_64-unknown-linux-musl
    # ring's C parts need a musl C compiler (Debian's musl-tools).
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
    OUT="${OUT:-$HERE/out}"
    # The first serial port of pc/q35/microvm.
    CONSOLE=ttyS0
    # The ISO on VirtualBox (SATA/AHCI disks) and Hyper-V Generation 2 (VMBus: SCSI disks,
    # synthetic NIC, the "shut down" integration service): the disks appear as sdX.
    EXTRA_MODULES=(ahci sd_mod hv_vmbus hv_storvsc hv_netvsc hv_utils)
    # The bootable ISO (BIOS + UEFI) those two hypervisors boot; x86_64 only.
    BUILD_ISO=1
    ;;
  aarch64)
    # Cross build on x86_64 (.ci/setup installs all of it): `dpkg --add-architecture arm64`
    # so that `apt-get download pkg:arm64` works; ring's C and assembly need a C compiler for
    # the target (gcc-aarch64-linux-gnu: ring includes no libc header that differs between
    # glibc and musl); the static binary is linked by rust-lld with Rust's self-contained musl.
    DEB_ARCH=arm64
    MULTIARCH=aarch64-linux-gnu
    RUST_TARGET=aarch64-unknown-linux-musl
    if [[ "$(uname -m)" != aarch64 ]]; then
      export CC_aarch64_unknown_linux_musl="${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}"
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-rust-lld}"
    fi
    OUT="${OUT:-$HERE/out-aarch64}"
    # The PL011 UART of QEMU's `virt` machine.
    CONSOLE=ttyAMA0
    # The power button of `virt` without firmware (device tree, no ACPI): a PL061 GPIO line
    # wired to a gpio-keys device that sends KEY_POWER on QMP system_powerdown.
    EXTRA_MODULES=(gpio_keys gpio_pl061)
    BUILD_ISO=0
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
  # the balloon, for free page reporting: QEMU discards the pages the guest freed
  # (docs/internals.md, "VM devices (QEMU)"); loaded by modalias like the other devices
  virtio_balloon
  # the data disk's filesystem (built in in the cloud kernel, a module in the generic one);
  # crc32c is looked up by name (metadata checksums, libcrc32c), not a symbol dependency
  ext4 crc32c_generic
  # ACPI power button → input event device (clean shutdown on QMP system_powerdown)
  button evdev
  # containers: overlay rootfs, veth pairs, bridge, NAT and filtering for published ports
  overlay veth bridge br_netfilter tun
  nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_compat nft_reject_inet nft_fib_ipv4
  ip_tables iptable_nat iptable_filter iptable_mangle iptable_raw
  nf_nat nf_conntrack xt_MASQUERADE xt_conntrack xt_addrtype xt_nat xt_tcpudp
  xt_comment xt_mark xt_multiport
  # host folder shares (QEMU virtio-9p, virtio-fs with virtiofsd): docs/internals.md, "Shares"
  9p 9pnet 9pnet_virtio netfs virtiofs
  # host folder shares over SSH (transport sftp): rmachine-init sftp-mount mounts with FUSE
  fuse
  "${EXTRA_MODULES[@]}"
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
need apt-get apt-cache dpkg-deb cpio zstd gzip depmod sha256sum cargo jq readelf truncate
ISOLINUX_BIN=/usr/lib/ISOLINUX/isolinux.bin
ISOHDPFX=/usr/lib/ISOLINUX/isohdpfx.bin
LDLINUX=/usr/lib/syslinux/modules/bios/ldlinux.c32
GRUB_EFI_DIR=/usr/lib/grub/x86_64-efi
if ((BUILD_ISO)); then
  need xorriso grub-mkimage mformat mcopy mmd
  for file in "$ISOLINUX_BIN" "$ISOHDPFX" "$LDLINUX" "$GRUB_EFI_DIR/linux.mod"; do
    if [[ ! -e "$file" ]]; then
      log "missing $file (apt-get install isolinux syslinux-common grub-efi-amd64-bin)"
      exit 1
    fi
  done
fi

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
    | sed -n "s/^ *Depends: \(linux-image-[0-9.]*-[0-9]*-$DEB_ARCH\)\(:$DEB_ARCH\)\{0,1\}$/\1/p" \
    | head -n1)"
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
# Mozilla's root certificates (ca-certificates is Architecture: all): the engine reaches
# registries over HTTPS, and its TLS client reads /etc/ssl/certs/ca-certificates.crt.
CADEB="$(ls "$WORK"/debs/ca-certificates_*_all.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$CADEB" ]]; then
  log "downloading ca-certificates"
  (cd "$WORK/debs" && apt-get download -q ca-certificates >&2)
  CADEB="$(ls "$WORK"/debs/ca-certificates_*_all.deb | head -n1)"
fi

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
# tests/run.sh lints the workspace while it builds it for the host, with clippy-driver as the
# workspace's rustc wrapper (CLIPPY_ARGS set), and this script inherits that: the release
# builds drop it (a second lint pass of the same code would only cost time), the host build of
# the cross case below keeps it (without it, it would compile again what run.sh's host build
# made, under the tests that run those binaries).
release_cargo=(cargo)
if [[ -n "${CLIPPY_ARGS:-}" && "${RUSTC_WORKSPACE_WRAPPER:-}" == */clippy-driver ]]; then
  release_cargo=(env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo)
fi
log "building static binaries for $RUST_TARGET"
BINS=(rmachine-init)
if (cd "$WORKSPACE" && "${release_cargo[@]}" build --release --target "$RUST_TARGET" \
  -p rmachine-init -p rmachine-engine >&2); then
  BINS+=(rmachine-engine)
else
  # The engine is optional for a guest build: without it the guest still boots with SSH.
  log "WARNING: rmachine-engine did not build; building the image without it"
  (cd "$WORKSPACE" && "${release_cargo[@]}" build --release --target "$RUST_TARGET" \
    -p rmachine-init >&2)
fi
BIN_DIR="$CARGO_TARGET_DIR/$RUST_TARGET/release"
# A few files of the image are printed by its own programs (the busybox applet list, the
# udhcpc script). When cross-building, those cannot run here: the build host's builds of the
# same sources (same Debian busybox version, same rmachine-init) print the same text.
if [[ "$ARCH" == "$(uname -m)" ]]; then
  RUN_BUSYBOX="$WORK/busybox/bin/busybox"
  RUN_INIT="$BIN_DIR/rmachine-init"
else
  NATIVE_DEB_ARCH="$(dpkg --print-architecture)"
  BB_VERSION="$(dpkg-deb -f "$BBDEB" Version)"
  NATIVE="$WORK/native"
  mkdir -p "$NATIVE/debs"
  # apt names the file with the version's epoch escaped (1%3a1.35.0-…).
  NATIVE_BBDEB="$(ls "$NATIVE"/debs/busybox-static_*_"$NATIVE_DEB_ARCH".deb 2>/dev/null | head -n1 || true)"
  if [[ -z "$NATIVE_BBDEB" || "$(dpkg-deb -f "$NATIVE_BBDEB" Version)" != "$BB_VERSION" ]]; then
    log "downloading busybox-static $BB_VERSION ($NATIVE_DEB_ARCH) for its applet list"
    rm -f "$NATIVE"/debs/busybox-static_*.deb
    rm -rf "$NATIVE/busybox"
    (cd "$NATIVE/debs" && apt-get download -q "busybox-static:$NATIVE_DEB_ARCH=$BB_VERSION" >&2)
    NATIVE_BBDEB="$(ls "$NATIVE"/debs/busybox-static_*_"$NATIVE_DEB_ARCH".deb | head -n1)"
  fi
  if [[ ! -x "$NATIVE/busybox/bin/busybox" ]]; then
    rm -rf "$NATIVE/busybox"
    dpkg-deb -x "$NATIVE_BBDEB" "$NATIVE/busybox"
  fi
  RUN_BUSYBOX="$NATIVE/busybox/bin/busybox"
  # The same packages and environment as tests/run.sh's host build (`--workspace`, its clippy
  # wrapper), which has then already built it (another package selection could unify features
  # differently and rebuild dependencies).
  log "building the host's rmachine-init (it prints the udhcpc script)"
  (cd "$WORKSPACE" && cargo build --workspace --bins >&2)
  RUN_INIT="$CARGO_TARGET_DIR/debug/rmachine-init"
fi

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

# The CA bundle as Debian's update-ca-certificates makes it: every Mozilla root, in name order.
CA="$WORK/ca-certificates"
rm -rf "$CA"
dpkg-deb -x "$CADEB" "$CA"
mkdir -p "$ROOT/etc/ssl/certs"
find "$CA/usr/share/ca-certificates/mozilla" -name '*.crt' -print0 | sort -z \
  | xargs -0 cat >"$ROOT/etc/ssl/certs/ca-certificates.crt"
if ! grep -q 'BEGIN CERTIFICATE' "$ROOT/etc/ssl/certs/ca-certificates.crt"; then
  log "no CA certificates in $CADEB"
  exit 1
fi

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
done < <("$RUN_BUSYBOX" --list-full)

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
"$RUN_INIT" udhcpc-script >"$ROOT/etc/udhcpc.script"
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
# Debian signs its modules and the kernel checks each signature at load (sha256 of the whole
# file, then RSA) unless it is absent: CONFIG_MODULE_SIG without MODULE_SIG_FORCE loads an
# unsigned module and only marks the kernel tainted. Under TCG the checks cost seconds of
# boot. The signature is appended: [PKCS#7, sig_len bytes][struct module_signature, 12 bytes,
# sig_len big-endian in its last 4]["~Module signature appended~\n", 28 bytes]; cutting it off
# gives the same bytes as `strip --strip-debug` on x86_64, for any architecture. Secure Boot,
# which would enforce signatures, is off for this image anyway (its loaders are unsigned).
for path in "${!want[@]}"; do
  dest="$ROOT/lib/modules/$KVER/$path"
  mkdir -p "$(dirname "$dest")"
  cp "$MODDIR/$path" "$dest"
  if [[ "$(tail -c 28 "$dest")" == '~Module signature appended~' ]]; then
    sig_len="$(tail -c 32 "$dest" | head -c 4 | od -An -tu4 --endian=big | tr -d ' ')"
    truncate -s "$(( $(stat -c %s "$dest") - sig_len - 40 ))" "$dest"
  fi
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
# Deterministic archive: sorted names, clamped times, root ownership. zstd -19: the smallest
# download (11 MB vs 38 MB uncompressed) and fast to unpack. Unpacking it in the guest costs
# seconds under TCG, so for QEMU's microvm the host unpacks it once per image (crates/host/src/
# image/derive.rs); pc/q35 and the ISO boot this file as is.
find "$ROOT" -exec touch -h -d @0 {} +
INITRD_TMP="$WORK/initrd.img.tmp"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort \
  | cpio --quiet -o -H newc --owner 0:0 --reproducible) \
  | zstd -q -19 -T0 -f -o "$INITRD_TMP"

# --- 5. Output + manifest --------------------------------------------------------------------
KERNEL_IN="$WORK/kernel/boot/vmlinuz-$KVER"
if [[ "$ARCH" == aarch64 && "$(head -c2 "$KERNEL_IN" | od -An -tx1 | tr -d ' ')" != 1f8b ]]; then
  # Debian's arm64 "vmlinuz" is the plain Image (33 MB); QEMU's -kernel unpacks a gzip one
  # itself (on the host, no cost to the guest's boot), at a third of the image's size.
  gzip -9 -n -c "$KERNEL_IN" >"$OUT/vmlinuz.tmp"
else
  cp "$KERNEL_IN" "$OUT/vmlinuz.tmp"
fi
mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv -f "$INITRD_TMP" "$OUT/initrd.img"
# No uncompressed kernel is shipped (66 MB): for QEMU's microvm the host unpacks the
# bzImage's payload once per image into the ELF it enters at its PVH entry point
# (crates/host/src/image/derive.rs). That needs CONFIG_PVH. (Earlier builds shipped vmlinux.)
rm -f "$OUT/vmlinux"
if [[ "$ARCH" == x86_64 ]] && ! grep -q '^CONFIG_PVH=y' "$WORK/kernel/boot/config-$KVER"; then
  log "kernel $KVER has no PVH entry point (CONFIG_PVH)"
  exit 1
fi
# console: serial log (the first serial port → console.log); quiet: only our lines; panic=-1:
# a kernel panic reboots at once instead of hanging. (cryptomgr.notests is added by the QEMU
# driver under TCG only, where the crypto self-tests cost 0.4-0.9 s: docs/internals.md.)
CMDLINE="console=$CONSOLE quiet panic=-1"

# --- 6. Bootable ISO (BIOS + UEFI, hybrid) ----------------------------------------------------
rm -f "$OUT/rmachine.iso"
if ((BUILD_ISO)); then
  # Reproducible: fixed file times, FAT serial and ISO dates (SOURCE_DATE_EPOCH), so that the
  # same kernel and initramfs give the same ISO and the same version.
  ISO_STAGE="$WORK/iso"
  rm -rf "$ISO_STAGE"
  mkdir -p "$ISO_STAGE/boot" "$ISO_STAGE/isolinux"
  cp "$OUT/vmlinuz" "$OUT/initrd.img" "$ISO_STAGE/boot/"
  cp "$ISOLINUX_BIN" "$LDLINUX" "$ISO_STAGE/isolinux/"
  cat >"$ISO_STAGE/isolinux/isolinux.cfg" <<EOF
DEFAULT rmachine
PROMPT 0
TIMEOUT 0
LABEL rmachine
  KERNEL /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND $CMDLINE
EOF
  # UEFI: a GRUB EFI image with only the modules it needs and its configuration built in (no
  # memdisk, which would make it differ at every build); it finds the ISO's file system by a
  # file only the ISO has.
  : >"$ISO_STAGE/boot/rmachine.id"
  cat >"$WORK/grub.cfg" <<EOF
set timeout=0
search --no-floppy --set=root --file /boot/rmachine.id
linux /boot/vmlinuz $CMDLINE
initrd /boot/initrd.img
boot
EOF
  grub-mkimage -O x86_64-efi -p /boot/grub -c "$WORK/grub.cfg" -o "$WORK/BOOTX64.EFI" \
    linux search search_fs_file iso9660 part_gpt part_msdos fat efi_gop
  EFI_IMG="$ISO_STAGE/boot/efiboot.img"
  EFI_KIB=$(( $(stat -c %s "$WORK/BOOTX64.EFI") / 1024 + 256 ))
  truncate -s "${EFI_KIB}K" "$EFI_IMG"
  SOURCE_DATE_EPOCH=0 mformat -i "$EFI_IMG" -N 0 ::
  SOURCE_DATE_EPOCH=0 mmd -i "$EFI_IMG" ::/EFI ::/EFI/BOOT
  touch -d @0 "$WORK/BOOTX64.EFI"
  SOURCE_DATE_EPOCH=0 mcopy -m -i "$EFI_IMG" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  find "$ISO_STAGE" -exec touch -h -d @0 {} +
  ISO_TMP="$WORK/rmachine.iso.tmp"
  rm -f "$ISO_TMP"
  SOURCE_DATE_EPOCH=0 xorriso -as mkisofs -quiet -o "$ISO_TMP" -iso-level 3 -V RMACHINE \
    -isohybrid-mbr "$ISOHDPFX" \
    -c isolinux/boot.cat -b isolinux/isolinux.bin -no-emul-boot -boot-load-size 4 \
    -boot-info-table \
    -eltorito-alt-boot -e boot/efiboot.img -no-emul-boot -isohybrid-gpt-basdat \
    "$ISO_STAGE" >&2
  mv -f "$ISO_TMP" "$OUT/rmachine.iso"
  rm -rf "$ISO_STAGE"
fi

SHA_KERNEL="$(sha256sum "$OUT/vmlinuz" | cut -d' ' -f1)"
SHA_INITRD="$(sha256sum "$OUT/initrd.img" | cut -d' ' -f1)"
if ((BUILD_ISO)); then
  SHA_ISO="$(sha256sum "$OUT/rmachine.iso" | cut -d' ' -f1)"
  HASH="$(printf '%s %s %s' "$SHA_KERNEL" "$SHA_INITRD" "$SHA_ISO" | sha256sum | cut -c1-8)"
else
  HASH="$(printf '%s %s' "$SHA_KERNEL" "$SHA_INITRD" | sha256sum | cut -c1-8)"
fi
VERSION="$VERSION_BASE-$HASH"

# The cargo profile the binaries were built with: "release", or "release" with the overrides
# CI uses for its faster arm64 build (tests/run.sh), which guest/publish.sh refuses to publish.
PROFILE="release"
overrides="$(env | grep -E '^CARGO_PROFILE_RELEASE_' | sort | paste -sd ' ' -)" || true
[[ -z "$overrides" ]] || PROFILE="release with $overrides"

# features: what this image's init can do that hosts check before relying on it
# (rmachine_driver::BootImage::features). virtio-fs-hotplug: it loads virtio_pci when the
# machine has a PCI hot-plug slot and waits for virtio-fs devices plugged in after boot.
jq -n \
  --arg version "$VERSION" --arg arch "$ARCH" --arg cmdline "$CMDLINE" \
  --arg kver "$KVER" --arg k "$SHA_KERNEL" --arg i "$SHA_INITRD" --arg profile "$PROFILE" \
  '{version: $version, arch: $arch, kernel: "vmlinuz", initrd: "initrd.img",
    cmdline: $cmdline, kernelVersion: $kver, buildProfile: $profile,
    features: ["virtio-fs-hotplug"],
    sha256: {vmlinuz: $k, "initrd.img": $i}}' >"$OUT/manifest.json.tmp"
if ((BUILD_ISO)); then
  # The ISO holds the same kernel and initramfs, for VirtualBox and Hyper-V.
  jq --arg iso "$SHA_ISO" \
    '.iso = "rmachine.iso" | .sha256["rmachine.iso"] = $iso' \
    "$OUT/manifest.json.tmp" >"$OUT/manifest.json.tmp2"
  mv -f "$OUT/manifest.json.tmp2" "$OUT/manifest.json.tmp"
fi
mv -f "$OUT/manifest.json.tmp" "$OUT/manifest.json"

log "guest $VERSION ($ARCH, kernel $KVER)"
log "  vmlinuz    $(du -h "$OUT/vmlinuz" | cut -f1)"
log "  initrd.img $(du -h "$OUT/initrd.img" | cut -f1) (unpacked $(du -sh "$ROOT" | cut -f1))"
if ((BUILD_ISO)); then
  log "  rmachine.iso $(du -h "$OUT/rmachine.iso" | cut -f1) (BIOS + UEFI)"
fi
log "  manifest   $OUT/manifest.json"
