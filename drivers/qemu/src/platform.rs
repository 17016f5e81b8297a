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

/// CPU architectures: the host's, and the guest's (`--qemu-arch`). A guest of another
/// architecture than the host's runs under software emulation (TCG) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HostArch {
    /// x86-64.
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    /// 64-bit ARM (Apple Silicon).
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl HostArch {
    /// The name guest manifests and QEMU's programs use (`x86_64`, `aarch64`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostArch::X86_64 => "x86_64",
            HostArch::Aarch64 => "aarch64",
        }
    }

    /// The architecture a guest manifest's `arch` names (Debian's and Docker's names, `amd64`
    /// and `arm64`, are accepted too).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "x86_64" | "amd64" => Some(HostArch::X86_64),
            "aarch64" | "arm64" => Some(HostArch::Aarch64),
            _ => None,
        }
    }

    /// The QEMU system emulator for a guest of this architecture.
    pub fn qemu_program(self) -> &'static str {
        match self {
            HostArch::X86_64 => "qemu-system-x86_64",
            HostArch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// A guest's first serial port, as its kernel names it (`console=`): the 8250 UART of the
    /// PC machines, the PL011 of ARM `virt`.
    pub fn serial_console(self) -> &'static str {
        match self {
            HostArch::X86_64 => "ttyS0",
            HostArch::Aarch64 => "ttyAMA0",
        }
    }
}

impl std::fmt::Display for HostArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    /// The machine type used for a `guest` when `--qemu-machine` is not given.
    ///
    /// x86-64 guests on Linux: `microvm` — it boots fastest (no PCI scan, no option ROMs) and,
    /// with `acpi=on`, still delivers the ACPI power button graceful stop relies on (measured
    /// in guest/README.md). Elsewhere `q35`, since microvm under WHPX or HVF is unproven.
    /// aarch64 guests: `virt`, the only general-purpose ARM machine.
    pub fn default_machine(self, guest: HostArch) -> &'static str {
        match (self.os, guest) {
            (HostOs::Linux, HostArch::X86_64) => "microvm",
            (_, HostArch::X86_64) => "q35",
            (_, HostArch::Aarch64) => "virt",
        }
    }

    /// What to install when the QEMU for a `guest` is missing on this host.
    pub fn install_hint(self, guest: HostArch) -> &'static str {
        match (self.os, guest) {
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
