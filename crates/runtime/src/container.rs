//! What the container's first process does between `fork` and `execve`.
//!
//! [`setup`] runs in the child the monitor forked (already PID 1 of the new PID namespace):
//! it enters the remaining namespaces, builds the rootfs ([`crate::rootfs`]), takes the
//! container's hostname, working directory, session, terminal, capabilities and identity, and
//! resolves the command. [`setup_exec`] is its counterpart for `docker exec`: it joins the
//! namespaces of a running container instead of making them, then does the same last steps.
//! [`exec`] then replaces the process. Everything goes through [`Syscall`], so the whole
//! sequence is checked by unit tests with a [`crate::syscall::RecordingSyscall`].

use std::error::Error as _;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::caps::{self, CapabilityError};
use crate::lookup::{self, LookupError};
use crate::rootfs::{self, RootfsError, RootfsOptions};
use crate::spec::{self, Failed, Features, Namespace, NetworkNamespace, Process, RuntimeSpec};
use crate::syscall::{CloneFlags, Errno, FileKind, SysError, Syscall};

/// The umask containers start with, as under Docker.
const CONTAINER_UMASK: u32 = 0o022;

pub use crate::caps::DEFAULT_CAPABILITIES;

/// Capability numbers are below 64 (two 32-bit halves in `capset(2)`).
const MAX_CAPABILITIES: u32 = 64;

/// [`DEFAULT_CAPABILITIES`] as a mask (`0xa80425fb`, the `CapEff` Docker users know).
pub fn default_capability_mask() -> u64 {
    caps::default_mask()
}

/// Where `docker-init` appears to live: the title an `--init` container's PID 1 shows in `ps`.
pub const INIT_PATH: &str = "/sbin/docker-init";

/// A failure before the container's process is running.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Creating or joining a namespace failed.
    #[error("{what}")]
    Namespace {
        /// What was done (`new mount, uts, ipc, net namespace`, `join net namespace /path`…).
        what: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Bringing `lo` up in the new network namespace failed.
    #[error("bring up loopback interface")]
    Loopback {
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The root filesystem could not be assembled.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// `sethostname` failed.
    #[error("set hostname {hostname:?}")]
    Hostname {
        /// The hostname from the spec.
        hostname: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The working directory could not be created or entered.
    #[error("chdir to cwd ({cwd:?}) set in config.json failed")]
    Cwd {
        /// The working directory from the spec.
        cwd: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Changing user, group or supplementary groups failed.
    #[error("set {what} {id}")]
    Identity {
        /// `uid`, `gid` or `groups`.
        what: &'static str,
        /// The id (or ids) asked for.
        id: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// A `--cap-add` or `--cap-drop` name is unknown.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// A `--sysctl` could not be written.
    #[error("write sysctl key {key}")]
    Sysctl {
        /// The key.
        key: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// A `--sysctl` would change the host.
    #[error(transparent)]
    SysctlRefused(#[from] spec::SysctlError),
    /// A `--ulimit` name is unknown.
    #[error("invalid ulimit type: {name}")]
    RlimitName {
        /// The name.
        name: String,
    },
    /// `setrlimit` failed (a hard limit above the runtime's own without `CAP_SYS_RESOURCE`).
    #[error("error setting rlimit type {resource}")]
    Rlimit {
        /// The `RLIMIT_*` number, as runc names it.
        resource: i32,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// `/proc/self/oom_score_adj` could not be written.
    #[error("set oom_score_adj to {value}")]
    OomScoreAdj {
        /// The value asked for.
        value: i32,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The engine's console socket could not be reached.
    #[error("connect to console socket {}", path.display())]
    ConsoleSocket {
        /// The socket's path.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Dropping capabilities failed.
    #[error("drop capabilities")]
    Capabilities {
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The PTY on stdin could not become the controlling terminal.
    #[error("set controlling terminal")]
    Terminal {
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Signals or descriptors could not be reset for the new program.
    #[error("prepare process: {what}")]
    Process {
        /// The step that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The spec has no command.
    #[error("no command specified")]
    NoCommand,
    /// An argument or environment entry contains a NUL byte.
    #[error("argument or environment entry with a nul byte: {value:?}")]
    NulByte {
        /// The offending string.
        value: String,
    },
    /// The command was not found or is not executable.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// `execve` itself failed.
    #[error("exec: {name:?}")]
    Exec {
        /// The command as given.
        name: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

impl ContainerError {
    /// The [`Failed`] message for the engine: the whole cause chain, Docker's way
    /// (`exec: "/etc/passwd": permission denied`).
    pub fn to_failed(&self) -> Failed {
        let mut message = self.to_string();
        // `transparent` variants forward `source` to their inner error's cause, so the chain
        // never repeats a message.
        let mut cause = self.source();
        while let Some(err) = cause {
            message.push_str(": ");
            message.push_str(&err.to_string());
            cause = err.source();
        }
        Failed {
            message,
            exit_code: self.exit_code(),
        }
    }

    /// Docker's exit code: 127 not found, 126 not executable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Lookup(err) => err.exit_code(),
            Self::Exec { source, .. } => match source.0 {
                Errno::ENOENT | Errno::ENOTDIR => 127,
                Errno::EACCES | Errno::EISDIR => 126,
                _ => 1,
            },
            _ => 1,
        }
    }
}

/// A resolved command, ready for `execve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The command as the spec gave it (for messages).
    pub name: String,
    /// The file to execute.
    pub path: PathBuf,
    /// argv.
    pub argv: Vec<CString>,
    /// envp.
    pub envp: Vec<CString>,
}

/// Prepares the container around the calling process (see the module docs).
///
/// MUST run in a single-threaded child that is already in the container's new PID namespace;
/// it changes the namespaces, root and credentials of the calling process for good.
pub fn setup(spec: &RuntimeSpec, sys: &dyn Syscall) -> Result<Exec, ContainerError> {
    setup_with(spec, &Features::default(), sys)
}

/// How a container sees cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CgroupView {
    /// No cgroup filesystem inside (hosts without cgroups).
    #[default]
    Hidden,
    /// Docker's default on v1 hosts (the host's cgroup namespace): a tmpfs on
    /// `/sys/fs/cgroup` with each hierarchy's container directory bind-mounted at
    /// `/sys/fs/cgroup/NAME`, all read-only unless privileged, as runc mounts them. Pairs of
    /// NAME and host directory ([`crate::cgroup::Cgroup::v1_dirs`]).
    HostV1(Vec<(String, PathBuf)>),
    /// Docker's default on v2 hosts: a private cgroup namespace rooted at the container's
    /// cgroup (the process MUST already be in it) and `cgroup2` on `/sys/fs/cgroup`, read-only
    /// unless privileged, so `cat /sys/fs/cgroup/memory.max` shows the container's limit.
    Private,
}

/// [`setup`] with the optional [`Features`]: capabilities, privilege, the console socket and
/// the `--init` title.
pub fn setup_with(
    spec: &RuntimeSpec,
    features: &Features,
    sys: &dyn Syscall,
) -> Result<Exec, ContainerError> {
    setup_in(spec, features, CgroupView::Hidden, sys)
}

/// [`setup_with`] with the container's view of cgroups.
pub fn setup_in(
    spec: &RuntimeSpec,
    features: &Features,
    cgroups: CgroupView,
    sys: &dyn Syscall,
) -> Result<Exec, ContainerError> {
    // Checked first: a bad name must fail before anything is built.
    let capabilities = caps::capability_mask(features.capabilities.as_ref(), features.privileged)?;
    let namespaces = &features.namespaces;
    if let Some(refused) = spec::check_sysctls(
        features.sysctls.keys(),
        namespaces,
        spec.network != NetworkNamespace::Host,
    )
    .into_iter()
    .next()
    {
        return Err(refused.into());
    }
    let rlimits = rlimits_of(features)?;
    let host_namespaces = host_namespaces(sys, &features.sysctls)?;
    // Mountpoints and the working directory are created 0755 whatever the engine's umask is.
    sys.umask(CONTAINER_UMASK);
    // Docker's default cgroup namespace follows the host's cgroup version.
    let cgroup_ns = namespaces.cgroup.clone().unwrap_or(match cgroups {
        CgroupView::Private => Namespace::Private,
        _ => Namespace::Host,
    });
    let mut flags = CloneFlags::CLONE_NEWNS;
    let mut joins = Vec::new();
    for (ns, flag, name) in [
        (&namespaces.uts, CloneFlags::CLONE_NEWUTS, "uts"),
        (&namespaces.ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
        (&cgroup_ns, CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ] {
        match ns {
            Namespace::Private => flags |= flag,
            Namespace::Host => {}
            Namespace::Path { path } => joins.push((path, flag, name)),
        }
    }
    if spec.network == NetworkNamespace::Loopback {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    sys.unshare(flags)
        .map_err(|errno| ContainerError::Namespace {
            what: format!("new {} namespace", namespace_names(flags)),
            source: errno.into(),
        })?;
    for (path, flag, name) in joins {
        sys.setns(path, flag)
            .map_err(|errno| ContainerError::Namespace {
                what: format!("join {name} namespace {}", path.display()),
                source: errno.into(),
            })?;
    }
    match &spec.network {
        NetworkNamespace::Loopback => {
            sys.loopback_up()
                .map_err(|errno| ContainerError::Loopback {
                    source: errno.into(),
                })?
        }
        NetworkNamespace::Path { path } => {
            sys.setns(path, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                ContainerError::Namespace {
                    what: format!("join net namespace {}", path.display()),
                    source: errno.into(),
                }
            })?
        }
        NetworkNamespace::Host => {}
    }
    // In the host's UTS namespace the name is the host's (Docker clears it).
    if !spec.hostname.is_empty() && namespaces.uts == Namespace::Private {
        sys.sethostname(&spec.hostname)
            .map_err(|errno| ContainerError::Hostname {
                hostname: spec.hostname.clone(),
                source: errno.into(),
            })?;
    }
    // Written through the runtime's /proc while the tree is still the host's: the ipc, uts
    // and net knobs act on the writer's namespaces, which are now the container's, and the
    // container's own /proc/sys is read-only once mounted.
    // A joined namespace (`--ipc container:X`, `--network container:X`) may be the host's
    // own: the check above cannot know, the namespace files can.
    for key in features.sysctls.keys() {
        let Some(name) = spec::sysctl_namespace(key) else {
            continue;
        };
        let path = PathBuf::from(format!("/proc/self/ns/{name}"));
        let current = sys
            .file_id(&path)
            .map_err(|errno| ContainerError::Namespace {
                what: format!("identify the container's {name} namespace"),
                source: errno.into(),
            })?;
        if host_namespaces.contains(&(name, current)) {
            return Err(spec::host_namespace_refusal(key, name).into());
        }
    }
    for (key, value) in &features.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        sys.write_file(&path, value)
            .map_err(|errno| ContainerError::Sysctl {
                key: key.clone(),
                source: errno.into(),
            })?;
    }
    set_oom_score_adj(sys, features)?;
    // The socket is a host path: connect while the host's tree is still reachable.
    let console_socket = connect_console(sys, features.console_socket.as_deref(), &spec.process)?;
    rootfs::prepare_with(
        spec,
        sys,
        &RootfsOptions {
            terminal: spec.process.terminal,
            privileged: features.privileged,
            console_socket,
            cgroup2: cgroups == CgroupView::Private,
            cgroup_v1: match cgroups {
                CgroupView::HostV1(dirs) => dirs,
                _ => Vec::new(),
            },
            shm_size: features.shm_size,
            dev_shm: features.dev_shm.clone(),
            devices: features
                .devices
                .iter()
                .map(|d| (d.source.clone(), d.destination.clone()))
                .collect(),
        },
    )?;
    enter_cwd(sys, &spec.process.cwd, true)?;
    // Last, so a low limit (nofile, nproc) cannot starve the runtime's own setup.
    set_rlimits(sys, &rlimits)?;
    if features.init {
        // Cosmetic (what `ps` shows), and it needs CAP_SYS_RESOURCE, which only root has now:
        // a failure changes nothing for the container.
        let mut title = vec![INIT_PATH.to_string(), "--".to_string()];
        title.extend(spec.process.args.iter().cloned());
        let _ = sys.set_title(&title);
    }
    become_process(sys, &spec.process, capabilities, capabilities, features)
}

/// Writes [`Features::oom_score_adj`] through the runtime's (the host's) `/proc`.
/// A namespace's name under `/proc/self/ns/` and its `(st_dev, st_ino)`.
type NamespaceId = (&'static str, (u64, u64));

/// The host's namespaces that the sysctls act in: the runtime's own (the engine's, not yet
/// left) and PID 1's (the machine's, when the engine runs in namespaces of its own), as pairs
/// of name and `(st_dev, st_ino)`. Read before any namespace is entered.
fn host_namespaces(
    sys: &dyn Syscall,
    sysctls: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<NamespaceId>, ContainerError> {
    let mut names: Vec<&'static str> = sysctls
        .keys()
        .filter_map(|key| spec::sysctl_namespace(key))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut ids = Vec::new();
    for name in names {
        let own = PathBuf::from(format!("/proc/self/ns/{name}"));
        let id = sys
            .file_id(&own)
            .map_err(|errno| ContainerError::Namespace {
                what: format!("identify the host's {name} namespace"),
                source: errno.into(),
            })?;
        ids.push((name, id));
        // Unreadable without ptrace rights over PID 1: the runtime's own is then the host's.
        if let Ok(id) = sys.file_id(Path::new(&format!("/proc/1/ns/{name}"))) {
            ids.push((name, id));
        }
    }
    Ok(ids)
}

fn set_oom_score_adj(sys: &dyn Syscall, features: &Features) -> Result<(), ContainerError> {
    let Some(value) = features.oom_score_adj else {
        return Ok(());
    };
    sys.write_file(Path::new("/proc/self/oom_score_adj"), &value.to_string())
        .map_err(|errno| ContainerError::OomScoreAdj {
            value,
            source: errno.into(),
        })
}

/// The `RLIMIT_*` numbers and limits of [`Features::rlimits`].
fn rlimits_of(features: &Features) -> Result<Vec<(i32, u64, u64)>, ContainerError> {
    features
        .rlimits
        .iter()
        .map(|limit| {
            spec::rlimit_resource(&limit.name)
                .map(|resource| (resource, limit.soft, limit.hard))
                .ok_or_else(|| ContainerError::RlimitName {
                    name: limit.name.clone(),
                })
        })
        .collect()
}

fn set_rlimits(sys: &dyn Syscall, rlimits: &[(i32, u64, u64)]) -> Result<(), ContainerError> {
    for &(resource, soft, hard) in rlimits {
        sys.setrlimit(resource, soft, hard)
            .map_err(|errno| ContainerError::Rlimit {
                resource,
                source: errno.into(),
            })?;
    }
    Ok(())
}

/// Connects to the engine's console socket when the process has a terminal and one was given.
fn connect_console(
    sys: &dyn Syscall,
    socket: Option<&Path>,
    process: &Process,
) -> Result<Option<std::os::fd::RawFd>, ContainerError> {
    match socket {
        Some(path) if process.terminal => {
            sys.connect_unix(path)
                .map(Some)
                .map_err(|errno| ContainerError::ConsoleSocket {
                    path: path.to_path_buf(),
                    source: errno.into(),
                })
        }
        _ => Ok(None),
    }
}

/// The namespaces `exec` joins, in order. Mount comes last: until then the `/proc/PID/ns`
/// paths resolve in the engine's mount namespace, where PID is the host PID. The cgroup
/// namespace is the host's unless the container has a private one ([`CgroupView::Private`]);
/// joining one's own is a no-op.
const EXEC_NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Prepares a process to join the running container whose PID 1 has host PID `pid`.
///
/// MUST run in a single-threaded child forked after the parent joined the container's PID
/// namespace (see [`join_pid_namespace`]). Joining the mount namespace also makes its root
/// (the container's, after `pivot_root`) the process's root and working directory.
pub fn setup_exec(pid: i32, process: &Process, sys: &dyn Syscall) -> Result<Exec, ContainerError> {
    setup_exec_with(pid, process, &Features::default(), false, None, sys)
}

/// [`setup_exec`] with the container's [`Features`], whether the exec itself is privileged
/// (`docker exec --privileged`: every capability) and its own console socket. The seccomp
/// filter stays the container's, built for the container's capabilities, as runc does: a
/// privileged exec does not lift it.
pub fn setup_exec_with(
    pid: i32,
    process: &Process,
    features: &Features,
    privileged: bool,
    console_socket: Option<&Path>,
    sys: &dyn Syscall,
) -> Result<Exec, ContainerError> {
    let container_capabilities =
        caps::capability_mask(features.capabilities.as_ref(), features.privileged)?;
    let capabilities = caps::capability_mask(
        features.capabilities.as_ref(),
        features.privileged || privileged,
    )?;
    let console = connect_console(sys, console_socket, process)?;
    // Exec processes share the container's OOM score, as runc gives them.
    set_oom_score_adj(sys, features)?;
    for (name, flag) in EXEC_NAMESPACES {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        sys.setns(&path, flag)
            .map_err(|errno| ContainerError::Namespace {
                what: format!("join {name} namespace {}", path.display()),
                source: errno.into(),
            })?;
    }
    sys.chdir(Path::new("/"))
        .map_err(|errno| ContainerError::Cwd {
            cwd: "/".into(),
            source: errno.into(),
        })?;
    if let Some(socket) = console {
        // Now in the container's mount namespace: the PTY comes from its devpts.
        sys.send_console(socket, Path::new("/dev/pts"), Path::new("/dev/pts"))
            .map_err(|errno| ContainerError::Terminal {
                source: errno.into(),
            })?;
    }
    enter_cwd(sys, &process.cwd, false)?;
    // As with runc, `exec` processes get the container's `--ulimit`s.
    set_rlimits(sys, &rlimits_of(features)?)?;
    become_process(sys, process, capabilities, container_capabilities, features)
}

/// Joins the PID namespace of host PID `pid`, for the children forked afterwards.
pub fn join_pid_namespace(pid: i32, sys: &dyn Syscall) -> Result<(), ContainerError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/pid"));
    sys.setns(&path, CloneFlags::CLONE_NEWPID)
        .map_err(|errno| ContainerError::Namespace {
            what: format!("join pid namespace {}", path.display()),
            source: errno.into(),
        })
}

/// Session, terminal, identity and command: the steps `run` and `exec` share once the process
/// is in the container's namespaces and root.
fn become_process(
    sys: &dyn Syscall,
    process: &Process,
    capabilities: u64,
    seccomp_capabilities: u64,
    features: &Features,
) -> Result<Exec, ContainerError> {
    // A new session always (as runc), so the container never shares the engine's; with a PTY
    // the slave on stdin becomes its controlling terminal. Done as root: TIOCSCTTY may need it.
    sys.setsid().map_err(|errno| ContainerError::Process {
        what: "new session",
        source: errno.into(),
    })?;
    if process.terminal {
        sys.set_controlling_terminal(0)
            .map_err(|errno| ContainerError::Terminal {
                source: errno.into(),
            })?;
    }
    // Installed while the process still holds CAP_SYS_ADMIN (no no_new_privs needed, as with
    // runc) and after every mount: the filter refuses mount and friends without that cap.
    if features.seccomp_filtered() {
        sys.install_seccomp(&crate::seccomp::Filter::docker_default(
            seccomp_capabilities,
        ))
        .map_err(|errno| ContainerError::Process {
            what: "install the seccomp filter",
            source: errno.into(),
        })?;
    }
    // The bounding set is cut while still root with CAP_SETPCAP; the permitted set after the
    // identity change, which already empties it for a non-root uid.
    drop_bounding_capabilities(sys, capabilities)?;
    set_identity(sys, process)?;
    sys.limit_capabilities(capabilities)
        .map_err(|errno| ContainerError::Capabilities {
            source: errno.into(),
        })?;
    // Changing the uid or gid cleared the parent-death signal: without it again, a non-root
    // container would outlive its monitor and the engine.
    sys.set_parent_death_signal()
        .map_err(|errno| ContainerError::Process {
            what: "set parent death signal",
            source: errno.into(),
        })?;
    if features.no_new_privileges {
        sys.set_no_new_privileges()
            .map_err(|errno| ContainerError::Process {
                what: "set no_new_privs",
                source: errno.into(),
            })?;
    }

    let name = process
        .args
        .first()
        .ok_or(ContainerError::NoCommand)?
        .clone();
    let path = lookup::look_path(sys, &name, lookup::path_from_env(&process.env))?;
    Ok(Exec {
        name,
        path,
        argv: to_cstrings(&process.args)?,
        envp: to_cstrings(&process.env)?,
    })
}

/// Resets what the new program must not inherit and `execve`s; returns only on failure.
pub fn exec(exec: &Exec, sys: &dyn Syscall) -> ContainerError {
    if let Err(errno) = sys.reset_signals() {
        return ContainerError::Process {
            what: "reset signals",
            source: errno.into(),
        };
    }
    sys.umask(CONTAINER_UMASK);
    // The sync pipe, the spec file and anything the engine leaked stay out of the container;
    // the error pipe to the monitor is already close-on-exec.
    if let Err(errno) = sys.cloexec_from(3) {
        return ContainerError::Process {
            what: "close descriptors",
            source: errno.into(),
        };
    }
    let errno = sys.execve(&exec.path, &exec.argv, &exec.envp);
    ContainerError::Exec {
        name: exec.name.clone(),
        source: errno.into(),
    }
}

/// Enters the working directory, creating it first if missing and `create` is set (as Docker
/// does for a container's first process).
fn enter_cwd(sys: &dyn Syscall, cwd: &str, create: bool) -> Result<(), ContainerError> {
    let cwd_error = |errno: Errno| ContainerError::Cwd {
        cwd: cwd.to_string(),
        source: errno.into(),
    };
    let path = if cwd.is_empty() { "/" } else { cwd };
    // After the root switch "/" is the container's, so a plain path cannot escape it.
    let path = Path::new(path);
    match sys.stat(path) {
        Ok(info) if info.kind == FileKind::Dir => {}
        Ok(_) => return Err(cwd_error(Errno::ENOTDIR)),
        Err(Errno::ENOENT) if create => sys.mkdir_all(path, 0o755).map_err(cwd_error)?,
        Err(errno) => return Err(cwd_error(errno)),
    }
    sys.chdir(path).map_err(cwd_error)
}

/// Removes every capability outside `keep` from the bounding set, up to the last one the
/// kernel knows (it answers `EINVAL` past it).
fn drop_bounding_capabilities(sys: &dyn Syscall, keep: u64) -> Result<(), ContainerError> {
    for cap in (0..MAX_CAPABILITIES).filter(|cap| keep & (1 << cap) == 0) {
        match sys.drop_bounding_capability(cap) {
            Ok(()) => {}
            Err(Errno::EINVAL) => break,
            Err(errno) => {
                return Err(ContainerError::Capabilities {
                    source: errno.into(),
                })
            }
        }
    }
    Ok(())
}

/// Supplementary groups, then gid, then uid: each later step needs the privilege the previous
/// one keeps.
fn set_identity(sys: &dyn Syscall, process: &Process) -> Result<(), ContainerError> {
    sys.setgroups(&process.additional_gids)
        .map_err(|errno| ContainerError::Identity {
            what: "groups",
            id: format!("{:?}", process.additional_gids),
            source: errno.into(),
        })?;
    sys.setgid(process.gid)
        .map_err(|errno| ContainerError::Identity {
            what: "gid",
            id: process.gid.to_string(),
            source: errno.into(),
        })?;
    sys.setuid(process.uid)
        .map_err(|errno| ContainerError::Identity {
            what: "uid",
            id: process.uid.to_string(),
            source: errno.into(),
        })
}

fn namespace_names(flags: CloneFlags) -> String {
    let names = [
        (CloneFlags::CLONE_NEWNS, "mount"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWNET, "net"),
        (CloneFlags::CLONE_NEWPID, "pid"),
        (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ];
    names
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_cstrings(items: &[String]) -> Result<Vec<CString>, ContainerError> {
    items
        .iter()
        .map(|item| {
            CString::new(item.as_bytes()).map_err(|_| ContainerError::NulByte {
                value: item.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Rootfs;
    use crate::syscall::{Call, MsFlags, RecordingSyscall};

    fn spec() -> RuntimeSpec {
        RuntimeSpec {
            id: "c".repeat(64),
            rootfs: Rootfs {
                lower_dirs: vec!["/l".into()],
                upper_dir: "/c/upper".into(),
                work_dir: "/c/work".into(),
                merged_dir: "/c/merged".into(),
            },
            process: Process {
                args: vec!["sh".into(), "-c".into(), "true".into()],
                env: vec!["PATH=/bin".into(), "HOME=/root".into()],
                cwd: "/work".into(),
                uid: 1000,
                gid: 100,
                additional_gids: vec![10],
                terminal: false,
            },
            hostname: "cccccccccccc".into(),
            mounts: vec![],
            etc_files: vec![],
            readonly_rootfs: false,
            network: NetworkNamespace::Loopback,
        }
    }

    /// After the pivot, the fake sees container paths; the image has /bin/sh and /work.
    fn image() -> RecordingSyscall {
        RecordingSyscall::new()
            .with_file("/bin/sh", FileKind::File, 0o755)
            .with_file("/work", FileKind::Dir, 0o755)
            .with_file("/etc/passwd", FileKind::File, 0o644)
    }

    /// The calls that are not mounts or file creation: the process's own changes.
    fn process_calls(calls: &[Call]) -> Vec<Call> {
        calls
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    Call::Mount { .. }
                        | Call::Mknod { .. }
                        | Call::MkdirAll { .. }
                        | Call::CreateFile(_)
                        | Call::Symlink { .. }
                        | Call::PivotRoot { .. }
                        | Call::Umount2 { .. }
                        | Call::DropBoundingCapability(_)
                )
            })
            .cloned()
            .collect()
    }

    #[test]
    fn setup_enters_namespaces_then_drops_privileges_last() {
        let sys = image();
        let exec = setup(&spec(), &sys).expect("setup");
        assert_eq!(exec.path, PathBuf::from("/bin/sh"));
        assert_eq!(exec.argv.len(), 3);
        assert_eq!(exec.envp[1].to_str(), Ok("HOME=/root"));
        assert_eq!(
            process_calls(&sys.calls()),
            vec![
                Call::Umask(0o022),
                Call::Unshare(
                    CloneFlags::CLONE_NEWNS
                        | CloneFlags::CLONE_NEWUTS
                        | CloneFlags::CLONE_NEWIPC
                        | CloneFlags::CLONE_NEWNET
                ),
                Call::LoopbackUp,
                Call::Sethostname("cccccccccccc".into()),
                Call::Chdir("/c/merged".into()),
                Call::Chdir("/".into()),
                Call::Chdir("/work".into()),
                Call::Setsid,
                Call::InstallSeccomp(crate::seccomp::Filter::docker_default(0xa804_25fb).len()),
                Call::Setgroups(vec![10]),
                Call::Setgid(100),
                Call::Setuid(1000),
                Call::LimitCapabilities(0xa804_25fb),
                Call::SetParentDeathSignal,
            ]
        );
    }

    #[test]
    fn capabilities_outside_dockers_default_leave_the_bounding_set() {
        // This kernel knows capabilities 0..=40: it answers EINVAL from 41 on.
        let sys = image().fail_when(
            |c| matches!(c, Call::DropBoundingCapability(cap) if *cap > 40),
            Errno::EINVAL,
        );
        setup(&spec(), &sys).expect("setup");
        let dropped: Vec<u32> = sys
            .calls()
            .iter()
            .filter_map(|c| match c {
                Call::DropBoundingCapability(cap) => Some(*cap),
                _ => None,
            })
            .collect();
        let expected: Vec<u32> = (0..=41)
            .filter(|cap| !DEFAULT_CAPABILITIES.contains(cap))
            .collect();
        assert_eq!(dropped, expected);
        assert!(dropped.contains(&21), "CAP_SYS_ADMIN is dropped");
        assert_eq!(default_capability_mask(), 0xa804_25fb);
    }

    #[test]
    fn exec_resets_the_process_then_execs() {
        let sys = image();
        let exec = setup(&spec(), &sys).expect("setup");
        let before = sys.calls().len();
        let err = super::exec(&exec, &sys);
        assert_eq!(
            sys.calls()[before..],
            [
                Call::ResetSignals,
                Call::Umask(0o022),
                Call::CloexecFrom(3),
                Call::Execve {
                    path: "/bin/sh".into(),
                    argv: vec!["sh".into(), "-c".into(), "true".into()],
                    envp: vec!["PATH=/bin".into(), "HOME=/root".into()],
                },
            ]
        );
        // The fake's execve "fails" with ENOSYS: a generic failure, exit 1.
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_joined_network_namespace_is_entered_and_host_network_is_kept() {
        let mut spec = spec();
        spec.network = NetworkNamespace::Path {
            path: "/run/netns/c".into(),
        };
        let sys = image();
        setup(&spec, &sys).expect("setup");
        let calls = sys.calls();
        assert_eq!(
            calls[1..3],
            [
                Call::Unshare(
                    CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
                ),
                Call::Setns {
                    path: "/run/netns/c".into(),
                    nstype: CloneFlags::CLONE_NEWNET
                },
            ]
        );
        assert!(!calls.contains(&Call::LoopbackUp));

        spec.network = NetworkNamespace::Host;
        let sys = image();
        setup(&spec, &sys).expect("setup");
        let calls = sys.calls();
        assert!(!calls.contains(&Call::LoopbackUp));
        assert!(!calls.iter().any(|c| matches!(c, Call::Setns { .. })));
    }

    #[test]
    fn a_terminal_becomes_the_controlling_one_before_the_uid_changes() {
        let mut spec = spec();
        spec.process.terminal = true;
        let sys = image().with_symlink("/proc/self/fd/0", "/dev/pts/3");
        setup(&spec, &sys).expect("setup");
        let calls = process_calls(&sys.calls());
        let setsid = calls.iter().position(|c| *c == Call::Setsid);
        let ctty = calls
            .iter()
            .position(|c| *c == Call::SetControllingTerminal(0));
        let setuid = calls.iter().position(|c| *c == Call::Setuid(1000));
        assert!(setsid < ctty && ctty < setuid, "{calls:?}");
    }

    #[test]
    fn a_missing_cwd_is_created_before_entering_it() {
        let mut spec = spec();
        spec.process.cwd = "/does/not/exist".into();
        let sys = image();
        setup(&spec, &sys).expect("setup");
        let calls = sys.calls();
        let mkdir = calls.iter().position(|c| {
            *c == Call::MkdirAll {
                path: "/does/not/exist".into(),
                mode: 0o755,
            }
        });
        let chdir = calls
            .iter()
            .position(|c| *c == Call::Chdir("/does/not/exist".into()));
        assert!(mkdir.is_some() && mkdir < chdir, "{calls:?}");
    }

    #[test]
    fn failures_carry_dockers_messages_and_exit_codes() {
        let mut spec = spec();
        spec.process.args = vec!["nope".into()];
        let failed = setup(&spec, &image()).expect_err("not found").to_failed();
        assert_eq!(
            failed,
            Failed {
                message: "exec: \"nope\": executable file not found in $PATH".into(),
                exit_code: 127,
            }
        );

        spec.process.args = vec!["/etc/passwd".into()];
        let failed = setup(&spec, &image())
            .expect_err("not executable")
            .to_failed();
        assert_eq!(
            failed,
            Failed {
                message: "exec: \"/etc/passwd\": permission denied".into(),
                exit_code: 126,
            }
        );

        let sys = image().fail_when(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"),
            Errno::ENODEV,
        );
        let failed = setup(&self::spec(), &sys)
            .expect_err("no overlay")
            .to_failed();
        assert_eq!(
            failed,
            Failed {
                message: "mount overlay on /c/merged: no such device".into(),
                exit_code: 1,
            }
        );

        let sys = image().fail_when(|c| *c == Call::Setuid(1000), Errno::EPERM);
        let failed = setup(&self::spec(), &sys).expect_err("setuid").to_failed();
        assert_eq!(failed.message, "set uid 1000: operation not permitted");
        assert_eq!(failed.exit_code, 1);

        let sys = image().fail_when(|c| matches!(c, Call::Unshare(_)), Errno::EPERM);
        let failed = setup(&self::spec(), &sys).expect_err("unshare").to_failed();
        assert_eq!(
            failed.message,
            "new mount, uts, ipc, net namespace: operation not permitted"
        );
    }

    #[test]
    fn execve_errors_map_to_dockers_exit_codes() {
        for (errno, code, message) in [
            (Errno::EACCES, 126, "exec: \"sh\": permission denied"),
            (
                Errno::ENOENT,
                127,
                "exec: \"sh\": no such file or directory",
            ),
            (Errno::ENOEXEC, 1, "exec: \"sh\": exec format error"),
        ] {
            let sys = image().fail_when(|c| matches!(c, Call::Execve { .. }), errno);
            let exec = setup(&spec(), &sys).expect("setup");
            let failed = super::exec(&exec, &sys).to_failed();
            assert_eq!(
                failed,
                Failed {
                    message: message.into(),
                    exit_code: code
                }
            );
        }
    }

    #[test]
    fn an_empty_command_is_refused() {
        let mut spec = spec();
        spec.process.args.clear();
        let failed = setup(&spec, &image()).expect_err("no command").to_failed();
        assert_eq!(failed.message, "no command specified");
        assert_eq!(failed.exit_code, 1);
    }

    #[test]
    fn exec_joins_namespaces_mount_last_and_mounts_nothing() {
        let sys = image();
        join_pid_namespace(4242, &sys).expect("join pid");
        let exec = setup_exec(4242, &spec().process, &sys).expect("setup exec");
        assert_eq!(exec.path, PathBuf::from("/bin/sh"));
        let setns = |ns: &str, nstype| Call::Setns {
            path: format!("/proc/4242/ns/{ns}").into(),
            nstype,
        };
        assert_eq!(
            process_calls(&sys.calls()),
            vec![
                setns("pid", CloneFlags::CLONE_NEWPID),
                setns("ipc", CloneFlags::CLONE_NEWIPC),
                setns("uts", CloneFlags::CLONE_NEWUTS),
                setns("net", CloneFlags::CLONE_NEWNET),
                setns("cgroup", CloneFlags::CLONE_NEWCGROUP),
                setns("mnt", CloneFlags::CLONE_NEWNS),
                Call::Chdir("/".into()),
                Call::Chdir("/work".into()),
                Call::Setsid,
                Call::InstallSeccomp(crate::seccomp::Filter::docker_default(0xa804_25fb).len()),
                Call::Setgroups(vec![10]),
                Call::Setgid(100),
                Call::Setuid(1000),
                Call::LimitCapabilities(0xa804_25fb),
                Call::SetParentDeathSignal,
            ]
        );
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Mount { .. })));
    }

    #[test]
    fn cap_add_and_drop_reach_the_bounding_set_and_capset() {
        let features = Features {
            capabilities: Some(crate::spec::CapabilitySpec {
                add: vec!["NET_ADMIN".into()],
                drop: vec!["CHOWN".into()],
            }),
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec(), &features, &sys).expect("setup");
        let calls = sys.calls();
        assert!(calls.contains(&Call::LimitCapabilities(0xa804_35fa)));
        assert!(calls.contains(&Call::DropBoundingCapability(0)), "CHOWN");
        assert!(
            !calls.contains(&Call::DropBoundingCapability(12)),
            "NET_ADMIN"
        );
    }

    #[test]
    fn seccomp_is_skipped_when_unconfined_and_nnp_comes_last() {
        let installs = |features: &Features| {
            let sys = image();
            setup_with(&spec(), features, &sys).expect("setup");
            sys.calls()
        };
        let has_filter =
            |calls: &[Call]| calls.iter().any(|c| matches!(c, Call::InstallSeccomp(_)));
        assert!(has_filter(&installs(&Features::default())));
        for features in [
            Features {
                seccomp_unconfined: true,
                ..Features::default()
            },
            Features {
                privileged: true,
                seccomp_unconfined: true,
                ..Features::default()
            },
        ] {
            assert!(!has_filter(&installs(&features)), "{features:?}");
        }
        let calls = installs(&Features {
            no_new_privileges: true,
            ..Features::default()
        });
        assert_eq!(calls.last(), Some(&Call::SetNoNewPrivileges), "{calls:?}");
    }

    #[test]
    fn privileged_keeps_every_capability() {
        let features = Features {
            privileged: true,
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec(), &features, &sys).expect("setup");
        let calls = sys.calls();
        assert!(calls.contains(&Call::LimitCapabilities(0x1ff_ffff_ffff)));
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::DropBoundingCapability(cap) if *cap <= 40)));
    }

    #[test]
    fn an_unknown_capability_fails_before_anything_is_touched() {
        let features = Features {
            capabilities: Some(crate::spec::CapabilitySpec {
                add: vec![],
                drop: vec!["NOPE".into()],
            }),
            ..Features::default()
        };
        let sys = image();
        let failed = setup_with(&spec(), &features, &sys)
            .expect_err("unknown")
            .to_failed();
        assert_eq!(
            failed,
            Failed {
                message: "invalid CapDrop: unknown capability: \"CAP_NOPE\"".into(),
                exit_code: 1,
            }
        );
        assert_eq!(sys.calls(), vec![]);
    }

    #[test]
    fn the_console_socket_is_reached_before_the_pivot() {
        let mut spec = spec();
        spec.process.terminal = true;
        let features = Features {
            console_socket: Some("/run/engine/console.sock".into()),
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec, &features, &sys).expect("setup");
        let calls = sys.calls();
        let connect = calls
            .iter()
            .position(|c| *c == Call::ConnectUnix("/run/engine/console.sock".into()));
        let send = calls
            .iter()
            .position(|c| matches!(c, Call::SendConsole { socket, .. } if *socket == crate::syscall::FAKE_SOCKET_FD));
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { .. }));
        let ctty = calls
            .iter()
            .position(|c| *c == Call::SetControllingTerminal(0));
        assert!(
            connect.is_some() && connect < send && send < pivot && pivot < ctty,
            "{calls:?}"
        );

        // Without a terminal the socket is not used.
        spec.process.terminal = false;
        let sys = image();
        setup_with(&spec, &features, &sys).expect("setup");
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::ConnectUnix(_) | Call::SendConsole { .. })));
    }

    #[test]
    fn init_takes_the_docker_init_title_while_still_privileged() {
        let features = Features {
            init: true,
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec(), &features, &sys).expect("setup");
        let calls = process_calls(&sys.calls());
        let title = calls.iter().position(|c| {
            *c == Call::SetTitle(vec![
                "/sbin/docker-init".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "true".into(),
            ])
        });
        let setuid = calls.iter().position(|c| *c == Call::Setuid(1000));
        assert!(title.is_some() && title < setuid, "{calls:?}");
    }

    #[test]
    fn exec_connects_to_its_console_socket_before_joining_and_sends_the_pty_after() {
        let mut process = spec().process;
        process.terminal = true;
        let sys = image();
        setup_exec_with(
            4242,
            &process,
            &Features::default(),
            false,
            Some(Path::new("/run/exec.sock")),
            &sys,
        )
        .expect("setup exec");
        let calls = sys.calls();
        let connect = calls
            .iter()
            .position(|c| *c == Call::ConnectUnix("/run/exec.sock".into()));
        let join_mnt = calls.iter().position(
            |c| matches!(c, Call::Setns { nstype, .. } if *nstype == CloneFlags::CLONE_NEWNS),
        );
        let send = calls.iter().position(|c| {
            *c == Call::SendConsole {
                socket: crate::syscall::FAKE_SOCKET_FD,
                pts: "/dev/pts".into(),
                name_prefix: "/dev/pts".into(),
            }
        });
        assert!(
            connect.is_some() && connect < join_mnt && join_mnt < send,
            "{calls:?}"
        );
    }

    #[test]
    fn a_private_cgroup_view_adds_a_cgroup_namespace_and_mount() {
        let sys = image();
        setup_in(&spec(), &Features::default(), CgroupView::Private, &sys).expect("setup");
        let calls = sys.calls();
        assert!(calls.contains(&Call::Unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWCGROUP
        )));
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        assert!(calls.contains(&Call::Mount {
            source: Some("cgroup".into()),
            target: "/c/merged/sys/fs/cgroup".into(),
            fstype: Some("cgroup2".into()),
            flags: hardened | MsFlags::MS_RDONLY,
            data: None,
        }));
        let sys = image();
        setup_with(&spec(), &Features::default(), &sys).expect("setup");
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "cgroup2")));
    }

    #[test]
    fn a_v1_view_binds_each_hierarchy_read_only_on_a_tmpfs() {
        let sys = image();
        let memory = PathBuf::from("/sys/fs/cgroup/memory/rmachine/c");
        let view = CgroupView::HostV1(vec![("memory".into(), memory.clone())]);
        setup_in(&spec(), &Features::default(), view, &sys).expect("setup");
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| matches!(c,
            Call::Unshare(flags) if flags.contains(CloneFlags::CLONE_NEWCGROUP))));
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let base = PathBuf::from("/c/merged/sys/fs/cgroup");
        let expected = [
            Call::Mount {
                source: Some("tmpfs".into()),
                target: base.clone(),
                fstype: Some("tmpfs".into()),
                flags: hardened,
                data: Some("mode=755".into()),
            },
            Call::Mount {
                source: Some(memory),
                target: base.join("memory"),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            },
            Call::Mount {
                source: None,
                target: base.join("memory"),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | hardened | MsFlags::MS_RDONLY,
                data: None,
            },
            Call::Mount {
                source: None,
                target: base.clone(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | hardened | MsFlags::MS_RDONLY,
                data: None,
            },
        ];
        let mounts: Vec<&Call> = calls
            .iter()
            .filter(|c| matches!(c, Call::Mount { target, .. } if target.starts_with(&base)))
            .collect();
        assert_eq!(mounts, expected.iter().collect::<Vec<_>>());
    }

    #[test]
    fn exec_does_not_create_a_missing_cwd() {
        let mut process = spec().process;
        process.cwd = "/gone".into();
        let sys = image();
        let failed = setup_exec(4242, &process, &sys)
            .expect_err("missing cwd")
            .to_failed();
        assert_eq!(
            failed.message,
            "chdir to cwd (\"/gone\") set in config.json failed: no such file or directory"
        );
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::MkdirAll { .. })));
    }

    #[test]
    fn shared_namespaces_are_joined_or_kept_and_the_host_uts_keeps_its_name() {
        let features = Features {
            namespaces: crate::spec::Namespaces {
                ipc: Namespace::Path {
                    path: "/proc/77/ns/ipc".into(),
                },
                uts: Namespace::Host,
                cgroup: Some(Namespace::Host),
                ..Default::default()
            },
            dev_shm: crate::spec::DevShm::Bind {
                source: "/data/containers/d/shm".into(),
            },
            ..Features::default()
        };
        let sys = image();
        setup_in(&spec(), &features, CgroupView::Private, &sys).expect("setup");
        let calls = sys.calls();
        assert_eq!(
            process_calls(&calls)[1..3],
            [
                Call::Unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET),
                Call::Setns {
                    path: "/proc/77/ns/ipc".into(),
                    nstype: CloneFlags::CLONE_NEWIPC,
                },
            ]
        );
        assert!(!calls.iter().any(|c| matches!(c, Call::Sethostname(_))));
        assert!(calls.contains(&Call::Mount {
            source: Some("/data/containers/d/shm".into()),
            target: "/c/merged/dev/shm".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        }));
        assert!(!calls.iter().any(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "tmpfs")
                && matches!(c, Call::Mount { target, .. } if target.ends_with("shm"))
        ));
    }

    #[test]
    fn ipc_none_has_no_dev_shm_and_cgroupns_private_on_v1_unshares_it() {
        let features = Features {
            dev_shm: crate::spec::DevShm::None,
            namespaces: crate::spec::Namespaces {
                cgroup: Some(Namespace::Private),
                ..Default::default()
            },
            ..Features::default()
        };
        let sys = image();
        setup_in(&spec(), &features, CgroupView::HostV1(vec![]), &sys).expect("setup");
        let calls = sys.calls();
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Mount { target, .. } if target.ends_with("dev/shm"))));
        assert!(matches!(&calls[1], Call::Unshare(f) if f.contains(CloneFlags::CLONE_NEWCGROUP)));
    }

    #[test]
    fn sysctls_and_oom_score_are_written_before_the_pivot_and_rlimits_after_it() {
        let features = Features {
            sysctls: [("kernel.shmmax".to_string(), "4096".to_string())].into(),
            oom_score_adj: Some(500),
            rlimits: vec![crate::spec::Rlimit {
                name: "nofile".into(),
                soft: 100,
                hard: 200,
            }],
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec(), &features, &sys).expect("setup");
        let calls = sys.calls();
        let at = |call: &Call| calls.iter().position(|c| c == call);
        let sysctl = at(&Call::WriteFile {
            path: "/proc/sys/kernel/shmmax".into(),
            value: "4096".into(),
        });
        let oom = at(&Call::WriteFile {
            path: "/proc/self/oom_score_adj".into(),
            value: "500".into(),
        });
        let unshare = calls.iter().position(|c| matches!(c, Call::Unshare(_)));
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { .. }));
        let rlimit = at(&Call::Setrlimit {
            resource: 7,
            soft: 100,
            hard: 200,
        });
        let setuid = at(&Call::Setuid(1000));
        assert!(unshare < sysctl && sysctl.is_some(), "{calls:?}");
        assert!(oom.is_some() && oom < pivot, "{calls:?}");
        assert!(pivot < rlimit && rlimit < setuid, "{calls:?}");
    }

    #[test]
    fn sysctls_in_a_joined_namespace_that_is_the_hosts_are_refused() {
        // PID 1's namespaces, which the donors (77: `--ipc host`, 78: `--network host`) share.
        let host_ipc = (1, 10);
        let host_net = (1, 11);
        let joined = |key: &str, ipc: &str, net: &str| {
            let features = Features {
                sysctls: [(key.to_string(), "1".to_string())].into(),
                namespaces: crate::spec::Namespaces {
                    ipc: Namespace::Path { path: ipc.into() },
                    ..Default::default()
                },
                ..Features::default()
            };
            let spec = RuntimeSpec {
                network: NetworkNamespace::Path { path: net.into() },
                ..spec()
            };
            let sys = image()
                .with_file_id("/proc/1/ns/ipc", host_ipc)
                .with_file_id("/proc/1/ns/net", host_net)
                .with_file_id("/proc/77/ns/ipc", host_ipc)
                .with_file_id("/proc/78/ns/net", host_net);
            let result = setup_with(&spec, &features, &sys).map(|_| ());
            let wrote = sys.calls().iter().any(
                |c| matches!(c, Call::WriteFile { path, .. } if path.starts_with("/proc/sys")),
            );
            (result.map_err(|e| e.to_string()), wrote)
        };
        assert_eq!(
            joined("kernel.shmmax", "/proc/77/ns/ipc", "/proc/9/ns/net"),
            (
                Err("sysctl \"kernel.shmmax\" is not allowed in the hosts ipc namespace".into()),
                false
            )
        );
        assert_eq!(
            joined("net.ipv4.ip_forward", "/proc/9/ns/ipc", "/proc/78/ns/net"),
            (
                Err(
                    "sysctl \"net.ipv4.ip_forward\" is not allowed in the hosts network namespace"
                        .into()
                ),
                false
            )
        );
        // A donor with namespaces of its own is fine.
        assert_eq!(
            joined("kernel.shmmax", "/proc/9/ns/ipc", "/proc/9/ns/net"),
            (Ok(()), true)
        );
        // The engine's own namespace counts as the host's even when it is not PID 1's.
        let features = Features {
            sysctls: [("kernel.shmmax".to_string(), "1".to_string())].into(),
            namespaces: crate::spec::Namespaces {
                ipc: Namespace::Path {
                    path: "/proc/77/ns/ipc".into(),
                },
                ..Default::default()
            },
            ..Features::default()
        };
        let sys = image()
            .with_file_id("/proc/self/ns/ipc", (2, 5))
            .with_file_id("/proc/77/ns/ipc", (2, 5));
        let err = setup_with(&spec(), &features, &sys)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(
            err,
            ContainerError::SysctlRefused(crate::spec::SysctlError::HostIpc { .. })
        ));
    }

    #[test]
    fn bad_sysctls_and_ulimits_fail_before_anything_is_touched() {
        let features = Features {
            sysctls: [("vm.swappiness".to_string(), "1".to_string())].into(),
            ..Features::default()
        };
        let sys = image();
        let failed = setup_with(&spec(), &features, &sys)
            .expect_err("not namespaced")
            .to_failed();
        assert_eq!(
            failed.message,
            "sysctl \"vm.swappiness\" is not in a separate kernel namespace"
        );
        assert_eq!(sys.calls(), vec![]);
        let features = Features {
            rlimits: vec![crate::spec::Rlimit {
                name: "bogus".into(),
                soft: 1,
                hard: 1,
            }],
            ..Features::default()
        };
        let failed = setup_with(&spec(), &features, &sys)
            .expect_err("unknown")
            .to_failed();
        assert_eq!(failed.message, "invalid ulimit type: bogus");
        let sys = image().fail_when(|c| matches!(c, Call::Setrlimit { .. }), Errno::EPERM);
        let features = Features {
            rlimits: vec![crate::spec::Rlimit {
                name: "nofile".into(),
                soft: 1,
                hard: 1 << 40,
            }],
            ..Features::default()
        };
        let failed = setup_with(&spec(), &features, &sys)
            .expect_err("eperm")
            .to_failed();
        assert_eq!(
            failed.message,
            "error setting rlimit type 7: operation not permitted"
        );
    }

    #[test]
    fn devices_are_bound_from_the_host_at_their_container_path() {
        let features = Features {
            devices: vec![crate::spec::Device {
                source: "/dev/null".into(),
                destination: "/dev/mynull".into(),
                allow: crate::spec::DeviceAllow {
                    kind: 'c',
                    major: Some(1),
                    minor: Some(3),
                    access: "rwm".into(),
                },
            }],
            ..Features::default()
        };
        let sys = image();
        setup_with(&spec(), &features, &sys).expect("setup");
        let calls = sys.calls();
        let create = calls
            .iter()
            .position(|c| *c == Call::CreateFile("/c/merged/dev/mynull".into()));
        let bind = calls.iter().position(|c| {
            *c == Call::Mount {
                source: Some("/dev/null".into()),
                target: "/c/merged/dev/mynull".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            }
        });
        assert!(create.is_some() && create < bind, "{calls:?}");
    }

    #[test]
    fn exec_processes_get_the_containers_rlimits_and_oom_score() {
        let features = Features {
            oom_score_adj: Some(-7),
            rlimits: vec![crate::spec::Rlimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20,
            }],
            ..Features::default()
        };
        let sys = image();
        setup_exec_with(4242, &spec().process, &features, false, None, &sys).expect("exec");
        let calls = sys.calls();
        let rlimit = calls.iter().position(|c| {
            *c == Call::Setrlimit {
                resource: 7,
                soft: 10,
                hard: 20,
            }
        });
        let setuid = calls.iter().position(|c| *c == Call::Setuid(1000));
        assert!(rlimit.is_some() && rlimit < setuid, "{calls:?}");
        assert!(calls.contains(&Call::WriteFile {
            path: "/proc/self/oom_score_adj".into(),
            value: "-7".into(),
        }));
    }
}
