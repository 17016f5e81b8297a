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
//! * `runtime.json` is read as a [`SpecFile`]: the [`RuntimeSpec`] keys plus the optional
//!   [`Features`] keys (limits and cgroup, capabilities, `--privileged`, `--init`, console
//!   socket, namespaces, `/dev/shm`, rlimits, sysctls, devices, OOM score) in the same object;
//!   a file without them gets Docker's defaults.
//! * Every container gets what Docker gives by default: Docker's default capability set
//!   (`CapEff 00000000a80425fb` for root, none for other users) changed by
//!   [`Features::capabilities`], Docker's masked paths (`/proc/keys`, `/sys/firmware`…) and
//!   read-only paths (`/proc/sys`…) unless [`Features::privileged`], a private `/dev` with
//!   `/dev/pts` of its own, and a cgroup (see [`Features`]). Unless privileged, device nodes it
//!   makes cannot be opened: its root, `/dev` and tmpfs mounts are `nodev` and its cgroup allows
//!   only Docker's default devices ([`crate::cgroup::devices`], an eBPF program on v2). With [`Process::terminal`] and no
//!   [`Features::console_socket`], the engine's PTY slave is bound on `/dev/console` (its only
//!   name inside, so `tty` prints `/dev/console`); with a console socket the PTY is the
//!   container's own `/dev/pts/0`, as with runc.
//! * The engine stops a container by signalling [`SyncMessage::Started`]'s `pid` (a host PID)
//!   directly. The monitor sets `PR_SET_PDEATHSIG` so a dying engine takes its containers along;
//!   on restart the engine finds them exited, as Docker does without live-restore. The engine
//!   passes its PID in [`PARENT_PID_ENV`]; a monitor that finds, once the signal is armed, that
//!   its parent is no longer that PID (the engine died before) exits without running anything
//!   of the container. The signal
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
//! PID 1. It gets the same capabilities as the container's first process (from `DIR`'s spec)
//! and joins the container's cgroup. `EXEC_JSON` is read as an [`ExecFile`], which may add a
//! `consoleSocket` for `docker exec -t`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file descriptor number the engine passes as the sync pipe.
pub const SYNC_FD: i32 = 3;

/// Environment variable in which the engine passes its own PID to the runtime: once the
/// monitor has armed `PR_SET_PDEATHSIG` it checks that this process is still its parent, and
/// gives up if the engine died before (see the module docs).
pub const PARENT_PID_ENV: &str = "RMACHINE_PARENT_PID";

/// File name of the spec inside the container state directory.
pub const SPEC_FILE: &str = "runtime.json";

/// File the monitor creates (empty) in the container state directory, after the container
/// exited and before the monitor exits, when the kernel's OOM killer killed a process of the
/// container (Docker's `State.OOMKilled`). The engine should remove it before each start.
pub const OOM_KILLED_FILE: &str = "oom-killed";

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
    /// Bind propagation (`rprivate`, `shared`, `rslave`...), applied to the mount once made;
    /// empty: what the container's root gives it (slave of the host's mounts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub propagation: String,
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

/// What `runtime.json` holds: a [`RuntimeSpec`] and, beside its keys in the same JSON object,
/// the optional [`Features`].
///
/// The features are a separate struct (flattened into the same object) so that code building a
/// [`RuntimeSpec`] literal keeps compiling; a spec without any feature key is read as
/// [`Features::default`], so older `runtime.json` files keep working. Example:
///
/// ```json
/// { "id": "…", "rootfs": {…}, "process": {…}, "hostname": "0123456789ab",
///   "resources": { "memoryBytes": 67108864, "cpuQuota": 50000, "cpuPeriod": 100000,
///                  "pidsLimit": 100 },
///   "cgroupParent": "rmachine",
///   "capabilities": { "add": ["NET_ADMIN"], "drop": ["CHOWN"] },
///   "privileged": false, "init": true, "consoleSocket": "/run/rmachine/c/console.sock" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecFile {
    /// The base spec.
    #[serde(flatten)]
    pub spec: RuntimeSpec,
    /// The optional features.
    #[serde(flatten)]
    pub features: Features,
}

/// The default [`Features::cgroup_parent`], as Docker's `docker` parent.
pub const DEFAULT_CGROUP_PARENT: &str = "rmachine";

/// Optional container features (Docker's `HostConfig` knobs); every one defaults to Docker's
/// default behaviour.
///
/// # Cgroups
///
/// Every container gets a cgroup, created by the monitor before the container's first process
/// runs (the process is moved in before it execs) and removed after it exits: on a cgroup v2
/// host `/sys/fs/cgroup/PARENT/ID` (the controllers are enabled in each ancestor's
/// `cgroup.subtree_control`), on a v1 or hybrid host `/sys/fs/cgroup/CONTROLLER/PARENT/ID` for
/// each hierarchy of [`crate::cgroup::V1_CONTROLLERS`] the host has (runc's set: `memory`,
/// `cpu`, `cpuacct`, `pids`, `freezer`, `devices`, `cpuset` — its CPUs and memory nodes copied
/// from the parent —, `blkio` and the named `systemd`). The engine acts on a running
/// container's cgroup in-process with [`crate::cgroup::Cgroup::for_container`] (pause, update,
/// stats, top). `docker exec` processes join the same cgroup.
///
/// What the container sees: on v2 a private cgroup namespace and `cgroup2` on
/// `/sys/fs/cgroup`; on v1 (host cgroup namespace, as Docker there) a tmpfs on
/// `/sys/fs/cgroup` with its own directory of each hierarchy bound on
/// `/sys/fs/cgroup/CONTROLLER` (so `memory/memory.limit_in_bytes` is its limit). Both are
/// read-only unless [`Features::privileged`].
///
/// # Console socket
///
/// With [`Process::terminal`] and [`Features::console_socket`] set, the runtime makes the PTY
/// itself, inside the container's own `/dev/pts` (so `tty` prints `/dev/pts/0`, as with runc),
/// and the runtime's own stdio is not given to the container. Protocol:
/// 1. before spawning the runtime, the engine binds and listens on a unix stream socket at the
///    path (a host path);
/// 2. the runtime, after mounting the container's devpts and before the container's process
///    runs, connects once and sends one message: the data is the slave's path inside the
///    container (e.g. `/dev/pts/0`, UTF-8, no newline) and one `SCM_RIGHTS` control message
///    carrying exactly one descriptor, the PTY master; then it closes the connection;
/// 3. the engine accepts, receives the master (use `recvmsg` with room for one descriptor) and
///    uses it as the container's terminal: writes are the container's input, reads its output
///    (`EIO` once every slave descriptor is closed), `TIOCSWINSZ` on it resizes. The engine
///    should accept before reading the sync pipe: the runtime blocks in `connect`/`sendmsg`
///    until the engine has accepted (a listen backlog of 1 suffices), and a failure to connect
///    ends in [`SyncMessage::Failed`].
///
/// The same field in [`ExecFile`] gives `docker exec -t` its own `/dev/pts/N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Resource limits (`--memory`, `--cpus`, `--pids-limit`…); `None` means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The cgroup parent (`--cgroup-parent`), a relative path under the cgroup root; `None`
    /// means [`DEFAULT_CGROUP_PARENT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// `--cap-add`/`--cap-drop`, on top of Docker's default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitySpec>,
    /// `--privileged`: every capability, no masked or read-only kernel paths, every host device
    /// in `/dev`, `/sys` read-write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// `--init`: a tiny init is PID 1 (shown as `/sbin/docker-init -- CMD…`), runs the command
    /// as its child, forwards signals to it, reaps zombies and exits with its status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// Where to send the PTY master (see the type's docs); only with [`Process::terminal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
    /// No seccomp filter: `--security-opt seccomp=unconfined`, and `--privileged` (the engine
    /// sets it for both). Without it the runtime installs
    /// [`crate::seccomp::Filter::docker_default`] for the process's capabilities, also for a
    /// `docker exec --privileged` in a filtered container, as runc does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seccomp_unconfined: bool,
    /// `--security-opt no-new-privileges`: `execve` of a setuid or file-capability binary
    /// gains nothing (`PR_SET_NO_NEW_PRIVS`); inherited by `exec` processes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// `--shm-size` in bytes, the size of `/dev/shm`; `None`: Docker's default, 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// The pid, ipc, uts and cgroup namespaces (`--pid`, `--ipc`, `--uts`, `--cgroupns`).
    #[serde(default, skip_serializing_if = "Namespaces::is_default")]
    pub namespaces: Namespaces,
    /// What the container's `/dev/shm` is (`--ipc`).
    #[serde(default, skip_serializing_if = "DevShm::is_default")]
    pub dev_shm: DevShm,
    /// `--ulimit`: set with `setrlimit` in the container's first process before it execs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// `--sysctl` (and `--domainname` as `kernel.domainname`, as Docker does): written under
    /// `/proc/sys` once the container's namespaces exist. Only keys of a namespace the container
    /// has of its own are accepted (runc's rule, see [`check_sysctls`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `--device`: host device nodes made available at a path in the container, each with its
    /// device cgroup allow rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// `--device-cgroup-rule`: more device cgroup allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_rules: Vec<DeviceAllow>,
    /// `--oom-score-adj`, written to `/proc/self/oom_score_adj` before the process execs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

/// How the container gets one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum Namespace {
    /// A new one of its own (Docker's `private`, `shareable`, `none`).
    #[default]
    Private,
    /// The host's (the runtime's own): nothing is created.
    Host,
    /// Join an existing one: the engine gives `/proc/PID/ns/KIND` of another container's
    /// PID 1 (`container:ID`).
    Path {
        /// Path of the namespace file.
        path: PathBuf,
    },
}

/// The namespaces besides mount and network (see [`NetworkNamespace`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespaces {
    /// `--pid`: the monitor creates (or joins) it before forking the container's process,
    /// which is PID 1 only in a private one.
    #[serde(default)]
    pub pid: Namespace,
    /// `--ipc`.
    #[serde(default)]
    pub ipc: Namespace,
    /// `--uts`: with [`Namespace::Host`] the hostname is not set.
    #[serde(default)]
    pub uts: Namespace,
    /// `--cgroupns`; `None` is Docker's default: private on cgroup v2, the host's on v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Namespace>,
}

impl Namespaces {
    /// Whether every namespace is Docker's default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The container's `/dev/shm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum DevShm {
    /// A tmpfs of its own, [`Features::shm_size`] big.
    #[default]
    Tmpfs,
    /// No `/dev/shm` at all (`--ipc none`).
    None,
    /// A bind of a host directory: the host's `/dev/shm` (`--ipc host`), or the tmpfs the
    /// engine mounted for a `shareable` container (its own and its `container:ID` joiners'). It
    /// MUST be a mount of the runtime's mount namespace: the kernel refuses to bind one of
    /// another namespace (such as a path through `/proc/PID/root`).
    Bind {
        /// Host path of the directory bound.
        source: PathBuf,
    },
}

impl DevShm {
    /// Whether this is the default tmpfs.
    pub fn is_default(&self) -> bool {
        *self == Self::Tmpfs
    }
}

/// One `--ulimit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rlimit {
    /// Docker's name (`nofile`, `nproc`, `core`…), see [`rlimit_resource`].
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The `RLIMIT_*` number of a Docker ulimit name (go-units' table); `None` when unknown.
pub fn rlimit_resource(name: &str) -> Option<i32> {
    let resource = match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    };
    // The constants are small and typed c_uint with glibc, c_int with musl.
    #[allow(clippy::unnecessary_cast)]
    i32::try_from(resource as u32).ok()
}

/// One `--device`: the host's node `source` appears at `destination` in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Host path of the device node (symlinks already resolved).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    /// The node's type, major and minor, and the access granted (`--device`'s permissions).
    pub allow: DeviceAllow,
}

/// A device cgroup allow rule, as `--device-cgroup-rule` writes it (`c 1:3 rwm`, `a *:* m`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAllow {
    /// `c`, `b` or `a` (both).
    pub kind: char,
    /// The major number; `None` is `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    /// The minor number; `None` is `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    /// Some of `r`, `w`, `m`.
    pub access: String,
}

/// Why a [`DeviceAllow`] rule text is invalid: moby's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceRuleError {
    /// Not `TYPE MAJOR:MINOR ACCESS`.
    #[error("invalid device cgroup rule format: '{rule}'")]
    Format {
        /// The rule as given.
        rule: String,
    },
    /// The major number is not a number.
    #[error("invalid major value in device cgroup rule format: '{rule}'")]
    Major {
        /// The rule as given.
        rule: String,
    },
    /// The minor number is not a number.
    #[error("invalid minor value in device cgroup rule format: '{rule}'")]
    Minor {
        /// The rule as given.
        rule: String,
    },
}

impl std::str::FromStr for DeviceAllow {
    type Err = DeviceRuleError;

    /// Parses moby's `^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$`.
    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let format = || DeviceRuleError::Format { rule: rule.into() };
        let parts: Vec<&str> = rule.split(' ').collect();
        let [kind, numbers, access] = parts[..] else {
            return Err(format());
        };
        let kind = match kind {
            "a" | "b" | "c" => kind.chars().next().ok_or_else(format)?,
            _ => return Err(format()),
        };
        let (major, minor) = numbers.split_once(':').ok_or_else(format)?;
        let number = |text: &str, err: DeviceRuleError| match text {
            "*" => Ok(None),
            t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                t.parse::<u32>().map(Some).map_err(|_| err)
            }
            _ => Err(format()),
        };
        let major = number(major, DeviceRuleError::Major { rule: rule.into() })?;
        let minor = number(minor, DeviceRuleError::Minor { rule: rule.into() })?;
        if access.is_empty() || access.len() > 3 || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(format());
        }
        Ok(Self {
            kind,
            major,
            minor,
            access: access.into(),
        })
    }
}

/// Why a `--sysctl` cannot be applied: runc's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    /// An IPC sysctl without a private IPC namespace.
    #[error("sysctl {key:?} is not allowed in the hosts ipc namespace")]
    HostIpc {
        /// The key.
        key: String,
    },
    /// A `net.` sysctl in the host's network namespace.
    #[error("sysctl {key:?} is not allowed in the hosts network namespace")]
    HostNetwork {
        /// The key.
        key: String,
    },
    /// `kernel.hostname`, which has its own field.
    #[error("sysctl {key:?} is not allowed as it conflicts with the OCI \"hostname\" field")]
    Hostname {
        /// The key.
        key: String,
    },
    /// A key with an empty or `..` component, which could name a path outside its namespace's
    /// directory (`net/../kernel/core_pattern`).
    #[error("sysctl {key:?} is not a valid sysctl name")]
    Invalid {
        /// The key.
        key: String,
    },
    /// Anything else: it would change the host.
    #[error("sysctl {key:?} is not in a separate kernel namespace")]
    NotNamespaced {
        /// The key.
        key: String,
    },
}

/// The IPC sysctls outside `fs.mqueue.` (runc's list).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace (its name under `/proc/self/ns/`) whose copy of sysctl `key` a write
/// changes, `None` for a key that is not namespaced.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    let name = key.replace('/', ".");
    if IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if name.starts_with("net.") {
        Some("net")
    } else if matches!(name.as_str(), "kernel.domainname" | "kernel.hostname") {
        Some("uts")
    } else {
        None
    }
}

/// The refusal of sysctl `key`, which would be written in the host's `namespace`.
pub fn host_namespace_refusal(key: &str, namespace: &str) -> SysctlError {
    let key = key.to_string();
    match namespace {
        "ipc" => SysctlError::HostIpc { key },
        "net" => SysctlError::HostNetwork { key },
        _ => SysctlError::NotNamespaced { key },
    }
}

/// runc's check of `sysctls`: each key must belong to a namespace the container has of its
/// own (`/` separators count as dots). `private_net` is whether the network namespace is not
/// the host's. Every problem is reported.
pub fn check_sysctls<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    namespaces: &Namespaces,
    private_net: bool,
) -> Vec<SysctlError> {
    let own = |ns: &Namespace| *ns != Namespace::Host;
    keys.into_iter()
        .filter_map(|key| {
            let name = key.replace('/', ".");
            let key = key.clone();
            // `.` and `/` both separate components, so `..` cannot appear in a valid key.
            if name.split('.').any(str::is_empty) {
                return Some(SysctlError::Invalid { key });
            }
            if IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
                return (!own(&namespaces.ipc)).then_some(SysctlError::HostIpc { key });
            }
            if name.starts_with("net.") {
                return (!private_net).then_some(SysctlError::HostNetwork { key });
            }
            match name.as_str() {
                "kernel.domainname" if own(&namespaces.uts) => None,
                "kernel.hostname" if own(&namespaces.uts) => Some(SysctlError::Hostname { key }),
                _ => Some(SysctlError::NotNamespaced { key }),
            }
        })
        .collect()
}

impl Features {
    /// Whether the container's processes run under the default seccomp filter.
    pub fn seccomp_filtered(&self) -> bool {
        !self.seccomp_unconfined
    }
}

/// Resource limits, Docker's `HostConfig` units. Each `None` leaves the limit alone (unlimited
/// on a new container).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// `--memory` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// `--memory-swap` in bytes: memory plus swap, `-1` for unlimited swap (Docker's meaning).
    /// Docker's daemon sets it to twice `--memory` when only `--memory` is given; the engine
    /// does that, the runtime writes what it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_swap_bytes: Option<i64>,
    /// CFS quota in microseconds per [`Resources::cpu_period`] (`--cpus 1.5` → 150000 with a
    /// period of 100000); `-1` or `0` removes the quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds (`--cpus` uses 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// `--cpu-shares` (relative weight, 1024 is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`; `0` or negative means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// `--cpuset-cpus` (`0-1`, `0,2`): `cpuset.cpus` of the container's cgroup (v2: the cpuset
    /// controller is enabled for containers; v1: every container has a cpuset cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
    /// `--cpuset-mems`, as [`Resources::cpuset_cpus`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_mems: Option<String>,
}

/// `--cap-add` and `--cap-drop`, with Docker's names: `NET_ADMIN` or `CAP_NET_ADMIN` in any
/// case, or `ALL`. Applied to Docker's default set: adds first, then drops (so
/// `--cap-add ALL --cap-drop CHOWN` is everything but CHOWN). An unknown name fails the start
/// with Docker's message (`invalid CapAdd: unknown capability: "CAP_FOO"`); the engine can check
/// at create time with [`crate::caps::capability_mask`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitySpec {
    /// Capabilities to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Capabilities to drop.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// What the exec spec file holds: an [`ExecSpec`] and, in the same JSON object, the optional
/// `consoleSocket` (see [`Features`]; only with [`Process::terminal`]) and `privileged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFile {
    /// The base exec spec.
    #[serde(flatten)]
    pub exec: ExecSpec,
    /// Where to send the exec's PTY master.
    #[serde(
        default,
        rename = "consoleSocket",
        skip_serializing_if = "Option::is_none"
    )]
    pub console_socket: Option<PathBuf>,
    /// `docker exec --privileged`: the process gets every capability, whatever the
    /// container's; absent (older engines) means the container's capabilities.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
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
    fn a_spec_without_features_reads_as_defaults_and_features_are_camel_case() {
        let spec = RuntimeSpec {
            id: "c".repeat(64),
            rootfs: Rootfs {
                lower_dirs: vec!["/l".into()],
                upper_dir: "/u".into(),
                work_dir: "/w".into(),
                merged_dir: "/m".into(),
            },
            process: Process {
                args: vec!["sh".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                terminal: true,
            },
            hostname: "cccccccccccc".into(),
            mounts: vec![],
            etc_files: vec![],
            readonly_rootfs: false,
            network: NetworkNamespace::Host,
        };
        // What an engine that knows nothing of the features writes.
        let old = serde_json::to_string(&spec).unwrap();
        let file: SpecFile = serde_json::from_str(&old).unwrap();
        assert_eq!(file.spec, spec);
        assert_eq!(file.features, Features::default());
        // Default features add no keys.
        assert_eq!(serde_json::to_string(&file).unwrap().len(), old.len());

        let with: SpecFile = serde_json::from_str(&old.replacen(
            '{',
            r#"{"resources":{"memoryBytes":67108864,"cpuQuota":150000,"cpuPeriod":100000,"pidsLimit":100},"cgroupParent":"docker","capabilities":{"add":["NET_ADMIN"]},"privileged":true,"init":true,"consoleSocket":"/run/c.sock","seccompUnconfined":true,"noNewPrivileges":true,"shmSize":134217728,"#,
            1,
        ))
        .unwrap();
        assert_eq!(with.spec, spec);
        assert_eq!(
            with.features,
            Features {
                resources: Some(Resources {
                    memory_bytes: Some(64 << 20),
                    cpu_quota: Some(150_000),
                    cpu_period: Some(100_000),
                    pids_limit: Some(100),
                    ..Resources::default()
                }),
                cgroup_parent: Some("docker".into()),
                capabilities: Some(CapabilitySpec {
                    add: vec!["NET_ADMIN".into()],
                    drop: vec![],
                }),
                privileged: true,
                init: true,
                console_socket: Some("/run/c.sock".into()),
                seccomp_unconfined: true,
                no_new_privileges: true,
                shm_size: Some(128 << 20),
                ..Features::default()
            }
        );

        let exec: ExecFile = serde_json::from_str(&format!(
            r#"{{"pid":7,"process":{},"consoleSocket":"/s"}}"#,
            serde_json::to_string(&spec.process).unwrap()
        ))
        .unwrap();
        assert_eq!(exec.exec.pid, 7);
        assert_eq!(exec.console_socket, Some("/s".into()));
    }

    #[test]
    fn container_options_are_camel_case_and_tagged() {
        let features: Features = serde_json::from_str(
            r#"{"namespaces":{"pid":{"mode":"host"},"ipc":{"mode":"path","path":"/proc/7/ns/ipc"},"cgroup":{"mode":"private"}},
                "devShm":{"mode":"bind","source":"/data/containers/d/shm"},
                "rlimits":[{"name":"nofile","soft":100,"hard":200}],
                "sysctls":{"kernel.shmmax":"1000"},
                "devices":[{"source":"/dev/null","destination":"/dev/mynull","allow":{"kind":"c","major":1,"minor":3,"access":"rw"}}],
                "deviceRules":[{"kind":"a","access":"m"}],
                "oomScoreAdj":500}"#,
        )
        .unwrap();
        assert_eq!(features.namespaces.pid, Namespace::Host);
        assert_eq!(
            features.namespaces.ipc,
            Namespace::Path {
                path: "/proc/7/ns/ipc".into()
            }
        );
        assert_eq!(features.namespaces.uts, Namespace::Private);
        assert_eq!(features.namespaces.cgroup, Some(Namespace::Private));
        assert_eq!(
            features.dev_shm,
            DevShm::Bind {
                source: "/data/containers/d/shm".into()
            }
        );
        assert_eq!(features.rlimits[0].hard, 200);
        assert_eq!(features.devices[0].allow.minor, Some(3));
        assert_eq!(features.device_rules[0].major, None);
        assert_eq!(features.oom_score_adj, Some(500));
        let back: Features =
            serde_json::from_str(&serde_json::to_string(&features).unwrap()).unwrap();
        assert_eq!(back, features);
    }

    #[test]
    fn device_cgroup_rules_parse_as_moby_does() {
        let rule: DeviceAllow = "c 1:3 rwm".parse().unwrap();
        assert_eq!(
            rule,
            DeviceAllow {
                kind: 'c',
                major: Some(1),
                minor: Some(3),
                access: "rwm".into()
            }
        );
        let any: DeviceAllow = "a *:* m".parse().unwrap();
        assert_eq!((any.major, any.minor), (None, None));
        for bad in [
            "x 1:3 rwm",
            "c 1:3",
            "c 1-3 rwm",
            "c 1:3 rwx",
            "c a:3 r",
            "c 1:3 rwmr",
        ] {
            assert_eq!(
                bad.parse::<DeviceAllow>().unwrap_err().to_string(),
                format!("invalid device cgroup rule format: '{bad}'")
            );
        }
        assert_eq!(
            "c 99999999999:3 r"
                .parse::<DeviceAllow>()
                .unwrap_err()
                .to_string(),
            "invalid major value in device cgroup rule format: 'c 99999999999:3 r'"
        );
    }

    #[test]
    fn only_namespaced_sysctls_pass_with_runcs_texts() {
        let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let private = Namespaces::default();
        let ok = keys(&[
            "kernel.shmmax",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "kernel.domainname",
            "net/ipv4/ping_group_range",
        ]);
        assert_eq!(check_sysctls(&ok, &private, true), vec![]);
        let errors = |list: &[&str], ns: &Namespaces, net: bool| {
            check_sysctls(&keys(list), ns, net)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            errors(&["vm.max_map_count", "kernel.hostname"], &private, true),
            vec![
                "sysctl \"vm.max_map_count\" is not in a separate kernel namespace",
                "sysctl \"kernel.hostname\" is not allowed as it conflicts with the OCI \"hostname\" field",
            ]
        );
        assert_eq!(
            errors(
                &[
                    "net/../kernel/core_pattern",
                    "net.ipv4..x",
                    "net.",
                    "kernel.sem/"
                ],
                &private,
                true
            ),
            vec![
                "sysctl \"net/../kernel/core_pattern\" is not a valid sysctl name",
                "sysctl \"net.ipv4..x\" is not a valid sysctl name",
                "sysctl \"net.\" is not a valid sysctl name",
                "sysctl \"kernel.sem/\" is not a valid sysctl name",
            ]
        );
        let host = Namespaces {
            ipc: Namespace::Host,
            uts: Namespace::Host,
            ..Namespaces::default()
        };
        assert_eq!(
            errors(
                &["kernel.sem", "net.ipv4.ip_forward", "kernel.domainname"],
                &host,
                false
            ),
            vec![
                "sysctl \"kernel.sem\" is not allowed in the hosts ipc namespace",
                "sysctl \"net.ipv4.ip_forward\" is not allowed in the hosts network namespace",
                "sysctl \"kernel.domainname\" is not in a separate kernel namespace",
            ]
        );
    }

    #[test]
    fn ulimit_names_map_to_rlimit_numbers() {
        assert_eq!(rlimit_resource("nofile"), Some(7));
        assert_eq!(rlimit_resource("nproc"), Some(6));
        assert_eq!(rlimit_resource("bogus"), None);
    }

    #[test]
    fn exec_files_without_privileged_read_as_unprivileged() {
        let old = r#"{"pid":7,"process":{"args":["id"],"env":[],"cwd":"/","uid":0,"gid":0}}"#;
        let file: ExecFile = serde_json::from_str(old).unwrap();
        assert!(!file.privileged);
        assert!(!serde_json::to_string(&file).unwrap().contains("privileged"));
        let privileged = ExecFile {
            privileged: true,
            ..file
        };
        let json = serde_json::to_string(&privileged).unwrap();
        assert!(json.contains(r#""privileged":true"#), "{json}");
        assert_eq!(serde_json::from_str::<ExecFile>(&json).unwrap(), privileged);
    }

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
