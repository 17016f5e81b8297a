//! The host a VM runs on: operating system and CPU architecture.
//!
//! The command-line builder and the accelerator choice take a [`HostPlatform`] as a parameter
//! instead of reading `cfg!`, so unit tests on Linux cover the macOS and Windows command lines.

use serde::{Deserialize, Serialize};

/// Host operating systems QEMU runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOs {
    /// Linux (KVM).
    Linux,
    /// macOS (Hypervisor.framework).
    #[serde(rename = "macos")]
    MacOs,
    /// Windows (Windows Hypervisor Platform).
    Windows,
}

/// Host CPU architectures; the guest has the same one (no cross-architecture emulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostArch {
    /// x86-64.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (Apple Silicon).
    Aarch64,
}

/// Operating system and architecture of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlatform {
    /// The operating system.
    pub os: HostOs,
    /// The CPU architecture.
    pub arch: HostArch,
}

impl HostPlatform {
    /// The platform this program was built for.
    pub fn current() -> Self {
        let os = if cfg!(target_os = "macos") {
            HostOs::MacOs
        } else if cfg!(windows) {
            HostOs::Windows
        } else {
            HostOs::Linux
        };
        let arch = if cfg!(target_arch = "aarch64") {
            HostArch::Aarch64
        } else {
            HostArch::X86_64
        };
        Self { os, arch }
    }

    /// The QEMU system emulator for this architecture.
    pub fn default_program(self) -> &'static str {
        match self.arch {
            HostArch::X86_64 => "qemu-system-x86_64",
            HostArch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The machine type used when `--qemu-machine` is not given.
    ///
    /// Linux x86-64: `microvm` — it boots fastest (no PCI scan, no option ROMs) and, with
    /// `acpi=on`, still delivers the ACPI power button graceful stop relies on (measured in
    /// guest/README.md). Windows x86-64: `q35`, since microvm under WHPX is unproven.
    /// aarch64: `virt`, the only general-purpose ARM machine.
    pub fn default_machine(self) -> &'static str {
        match (self.os, self.arch) {
            (HostOs::Linux, HostArch::X86_64) => "microvm",
            (_, HostArch::X86_64) => "q35",
            (_, HostArch::Aarch64) => "virt",
        }
    }

    /// The guest's first serial port, as the kernel names it (`console=`).
    pub fn serial_console(self) -> &'static str {
        match self.arch {
            HostArch::X86_64 => "ttyS0",
            HostArch::Aarch64 => "ttyAMA0",
        }
    }

    /// What to install when QEMU is missing on this host.
    pub fn install_hint(self) -> &'static str {
        match (self.os, self.arch) {
            (HostOs::MacOs, _) => "install it with `brew install qemu`, or pass --qemu-program",
            (HostOs::Windows, _) => {
                "install QEMU from https://qemu.org/download/#windows and put it on PATH, or \
                 pass --qemu-program"
            }
            (HostOs::Linux, HostArch::X86_64) => {
                "install qemu-system-x86 (Debian/Ubuntu: `apt-get install qemu-system-x86`), \
                 `brew install qemu` (macOS), or pass --qemu-program"
            }
            (HostOs::Linux, HostArch::Aarch64) => {
                "install qemu-system-arm (Debian/Ubuntu: `apt-get install qemu-system-arm`), \
                 or pass --qemu-program"
            }
        }
    }

    /// What to install when `qemu-img` is missing on this host.
    pub fn qemu_img_hint(self) -> &'static str {
        match self.os {
            HostOs::MacOs => "install it with `brew install qemu`, or pass --qemu-img",
            HostOs::Windows => "it ships with QEMU for Windows: put it on PATH, or pass --qemu-img",
            HostOs::Linux => {
                "install qemu-utils (Debian/Ubuntu: `apt-get install qemu-utils`), or pass \
                 --qemu-img"
            }
        }
    }
}
