//! The contract between `rmachine-engine` and `rmachine-runtime`.
//!
//! # Invocation
//!
//! `rmachine-runtime run DIR` where `DIR/runtime.json` holds a [`RuntimeSpec`].
//!
//! * The runtime's stdin, stdout and stderr become the container process's (pipes, or the slave
//!   side of a PTY the engine opened when [`Process::terminal`] is set).
//! * File descriptor [`SYNC_FD`] is a pipe to the engine. The runtime writes exactly one
//!   [`SyncMessage`] as a JSON line: `Started` once the container's process has successfully
//!   `execve`d, or `Failed` if anything before that failed (bad rootfs, command not found…).
//! * The runtime stays alive as the container's monitor and exits with the container's status:
//!   the process's exit code, or 128+N if it was killed by signal N (Docker's convention). When
//!   it reports `Failed` it exits with [`Failed::exit_code`].
//! * Without fd [`SYNC_FD`] (a person running the runtime by hand) a failure is printed on stderr
//!   instead, as `rmachine-runtime: container ID: MESSAGE`. With it, stderr is left alone: it is
//!   the container's log, and the engine reports the failure itself.
//! * Every container gets what Docker gives by default and the spec does not (yet) let the
//!   engine change: Docker's default capability set (`CapEff 00000000a80425fb` for root, none for
//!   other users), Docker's masked paths (`/proc/keys`, `/sys/firmware`…) and read-only paths
//!   (`/proc/sys`…), and a private `/dev` with `/dev/pts` of its own. With
//!   [`Process::terminal`], the engine's PTY slave is also bound on `/dev/console` (its only name
//!   inside, so `tty` prints `/dev/console`, where Docker's runc-made PTY prints `/dev/pts/0`).
//! * The engine stops a container by signalling [`SyncMessage::Started`]'s `pid` (a host PID)
//!   directly. The monitor sets `PR_SET_PDEATHSIG` so a dying engine takes its containers along;
//!   on restart the engine finds them exited, as Docker does without live-restore. The signal
//!   fires when the *thread* that spawned the runtime ends, so spawn it from a long-lived thread.
//!   The container's process is PID 1 of its namespace: the kernel drops signals it has no
//!   handler for (SIGTERM included) except SIGKILL, which is why `docker stop` escalates.
//!
//! `rmachine-runtime exec DIR EXEC_JSON` runs one more process in a running container (`docker
//! exec`). `DIR` is the container's state directory (its `runtime.json` names the container in
//! messages); `EXEC_JSON` is the path of a file holding an [`ExecSpec`]. The runtime joins the
//! pid, ipc, uts, net and mount namespaces of [`ExecSpec::pid`] (so the process sees the
//! container's root, as `setns` into a mount namespace enters its topmost root mount), enters
//! [`Process::cwd`] (not created: a missing one is an error, as with runc) and execs. Stdio, the
//! sync pipe, the single [`SyncMessage`] (whose `pid` is the exec'd process's host PID) and the
//! exit status follow the same contract as `run`; nothing is mounted, and the process is not
//! PID 1. It gets the same capabilities as the container's first process.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file descriptor number the engine passes as the sync pipe.
pub const SYNC_FD: i32 = 3;

/// File name of the spec inside the container state directory.
pub const SPEC_FILE: &str = "runtime.json";

/// Everything the runtime needs to start one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// The container's full id (64 hex characters); used in messages and cgroup names.
    pub id: String,
    /// The overlay root filesystem.
    pub rootfs: Rootfs,
    /// The process to run as the container's PID 1.
    pub process: Process,
    /// Hostname inside the UTS namespace (Docker: the first 12 characters of the id).
    pub hostname: String,
    /// Extra mounts applied after the standard /proc, /sys, /dev set (binds, tmpfs, volumes).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Files bind-mounted from the engine's state dir (/etc/hosts, /etc/hostname,
    /// /etc/resolv.conf), as Docker does.
    #[serde(default)]
    pub etc_files: Vec<EtcFile>,
    /// Mount the root filesystem read-only (`--read-only`).
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Network namespace: a new one with loopback only, or an existing one the engine prepared.
    #[serde(default)]
    pub network: NetworkNamespace,
}

/// The layers of the root filesystem, mounted as overlayfs inside the container's mount
/// namespace (so the mount disappears with the container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rootfs {
    /// Read-only image layers, topmost first (overlayfs `lowerdir` order).
    pub lower_dirs: Vec<PathBuf>,
    /// The container's writable layer.
    pub upper_dir: PathBuf,
    /// Overlayfs work directory, on the same filesystem as `upper_dir`.
    pub work_dir: PathBuf,
    /// Where the overlay is mounted before `pivot_root`.
    pub merged_dir: PathBuf,
}

/// The container's main process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container; created if missing, as Docker does.
    pub cwd: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Stdio is a PTY slave: the runtime makes it the controlling terminal.
    #[serde(default)]
    pub terminal: bool,
}

/// One mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    /// What to mount.
    pub kind: MountKind,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// The kinds of mount the runtime knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum MountKind {
    /// A bind mount of a host path (file or directory).
    Bind {
        /// Host path.
        source: PathBuf,
    },
    /// A tmpfs with mount options such as `size=64m,mode=1777`.
    Tmpfs {
        /// Comma-separated tmpfs options.
        options: String,
    },
}

/// A file prepared by the engine and bind-mounted over a path in /etc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcFile {
    /// Host path of the prepared file.
    pub source: PathBuf,
    /// Path inside the container, e.g. `/etc/hosts`.
    pub destination: String,
}

/// How the container gets its network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum NetworkNamespace {
    /// A fresh namespace with only `lo`, brought up by the runtime.
    #[default]
    Loopback,
    /// Join an existing namespace (a bind-mounted `/proc/PID/ns/net` the engine prepared).
    Path {
        /// Path of the namespace file.
        path: PathBuf,
    },
    /// Share the host's network namespace (`--network host`).
    Host,
}

/// One more process to run in a running container (`rmachine-runtime exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecSpec {
    /// Host PID of the container's PID 1 ([`SyncMessage::Started`]'s `pid`): the process whose
    /// namespaces are joined.
    pub pid: i32,
    /// The process to run. The engine merges the container's environment with the exec's, as
    /// Docker does; the runtime uses `env` as given.
    pub process: Process,
}

/// The one message the runtime sends on [`SYNC_FD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum SyncMessage {
    /// The container process exists; `pid` is its PID in the engine's PID namespace.
    Started {
        /// Host PID of the container's PID 1.
        pid: i32,
    },
    /// Setup failed; nothing is running.
    Failed(Failed),
}

/// Why a container could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failed {
    /// Docker-style message, e.g. `exec: "nope": executable file not found in $PATH`.
    pub message: String,
    /// Docker's exit code for the failure: 127 not found, 126 not executable, else 1.
    pub exit_code: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_messages_are_one_tagged_json_line() {
        let started = serde_json::to_string(&SyncMessage::Started { pid: 42 }).unwrap();
        assert_eq!(started, r#"{"status":"started","pid":42}"#);
        let failed = SyncMessage::Failed(Failed {
            message: "exec: \"x\": executable file not found in $PATH".into(),
            exit_code: 127,
        });
        let line = serde_json::to_string(&failed).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<SyncMessage>(&line).unwrap(), failed);
    }
}
