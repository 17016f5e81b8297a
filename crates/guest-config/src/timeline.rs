//! The boot timeline: when each boot stage was reached, as the guest and the host saw it.
//!
//! rmachine-init prints one console line per stage, [`STAGE_MARKER`] followed by a
//! [`GuestStage`] as JSON, stamped with `CLOCK_BOOTTIME` (milliseconds since the kernel
//! started). The host reads the stages of the last boot from `console.log`
//! ([`last_boot_stages`]); the line of [`Stage::EngineUp`] is also its readiness signal (it
//! then proves readiness with a TLS `/_ping`). The host adds its own stages, measured from the
//! moment the command began, and stores the whole [`BootTimeline`] in the machine's record,
//! where `rmachine inspect` shows it.

use serde::{Deserialize, Serialize};

/// Opens the JSON on a console line that carries a [`GuestStage`].
pub const STAGE_MARKER: &str = "rmachine-boot-stage: ";

/// A stage of the guest's boot, in the order a boot reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// PID 1 runs (after leaving the initramfs rootfs).
    InitStarted,
    /// The device modules (virtio, ext4) are loaded.
    ModulesLoaded,
    /// The data disk is mounted and the configuration applied (or found missing).
    DataDiskMounted,
    /// The network interface has its address.
    NetworkUp,
    /// The SSH server listens.
    SshUp,
    /// The engine process was started.
    EngineStarted,
    /// The engine answers `/_ping` on its unix socket.
    EngineUp,
    /// The engine accepts connections on its TLS port inside the guest.
    TlsListening,
}

impl Stage {
    /// Every stage, in boot order.
    pub const ALL: [Stage; 8] = [
        Stage::InitStarted,
        Stage::ModulesLoaded,
        Stage::DataDiskMounted,
        Stage::NetworkUp,
        Stage::SshUp,
        Stage::EngineStarted,
        Stage::EngineUp,
        Stage::TlsListening,
    ];
}

/// One stage as the guest reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GuestStage {
    /// Which stage.
    pub stage: Stage,
    /// Milliseconds since the kernel started (`CLOCK_BOOTTIME`).
    pub ms: u64,
}

impl GuestStage {
    /// The console line for this stage (without the newline).
    pub fn console_line(&self) -> String {
        // Serializing an enum and a number cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{STAGE_MARKER}{json}")
    }
}

/// A stage the host measures, from the moment `create`/`start` began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostStage {
    /// The hypervisor was asked to start the VM.
    VmStarting,
    /// The hypervisor process runs and answers its control channel.
    VmRunning,
    /// The guest's readiness line was seen on the console.
    GuestSignalled,
    /// The first TLS `/_ping` was sent.
    FirstProbe,
    /// The engine answered TLS `/_ping`: the machine is ready.
    Ready,
}

/// One host-side stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostMark {
    /// Which stage.
    pub stage: HostStage,
    /// Milliseconds since the command began.
    pub ms: u64,
}

/// The timeline of one boot, as `rmachine inspect` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BootTimeline {
    /// The guest's stages, milliseconds since its kernel started.
    pub guest: Vec<GuestStage>,
    /// The host's stages, milliseconds since the command began.
    pub host: Vec<HostMark>,
}

impl BootTimeline {
    /// The guest stages missing from this timeline, in boot order.
    pub fn missing_guest_stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| !self.guest.iter().any(|g| g.stage == *s))
            .collect()
    }

    /// A table for `--timings`: one line per stage, guest stages then host stages.
    pub fn render(&self) -> String {
        let mut out = String::from(if self.guest.is_empty() {
            "guest: no boot stages (resumed from a saved state, or no console captured)\n"
        } else {
            "guest (ms since kernel start):\n"
        });
        for g in &self.guest {
            out.push_str(&format!("  {:>7}  {:?}\n", g.ms, g.stage));
        }
        out.push_str("host (ms since the command began):\n");
        for h in &self.host {
            out.push_str(&format!("  {:>7}  {:?}\n", h.ms, h.stage));
        }
        out
    }
}

/// The stage lines of the last boot on a console log: those after the last
/// [`Stage::InitStarted`] (the log spans every boot of the machine). Lines that do not parse
/// are skipped.
pub fn last_boot_stages(console: &str) -> Vec<GuestStage> {
    let mut stages: Vec<GuestStage> = Vec::new();
    for line in console.lines() {
        let Some((_, json)) = line.split_once(STAGE_MARKER) else {
            continue;
        };
        let Ok(stage) = serde_json::from_str::<GuestStage>(json.trim_end()) else {
            continue;
        };
        if stage.stage == Stage::InitStarted {
            stages.clear();
        }
        stages.push(stage);
    }
    stages
}

/// The last stage the last boot reached, if it printed any.
pub fn last_stage_reached(console: &str) -> Option<Stage> {
    last_boot_stages(console).last().map(|s| s.stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stage: Stage, ms: u64) -> String {
        format!(
            "[   0.000] rmachine-init: {}\n",
            GuestStage { stage, ms }.console_line()
        )
    }

    #[test]
    fn a_timeline_without_guest_stages_says_so() {
        let resumed = BootTimeline {
            guest: Vec::new(),
            host: vec![HostMark {
                stage: HostStage::Ready,
                ms: 800,
            }],
        };
        assert_eq!(
            resumed.render(),
            "guest: no boot stages (resumed from a saved state, or no console captured)\n\
             host (ms since the command began):\n      800  Ready\n"
        );
        let booted = BootTimeline {
            guest: vec![GuestStage {
                stage: Stage::InitStarted,
                ms: 300,
            }],
            host: Vec::new(),
        };
        assert!(booted
            .render()
            .starts_with("guest (ms since kernel start):\n      300  InitStarted\n"));
    }

    #[test]
    fn only_the_last_boot_counts() {
        let console = [
            line(Stage::InitStarted, 300),
            line(Stage::ModulesLoaded, 400),
            line(Stage::EngineUp, 5000),
            "[   9.000] rmachine-init: power off now\n".to_owned(),
            line(Stage::InitStarted, 250),
            format!("[   0.3] rmachine-init: {STAGE_MARKER}{{\"Stage\":\"Mod\n"),
            line(Stage::ModulesLoaded, 310),
        ]
        .concat();
        assert_eq!(
            last_boot_stages(&console),
            vec![
                GuestStage {
                    stage: Stage::InitStarted,
                    ms: 250
                },
                GuestStage {
                    stage: Stage::ModulesLoaded,
                    ms: 310
                },
            ]
        );
        assert_eq!(last_stage_reached(&console), Some(Stage::ModulesLoaded));
        assert_eq!(last_stage_reached("no markers\n"), None);
    }

    #[test]
    fn missing_stages_are_named_in_order() {
        let timeline = BootTimeline {
            guest: vec![GuestStage {
                stage: Stage::InitStarted,
                ms: 1,
            }],
            host: Vec::new(),
        };
        let missing = timeline.missing_guest_stages();
        assert_eq!(missing.first(), Some(&Stage::ModulesLoaded));
        assert_eq!(missing.len(), Stage::ALL.len() - 1);
    }
}
