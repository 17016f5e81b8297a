//! The QEMU command line, built by pure functions: everything it depends on (host, accelerator,
//! machine type, ports, paths) comes in as parameters, so the tests pin the exact argv for
//! every host and machine family without running anything.

use std::path::Path;

use rmachine_driver::{BootImage, GuestPorts, Share, ShareTransport};

use crate::accel::Accel;
use crate::platform::{HostArch, HostOs, HostPlatform};
use crate::qmp::QmpEndpoint;

/// Escapes a value for QEMU's `key=value,key=value` option syntax (a comma is doubled).
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// Machine types differ in how virtio devices attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineFamily {
    /// `pc`/`q35` (and other PCI machines): `virtio-*-pci` devices, firmware (SeaBIOS)
    /// loads the kernel.
    Pci,
    /// `microvm`: no PCI, `virtio-*-device` on virtio-mmio, no firmware to speak of.
    Microvm,
    /// ARM `virt`: PCIe, `virtio-*-pci`.
    Virt,
}

impl MachineFamily {
    /// The family of a `--qemu-machine` value (its first comma-separated word).
    pub fn of(machine: &str) -> Self {
        match machine.split(',').next().unwrap_or(machine) {
            "microvm" => MachineFamily::Microvm,
            name if name == "virt" || name.starts_with("virt-") => MachineFamily::Virt,
            _ => MachineFamily::Pci,
        }
    }

    /// The name of a virtio device of `kind` (`blk`, `net`, `rng`) on this machine.
    pub fn virtio(self, kind: &str) -> String {
        match self {
            MachineFamily::Microvm => format!("virtio-{kind}-device"),
            MachineFamily::Pci | MachineFamily::Virt => format!("virtio-{kind}-pci"),
        }
    }
}

impl MachineFamily {
    /// The virtio-fs (vhost-user) device on this machine.
    pub fn vhost_user_fs(self) -> &'static str {
        match self {
            MachineFamily::Microvm => "vhost-user-fs-device",
            MachineFamily::Pci | MachineFamily::Virt => "vhost-user-fs-pci",
        }
    }
}

/// The `-machine` argument for a `--qemu-machine` value. A bare `microvm` gets ACPI switched
/// on, since the ACPI power button is how `stop` asks the guest to power off; a value with
/// options is the user's and is passed as is.
pub fn machine_arg(machine: &str) -> String {
    match machine {
        "microvm" => "microvm,acpi=on".to_owned(),
        other => other.to_owned(),
    }
}

/// Whether a machine's virtio-fs devices are plugged in over QMP once QEMU runs instead of
/// being on its command line: when its guest stops at the boot snapshot's point, on a
/// `microvm` with ACPI. QEMU refuses to save a VM with a vhost-user-fs device in it, and to load
/// one into such a VM, so a snapshot is taken and loaded without them; the machine then gets a
/// PCIe bus with one hot-plug root port per virtio-fs share, which the devices are plugged into
/// ([`virtio_fs_plug_commands`]). Other machine types keep them on the command line (and get
/// no snapshot).
pub fn plugs_virtio_fs_later(machine: &str, boot_snapshot: bool) -> bool {
    let arg = machine_arg(machine);
    boot_snapshot
        && MachineFamily::of(machine) == MachineFamily::Microvm
        && arg.split(',').any(|o| o == "acpi=on")
        && !arg.split(',').any(|o| o.starts_with("pcie="))
}

/// The hot-plug root port a virtio-fs share's device goes into (see
/// [`plugs_virtio_fs_later`]); `index` counts the machine's virtio-fs shares.
pub fn virtio_fs_port(index: usize) -> String {
    format!("rmfs-port{index}")
}

/// The id of the chardev that connects a virtio-fs share's device to its virtiofsd.
pub fn virtio_fs_chardev(share: &Share) -> String {
    format!("{}-fs", share.tag)
}

/// The QMP commands that plug a virtio-fs share's device into its root port (`index` counts
/// the machine's virtio-fs shares, see [`virtio_fs_port`]): a chardev connected to the share's
/// virtiofsd `socket`, then the `vhost-user-fs-pci` device with the share's tag (the guest's
/// PCIe hot-plug driver sees it arrive and powers the slot on).
pub fn virtio_fs_plug_commands(
    index: usize,
    share: &Share,
    socket: &Path,
) -> [(&'static str, serde_json::Value); 2] {
    let chardev = virtio_fs_chardev(share);
    [
        (
            "chardev-add",
            serde_json::json!({
                "id": chardev,
                "backend": {
                    "type": "socket",
                    "data": {
                        "addr": { "type": "unix", "data": { "path": path(socket) } },
                        "server": false,
                    },
                },
            }),
        ),
        (
            "device_add",
            serde_json::json!({
                "driver": "vhost-user-fs-pci",
                "id": format!("{}-fs-device", share.tag),
                "bus": virtio_fs_port(index),
                "chardev": chardev,
                "tag": share.tag,
            }),
        ),
    ]
}

/// TCG's translation cache in MiB. QEMU's default is 1 GiB, which a guest that runs a
/// handful of programs never fills but which QEMU keeps resident once touched; 256 MiB holds
/// the guest's boot, the engine and typical containers without retranslating.
pub const TCG_TB_SIZE_MB: u32 = 256;

/// The `-accel` argument: the accelerator, and the translation cache's size under TCG.
pub fn accel_arg(accel: Accel) -> String {
    match accel {
        Accel::Tcg => format!("tcg,tb-size={TCG_TB_SIZE_MB}"),
        other => other.as_str().to_owned(),
    }
}

/// The `-cpu` model: the host's own CPU under a hypervisor, everything TCG can emulate under
/// TCG. WHPX gets QEMU's default model, the one its documentation supports. An ARM guest under
/// TCG gets pointer authentication with QEMU's own hash instead of the architected QARMA5,
/// which TCG computes slowly on every signed return (`pauth-impdef`, QEMU ≥ 6.0; the guest
/// cannot tell the difference).
///
/// An x86_64 guest under TCG gets `max`. Without ERMS (`max,-erms`) the guest kernel would
/// clear and copy 8 bytes per TCG iteration instead of one (create 0.89×, cold start 0.81× in
/// docs/boot-timings.md), but one e2e boot with 2 vCPUs hung before its init started in the
/// only run that measured it: kept out until that is understood.
pub fn cpu_model(accel: Accel, guest: HostArch) -> Option<&'static str> {
    match (accel, guest) {
        (Accel::Kvm | Accel::Hvf, _) => Some("host"),
        (Accel::Tcg, HostArch::X86_64) => Some("max"),
        (Accel::Tcg, HostArch::Aarch64) => Some("max,pauth-impdef=on"),
        (Accel::Whpx, _) => None,
    }
}

/// The kernel command line: the guest manifest's, plus under TCG `cryptomgr.notests` and, for
/// an x86 guest, `tsc_early_khz=`.
///
/// `cryptomgr.notests` skips the self-test of every crypto algorithm the kernel registers,
/// 0.4-0.9 s of a TCG boot (docs/boot-timings.md) and little under a hypervisor, where it is
/// kept. The trade-off (docs/internals.md): under TCG a bug in the emulation of SIMD
/// instructions would go unnoticed in an accelerated driver (crc32c-intel, used by ext4).
///
/// `tsc_early_khz=`: without a hypervisor the kernel cannot ask for the TSC frequency and
/// calibrates it against timers that TCG emulates slowly (on `microvm`, without a PIT, boot
/// stalls); the emulated TSC runs at the host's rate, so the host's figure (`tsc_khz`, given
/// only when the host knows its TSC rate) is the right one. With it comes `tsc=reliable`: the
/// kernel's clocksource watchdog otherwise compares the TSC with jiffies, which fall behind
/// whenever the host deschedules the vCPU thread, declares the TSC (running at the rate given)
/// unstable and keeps time with jiffies from then on: the guest's clock lags real time and
/// every timer runs late (measured: about a second of the boot under load,
/// docs/boot-timings.md). Without a known rate neither option is given.
/// `boot_snapshot` adds the option that makes the guest's init stop at the boot snapshot's
/// point (`crate::boot_snapshot`).
pub fn kernel_cmdline(
    base: &str,
    guest: HostArch,
    accel: Accel,
    tsc_khz: Option<u64>,
    boot_snapshot: bool,
) -> String {
    let mut options: Vec<String> = Vec::new();
    if !base.trim().is_empty() {
        options.push(base.trim().to_owned());
    }
    if boot_snapshot {
        options.push(crate::boot_snapshot::KERNEL_OPTION.to_owned());
    }
    if accel == Accel::Tcg {
        options.push("cryptomgr.notests".to_owned());
        if let (HostArch::X86_64, Some(khz)) = (guest, tsc_khz) {
            options.push(format!("tsc_early_khz={khz} tsc=reliable"));
        }
    }
    options.join(" ")
}

/// Everything one VM's command line depends on.
#[derive(Debug, Clone)]
pub struct VmLaunch<'a> {
    /// The host.
    pub host: HostPlatform,
    /// The guest's architecture.
    pub guest: HostArch,
    /// The machine's name (`-name`).
    pub name: &'a str,
    /// The accelerator.
    pub accel: Accel,
    /// The `--qemu-machine` value.
    pub machine: &'a str,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Kernel, initrd and command line.
    pub boot: &'a BootImage,
    /// Boot this ISO from a CD drive instead of `boot`'s kernel (`--qemu-boot-iso`).
    pub iso: Option<&'a Path>,
    /// Firmware image for `-bios` (`--qemu-firmware`).
    pub firmware: Option<&'a str>,
    /// The host's TSC frequency, for `tsc_early_khz=` under TCG.
    pub tsc_khz: Option<u64>,
    /// The data disk (qcow2).
    pub disk: &'a Path,
    /// The configuration drive (raw, read-only).
    pub config_drive: &'a Path,
    /// Host port forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Host port forwarded to the guest's engine port.
    pub engine_port: u16,
    /// The guest's ports.
    pub guest_ports: GuestPorts,
    /// Host folders exported over virtio-9p or virtio-fs.
    pub shares: &'a [Share],
    /// The vhost-user socket of each virtio-fs share's virtiofsd, by tag.
    pub virtiofs_sockets: &'a [(String, std::path::PathBuf)],
    /// The pipe of the guest's clock port (`PATH.in` and `PATH.out`, see
    /// [`clock_port_args`]); none where QEMU has no named pipes to offer (Windows).
    pub clock_pipe: Option<&'a Path>,
    /// Where the serial console goes.
    pub console_log: &'a Path,
    /// Where QEMU writes its process id.
    pub pidfile: &'a Path,
    /// Where QEMU listens for QMP.
    pub qmp: &'a QmpEndpoint,
    /// Whether the guest's init stops at the boot snapshot's point.
    pub boot_snapshot: bool,
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The `-fsdev` of a share. `security_model=none`: files keep their host owner and mode, and
/// QEMU, running as the user, creates files the guest writes as that user; what the guest
/// asks for (chown to root, a container's uid) is tried and dropped silently when the host
/// refuses it. `mapped-xattr` would instead show the guest owners stored in xattrs, which
/// the user's own tools on the host never see.
pub fn fsdev_arg(share: &Share) -> String {
    let mut arg = format!(
        "local,id={},path={},security_model=none",
        escape_opt(&share.tag),
        escape_opt(&path(&share.host_path))
    );
    if share.read_only {
        arg.push_str(",readonly=on");
    }
    arg
}

/// The kernel QEMU loads: on an x86_64 `microvm`, the image's uncompressed ELF kernel when it
/// has one (QEMU enters it at its PVH entry point; under TCG the bzImage spends seconds of
/// emulated time unpacking itself), else the bzImage. `pc`/`q35` boot the bzImage through
/// their firmware as before.
pub fn kernel_file(boot: &BootImage, family: MachineFamily, guest: HostArch) -> &Path {
    match (&boot.kernel_elf, family, guest) {
        (Some(elf), MachineFamily::Microvm, HostArch::X86_64) => elf,
        _ => &boot.kernel,
    }
}

/// The initramfs QEMU loads: on an x86_64 `microvm`, the uncompressed one the host derived
/// when there is one (the guest kernel unpacking zstd costs seconds under TCG), else the
/// compressed one.
pub fn initrd_file(boot: &BootImage, family: MachineFamily, guest: HostArch) -> &Path {
    match (&boot.initrd_uncompressed, family, guest) {
        (Some(raw), MachineFamily::Microvm, HostArch::X86_64) => raw,
        _ => &boot.initrd,
    }
}

/// The guest's clock port: a virtio-serial port named `org.rmachine.clock` (the guest's init
/// serves it) backed by the named pipes `PIPE.in` (host to guest) and `PIPE.out`. A pipe, not a
/// socket: QEMU holds both ends open from the start, so the port is always connected and the
/// guest's read waits for a line instead of seeing a hang-up; the host writes the time there
/// right after a resume (see `crate::clock`).
pub fn clock_port_args(family: MachineFamily, pipe: &Path) -> Vec<String> {
    [
        "-device".to_owned(),
        family.virtio("serial"),
        "-chardev".to_owned(),
        format!(
            "pipe,id={},path={}",
            crate::clock::CHARDEV,
            escape_opt(&path(pipe))
        ),
        "-device".to_owned(),
        format!("virtserialport,chardev=rmclock,name={CLOCK_PORT_NAME}"),
    ]
    .into()
}

/// The virtio balloon, for free page reporting only, on hosts whose QEMU can give memory back.
///
/// Guest RAM is QEMU's anonymous memory: a page the guest touched once stays resident in QEMU
/// after the guest frees it (the initramfs the kernel unpacked and freed, its freed init
/// memory, a container's exited processes). With `free-page-reporting=on` the guest's
/// `virtio_balloon` driver reports free blocks (2 MiB, the pageblock order, by default) a few
/// seconds after they are freed, and QEMU discards them (`MADV_DONTNEED`, or a hole punched in
/// a memfd backing); the guest touching such a page again gets a zeroed one. The balloon
/// itself is never inflated: rmachine sends no `balloon` command, so the guest keeps all its
/// memory, and `deflate-on-oom` does not matter.
///
/// Windows QEMU has no `madvise` and reports an error for every block it cannot discard: no
/// device there. On macOS `madvise(MADV_DONTNEED)` exists but frees the pages lazily (the
/// effect is not measured).
pub fn balloon_device(family: MachineFamily, host: HostOs) -> Option<String> {
    match host {
        HostOs::Windows => None,
        HostOs::Linux | HostOs::MacOs => Some(format!(
            "{},free-page-reporting=on",
            family.virtio("balloon")
        )),
    }
}

/// The name of the guest's clock port (`rmachine_init::clock::PORT_NAME`).
pub const CLOCK_PORT_NAME: &str = "org.rmachine.clock";

/// The arguments (without the program) that start the VM. On Linux and macOS QEMU daemonizes
/// once the VM runs; Windows QEMU has no `-daemonize`, so the driver spawns it detached.
pub fn vm_args(l: &VmLaunch<'_>) -> Vec<String> {
    let family = MachineFamily::of(l.machine);
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));

    let virtio_fs = l
        .shares
        .iter()
        .any(|s| s.transport == ShareTransport::VirtioFs);
    let plug_later = virtio_fs && plugs_virtio_fs_later(l.machine, l.boot_snapshot);
    push(&["-name", &escape_opt(l.name)]);
    push(&["-accel", &accel_arg(l.accel)]);
    if plug_later {
        push(&[
            "-machine",
            &format!("{},pcie=on,memory-backend=mem", machine_arg(l.machine)),
            "-object",
            &format!("memory-backend-memfd,id=mem,size={}M,share=on", l.memory_mb),
        ]);
    } else if virtio_fs {
        // vhost-user: virtiofsd reads and writes guest memory directly, so it must be a
        // shared memory file rather than QEMU's private anonymous memory.
        push(&[
            "-machine",
            &format!("{},memory-backend=mem", machine_arg(l.machine)),
            "-object",
            &format!("memory-backend-memfd,id=mem,size={}M,share=on", l.memory_mb),
        ]);
        if family == MachineFamily::Microvm {
            // virtio-mmio devices are legacy (virtio 0.9) by default, and vhost-user backends
            // (libvhost-user, virtiofsd) refuse legacy devices: virtiofsd aborts at the first
            // request and the guest's first access to the share hangs.
            push(&["-global", "virtio-mmio.force-legacy=false"]);
        }
    } else {
        push(&["-machine", &machine_arg(l.machine)]);
    }
    if let Some(cpu) = cpu_model(l.accel, l.guest) {
        push(&["-cpu", cpu]);
    }
    push(&["-smp", &l.cpus.to_string(), "-m", &l.memory_mb.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    if let Some(firmware) = l.firmware {
        push(&["-bios", firmware]);
    }
    match l.iso {
        // The ISO's boot loaders carry the manifest's command line (no tsc_early_khz=).
        Some(iso) => push(&[
            "-drive",
            &format!(
                "file={},if=none,id=cd,media=cdrom,readonly=on",
                escape_opt(&path(iso))
            ),
            "-device",
            "ide-cd,drive=cd,bootindex=0",
        ]),
        None => {
            push(&[
                "-kernel",
                &path(kernel_file(l.boot, family, l.guest)),
                "-initrd",
                &path(initrd_file(l.boot, family, l.guest)),
            ]);
            let mut cmdline = kernel_cmdline(
                &l.boot.cmdline,
                l.guest,
                l.accel,
                l.tsc_khz,
                l.boot_snapshot,
            );
            if plug_later {
                // microvm's ACPI tables grant the OS no PCIe hot-plug (they have no `_OSC`):
                // without this the guest's pciehp never powers a root port's slot on.
                cmdline.push_str(" pcie_ports=native");
            }
            push(&["-append", &cmdline]);
        }
    }
    push(&[
        "-drive",
        &format!(
            "file={},if=none,id=data,format=qcow2,discard=unmap",
            escape_opt(&path(l.disk))
        ),
        "-device",
        &format!("{},drive=data", family.virtio("blk")),
    ]);
    push(&[
        "-drive",
        &format!(
            "file={},if=none,id=config,format=raw,readonly=on",
            escape_opt(&path(l.config_drive))
        ),
        "-device",
        &format!("{},drive=config", family.virtio("blk")),
    ]);
    // Forwards bind 127.0.0.1 only: docker-machine's QEMU driver bound every interface, which
    // put the guest's SSH server on the network.
    push(&[
        "-netdev",
        &format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{},hostfwd=tcp:127.0.0.1:{}-:{}",
            l.ssh_port, l.guest_ports.ssh, l.engine_port, l.guest_ports.engine
        ),
    ]);
    let net = match family {
        // `romfile=` drops the iPXE option ROM: direct kernel boot never network-boots, and
        // SeaBIOS spends time initialising it. virtio-mmio devices have no ROM.
        MachineFamily::Pci | MachineFamily::Virt => {
            format!("{},netdev=net0,romfile=", family.virtio("net"))
        }
        MachineFamily::Microvm => format!("{},netdev=net0", family.virtio("net")),
    };
    push(&["-device", &net]);
    // Without an entropy source the guest's getrandom() blocks for seconds at boot.
    push(&["-device", &family.virtio("rng")]);
    let mut virtio_fs_ports = 0;
    for share in l.shares {
        if share.transport == ShareTransport::VirtioFs && plug_later {
            // chassis and slot number the port's hot-plug slot, unique per port.
            virtio_fs_ports += 1;
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id={},bus=pcie.0,chassis={virtio_fs_ports},slot={virtio_fs_ports}",
                    virtio_fs_port(virtio_fs_ports - 1)
                ),
            ]);
            continue;
        }
        if share.transport == ShareTransport::VirtioFs {
            let socket = l
                .virtiofs_sockets
                .iter()
                .find(|(tag, _)| *tag == share.tag)
                .map(|(_, socket)| path(socket))
                .unwrap_or_default();
            let chardev = escape_opt(&virtio_fs_chardev(share));
            push(&[
                "-chardev",
                &format!("socket,id={chardev},path={}", escape_opt(&socket)),
                "-device",
                &format!(
                    "{},chardev={chardev},tag={}",
                    family.vhost_user_fs(),
                    escape_opt(&share.tag)
                ),
            ]);
            continue;
        }
        push(&["-fsdev", &fsdev_arg(share)]);
        push(&[
            "-device",
            &format!(
                "{},fsdev={},mount_tag={}",
                family.virtio("9p"),
                escape_opt(&share.tag),
                escape_opt(&share.tag)
            ),
        ]);
    }
    if let Some(pipe) = l.clock_pipe {
        args.extend(clock_port_args(family, pipe));
    }
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    // The last device, so that every device before it keeps its place (its virtio-mmio slot
    // on microvm, its PCI slot elsewhere) as it was before the balloon came.
    if let Some(balloon) = balloon_device(family, l.host.os) {
        push(&["-device", &balloon]);
    }
    push(&["-serial", &format!("file:{}", path(l.console_log))]);
    push(&["-qmp", &l.qmp.qemu_arg()]);
    push(&["-pidfile", &path(l.pidfile)]);
    if l.host.os != HostOs::Windows {
        push(&["-daemonize"]);
    }
    args
}

/// The arguments of the accelerator probe (see [`crate::accel`]): boot `kernel` without an
/// initrd so that it prints its banner on the serial console and panics, and exit instead of
/// rebooting.
pub fn probe_args(guest: HostArch, accel: Accel, machine: &str, kernel: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-accel".into(),
        accel.as_str().into(),
        "-machine".into(),
        machine_arg(machine),
    ];
    if let Some(cpu) = cpu_model(accel, guest) {
        args.extend(["-cpu".into(), cpu.into()]);
    }
    args.extend(
        [
            "-smp",
            "1",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
        ]
        .map(String::from),
    );
    args.push(path(kernel));
    args.push("-append".into());
    args.push(format!(
        "console={} panic=-1 root=/dev/rmachine-accel-probe",
        guest.serial_console()
    ));
    args.extend(["-serial", "stdio", "-no-reboot"].map(String::from));
    args
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn boot(dir: &str) -> BootImage {
        BootImage {
            kernel: PathBuf::from(format!("{dir}/vmlinuz")),
            initrd: PathBuf::from(format!("{dir}/initrd.img")),
            cmdline: "console=ttyS0 quiet".to_owned(),
            arch: "x86_64".to_owned(),
            iso: None,
            kernel_elf: Some(PathBuf::from(format!("{dir}/derived/vmlinux"))),
            initrd_uncompressed: Some(PathBuf::from(format!("{dir}/derived/initrd.cpio"))),
            features: Vec::new(),
        }
    }

    struct Paths {
        disk: PathBuf,
        config: PathBuf,
        console: PathBuf,
        pid: PathBuf,
        qmp: QmpEndpoint,
    }

    fn unix_paths(dir: &str) -> Paths {
        Paths {
            disk: format!("{dir}/disk.qcow2").into(),
            config: format!("{dir}/config.img").into(),
            console: format!("{dir}/console.log").into(),
            pid: format!("{dir}/qemu.pid").into(),
            qmp: QmpEndpoint::Unix(format!("{dir}/qmp.sock").into()),
        }
    }

    fn launch<'a>(
        host: HostPlatform,
        accel: Accel,
        machine: &'a str,
        boot: &'a BootImage,
        p: &'a Paths,
    ) -> VmLaunch<'a> {
        VmLaunch {
            host,
            guest: host.arch,
            name: "dev",
            accel,
            machine,
            cpus: 2,
            memory_mb: 2048,
            boot,
            iso: None,
            firmware: None,
            tsc_khz: Some(2_445_432),
            disk: &p.disk,
            config_drive: &p.config,
            ssh_port: 40022,
            engine_port: 42376,
            guest_ports: GuestPorts::default(),
            shares: &[],
            virtiofs_sockets: &[],
            clock_pipe: None,
            console_log: &p.console,
            pidfile: &p.pid,
            qmp: &p.qmp,
            boot_snapshot: false,
        }
    }

    fn split(expected: &str) -> Vec<String> {
        // One argument per line; the -append value contains spaces.
        expected
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    const LINUX: HostPlatform = HostPlatform {
        os: HostOs::Linux,
        arch: HostArch::X86_64,
    };

    #[test]
    fn linux_tcg_q35() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let args = vm_args(&launch(LINUX, Accel::Tcg, "q35", &boot, &p));
        let expected = split(
            "-name\ndev\n-accel\ntcg,tb-size=256\n-machine\nq35\n-cpu\nmax\n-smp\n2\n-m\n2048\n\
             -nodefaults\n-no-user-config\n-display\nnone\n\
             -kernel\n/img/vmlinuz\n-initrd\n/img/initrd.img\n\
             -append\nconsole=ttyS0 quiet cryptomgr.notests tsc_early_khz=2445432 tsc=reliable\n\
             -drive\nfile=/m/dev/disk.qcow2,if=none,id=data,format=qcow2,discard=unmap\n\
             -device\nvirtio-blk-pci,drive=data\n\
             -drive\nfile=/m/dev/config.img,if=none,id=config,format=raw,readonly=on\n\
             -device\nvirtio-blk-pci,drive=config\n\
             -netdev\nuser,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376\n\
             -device\nvirtio-net-pci,netdev=net0,romfile=\n\
             -device\nvirtio-rng-pci\n\
             -device\nvirtio-balloon-pci,free-page-reporting=on\n\
             -serial\nfile:/m/dev/console.log\n\
             -qmp\nunix:/m/dev/qmp.sock,server=on,wait=off\n\
             -pidfile\n/m/dev/qemu.pid\n-daemonize",
        );
        assert_eq!(args, expected);
    }

    #[test]
    fn linux_kvm_uses_host_cpu_and_no_tsc_hint() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let args = vm_args(&launch(LINUX, Accel::Kvm, "q35", &boot, &p));
        assert_eq!(
            args[..8],
            split("-name\ndev\n-accel\nkvm\n-machine\nq35\n-cpu\nhost")[..]
        );
        let append = args.iter().position(|a| a == "-append").expect("-append");
        assert_eq!(args[append + 1], "console=ttyS0 quiet");
        assert_eq!(args.last().map(String::as_str), Some("-daemonize"));
    }

    #[test]
    fn linux_microvm_uses_mmio_devices_and_acpi() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let args = vm_args(&launch(LINUX, Accel::Tcg, "microvm", &boot, &p));
        let expected = split(
            "-name\ndev\n-accel\ntcg,tb-size=256\n-machine\nmicrovm,acpi=on\n-cpu\nmax\n-smp\n2\n-m\n2048\n\
             -nodefaults\n-no-user-config\n-display\nnone\n\
             -kernel\n/img/derived/vmlinux\n-initrd\n/img/derived/initrd.cpio\n\
             -append\nconsole=ttyS0 quiet cryptomgr.notests tsc_early_khz=2445432 tsc=reliable\n\
             -drive\nfile=/m/dev/disk.qcow2,if=none,id=data,format=qcow2,discard=unmap\n\
             -device\nvirtio-blk-device,drive=data\n\
             -drive\nfile=/m/dev/config.img,if=none,id=config,format=raw,readonly=on\n\
             -device\nvirtio-blk-device,drive=config\n\
             -netdev\nuser,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376\n\
             -device\nvirtio-net-device,netdev=net0\n\
             -device\nvirtio-rng-device\n\
             -device\nvirtio-balloon-device,free-page-reporting=on\n\
             -serial\nfile:/m/dev/console.log\n\
             -qmp\nunix:/m/dev/qmp.sock,server=on,wait=off\n\
             -pidfile\n/m/dev/qemu.pid\n-daemonize",
        );
        assert_eq!(args, expected);
    }

    fn shares() -> Vec<Share> {
        vec![
            Share {
                tag: Share::tag_for(0),
                host_path: "/home/me".into(),
                guest_path: "/home/me".into(),
                read_only: false,
                transport: ShareTransport::NineP,
            },
            Share {
                tag: Share::tag_for(1),
                host_path: "/srv/a,b".into(),
                guest_path: "/data".into(),
                read_only: true,
                transport: ShareTransport::NineP,
            },
        ]
    }

    /// The arguments between the entropy source and the balloon (the last device).
    fn tail_after_rng(args: &[String]) -> Vec<String> {
        let rng = args
            .iter()
            .position(|a| a.starts_with("virtio-rng"))
            .expect("rng device");
        let balloon = args
            .iter()
            .position(|a| a.starts_with("virtio-balloon"))
            .expect("balloon device");
        args[rng + 1..balloon - 1].to_vec()
    }

    #[test]
    fn an_iso_boots_from_a_cd_drive_with_the_firmware_given() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let mut l = launch(LINUX, Accel::Tcg, "q35", &boot, &p);
        let iso = PathBuf::from("/img/rmachine.iso");
        l.iso = Some(&iso);
        l.firmware = Some("/usr/share/ovmf/OVMF.fd");
        let args = vm_args(&l).join("\n");
        assert!(
            args.contains(
                "-display\nnone\n-bios\n/usr/share/ovmf/OVMF.fd\n\
                 -drive\nfile=/img/rmachine.iso,if=none,id=cd,media=cdrom,readonly=on\n\
                 -device\nide-cd,drive=cd,bootindex=0\n-drive\nfile=/m/dev/disk.qcow2"
            ),
            "{args}"
        );
        assert!(
            !args.contains("-kernel") && !args.contains("-append"),
            "{args}"
        );
    }

    #[test]
    fn shares_are_9p_exports_on_pci_machines() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let shares = shares();
        let mut l = launch(LINUX, Accel::Tcg, "q35", &boot, &p);
        l.shares = &shares;
        let expected = split(
            "-fsdev\nlocal,id=rmshare0,path=/home/me,security_model=none\n\
             -device\nvirtio-9p-pci,fsdev=rmshare0,mount_tag=rmshare0\n\
             -fsdev\nlocal,id=rmshare1,path=/srv/a,,b,security_model=none,readonly=on\n\
             -device\nvirtio-9p-pci,fsdev=rmshare1,mount_tag=rmshare1",
        );
        assert_eq!(tail_after_rng(&vm_args(&l)), expected);
    }

    #[test]
    fn shares_are_mmio_9p_devices_on_microvm() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let shares = shares();
        let mut l = launch(LINUX, Accel::Tcg, "microvm", &boot, &p);
        l.shares = &shares[..1];
        let expected = split(
            "-fsdev\nlocal,id=rmshare0,path=/home/me,security_model=none\n\
             -device\nvirtio-9p-device,fsdev=rmshare0,mount_tag=rmshare0",
        );
        assert_eq!(tail_after_rng(&vm_args(&l)), expected);
    }

    /// [`shares`] with the first one over virtio-fs, and its virtiofsd's socket.
    fn virtio_fs_shares() -> (Vec<Share>, Vec<(String, PathBuf)>) {
        let mut shares = shares();
        shares[0].transport = ShareTransport::VirtioFs;
        let sockets = vec![(
            "rmshare0".to_owned(),
            PathBuf::from("/m/dev/virtiofsd-rmshare0.sock"),
        )];
        (shares, sockets)
    }

    #[test]
    fn virtio_fs_shares_use_shared_memory_and_vhost_user_devices() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let (shares, sockets) = virtio_fs_shares();
        for (machine, machine_arg, device) in [
            ("q35", "q35,memory-backend=mem", "vhost-user-fs-pci"),
            (
                "microvm",
                "microvm,acpi=on,memory-backend=mem",
                "vhost-user-fs-device",
            ),
        ] {
            let mut l = launch(LINUX, Accel::Tcg, machine, &boot, &p);
            l.shares = &shares;
            l.virtiofs_sockets = &sockets;
            let args = vm_args(&l);
            let mut head = format!(
                "-machine\n{machine_arg}\n\
                 -object\nmemory-backend-memfd,id=mem,size=2048M,share=on"
            );
            if machine == "microvm" {
                head.push_str("\n-global\nvirtio-mmio.force-legacy=false");
            }
            let head = split(&head);
            assert_eq!(args[4..4 + head.len()], head[..], "{machine}");
            assert_eq!(args[4 + head.len()], "-cpu", "{machine}");
            let nine_p = if machine == "q35" { "pci" } else { "device" };
            let expected = split(&format!(
                "-chardev\nsocket,id=rmshare0-fs,path=/m/dev/virtiofsd-rmshare0.sock\n\
                 -device\n{device},chardev=rmshare0-fs,tag=rmshare0\n\
                 -fsdev\nlocal,id=rmshare1,path=/srv/a,,b,security_model=none,readonly=on\n\
                 -device\nvirtio-9p-{nine_p},fsdev=rmshare1,mount_tag=rmshare1"
            ));
            assert_eq!(tail_after_rng(&args), expected, "{machine}");
        }
    }

    #[test]
    fn a_microvm_that_takes_boot_snapshots_plugs_virtio_fs_in_later() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let (shares, sockets) = virtio_fs_shares();
        let mut l = launch(LINUX, Accel::Tcg, "microvm", &boot, &p);
        l.shares = &shares;
        l.virtiofs_sockets = &sockets;
        l.boot_snapshot = true;
        let args = vm_args(&l);
        let head = split(
            "-machine
microvm,acpi=on,pcie=on,memory-backend=mem
             -object
memory-backend-memfd,id=mem,size=2048M,share=on
-cpu",
        );
        assert_eq!(args[4..4 + head.len()], head[..]);
        let append = args.iter().position(|a| a == "-append").expect("-append");
        assert!(
            args[append + 1].ends_with(" tsc=reliable pcie_ports=native"),
            "{}",
            args[append + 1]
        );
        // No vhost-user device and no socket on the command line: only the port it goes into.
        let expected = split(
            "-device
pcie-root-port,id=rmfs-port0,bus=pcie.0,chassis=1,slot=1
             -fsdev
local,id=rmshare1,path=/srv/a,,b,security_model=none,readonly=on
             -device
virtio-9p-device,fsdev=rmshare1,mount_tag=rmshare1",
        );
        assert_eq!(tail_after_rng(&args), expected);
        assert!(!args
            .iter()
            .any(|a| a.contains("virtiofsd") || a.contains("force-legacy")));
        assert_eq!(
            virtio_fs_plug_commands(0, &shares[0], &sockets[0].1),
            [
                (
                    "chardev-add",
                    serde_json::json!({"id": "rmshare0-fs", "backend": {"type": "socket", "data": {
                        "addr": {"type": "unix", "data": {"path": "/m/dev/virtiofsd-rmshare0.sock"}},
                        "server": false}}})
                ),
                (
                    "device_add",
                    serde_json::json!({"driver": "vhost-user-fs-pci", "id": "rmshare0-fs-device",
                        "bus": "rmfs-port0", "chardev": "rmshare0-fs", "tag": "rmshare0"})
                ),
            ]
        );
        // Ports count virtio-fs shares only, in the shares' order, a 9p share before them or not.
        let mut mixed = vec![shares[1].clone(), shares[0].clone(), shares[0].clone()];
        mixed[2].tag = "rmshare2".to_owned();
        let mut l = launch(LINUX, Accel::Tcg, "microvm", &boot, &p);
        l.shares = &mixed;
        l.boot_snapshot = true;
        let expected = split(
            "-fsdev\nlocal,id=rmshare1,path=/srv/a,,b,security_model=none,readonly=on\n\
             -device\nvirtio-9p-device,fsdev=rmshare1,mount_tag=rmshare1\n\
             -device\npcie-root-port,id=rmfs-port0,bus=pcie.0,chassis=1,slot=1\n\
             -device\npcie-root-port,id=rmfs-port1,bus=pcie.0,chassis=2,slot=2",
        );
        assert_eq!(tail_after_rng(&vm_args(&l)), expected);
        assert_eq!(
            virtio_fs_plug_commands(1, &mixed[2], &sockets[0].1)[1].1["bus"],
            "rmfs-port1"
        );
        // Without snapshots, and on machines without PCIe hot-plug, they stay where they were.
        for (machine, snapshot) in [
            ("microvm", false),
            ("q35", true),
            ("microvm,acpi=off", true),
        ] {
            assert!(!plugs_virtio_fs_later(machine, snapshot), "{machine}");
            let mut l = launch(LINUX, Accel::Tcg, machine, &boot, &p);
            l.shares = &shares;
            l.virtiofs_sockets = &sockets;
            l.boot_snapshot = snapshot;
            assert!(
                vm_args(&l).iter().any(|a| a.starts_with("vhost-user-fs-")),
                "{machine}"
            );
        }
    }

    #[test]
    fn the_balloon_comes_after_every_other_device() {
        let boot = boot("/img");
        let p = unix_paths("/m/dev");
        let shares = shares();
        let pipe = PathBuf::from("/m/dev/clock");
        let mut l = launch(LINUX, Accel::Tcg, "microvm", &boot, &p);
        l.shares = &shares[..1];
        l.clock_pipe = Some(&pipe);
        let expected = split(
            "-fsdev\nlocal,id=rmshare0,path=/home/me,security_model=none\n\
             -device\nvirtio-9p-device,fsdev=rmshare0,mount_tag=rmshare0\n\
             -device\nvirtio-serial-device\n\
             -chardev\npipe,id=rmclock,path=/m/dev/clock\n\
             -device\nvirtserialport,chardev=rmclock,name=org.rmachine.clock\n\
             -device\nvirtio-balloon-device,free-page-reporting=on\n\
             -serial",
        );
        let args = vm_args(&l);
        let rng = args
            .iter()
            .position(|a| a == "virtio-rng-device")
            .expect("rng");
        assert_eq!(args[rng + 1..rng + 1 + expected.len()], expected[..]);
    }

    #[test]
    fn user_machine_options_are_kept() {
        assert_eq!(machine_arg("microvm,pit=off"), "microvm,pit=off");
        assert_eq!(MachineFamily::of("microvm,pit=off"), MachineFamily::Microvm);
        assert_eq!(MachineFamily::of("pc-q35-7.2"), MachineFamily::Pci);
        assert_eq!(MachineFamily::of("virt-7.2"), MachineFamily::Virt);
    }

    #[test]
    fn macos_hvf_aarch64_virt() {
        let host = HostPlatform {
            os: HostOs::MacOs,
            arch: HostArch::Aarch64,
        };
        let boot = BootImage {
            kernel: "/Users/me/img/Image".into(),
            initrd: "/Users/me/img/initrd.img".into(),
            cmdline: "console=ttyAMA0".into(),
            arch: "aarch64".into(),
            iso: None,
            kernel_elf: None,
            initrd_uncompressed: None,
            features: Vec::new(),
        };
        let p = unix_paths("/Users/me/m/dev");
        let args = vm_args(&launch(host, Accel::Hvf, "virt", &boot, &p));
        let expected = split(
            "-name\ndev\n-accel\nhvf\n-machine\nvirt\n-cpu\nhost\n-smp\n2\n-m\n2048\n\
             -nodefaults\n-no-user-config\n-display\nnone\n\
             -kernel\n/Users/me/img/Image\n-initrd\n/Users/me/img/initrd.img\n\
             -append\nconsole=ttyAMA0\n\
             -drive\nfile=/Users/me/m/dev/disk.qcow2,if=none,id=data,format=qcow2,discard=unmap\n\
             -device\nvirtio-blk-pci,drive=data\n\
             -drive\nfile=/Users/me/m/dev/config.img,if=none,id=config,format=raw,readonly=on\n\
             -device\nvirtio-blk-pci,drive=config\n\
             -netdev\nuser,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376\n\
             -device\nvirtio-net-pci,netdev=net0,romfile=\n\
             -device\nvirtio-rng-pci\n\
             -device\nvirtio-balloon-pci,free-page-reporting=on\n\
             -serial\nfile:/Users/me/m/dev/console.log\n\
             -qmp\nunix:/Users/me/m/dev/qmp.sock,server=on,wait=off\n\
             -pidfile\n/Users/me/m/dev/qemu.pid\n-daemonize",
        );
        assert_eq!(args, expected);
    }

    #[test]
    fn linux_x86_64_host_emulates_an_aarch64_guest_on_virt() {
        let boot = BootImage {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            cmdline: "console=ttyAMA0 quiet".into(),
            arch: "aarch64".into(),
            iso: None,
            kernel_elf: None,
            initrd_uncompressed: None,
            features: Vec::new(),
        };
        let p = unix_paths("/m/dev");
        let mut l = launch(LINUX, Accel::Tcg, "virt", &boot, &p);
        l.guest = HostArch::Aarch64;
        let expected = split(
            "-name\ndev\n-accel\ntcg,tb-size=256\n-machine\nvirt\n-cpu\nmax,pauth-impdef=on\n\
             -smp\n2\n-m\n2048\n-nodefaults\n-no-user-config\n-display\nnone\n\
             -kernel\n/img/vmlinuz\n-initrd\n/img/initrd.img\n\
             -append\nconsole=ttyAMA0 quiet cryptomgr.notests\n\
             -drive\nfile=/m/dev/disk.qcow2,if=none,id=data,format=qcow2,discard=unmap\n\
             -device\nvirtio-blk-pci,drive=data\n\
             -drive\nfile=/m/dev/config.img,if=none,id=config,format=raw,readonly=on\n\
             -device\nvirtio-blk-pci,drive=config\n\
             -netdev\nuser,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376\n\
             -device\nvirtio-net-pci,netdev=net0,romfile=\n\
             -device\nvirtio-rng-pci\n\
             -device\nvirtio-balloon-pci,free-page-reporting=on\n\
             -serial\nfile:/m/dev/console.log\n\
             -qmp\nunix:/m/dev/qmp.sock,server=on,wait=off\n\
             -pidfile\n/m/dev/qemu.pid\n-daemonize",
        );
        assert_eq!(vm_args(&l), expected);
    }

    #[test]
    fn aarch64_tcg_gets_no_tsc_hint() {
        let host = HostPlatform {
            os: HostOs::MacOs,
            arch: HostArch::Aarch64,
        };
        assert_eq!(
            kernel_cmdline("console=ttyAMA0", host.arch, Accel::Tcg, Some(1000), false),
            "console=ttyAMA0 cryptomgr.notests"
        );
        assert_eq!(
            kernel_cmdline("", HostArch::X86_64, Accel::Tcg, Some(1000), false),
            "cryptomgr.notests tsc_early_khz=1000 tsc=reliable"
        );
        assert_eq!(
            kernel_cmdline("a", HostArch::X86_64, Accel::Tcg, None, false),
            "a cryptomgr.notests"
        );
        assert_eq!(
            kernel_cmdline("a", HostArch::X86_64, Accel::Tcg, None, true),
            "a rmachine.boot_snapshot=1 cryptomgr.notests"
        );
    }

    #[test]
    fn a_hypervisor_guest_gets_no_tsc_hint_and_keeps_the_crypto_self_tests() {
        for accel in [Accel::Kvm, Accel::Hvf, Accel::Whpx] {
            assert_eq!(
                kernel_cmdline(
                    "console=ttyS0 quiet",
                    HostArch::X86_64,
                    accel,
                    Some(2_445_432),
                    false
                ),
                "console=ttyS0 quiet",
                "{accel:?}"
            );
        }
    }

    #[test]
    fn windows_whpx_tcp_qmp_no_daemonize() {
        let host = HostPlatform {
            os: HostOs::Windows,
            arch: HostArch::X86_64,
        };
        let dir = r"C:\Users\me\rmachine\machines\dev";
        let boot = BootImage {
            kernel: r"C:\Users\me\rmachine\cache\vmlinuz".into(),
            initrd: r"C:\Users\me\rmachine\cache\initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            arch: "x86_64".into(),
            iso: None,
            kernel_elf: None,
            initrd_uncompressed: None,
            features: Vec::new(),
        };
        let p = Paths {
            disk: format!(r"{dir}\disk.qcow2").into(),
            config: format!(r"{dir}\config.img").into(),
            console: format!(r"{dir}\console.log").into(),
            pid: format!(r"{dir}\qemu.pid").into(),
            qmp: QmpEndpoint::Tcp("127.0.0.1:44444".parse().expect("addr")),
        };
        let args = vm_args(&launch(host, Accel::Whpx, "q35", &boot, &p));
        let expected = split(&format!(
            "-name\ndev\n-accel\nwhpx\n-machine\nq35\n-smp\n2\n-m\n2048\n\
             -nodefaults\n-no-user-config\n-display\nnone\n\
             -kernel\nC:\\Users\\me\\rmachine\\cache\\vmlinuz\n\
             -initrd\nC:\\Users\\me\\rmachine\\cache\\initrd.img\n\
             -append\nconsole=ttyS0\n\
             -drive\nfile={dir}\\disk.qcow2,if=none,id=data,format=qcow2,discard=unmap\n\
             -device\nvirtio-blk-pci,drive=data\n\
             -drive\nfile={dir}\\config.img,if=none,id=config,format=raw,readonly=on\n\
             -device\nvirtio-blk-pci,drive=config\n\
             -netdev\nuser,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:42376-:2376\n\
             -device\nvirtio-net-pci,netdev=net0,romfile=\n\
             -device\nvirtio-rng-pci\n\
             -serial\nfile:{dir}\\console.log\n\
             -qmp\ntcp:127.0.0.1:44444,server=on,wait=off\n\
             -pidfile\n{dir}\\qemu.pid"
        ));
        assert_eq!(args, expected);
    }

    #[test]
    fn commas_in_paths_are_escaped_in_option_values() {
        let boot = boot("/img,x");
        let p = unix_paths("/m/a,b");
        let args = vm_args(&launch(LINUX, Accel::Tcg, "q35", &boot, &p));
        assert!(args.contains(
            &"file=/m/a,,b/disk.qcow2,if=none,id=data,format=qcow2,discard=unmap".to_owned()
        ));
        // -kernel takes a plain path, not an option list.
        assert!(args.contains(&"/img,x/vmlinuz".to_owned()));
        assert!(args.contains(&"unix:/m/a,,b/qmp.sock,server=on,wait=off".to_owned()));
    }

    #[test]
    fn probe_boots_the_kernel_and_exits() {
        let args = probe_args(
            HostArch::X86_64,
            Accel::Kvm,
            "q35",
            Path::new("/img/vmlinuz"),
        );
        let expected = split(
            "-accel\nkvm\n-machine\nq35\n-cpu\nhost\n-smp\n1\n-m\n256\n\
             -nodefaults\n-no-user-config\n-display\nnone\n-kernel\n/img/vmlinuz\n\
             -append\nconsole=ttyS0 panic=-1 root=/dev/rmachine-accel-probe\n\
             -serial\nstdio\n-no-reboot",
        );
        assert_eq!(args, expected);
        let args = probe_args(
            HostArch::Aarch64,
            Accel::Hvf,
            "virt",
            Path::new("/img/Image"),
        );
        assert!(args.contains(&"console=ttyAMA0 panic=-1 root=/dev/rmachine-accel-probe".into()));
    }
}
