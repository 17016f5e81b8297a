//! Choosing the accelerator: the best one that really works, in the order kvm → hvf → whpx →
//! tcg (each host has at most one hardware accelerator, so in practice it is "that one, or
//! software emulation").
//!
//! "Really works" is decided by booting the guest kernel, not by looking for `/dev/kvm`.
//! What was measured on the development machine (Debian 12 guest on an AMD EPYC host with
//! nested SVM, QEMU 7.2) shows why:
//!
//! - `/dev/kvm` exists and opens, and `-accel kvm -machine none` starts and answers QMP.
//! - `-cpu host` (and `-cpu max`) abort QEMU as soon as the vCPU is reset: "failed to set MSR
//!   0x10a" (IA32_ARCH_CAPABILITIES), assertion in `kvm_buf_set_msrs`, exit status 134.
//! - With `-cpu host,-arch-capabilities` or `-cpu qemu64` QEMU stays up, and a 64 KiB test
//!   firmware that only runs real-mode code reaches `isa-debug-exit` in 50 ms; one that switches
//!   to protected mode hangs on `pc`/`q35` but not on `microvm`, yet the Linux kernel hangs on
//!   `microvm` too, right after its real-mode setup code ("Probing EDD ... ok", then nothing).
//!
//! So a synthetic probe can pass where the guest hangs. The probe here boots the machine's own
//! kernel with the VM's accelerator, machine and CPU model, no initrd and `panic=-1`: the
//! kernel prints its banner, panics for want of a root filesystem, and `-no-reboot` turns the
//! reboot into a QEMU exit. That costs well under a second where the accelerator works (and the
//! probe runs once, at `create`; the choice is saved in `qemu.json`), and its timeout (4 s)
//! where the guest hangs. Under TCG the same probe takes about 3 s, which is why TCG is never
//! probed: it is the fallback that always works.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rmachine_driver::runner::{CommandRunner, CommandSpec};
use serde::{Deserialize, Serialize};

use crate::args;
use crate::platform::{HostArch, HostOs, HostPlatform};

/// The `--qemu-accel` choices.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelOption {
    /// The best accelerator that works on this host (probed), else software emulation.
    #[default]
    Auto,
    /// Linux KVM.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// Windows Hypervisor Platform.
    Whpx,
    /// Software emulation (QEMU's tiny code generator); slow but always available.
    Tcg,
}

/// An accelerator QEMU runs a VM with.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// Windows Hypervisor Platform.
    Whpx,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerators worth trying for a `guest` on `host`, best first; always ends with
    /// TCG. A hypervisor runs guests of the host's own architecture only.
    pub fn candidates(host: HostPlatform, guest: HostArch) -> &'static [Accel] {
        if guest != host.arch {
            return &[Accel::Tcg];
        }
        match host.os {
            HostOs::Linux => &[Accel::Kvm, Accel::Tcg],
            HostOs::MacOs => &[Accel::Hvf, Accel::Tcg],
            HostOs::Windows => &[Accel::Whpx, Accel::Tcg],
        }
    }

    /// The accelerator to fall back to when this one fails for a `guest` on `host`.
    pub fn fallback(self, host: HostPlatform, guest: HostArch) -> Option<Accel> {
        let candidates = Self::candidates(host, guest);
        let position = candidates.iter().position(|a| *a == self)?;
        candidates.get(position + 1).copied()
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AccelOption {
    /// The accelerator asked for, or `None` for `auto`.
    pub fn fixed(self) -> Option<Accel> {
        match self {
            AccelOption::Auto => None,
            AccelOption::Kvm => Some(Accel::Kvm),
            AccelOption::Hvf => Some(Accel::Hvf),
            AccelOption::Whpx => Some(Accel::Whpx),
            AccelOption::Tcg => Some(Accel::Tcg),
        }
    }

    /// A problem with this option for a `guest` on `host` (an accelerator of another OS, or a
    /// hypervisor for a guest of another architecture), if any.
    pub fn problem_on(self, host: HostPlatform, guest: HostArch) -> Option<String> {
        let accel = self.fixed()?;
        if Accel::candidates(host, guest).contains(&accel) {
            return None;
        }
        if guest != host.arch && Accel::candidates(host, host.arch).contains(&accel) {
            return Some(format!(
                "--qemu-accel {accel} cannot run this {guest} guest: a hypervisor runs guests of \
                 the host's architecture ({}) only; use auto or tcg",
                host.arch
            ));
        }
        let available: Vec<_> = Accel::candidates(host, guest)
            .iter()
            .map(|a| a.as_str())
            .collect();
        Some(format!(
            "--qemu-accel {accel} is not available on this host (choose auto, {})",
            available.join(" or ")
        ))
    }
}

/// The accelerator chosen for a machine and why; saved in `qemu.json` for the host to print.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen, in words for users.
    pub reason: String,
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.accel, self.reason)
    }
}

/// What a probe found out about one accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// A guest boots with it.
    Works,
    /// It does not work here, and why: a firm answer (QEMU exited or crashed with a status).
    Unusable(String),
    /// It did not work this time for a reason that may pass (the kernel ran but its test boot
    /// timed out, on a loaded host; QEMU could not be started), and why; never remembered.
    Unsure(String),
}

/// Finds out whether an accelerator really works on this host.
pub trait AccelProbe: Send + Sync {
    /// Tries `accel`.
    fn probe(&self, accel: Accel) -> impl Future<Output = ProbeResult> + Send;
}

/// Chooses the accelerator for `option` and a `guest` on `host`. A fixed option is taken as is
/// (QEMU's own error tells the user if it fails); `auto` takes the first candidate the probe
/// accepts.
pub async fn choose(
    option: AccelOption,
    host: HostPlatform,
    guest: HostArch,
    probe: &impl AccelProbe,
) -> AccelChoice {
    if let Some(accel) = option.fixed() {
        let choice = AccelChoice {
            accel,
            reason: "requested with --qemu-accel".to_owned(),
        };
        tracing::info!(accel = %choice.accel, "accelerator: {choice}");
        return choice;
    }
    let mut rejected = Vec::new();
    for &accel in Accel::candidates(host, guest) {
        if accel == Accel::Tcg {
            break;
        }
        match probe.probe(accel).await {
            ProbeResult::Works => {
                let choice = AccelChoice {
                    accel,
                    reason: "hardware acceleration: a test boot of the guest kernel succeeded"
                        .to_owned(),
                };
                tracing::info!(accel = %choice.accel, "accelerator: {choice}");
                return choice;
            }
            ProbeResult::Unusable(why) | ProbeResult::Unsure(why) => {
                tracing::info!(accel = %accel, "accelerator {accel} is unusable here: {why}");
                rejected.push(format!("{accel}: {why}"));
            }
        }
    }
    let reason = if guest != host.arch {
        format!(
            "software emulation: the guest is {guest}, the host {}",
            host.arch
        )
    } else if rejected.is_empty() {
        "software emulation: this host has no hardware accelerator QEMU supports".to_owned()
    } else {
        format!("software emulation, because {}", rejected.join("; "))
    };
    let choice = AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    tracing::info!(accel = %choice.accel, "accelerator: {choice}");
    choice
}

/// The real probe: boots the guest kernel under the accelerator with a short timeout (see the
/// module documentation for why nothing cheaper is trustworthy).
pub struct QemuProbe<'a> {
    /// Runs QEMU.
    pub runner: &'a dyn CommandRunner,
    /// The host.
    pub host: HostPlatform,
    /// The guest's architecture.
    pub guest: HostArch,
    /// The QEMU system emulator.
    pub program: &'a str,
    /// The machine type the VM will use.
    pub machine: &'a str,
    /// The guest kernel.
    pub kernel: &'a Path,
    /// How long a working boot may take before the guest counts as hung.
    pub timeout: Duration,
}

/// How long the probe waits for the kernel to boot and panic before calling the guest hung.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// The kernel prints this first; seeing it proves the accelerator ran the kernel proper.
const KERNEL_BANNER: &str = "Linux version";

impl QemuProbe<'_> {
    async fn try_accel(&self, accel: Accel) -> ProbeResult {
        if let Some(why) = static_check(self.host, accel) {
            return ProbeResult::Unusable(why);
        }
        let argv = args::probe_args(self.guest, accel, self.machine, self.kernel);
        let cmd = CommandSpec::new(self.program)
            .args(argv)
            .timeout(self.timeout)
            .install_hint(self.host.install_hint(self.guest));
        let out = match self.runner.run(&cmd).await {
            Ok(out) => out,
            Err(err) => return ProbeResult::Unsure(err.to_string()),
        };
        if out.timed_out {
            // A kernel that printed its banner ran, only too slowly (a loaded host): asked
            // again at the next create. One that printed nothing never ran: under a working
            // accelerator the banner comes within milliseconds, so that is a firm answer and
            // later creates on this host do not pay the timeout again.
            let seconds = self.timeout.as_secs();
            return if out.stdout_text().contains(KERNEL_BANNER) {
                ProbeResult::Unsure(format!(
                    "a test boot of the guest kernel did not finish within {seconds}s"
                ))
            } else {
                ProbeResult::Unusable(format!(
                    "a test boot of the guest kernel printed nothing within {seconds}s (the \
                     guest hangs)"
                ))
            };
        }
        if out.status != 0 {
            let stderr = out.stderr_text();
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.contains("warning:"))
                .unwrap_or("no error message");
            let how = if out.status == -1 {
                "QEMU crashed".to_owned()
            } else {
                format!("QEMU exited with status {}", out.status)
            };
            return ProbeResult::Unusable(format!("{how} during a test boot: {}", last.trim()));
        }
        if !out.stdout_text().contains(KERNEL_BANNER) {
            return ProbeResult::Unusable(
                "a test boot of the guest kernel printed nothing on the serial console".to_owned(),
            );
        }
        ProbeResult::Works
    }
}

impl AccelProbe for QemuProbe<'_> {
    fn probe(&self, accel: Accel) -> impl Future<Output = ProbeResult> + Send {
        self.try_accel(accel)
    }
}

/// A probe's answers remembered in a file, so that only the first `create` on a host pays for
/// the test boot (0.1–0.3 s where QEMU aborts, the whole timeout where the guest hangs). Only
/// firm answers are remembered: a boot that works, QEMU exiting or crashing with a status, a
/// guest that printed nothing before the timeout; a kernel that ran but timed out, or a QEMU
/// that cannot be started, may pass ([`ProbeResult::Unsure`]) and is asked again at the next
/// create. An answer is reused
/// only for the same QEMU binary, kernel file (each by path, length and modification time),
/// host kernel release, probe format, machine type and accelerator; anything else probes again.
/// `/dev/kvm` being openable is checked on every create ([`static_check`]), so a host that
/// loses or gains it is not misjudged.
pub struct CachedProbe<'a, P> {
    /// The probe that really boots.
    pub inner: &'a P,
    /// The host, for the checks made before any cache or probe.
    pub host: HostPlatform,
    /// The file of remembered answers (`cache/qemu-accel-probe.json` in the store).
    pub file: std::path::PathBuf,
    /// What the answers depend on besides the accelerator; `None` (a binary or kernel that
    /// cannot be found) disables the cache.
    pub key: Option<String>,
}

/// Where a store keeps the probe's answers, from a machine directory (`STORE/machines/NAME`
/// → `STORE/cache/qemu-accel-probe.json`); `None` for a directory outside a store's
/// `machines/`, which then gets no cache.
pub fn probe_cache_file(machine_dir: &Path) -> Option<std::path::PathBuf> {
    let machines = machine_dir.parent()?;
    if machines.file_name()? != "machines" {
        return None;
    }
    Some(
        machines
            .parent()?
            .join("cache")
            .join("qemu-accel-probe.json"),
    )
}

/// One remembered answer: `None` for "works", else why not.
type CachedAnswers = std::collections::BTreeMap<String, Option<String>>;

/// What the test boot does and how its outcome is read; raise it when either changes, so that
/// answers remembered by an older rmachine are not trusted.
const PROBE_FORMAT: u32 = 2;

impl<P: AccelProbe> CachedProbe<'_, P> {
    /// What a probe's answer depends on: the probe's format and rmachine's version, the host
    /// kernel's release (a KVM fix arrives with a kernel update), the QEMU binary (resolved on
    /// `PATH`), the guest kernel, the machine type. `None` if any of them cannot be found.
    pub fn key_for(program: &str, kernel: &Path, machine: &str) -> Option<String> {
        Self::key_with_release(program, kernel, machine, &host_kernel_release()?)
    }

    fn key_with_release(
        program: &str,
        kernel: &Path,
        machine: &str,
        release: &str,
    ) -> Option<String> {
        let binary = find_program(program)?;
        let stamp = |path: &Path| -> Option<String> {
            let meta = std::fs::metadata(path).ok()?;
            let mtime = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(format!(
                "{}:{}:{}",
                path.display(),
                meta.len(),
                mtime.as_nanos()
            ))
        };
        Some(format!(
            "probe{PROBE_FORMAT}:{}|{release}|{}|{}|{machine}",
            env!("CARGO_PKG_VERSION"),
            stamp(&binary)?,
            stamp(kernel)?
        ))
    }

    fn read(&self) -> CachedAnswers {
        std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    async fn probe_cached(&self, accel: Accel) -> ProbeResult {
        let Some(key) = &self.key else {
            return self.inner.probe(accel).await;
        };
        if let Some(why) = static_check(self.host, accel) {
            return ProbeResult::Unusable(why);
        }
        let key = format!("{key}|{accel}");
        if let Some(answer) = self.read().get(&key) {
            tracing::debug!(%accel, file = %self.file.display(), "accelerator probe answered from the cache");
            return match answer {
                None => ProbeResult::Works,
                Some(why) => ProbeResult::Unusable(format!(
                    "{why} (remembered from an earlier test boot in {}; delete that file to test \
                     again)",
                    self.file.display()
                )),
            };
        }
        let result = self.inner.probe(accel).await;
        let answer = match &result {
            ProbeResult::Works => None,
            ProbeResult::Unusable(why) => Some(why.clone()),
            ProbeResult::Unsure(_) => return result,
        };
        let mut answers = self.read();
        answers.insert(key, answer);
        // Losing the cache only costs the next create a probe: no error for the user. Each
        // writer has its own temporary file, so creates running at once never mix their bytes.
        let written = serde_json::to_vec_pretty(&answers)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let parent = self.file.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent)?;
                let mut tmp = tempfile::Builder::new()
                    .prefix(".qemu-accel-probe")
                    .tempfile_in(parent)?;
                std::io::Write::write_all(&mut tmp, &bytes)?;
                tmp.persist(&self.file).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(err) = written {
            tracing::warn!(file = %self.file.display(), "cannot remember the accelerator probe's answer: {err}");
        }
        result
    }
}

impl<P: AccelProbe> AccelProbe for CachedProbe<'_, P> {
    fn probe(&self, accel: Accel) -> impl Future<Output = ProbeResult> + Send {
        self.probe_cached(accel)
    }
}

/// The host kernel's release (`uname -r`), `None` where it cannot be found out.
pub(crate) fn host_kernel_release() -> Option<String> {
    let release = if cfg!(target_os = "linux") {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?
    } else {
        // macOS: the Darwin release; Windows: `ver` prints the build.
        let (program, args): (&str, &[&str]) = if cfg!(windows) {
            ("cmd", &["/c", "ver"])
        } else {
            ("uname", &["-r"])
        };
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?
    };
    let release = release.trim();
    (!release.is_empty()).then(|| release.to_owned())
}

/// `program` as a file: itself if it names a path, else the first match on `PATH` (on
/// Windows also with each of `PATHEXT`'s extensions, as the shell finds `qemu-system-x86_64`
/// as `qemu-system-x86_64.exe`).
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let names = program_names(program, std::env::var_os("PATHEXT").as_deref());
    let path = Path::new(program);
    if path.components().count() > 1 {
        return names.into_iter().find(|name| name.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The file names `program` may have: itself, then (on Windows, for a name without an
/// extension) itself with each extension of `pathext`.
fn program_names(program: &str, pathext: Option<&std::ffi::OsStr>) -> Vec<std::path::PathBuf> {
    let mut names = vec![std::path::PathBuf::from(program)];
    if cfg!(windows) && Path::new(program).extension().is_none() {
        let pathext = pathext
            .and_then(|p| p.to_str())
            .unwrap_or(".COM;.EXE;.BAT;.CMD");
        names.extend(
            pathext
                .split(';')
                .filter(|ext| !ext.is_empty())
                .map(|ext| std::path::PathBuf::from(format!("{program}{}", ext.to_lowercase()))),
        );
    }
    names
}

/// Reasons to skip the QEMU run altogether.
fn static_check(host: HostPlatform, accel: Accel) -> Option<String> {
    if host.os == HostOs::Linux && accel == Accel::Kvm {
        let dev = Path::new("/dev/kvm");
        if let Err(err) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            return Some(format!("cannot open /dev/kvm: {err}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rmachine_driver::runner::{CannedReply, CommandOutput, RecordingRunner};

    use super::*;
    use crate::platform::HostArch;

    struct FakeProbe {
        answers: Vec<(Accel, ProbeResult)>,
        asked: Mutex<Vec<Accel>>,
    }

    impl FakeProbe {
        fn new(answers: Vec<(Accel, ProbeResult)>) -> Self {
            Self {
                answers,
                asked: Mutex::new(Vec::new()),
            }
        }
        fn asked(&self) -> Vec<Accel> {
            self.asked.lock().map(|a| a.clone()).unwrap_or_default()
        }
    }

    impl AccelProbe for FakeProbe {
        async fn probe(&self, accel: Accel) -> ProbeResult {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push(accel);
            }
            self.answers
                .iter()
                .find(|(a, _)| *a == accel)
                .map(|(_, r)| r.clone())
                .unwrap_or(ProbeResult::Unusable("not expected".into()))
        }
    }

    const LINUX: HostPlatform = HostPlatform {
        os: HostOs::Linux,
        arch: HostArch::X86_64,
    };
    const MAC: HostPlatform = HostPlatform {
        os: HostOs::MacOs,
        arch: HostArch::Aarch64,
    };
    const WINDOWS: HostPlatform = HostPlatform {
        os: HostOs::Windows,
        arch: HostArch::X86_64,
    };

    #[tokio::test]
    async fn auto_takes_kvm_when_it_boots() {
        let probe = FakeProbe::new(vec![(Accel::Kvm, ProbeResult::Works)]);
        let choice = choose(AccelOption::Auto, LINUX, HostArch::X86_64, &probe).await;
        assert_eq!(choice.accel, Accel::Kvm);
        assert_eq!(probe.asked(), vec![Accel::Kvm]);
    }

    #[tokio::test]
    async fn auto_falls_back_to_tcg_and_says_why() {
        let probe = FakeProbe::new(vec![(
            Accel::Kvm,
            ProbeResult::Unusable("the guest hangs".into()),
        )]);
        let choice = choose(AccelOption::Auto, LINUX, HostArch::X86_64, &probe).await;
        assert_eq!(choice.accel, Accel::Tcg);
        assert_eq!(
            choice.to_string(),
            "tcg (software emulation, because kvm: the guest hangs)"
        );
    }

    #[tokio::test]
    async fn auto_probes_hvf_on_macos_and_whpx_on_windows() {
        let probe = FakeProbe::new(vec![(Accel::Hvf, ProbeResult::Works)]);
        assert_eq!(
            choose(AccelOption::Auto, MAC, HostArch::Aarch64, &probe)
                .await
                .accel,
            Accel::Hvf
        );
        let probe = FakeProbe::new(vec![(Accel::Whpx, ProbeResult::Works)]);
        assert_eq!(
            choose(AccelOption::Auto, WINDOWS, HostArch::X86_64, &probe)
                .await
                .accel,
            Accel::Whpx
        );
        assert_eq!(probe.asked(), vec![Accel::Whpx]);
    }

    #[tokio::test]
    async fn fixed_choice_is_not_probed() {
        let probe = FakeProbe::new(vec![]);
        let choice = choose(AccelOption::Kvm, LINUX, HostArch::X86_64, &probe).await;
        assert_eq!(choice.accel, Accel::Kvm);
        assert_eq!(choice.reason, "requested with --qemu-accel");
        assert!(probe.asked().is_empty());
    }

    #[tokio::test]
    async fn a_guest_of_another_architecture_gets_tcg_without_probing() {
        let probe = FakeProbe::new(vec![(Accel::Kvm, ProbeResult::Works)]);
        let choice = choose(AccelOption::Auto, LINUX, HostArch::Aarch64, &probe).await;
        assert_eq!(
            choice.to_string(),
            "tcg (software emulation: the guest is aarch64, the host x86_64)"
        );
        assert!(probe.asked().is_empty());
        assert_eq!(Accel::Tcg.fallback(LINUX, HostArch::Aarch64), None);
        assert_eq!(
            AccelOption::Kvm
                .problem_on(LINUX, HostArch::Aarch64)
                .as_deref(),
            Some(
                "--qemu-accel kvm cannot run this aarch64 guest: a hypervisor runs guests of the \
                 host's architecture (x86_64) only; use auto or tcg"
            )
        );
        assert_eq!(
            AccelOption::Hvf
                .problem_on(MAC, HostArch::X86_64)
                .as_deref(),
            Some(
                "--qemu-accel hvf cannot run this x86_64 guest: a hypervisor runs guests of the \
                 host's architecture (aarch64) only; use auto or tcg"
            )
        );
        assert_eq!(AccelOption::Tcg.problem_on(LINUX, HostArch::Aarch64), None);
    }

    #[test]
    fn fallback_order_ends_with_tcg() {
        let x86 = HostArch::X86_64;
        assert_eq!(Accel::Kvm.fallback(LINUX, x86), Some(Accel::Tcg));
        assert_eq!(
            Accel::Hvf.fallback(MAC, HostArch::Aarch64),
            Some(Accel::Tcg)
        );
        assert_eq!(Accel::Whpx.fallback(WINDOWS, x86), Some(Accel::Tcg));
        assert_eq!(Accel::Tcg.fallback(LINUX, x86), None);
    }

    #[test]
    fn foreign_accelerators_are_rejected() {
        assert_eq!(
            AccelOption::Hvf
                .problem_on(LINUX, HostArch::X86_64)
                .as_deref(),
            Some("--qemu-accel hvf is not available on this host (choose auto, kvm or tcg)")
        );
        assert_eq!(AccelOption::Kvm.problem_on(LINUX, HostArch::X86_64), None);
        assert_eq!(AccelOption::Auto.problem_on(MAC, HostArch::Aarch64), None);
    }

    /// A QEMU binary and a kernel to key the cache on.
    fn probe_files(dir: &Path) -> (String, std::path::PathBuf) {
        let program = dir.join("qemu-system-x86_64");
        std::fs::write(&program, "qemu").expect("program");
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, "kernel").expect("kernel");
        (program.to_string_lossy().into_owned(), kernel)
    }

    /// A cache in `dir` for a macOS host, whose hvf has no check before the probe, so every
    /// answer below comes from the cache or the fake probe on any host the tests run on.
    fn cached_in<'a>(
        dir: &Path,
        inner: &'a FakeProbe,
        key: Option<String>,
    ) -> CachedProbe<'a, FakeProbe> {
        CachedProbe {
            inner,
            host: MAC,
            file: dir.join("cache/qemu-accel-probe.json"),
            key,
        }
    }

    fn key(program: &str, kernel: &Path, machine: &str, release: &str) -> Option<String> {
        CachedProbe::<FakeProbe>::key_with_release(program, kernel, machine, release)
    }

    #[tokio::test]
    async fn a_probe_answer_is_remembered_until_qemu_the_kernel_or_the_host_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (program, kernel) = probe_files(tmp.path());
        let file = tmp.path().join("cache/qemu-accel-probe.json");
        let inner = FakeProbe::new(vec![(
            Accel::Hvf,
            ProbeResult::Unusable("QEMU crashed during a test boot".into()),
        )]);
        let key0 = key(&program, &kernel, "microvm", "24.1.0");
        assert!(key0.is_some());
        let first = cached_in(tmp.path(), &inner, key0.clone())
            .probe(Accel::Hvf)
            .await;
        let second = cached_in(tmp.path(), &inner, key0.clone())
            .probe(Accel::Hvf)
            .await;
        assert_eq!(
            first,
            ProbeResult::Unusable("QEMU crashed during a test boot".into())
        );
        assert_eq!(
            second,
            ProbeResult::Unusable(format!(
                "QEMU crashed during a test boot (remembered from an earlier test boot in {}; \
                 delete that file to test again)",
                file.display()
            ))
        );
        assert_eq!(
            inner.asked(),
            vec![Accel::Hvf],
            "probed once for two creates"
        );
        // Another machine type, host kernel release, or a rebuilt QEMU, is probed afresh.
        let other = key(&program, &kernel, "q35", "24.1.0");
        cached_in(tmp.path(), &inner, other).probe(Accel::Hvf).await;
        let updated_host = key(&program, &kernel, "microvm", "24.2.0");
        assert_ne!(updated_host, key0);
        cached_in(tmp.path(), &inner, updated_host)
            .probe(Accel::Hvf)
            .await;
        std::fs::write(&program, "qemu, upgraded").expect("upgrade");
        let upgraded = key(&program, &kernel, "microvm", "24.1.0");
        assert_ne!(upgraded, key0);
        cached_in(tmp.path(), &inner, upgraded)
            .probe(Accel::Hvf)
            .await;
        assert_eq!(inner.asked().len(), 4);
        // A damaged cache file only means another probe.
        std::fs::write(&file, "{not json").expect("damage");
        cached_in(tmp.path(), &inner, key0).probe(Accel::Hvf).await;
        assert_eq!(inner.asked().len(), 5);
        // The key carries the probe's format and this host's kernel release.
        let real = CachedProbe::<FakeProbe>::key_for(&program, &kernel, "microvm")
            .expect("a key on this host");
        assert!(real.starts_with(&format!("probe{PROBE_FORMAT}:")), "{real}");
        assert!(real.contains(&format!("|{}|", host_kernel_release().expect("release"))));
        assert_eq!(
            CachedProbe::<FakeProbe>::key_for("no-such-qemu-here", &kernel, "microvm"),
            None
        );
        assert_eq!(
            probe_cache_file(Path::new("/store/machines/dev")).as_deref(),
            Some(Path::new("/store/cache/qemu-accel-probe.json"))
        );
        assert_eq!(probe_cache_file(Path::new("/tmp/dev")), None);
    }

    #[tokio::test]
    async fn a_working_accelerator_is_remembered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (program, kernel) = probe_files(tmp.path());
        let inner = FakeProbe::new(vec![(Accel::Hvf, ProbeResult::Works)]);
        let key0 = key(&program, &kernel, "virt", "24.1.0");
        for _ in 0..2 {
            let choice = choose(
                AccelOption::Auto,
                MAC,
                HostArch::Aarch64,
                &cached_in(tmp.path(), &inner, key0.clone()),
            )
            .await;
            assert_eq!(choice.accel, Accel::Hvf);
        }
        assert_eq!(
            inner.asked(),
            vec![Accel::Hvf],
            "probed once for two creates"
        );
        // No temporary file is left beside the cache.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
            .expect("cache dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("qemu-accel-probe.json")]
        );
    }

    #[tokio::test]
    async fn a_timed_out_or_unstarted_probe_is_asked_again_at_the_next_create() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (program, kernel) = probe_files(tmp.path());
        let key0 = key(&program, &kernel, "virt", "24.1.0");
        for why in [
            "a test boot of the guest kernel did not finish within 4s",
            "cannot start qemu-system-aarch64: Resource temporarily unavailable",
        ] {
            let inner = FakeProbe::new(vec![(Accel::Hvf, ProbeResult::Unsure(why.into()))]);
            for _ in 0..2 {
                let choice = choose(
                    AccelOption::Auto,
                    MAC,
                    HostArch::Aarch64,
                    &cached_in(tmp.path(), &inner, key0.clone()),
                )
                .await;
                assert_eq!(choice.accel, Accel::Tcg);
                assert_eq!(
                    choice.reason,
                    format!("software emulation, because hvf: {why}")
                );
            }
            assert_eq!(inner.asked(), vec![Accel::Hvf, Accel::Hvf], "{why}");
        }
        assert!(!tmp.path().join("cache/qemu-accel-probe.json").exists());
    }

    #[test]
    fn windows_finds_qemu_by_its_pathext_extensions() {
        let names = program_names(
            "qemu-system-x86_64",
            Some(std::ffi::OsStr::new(".COM;.EXE")),
        );
        if cfg!(windows) {
            assert_eq!(
                names,
                [
                    "qemu-system-x86_64",
                    "qemu-system-x86_64.com",
                    "qemu-system-x86_64.exe"
                ]
                .map(std::path::PathBuf::from)
            );
        } else {
            assert_eq!(names, [std::path::PathBuf::from("qemu-system-x86_64")]);
        }
        assert_eq!(
            program_names("qemu.exe", None),
            [std::path::PathBuf::from("qemu.exe")]
        );
    }

    /// An Intel Mac: hvf has no check before the QEMU run, so the probe's reading of QEMU's
    /// outcome is tested on any host (with kvm it would need an openable `/dev/kvm`).
    const INTEL_MAC: HostPlatform = HostPlatform {
        os: HostOs::MacOs,
        arch: HostArch::X86_64,
    };

    fn hvf_probe_argv() -> Vec<String> {
        let mut argv = vec!["qemu-system-x86_64".to_owned()];
        argv.extend(args::probe_args(
            HostArch::X86_64,
            Accel::Hvf,
            "q35",
            Path::new("/img/vmlinuz"),
        ));
        argv
    }

    async fn probe_replying(reply: CannedReply) -> ProbeResult {
        let runner = RecordingRunner::default();
        runner.expect(hvf_probe_argv(), reply);
        let probe = QemuProbe {
            runner: &runner,
            host: INTEL_MAC,
            guest: HostArch::X86_64,
            program: "qemu-system-x86_64",
            machine: "q35",
            kernel: Path::new("/img/vmlinuz"),
            timeout: PROBE_TIMEOUT,
        };
        let result = probe.probe(Accel::Hvf).await;
        runner.assert_done();
        result
    }

    async fn probe_with(out: CommandOutput) -> ProbeResult {
        probe_replying(CannedReply::Output(out)).await
    }

    #[tokio::test]
    async fn qemu_probe_reads_the_boot_outcome() {
        let booted = CommandOutput::success(
            "[    0.000000] Linux version 6.1.0\n[ 0.5] Kernel panic - not syncing: VFS\n",
        );
        assert_eq!(probe_with(booted).await, ProbeResult::Works);
        assert_eq!(
            probe_with(CommandOutput::timeout("")).await,
            ProbeResult::Unusable(
                "a test boot of the guest kernel printed nothing within 4s (the guest hangs)"
                    .into()
            )
        );
        // The kernel ran but did not get to its panic in time: slow, maybe only this time.
        assert_eq!(
            probe_with(CommandOutput::timeout(
                "[    0.000000] Linux version 6.1.0\n"
            ))
            .await,
            ProbeResult::Unsure("a test boot of the guest kernel did not finish within 4s".into())
        );
        let aborted = CommandOutput::failure(
            134,
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu-system-x86_64: \
             ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n",
        );
        assert_eq!(
            probe_with(aborted).await,
            ProbeResult::Unusable(
                "QEMU exited with status 134 during a test boot: qemu-system-x86_64: \
                 ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed."
                    .into()
            )
        );
        assert_eq!(
            probe_with(CommandOutput::success("")).await,
            ProbeResult::Unusable(
                "a test boot of the guest kernel printed nothing on the serial console".into()
            )
        );
        // A QEMU that cannot be started may be fixed by the next create: not a firm answer.
        assert!(
            matches!(
                probe_replying(CannedReply::Missing).await,
                ProbeResult::Unsure(_)
            ),
            "a runner error is unsure"
        );
    }
}
