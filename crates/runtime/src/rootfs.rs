//! Assembling the container's root filesystem inside its own mount namespace.
//!
//! Data flow, all through [`Syscall`] and all before the container's process runs:
//! 1. the whole mount tree becomes a recursive slave, so nothing mounted here propagates back
//!    to the engine's namespace (and the host's unmounts still reach us);
//! 2. overlayfs is mounted on `merged_dir` from the spec's layers;
//! 3. the standard kernel filesystems (`/proc`, `/sys`, a tmpfs `/dev` with its device nodes,
//!    `/dev/pts`, `/dev/shm`, `/dev/mqueue`) are mounted under it, as runc's default spec does;
//! 4. the engine's `/etc` files, then the spec's mounts, are bound or mounted on top;
//! 5. `pivot_root` makes `merged_dir` the root and the old root is detached; when the old root
//!    is the initramfs (which `pivot_root` refuses), the overlay is moved onto `/` and
//!    `chroot`ed into instead, as runc's `--no-pivot` does;
//! 6. Docker's masked paths are hidden and its read-only paths remounted read-only;
//! 7. the root is remounted read-only if asked.
//!
//! Destinations are resolved inside the rootfs with [`secure_join`], so an image's symlink
//! cannot redirect a mount onto the host.
//!
//! Device nodes: a default container's root keeps `CAP_MKNOD` (Docker's default set), so every
//! filesystem it can write and create nodes on is mounted `nodev` unless `--privileged`: the
//! overlay root, the `/dev` tmpfs, `/dev/shm`, `--tmpfs` mounts (unless they ask for `dev`).
//! The standard nodes in `/dev` are therefore bind mounts of the host's own nodes, which keep
//! the flags of the host's `/dev` rather than the `nodev` of the tmpfs under them (a bind mount
//! clones its source's mount flags). The device cgroup ([`crate::cgroup`]) is the other half:
//! it refuses opening any device outside Docker's allow list, wherever the node lives (bind
//! mounts of host directories, which are not made `nodev`, included).

use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use crate::spec::{DevShm, MountKind, RuntimeSpec};
use crate::syscall::{Errno, FileKind, MntFlags, Mode, MsFlags, SFlag, SysError, Syscall};

/// Mount options for `/dev`: the same as runc's default spec.
const DEV_OPTIONS: &str = "mode=755,size=65536k";
/// Mount options for `/dev/pts`: a private instance, so the container sees only its own ptys.
const DEVPTS_OPTIONS: &str = "newinstance,ptmxmode=0666,mode=0620,gid=5";
/// Docker's default `--shm-size`: 64 MiB.
const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Mount options for a `/dev/shm` of `size` bytes, in kibibytes when whole (runc's form).
fn shm_options(size: u64) -> String {
    if size.is_multiple_of(1024) {
        format!("mode=1777,size={}k", size / 1024)
    } else {
        format!("mode=1777,size={size}")
    }
}

/// Character devices every container gets: name, major, minor. A default container gets the
/// host's node of that name bound; a privileged one a node of its own (mode 0666).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in `/dev`: link name, target.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Paths hidden from containers, as in Docker's default spec: kernel internals a container has
/// no business reading. Files get `/dev/null` bound over them, directories an empty read-only
/// tmpfs; paths this kernel lacks are skipped.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only, as in Docker's default spec: host-wide kernel settings.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A failure while assembling the root filesystem; each names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount failed.
    #[error("mount {what} on {}", target.display())]
    Mount {
        /// What was mounted: a filesystem type or a bind source.
        what: String,
        /// Where (a host path before `pivot_root`, a container path after).
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// A mountpoint, device node or symlink could not be created.
    #[error("create {}", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// A mount destination could not be resolved inside the rootfs.
    #[error("resolve {path} in the container")]
    Resolve {
        /// The destination as the spec gave it.
        path: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The source of a bind mount does not exist or cannot be read.
    #[error("bind source {}", path.display())]
    BindSource {
        /// The host path.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The container's PTY could not be made or sent to the engine.
    #[error("send the console to the engine")]
    Console {
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Switching to the new root failed.
    #[error("pivot_root to {}", path.display())]
    PivotRoot {
        /// The new root.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

/// The overlayfs option string for the spec's layers: `lowerdir=TOP:…:BOTTOM,upperdir=…,workdir=…`.
///
/// The kernel limits mount data to one page (4096 bytes); images with very many layers in long
/// paths would need the shorter relative-path form Docker uses, which is not done yet.
pub fn overlay_options(spec: &RuntimeSpec) -> String {
    let lower: Vec<String> = spec
        .rootfs
        .lower_dirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.rootfs.upper_dir.display(),
        spec.rootfs.work_dir.display()
    )
}

/// Splits `mount -o`-style options into the flags `mount(2)` takes and the data string the
/// filesystem parses (`noexec,size=64m` → `MS_NOEXEC`, `size=64m`).
pub fn parse_mount_options(options: &str) -> (MsFlags, MsFlags, String) {
    let mut set = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => set |= MsFlags::MS_RDONLY,
            "rw" => clear |= MsFlags::MS_RDONLY,
            "nosuid" => set |= MsFlags::MS_NOSUID,
            "suid" => clear |= MsFlags::MS_NOSUID,
            "nodev" => set |= MsFlags::MS_NODEV,
            "dev" => clear |= MsFlags::MS_NODEV,
            "noexec" => set |= MsFlags::MS_NOEXEC,
            "exec" => clear |= MsFlags::MS_NOEXEC,
            "sync" => set |= MsFlags::MS_SYNCHRONOUS,
            "async" => clear |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => set |= MsFlags::MS_NOATIME,
            "nodiratime" => set |= MsFlags::MS_NODIRATIME,
            "relatime" => set |= MsFlags::MS_RELATIME,
            "strictatime" => set |= MsFlags::MS_STRICTATIME,
            other => data.push(other),
        }
    }
    (set, clear, data.join(","))
}

/// Resolves `unsafe_path` (an absolute container path) inside `root`, following symlinks as if
/// `root` were `/`: `..` and absolute link targets never leave `root`.
///
/// Components that do not exist yet are appended as they are, so the result can be created.
pub fn secure_join(sys: &dyn Syscall, root: &Path, unsafe_path: &str) -> Result<PathBuf, Errno> {
    let mut resolved: Vec<PathBuf> = Vec::new();
    let mut pending: Vec<PathBuf> = components_rev(Path::new(unsafe_path));
    let mut links = 0;
    while let Some(component) = pending.pop() {
        if component.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved
            .iter()
            .fold(root.to_path_buf(), |acc, part| acc.join(part))
            .join(&component);
        match sys.lstat(&candidate) {
            Ok(info) if info.kind == FileKind::Symlink => {
                links += 1;
                if links > 255 {
                    return Err(Errno::ELOOP);
                }
                let target = sys.read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(components_rev(&target));
            }
            Ok(_) | Err(Errno::ENOENT) => resolved.push(component),
            Err(errno) => return Err(errno),
        }
    }
    Ok(resolved
        .iter()
        .fold(root.to_path_buf(), |acc, part| acc.join(part)))
}

/// The normal and `..` components of `path`, last first (a stack to pop from).
fn components_rev(path: &Path) -> Vec<PathBuf> {
    path.components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// How the standard mounts differ between containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsOptions {
    /// The container has a terminal: it gets a `/dev/console`.
    pub terminal: bool,
    /// `--privileged`: `/sys` read-write, every host device, no masked or read-only paths.
    pub privileged: bool,
    /// With `terminal`, the PTY is made in the container's devpts and its master sent on this
    /// connected socket (see [`crate::spec::Features`]).
    pub console_socket: Option<RawFd>,
    /// Mount `cgroup2` on `/sys/fs/cgroup` (in the container's own cgroup namespace).
    pub cgroup2: bool,
    /// v1: a tmpfs on `/sys/fs/cgroup` and, for each pair, the host directory (the
    /// container's cgroup in one hierarchy) bind-mounted on `/sys/fs/cgroup/NAME`.
    pub cgroup_v1: Vec<(String, PathBuf)>,
    /// `--shm-size` in bytes; `None`: Docker's default, 64 MiB.
    pub shm_size: Option<u64>,
    /// What `/dev/shm` is (`--ipc`).
    pub dev_shm: DevShm,
    /// `--device`: host device nodes bound at absolute container paths.
    pub devices: Vec<(PathBuf, String)>,
}

/// [`prepare_with`] for a container with default options but `terminal`.
pub fn prepare(spec: &RuntimeSpec, sys: &dyn Syscall, terminal: bool) -> Result<(), RootfsError> {
    prepare_with(
        spec,
        sys,
        &RootfsOptions {
            terminal,
            ..RootfsOptions::default()
        },
    )
}

/// Builds the rootfs under `merged_dir` and switches to it; on success the process's root is the
/// container's and its working directory is `/`.
///
/// MUST be called in a fresh mount namespace (after `unshare(CLONE_NEWNS)`), and in the new PID
/// and network namespaces, since `/proc` and `/sys` show the namespaces of the mounter.
pub fn prepare_with(
    spec: &RuntimeSpec,
    sys: &dyn Syscall,
    opts: &RootfsOptions,
) -> Result<(), RootfsError> {
    let root = spec.rootfs.merged_dir.as_path();
    // As runc's `rootfsPropagation`: the container's mounts are slaves of the host's, unless a
    // bind asks for `shared`, which needs them peers of the host's (so that what the container
    // mounts there reaches the host). Then the mount holding the root is made private, so
    // neither the overlay nor what goes under it propagates back.
    let shared = spec
        .mounts
        .iter()
        .any(|m| matches!(m.propagation.as_str(), "shared" | "rshared"));
    let propagation = if shared {
        MsFlags::MS_SHARED
    } else {
        MsFlags::MS_SLAVE
    };
    mount(
        sys,
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | propagation,
        None,
    )?;
    if shared {
        let parent = sys
            .mount_point_of(root)
            .map_err(|errno| RootfsError::Resolve {
                path: root.display().to_string(),
                source: errno.into(),
            })?;
        mount(sys, None, &parent, None, MsFlags::MS_PRIVATE, None)?;
    }
    let options = overlay_options(spec);
    mount(
        sys,
        Some(Path::new("overlay")),
        root,
        Some("overlay"),
        rootfs_flags(opts),
        Some(&options),
    )?;
    mount_standard(sys, root, opts)?;
    for file in &spec.etc_files {
        let target = resolve_and_create(sys, root, &file.destination, FileKind::File)?;
        // Docker makes them read-only along with the rootfs (`--read-only`).
        bind(sys, &file.source, &target, spec.readonly_rootfs)?;
    }
    for m in &spec.mounts {
        match &m.kind {
            MountKind::Bind { source } => {
                let kind = sys
                    .stat(source)
                    .map_err(|errno| RootfsError::BindSource {
                        path: source.clone(),
                        source: errno.into(),
                    })?
                    .kind;
                let kind = if kind == FileKind::Dir {
                    FileKind::Dir
                } else {
                    FileKind::File
                };
                let target = resolve_and_create(sys, root, &m.destination, kind)?;
                bind(sys, source, &target, m.readonly)?;
                if let Some(flags) = propagation_flags(&m.propagation) {
                    mount(sys, None, &target, None, flags, None)?;
                }
            }
            MountKind::Tmpfs { options } => {
                let target = resolve_and_create(sys, root, &m.destination, FileKind::Dir)?;
                let (set, clear, data) = parse_mount_options(options);
                let mut flags = (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | set) - clear;
                if m.readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                mount(
                    sys,
                    Some(Path::new("tmpfs")),
                    &target,
                    Some("tmpfs"),
                    flags,
                    Some(&data),
                )?;
            }
        }
    }
    switch_root(sys, root, shared)?;
    if !opts.privileged {
        protect_kernel_paths(sys)?;
    }
    if spec.readonly_rootfs {
        // A bind remount replaces the mount's flags with the ones given: keep `nodev`.
        mount(
            sys,
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | rootfs_flags(opts),
            None,
        )?;
    }
    Ok(())
}

/// The `mount(2)` flags of a bind propagation (`rshared` → `MS_SHARED|MS_REC`); `None` for
/// none or one the kernel does not know (the engine checked the names).
pub fn propagation_flags(propagation: &str) -> Option<MsFlags> {
    let (recursive, kind) = match propagation.strip_prefix('r') {
        Some(kind) => (MsFlags::MS_REC, kind),
        None => (MsFlags::empty(), propagation),
    };
    let flag = match kind {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        _ => return None,
    };
    Some(flag | recursive)
}

/// The overlay root's mount flags: `nodev` unless privileged, so a node the container's root
/// makes with `CAP_MKNOD` in its image cannot be opened.
fn rootfs_flags(opts: &RootfsOptions) -> MsFlags {
    if opts.privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_NODEV
    }
}

/// `/proc`, `/sys`, `/dev` and what lives in `/dev`, under `root`.
fn mount_standard(
    sys: &dyn Syscall,
    root: &Path,
    options: &RootfsOptions,
) -> Result<(), RootfsError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = resolve_and_create(sys, root, "/proc", FileKind::Dir)?;
    mount(
        sys,
        Some(Path::new("proc")),
        &proc,
        Some("proc"),
        hardened,
        None,
    )?;
    // /sys and the cgroup tree are read-only unless the container is privileged (Docker).
    let kernel_view = if options.privileged {
        hardened
    } else {
        hardened | MsFlags::MS_RDONLY
    };
    let sysfs = resolve_and_create(sys, root, "/sys", FileKind::Dir)?;
    mount(
        sys,
        Some(Path::new("sysfs")),
        &sysfs,
        Some("sysfs"),
        kernel_view,
        None,
    )?;
    if options.cgroup2 {
        let cgroup = resolve_and_create(sys, root, "/sys/fs/cgroup", FileKind::Dir)?;
        mount(
            sys,
            Some(Path::new("cgroup")),
            &cgroup,
            Some("cgroup2"),
            kernel_view,
            None,
        )?;
    }
    if !options.cgroup_v1.is_empty() {
        mount_cgroup_v1(sys, root, &options.cgroup_v1, kernel_view)?;
    }
    let dev = resolve_and_create(sys, root, "/dev", FileKind::Dir)?;
    mount(
        sys,
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | rootfs_flags(options),
        Some(DEV_OPTIONS),
    )?;
    // /dev is a fresh tmpfs now, so plain joins cannot meet an image's symlinks.
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if options.privileged {
            sys.mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|errno| RootfsError::Create {
                path,
                source: errno.into(),
            })?;
        } else {
            // A node made here could not be opened (the tmpfs is nodev); the host's node,
            // bound, carries the host /dev's flags.
            create(sys, &path, FileKind::File)?;
            bind(sys, &Path::new("/dev").join(name), &path, false)?;
        }
    }
    let pts = dev.join("pts");
    mkdir(sys, &pts)?;
    mount(
        sys,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(DEVPTS_OPTIONS),
    )?;
    let shm = dev.join("shm");
    match &options.dev_shm {
        DevShm::Tmpfs => {
            mkdir(sys, &shm)?;
            mount(
                sys,
                Some(Path::new("shm")),
                &shm,
                Some("tmpfs"),
                hardened,
                Some(&shm_options(options.shm_size.unwrap_or(DEFAULT_SHM_SIZE))),
            )?;
        }
        DevShm::None => {}
        DevShm::Bind { source } => {
            mkdir(sys, &shm)?;
            bind(sys, source, &shm, false)?;
        }
    }
    let mqueue = dev.join("mqueue");
    mkdir(sys, &mqueue)?;
    mount(
        sys,
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        hardened,
        None,
    )?;
    for (name, target) in DEV_LINKS {
        let link = dev.join(name);
        sys.symlink(Path::new(target), &link)
            .map_err(|errno| RootfsError::Create {
                path: link,
                source: errno.into(),
            })?;
    }
    if options.privileged {
        copy_host_devices(sys, &dev)?;
    }
    // Bound rather than made with mknod: /dev is `nodev`, and the bind keeps the host node's
    // mount flags (as the standard nodes above). The device cgroup decides what may open it.
    for (source, destination) in &options.devices {
        let target = resolve_and_create(sys, root, destination, FileKind::File)?;
        bind(sys, source, &target, false)?;
    }
    if let (true, Some(socket)) = (options.terminal, options.console_socket) {
        // The PTY is made in the container's own devpts, so its slave has a name there.
        let slave = sys
            .send_console(socket, &pts, Path::new("/dev/pts"))
            .map_err(|errno| RootfsError::Console {
                source: errno.into(),
            })?;
        let console = dev.join("console");
        create(sys, &console, FileKind::File)?;
        bind(sys, &slave, &console, false)?;
    } else if options.terminal {
        // The engine opened the PTY in its own devpts, which the container cannot see; binding
        // the slave on /dev/console gives it a name inside, as runc does for its console.
        // The bind source is the slave's path, not the /proc/self/fd/0 magic link: that one
        // leads to the mount in the engine's namespace, which mount(2) refuses as a source.
        let stdin = Path::new("/proc/self/fd/0");
        let slave = sys
            .read_link(stdin)
            .map_err(|errno| RootfsError::BindSource {
                path: stdin.to_path_buf(),
                source: errno.into(),
            })?;
        let console = dev.join("console");
        create(sys, &console, FileKind::File)?;
        bind(sys, &slave, &console, false)?;
    }
    Ok(())
}

/// Recreates the host's device nodes in the container's `/dev` (the ones it has already are
/// kept), as Docker does for `--privileged`.
fn copy_host_devices(sys: &dyn Syscall, dev: &Path) -> Result<(), RootfsError> {
    let devices = sys.host_devices().map_err(|errno| RootfsError::Create {
        path: PathBuf::from("/dev"),
        source: errno.into(),
    })?;
    for device in devices {
        let path = dev.join(&device.path);
        if sys.lstat(&path).is_ok() {
            continue;
        }
        if let Some(parent) = path.parent() {
            mkdir(sys, parent)?;
        }
        sys.mknod(
            &path,
            device.kind,
            Mode::from_bits_truncate(device.mode),
            device.rdev,
        )
        .map_err(|errno| RootfsError::Create {
            path,
            source: errno.into(),
        })?;
    }
    Ok(())
}

/// Applies [`MASKED_PATHS`] and [`READONLY_PATHS`]; runs after the root switch, so the paths
/// (and the `/dev/null` bound over masked files) are the container's own.
fn protect_kernel_paths(sys: &dyn Syscall) -> Result<(), RootfsError> {
    for path in MASKED_PATHS.map(Path::new) {
        match sys.stat(path) {
            Ok(info) if info.kind == FileKind::Dir => mount(
                sys,
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Ok(_) => bind(sys, Path::new("/dev/null"), path, false)?,
            Err(_) => {}
        }
    }
    for path in READONLY_PATHS.map(Path::new) {
        if sys.stat(path).is_ok() {
            bind(sys, path, path, true)?;
        }
    }
    Ok(())
}

/// Makes `root` the process's root and detaches the old one.
/// `shared`: the mounts are peers of the host's (see [`prepare_with`]), so the old root is made a
/// slave before it is detached (its unmount would otherwise reach the host's mounts) and the
/// initramfs root made private before the overlay moves over it.
fn switch_root(sys: &dyn Syscall, root: &Path, shared: bool) -> Result<(), RootfsError> {
    let pivot_error = |errno: Errno| RootfsError::PivotRoot {
        path: root.to_path_buf(),
        source: errno.into(),
    };
    // The old root, to make it a slave after the pivot: `.` then names the new root for
    // mount(2) (only umount(2) follows the stack up to the old root), as runc found.
    let old_root = if shared {
        Some(sys.open_dir(Path::new("/")).map_err(pivot_error)?)
    } else {
        None
    };
    sys.chdir(root).map_err(pivot_error)?;
    match sys.pivot_root(Path::new("."), Path::new(".")) {
        Ok(()) => {
            // The old root is now stacked under the new one at "."; detach it so the
            // container cannot reach the host's tree.
            if let Some(fd) = old_root {
                sys.chdir(Path::new(&format!("/proc/self/fd/{fd}")))
                    .map_err(pivot_error)?;
                sys.mount(
                    None,
                    Path::new("."),
                    None,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None,
                )
                .map_err(pivot_error)?;
            }
            sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
                .map_err(pivot_error)?;
        }
        Err(Errno::EINVAL) => {
            // The current root is the initramfs, which cannot be pivoted away from: move the
            // overlay over it and chroot, the way switch_root(8) does. Said aloud: a running
            // container must not pass for proof that pivot_root works (rmachine-init binds
            // rootfs so that it does).
            sys.warn(
                "pivot_root into the container's root failed with EINVAL (root is the \
                 initramfs?): using move + chroot instead",
            );
            if shared {
                sys.mount(None, Path::new("/"), None, MsFlags::MS_PRIVATE, None)
                    .map_err(pivot_error)?;
            }
            sys.mount(
                Some(Path::new(".")),
                Path::new("/"),
                None,
                MsFlags::MS_MOVE,
                None,
            )
            .map_err(pivot_error)?;
            sys.chroot(Path::new(".")).map_err(pivot_error)?;
        }
        Err(errno) => return Err(pivot_error(errno)),
    }
    sys.chdir(Path::new("/")).map_err(pivot_error)
}

/// runc's v1 cgroup mount for a container in the host's cgroup namespace: a tmpfs on
/// `/sys/fs/cgroup`, the container's directory of each hierarchy bound on it, then the tmpfs
/// made read-only when `flags` say so.
fn mount_cgroup_v1(
    sys: &dyn Syscall,
    root: &Path,
    dirs: &[(String, PathBuf)],
    flags: MsFlags,
) -> Result<(), RootfsError> {
    let base = resolve_and_create(sys, root, "/sys/fs/cgroup", FileKind::Dir)?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        sys,
        Some(Path::new("tmpfs")),
        &base,
        Some("tmpfs"),
        hardened,
        Some("mode=755"),
    )?;
    for (name, source) in dirs {
        // A fresh tmpfs: a plain join cannot meet a symlink.
        let target = base.join(name);
        mkdir(sys, &target)?;
        let what = source.display().to_string();
        mount(
            sys,
            Some(source),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| with_what(e, &what))?;
        mount(
            sys,
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None,
        )
        .map_err(|e| with_what(e, &what))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            sys,
            None,
            &base,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            None,
        )?;
    }
    Ok(())
}

/// Resolves a container path under `root` and creates it (with its parents) if missing.
fn resolve_and_create(
    sys: &dyn Syscall,
    root: &Path,
    destination: &str,
    kind: FileKind,
) -> Result<PathBuf, RootfsError> {
    let path = secure_join(sys, root, destination).map_err(|errno| RootfsError::Resolve {
        path: destination.to_string(),
        source: errno.into(),
    })?;
    create(sys, &path, kind)?;
    Ok(path)
}

/// Creates a directory or an empty file at `path` unless something is already there.
fn create(sys: &dyn Syscall, path: &Path, kind: FileKind) -> Result<(), RootfsError> {
    if sys.stat(path).is_ok() {
        return Ok(());
    }
    let created = match kind {
        FileKind::Dir => sys.mkdir_all(path, 0o755),
        _ => match path.parent() {
            Some(parent) => sys
                .mkdir_all(parent, 0o755)
                .and_then(|()| sys.create_file(path)),
            None => sys.create_file(path),
        },
    };
    created.map_err(|errno| RootfsError::Create {
        path: path.to_path_buf(),
        source: errno.into(),
    })
}

fn mkdir(sys: &dyn Syscall, path: &Path) -> Result<(), RootfsError> {
    sys.mkdir_all(path, 0o755)
        .map_err(|errno| RootfsError::Create {
            path: path.to_path_buf(),
            source: errno.into(),
        })
}

/// A recursive bind mount, remounted read-only when asked (a bind cannot be made read-only in
/// the same call).
fn bind(
    sys: &dyn Syscall,
    source: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), RootfsError> {
    let what = source.display().to_string();
    mount(
        sys,
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| with_what(e, &what))?;
    if readonly {
        mount(
            sys,
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(|e| with_what(e, &what))?;
        // The mounts under the source came along (MS_REC) and are still writable: Docker 25+
        // makes them read-only too where the kernel can (5.12+), and is content with the top
        // otherwise, as here.
        match sys.make_readonly_recursive(target) {
            Ok(()) | Err(Errno::ENOSYS) => {}
            Err(errno) => {
                return Err(RootfsError::Mount {
                    what: what.clone(),
                    target: target.to_path_buf(),
                    source: errno.into(),
                })
            }
        }
    }
    Ok(())
}

fn with_what(err: RootfsError, what: &str) -> RootfsError {
    match err {
        RootfsError::Mount { target, source, .. } => RootfsError::Mount {
            what: what.to_string(),
            target,
            source,
        },
        other => other,
    }
}

/// `mount(2)` with an error naming the filesystem type (or `bind`/`remount`) and the target.
fn mount(
    sys: &dyn Syscall,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    sys.mount(source, target, fstype, flags, data)
        .map_err(|errno| RootfsError::Mount {
            what: fstype.map_or_else(
                || {
                    if flags.contains(MsFlags::MS_REMOUNT) {
                        "remount".to_string()
                    } else {
                        "propagation".to_string()
                    }
                },
                str::to_string,
            ),
            target: target.to_path_buf(),
            source: errno.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{EtcFile, Mount, NetworkNamespace, Process, Rootfs};
    use crate::syscall::{Call, RecordingSyscall};

    fn spec() -> RuntimeSpec {
        RuntimeSpec {
            id: "c".repeat(64),
            rootfs: Rootfs {
                lower_dirs: vec!["/layers/top".into(), "/layers/base".into()],
                upper_dir: "/c/upper".into(),
                work_dir: "/c/work".into(),
                merged_dir: "/c/merged".into(),
            },
            process: Process {
                args: vec!["sh".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                terminal: false,
            },
            hostname: "cccccccccccc".into(),
            mounts: vec![],
            etc_files: vec![],
            readonly_rootfs: false,
            network: NetworkNamespace::Loopback,
        }
    }

    /// The image has the usual top-level directories.
    fn image() -> RecordingSyscall {
        [
            "/c/merged",
            "/c/merged/proc",
            "/c/merged/sys",
            "/c/merged/dev",
            "/c/merged/etc",
        ]
        .into_iter()
        .fold(RecordingSyscall::new(), |sys, dir| {
            sys.with_file(dir, FileKind::Dir, 0o755)
        })
    }

    /// (fstype or bind source, target, flags, data) of every mount, in order.
    fn mounts(calls: &[Call]) -> Vec<(String, String, MsFlags, Option<String>)> {
        calls
            .iter()
            .filter_map(|call| match call {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => Some((
                    fstype.clone().unwrap_or_else(|| {
                        source
                            .as_ref()
                            .map_or("-".into(), |s| s.display().to_string())
                    }),
                    target.display().to_string(),
                    *flags,
                    data.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn m(
        what: &str,
        target: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> (String, String, MsFlags, Option<String>) {
        (what.into(), target.into(), flags, data.map(Into::into))
    }

    #[test]
    fn overlay_options_list_layers_topmost_first() {
        assert_eq!(
            overlay_options(&spec()),
            "lowerdir=/layers/top:/layers/base,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn the_standard_mounts_come_in_runcs_order_then_pivot() {
        let sys = image();
        prepare(&spec(), &sys, false).expect("prepare");
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        assert_eq!(
            mounts(&sys.calls()),
            vec![
                m("-", "/", MsFlags::MS_REC | MsFlags::MS_SLAVE, None),
                m(
                    "overlay",
                    "/c/merged",
                    MsFlags::MS_NODEV,
                    Some("lowerdir=/layers/top:/layers/base,upperdir=/c/upper,workdir=/c/work")
                ),
                m("proc", "/c/merged/proc", hardened, None),
                m(
                    "sysfs",
                    "/c/merged/sys",
                    hardened | MsFlags::MS_RDONLY,
                    None
                ),
                m(
                    "tmpfs",
                    "/c/merged/dev",
                    MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_NODEV,
                    Some("mode=755,size=65536k")
                ),
                m("/dev/null", "/c/merged/dev/null", bind, None),
                m("/dev/zero", "/c/merged/dev/zero", bind, None),
                m("/dev/full", "/c/merged/dev/full", bind, None),
                m("/dev/random", "/c/merged/dev/random", bind, None),
                m("/dev/urandom", "/c/merged/dev/urandom", bind, None),
                m("/dev/tty", "/c/merged/dev/tty", bind, None),
                m(
                    "devpts",
                    "/c/merged/dev/pts",
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
                ),
                m(
                    "tmpfs",
                    "/c/merged/dev/shm",
                    hardened,
                    Some("mode=1777,size=65536k")
                ),
                m("mqueue", "/c/merged/dev/mqueue", hardened, None),
            ]
        );
        let calls = sys.calls();
        let tail = &calls[calls.len() - 4..];
        assert_eq!(
            tail,
            [
                Call::Chdir("/c/merged".into()),
                Call::PivotRoot {
                    new_root: ".".into(),
                    put_old: ".".into()
                },
                Call::Umount2 {
                    target: ".".into(),
                    flags: MntFlags::MNT_DETACH
                },
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn dev_gets_the_hosts_nodes_bound_and_its_links() {
        let sys = image();
        prepare(&spec(), &sys, false).expect("prepare");
        let calls = sys.calls();
        // Nodes made on the nodev /dev could not be opened: the host's are bound instead.
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
        for name in ["null", "zero", "full", "random", "urandom", "tty"] {
            let target = PathBuf::from(format!("/c/merged/dev/{name}"));
            let created = calls
                .iter()
                .position(|c| *c == Call::CreateFile(target.clone()))
                .expect("mountpoint created");
            let bound = calls
                .iter()
                .position(|c| {
                    *c == Call::Mount {
                        source: Some(PathBuf::from(format!("/dev/{name}"))),
                        target: target.clone(),
                        fstype: None,
                        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                        data: None,
                    }
                })
                .expect("host node bound");
            assert!(created < bound);
        }
        assert!(calls.contains(&Call::Symlink {
            target: "pts/ptmx".into(),
            link: "/c/merged/dev/ptmx".into()
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd/2".into(),
            link: "/c/merged/dev/stderr".into()
        }));
        // No console without a terminal.
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::CreateFile(p) if p.ends_with("console"))));
    }

    #[test]
    fn privileged_dev_gets_nodes_of_its_own_and_no_nodev() {
        let sys = image();
        let options = RootfsOptions {
            privileged: true,
            ..RootfsOptions::default()
        };
        prepare_with(&spec(), &sys, &options).expect("prepare");
        let calls = sys.calls();
        let nodes: Vec<(String, u32, u64)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mknod {
                    path,
                    kind,
                    perm,
                    dev,
                } => {
                    assert_eq!(*kind, SFlag::S_IFCHR);
                    Some((path.display().to_string(), *perm, *dev))
                }
                _ => None,
            })
            .collect();
        let dev = nix::sys::stat::makedev;
        assert_eq!(
            nodes,
            vec![
                ("/c/merged/dev/null".into(), 0o666, dev(1, 3)),
                ("/c/merged/dev/zero".into(), 0o666, dev(1, 5)),
                ("/c/merged/dev/full".into(), 0o666, dev(1, 7)),
                ("/c/merged/dev/random".into(), 0o666, dev(1, 8)),
                ("/c/merged/dev/urandom".into(), 0o666, dev(1, 9)),
                ("/c/merged/dev/tty".into(), 0o666, dev(5, 0)),
            ]
        );
        // Docker's --privileged keeps device access on the root and /dev.
        let all = mounts(&calls);
        let flags_of = |target: &str| {
            all.iter()
                .find(|(_, t, ..)| t == target)
                .map(|(_, _, flags, _)| *flags)
                .expect("mounted")
        };
        assert!(!flags_of("/c/merged").contains(MsFlags::MS_NODEV));
        assert!(!flags_of("/c/merged/dev").contains(MsFlags::MS_NODEV));
    }

    #[test]
    fn a_terminal_is_bound_on_dev_console() {
        let sys = image().with_symlink("/proc/self/fd/0", "/dev/pts/7");
        prepare(&spec(), &sys, true).expect("prepare");
        let calls = sys.calls();
        assert!(calls.contains(&Call::CreateFile("/c/merged/dev/console".into())));
        assert!(mounts(&calls).contains(&m(
            "/dev/pts/7",
            "/c/merged/dev/console",
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None
        )));
    }

    #[test]
    fn user_mounts_follow_etc_files_and_readonly_binds_are_remounted() {
        let mut spec = spec();
        spec.etc_files = vec![EtcFile {
            source: "/state/hosts".into(),
            destination: "/etc/hosts".into(),
        }];
        spec.mounts = vec![
            Mount {
                destination: "/data".into(),
                kind: MountKind::Bind {
                    source: "/vol/data".into(),
                },
                readonly: true,
                propagation: String::new(),
            },
            Mount {
                destination: "/run/secret".into(),
                kind: MountKind::Bind {
                    source: "/vol/secret".into(),
                },
                readonly: false,
                propagation: "rslave".into(),
            },
            Mount {
                destination: "/tmp".into(),
                kind: MountKind::Tmpfs {
                    options: "size=64m,mode=1777,noexec".into(),
                },
                readonly: true,
                propagation: String::new(),
            },
        ];
        let sys = image()
            .with_file("/state/hosts", FileKind::File, 0o644)
            .with_file("/vol/data", FileKind::Dir, 0o755)
            .with_file("/vol/secret", FileKind::File, 0o600);
        prepare(&spec, &sys, false).expect("prepare");
        let calls = sys.calls();
        let all = mounts(&calls);
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        let remount_ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        assert_eq!(
            all[all.len() - 6..],
            [
                m("/state/hosts", "/c/merged/etc/hosts", bind, None),
                m("/vol/data", "/c/merged/data", bind, None),
                m("-", "/c/merged/data", remount_ro, None),
                m("/vol/secret", "/c/merged/run/secret", bind, None),
                m(
                    "-",
                    "/c/merged/run/secret",
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None
                ),
                m(
                    "tmpfs",
                    "/c/merged/tmp",
                    MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC
                        | MsFlags::MS_RDONLY,
                    Some("size=64m,mode=1777")
                ),
            ]
        );
        // Submounts of a read-only bind are made read-only too (Docker 25's `rro`).
        assert!(calls.contains(&Call::ReadonlyRecursive("/c/merged/data".into())));
        assert!(!calls.contains(&Call::ReadonlyRecursive("/c/merged/run/secret".into())));
        // Mountpoints are created as the source's kind: a directory for a directory, an empty
        // file (and its parents) for a file.
        assert!(calls.contains(&Call::MkdirAll {
            path: "/c/merged/data".into(),
            mode: 0o755
        }));
        assert!(calls.contains(&Call::MkdirAll {
            path: "/c/merged/run".into(),
            mode: 0o755
        }));
        assert!(calls.contains(&Call::CreateFile("/c/merged/run/secret".into())));
        assert!(calls.contains(&Call::CreateFile("/c/merged/etc/hosts".into())));
    }

    #[test]
    fn a_shared_bind_keeps_the_mounts_peers_and_the_old_root_goes_as_a_slave() {
        let mut spec = spec();
        spec.mounts = vec![Mount {
            destination: "/p".into(),
            kind: MountKind::Bind {
                source: "/vol/p".into(),
            },
            readonly: false,
            propagation: "rshared".into(),
        }];
        let sys = image().with_file("/vol/p", FileKind::Dir, 0o755);
        prepare(&spec, &sys, false).expect("prepare");
        let calls = sys.calls();
        let all = mounts(&calls);
        // Peers of the host's mounts, but the one holding the root private (the fake says
        // `/`), so the overlay does not propagate.
        assert_eq!(
            all[..3],
            [
                m("-", "/", MsFlags::MS_REC | MsFlags::MS_SHARED, None),
                m("-", "/", MsFlags::MS_PRIVATE, None),
                m(
                    "overlay",
                    "/c/merged",
                    MsFlags::MS_NODEV,
                    Some(&overlay_options(&spec))
                ),
            ]
        );
        assert!(all.contains(&m(
            "-",
            "/c/merged/p",
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None
        )));
        // After the pivot: into the old root by its descriptor, made a slave, then detached.
        let tail: Vec<&Call> = calls
            .iter()
            .skip_while(|c| !matches!(c, Call::PivotRoot { .. }))
            .take(4)
            .collect();
        assert_eq!(
            tail[1..],
            [
                &Call::Chdir("/proc/self/fd/100".into()),
                &Call::Mount {
                    source: None,
                    target: ".".into(),
                    fstype: None,
                    flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    data: None,
                },
                &Call::Umount2 {
                    target: ".".into(),
                    flags: MntFlags::MNT_DETACH,
                },
            ]
        );
        assert!(calls.contains(&Call::OpenDir("/".into())));
    }

    #[test]
    fn a_missing_bind_source_is_named() {
        let mut spec = spec();
        spec.mounts = vec![Mount {
            destination: "/data".into(),
            kind: MountKind::Bind {
                source: "/vol/gone".into(),
            },
            readonly: false,
            propagation: String::new(),
        }];
        let err = prepare(&spec, &image(), false).expect_err("missing source");
        assert_eq!(err.to_string(), "bind source /vol/gone");
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some("no such file or directory".into())
        );
    }

    #[test]
    fn readonly_rootfs_is_remounted_after_the_pivot() {
        let mut spec = spec();
        spec.readonly_rootfs = true;
        let sys = image();
        prepare(&spec, &sys, false).expect("prepare");
        let calls = sys.calls();
        assert_eq!(
            calls.last(),
            Some(&Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NODEV,
                data: None,
            })
        );
    }

    #[test]
    fn kernel_paths_are_masked_and_made_read_only_after_the_pivot() {
        let sys = image()
            .with_file("/proc/keys", FileKind::File, 0o444)
            .with_file("/sys/firmware", FileKind::Dir, 0o755)
            .with_file("/proc/sys", FileKind::Dir, 0o555);
        prepare(&spec(), &sys, false).expect("prepare");
        let calls = sys.calls();
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { .. }))
            .expect("pivot_root");
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        assert_eq!(
            mounts(&calls[pivot..]),
            vec![
                m("/dev/null", "/proc/keys", bind, None),
                m("tmpfs", "/sys/firmware", MsFlags::MS_RDONLY, None),
                m("/proc/sys", "/proc/sys", bind, None),
                m(
                    "-",
                    "/proc/sys",
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None
                ),
            ]
        );
    }

    #[test]
    fn privileged_containers_get_host_devices_a_writable_sys_and_no_masks() {
        let sys = image()
            .with_file("/proc/keys", FileKind::File, 0o444)
            .with_file("/proc/sys", FileKind::Dir, 0o555)
            .with_host_device(crate::syscall::HostDevice {
                path: "kvm".into(),
                kind: SFlag::S_IFCHR,
                mode: 0o660,
                rdev: nix::sys::stat::makedev(10, 232),
            })
            .with_host_device(crate::syscall::HostDevice {
                path: "net/tun".into(),
                kind: SFlag::S_IFCHR,
                mode: 0o666,
                rdev: nix::sys::stat::makedev(10, 200),
            })
            .with_host_device(crate::syscall::HostDevice {
                path: "null".into(),
                kind: SFlag::S_IFCHR,
                mode: 0o666,
                rdev: nix::sys::stat::makedev(1, 3),
            });
        let options = RootfsOptions {
            privileged: true,
            ..RootfsOptions::default()
        };
        prepare_with(&spec(), &sys, &options).expect("prepare");
        let calls = sys.calls();
        let sysfs = mounts(&calls)
            .into_iter()
            .find(|(what, ..)| what == "sysfs")
            .expect("sysfs is mounted");
        assert!(!sysfs.2.contains(MsFlags::MS_RDONLY));
        let nodes: Vec<(PathBuf, u32)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mknod { path, perm, .. } => Some((path.clone(), *perm)),
                _ => None,
            })
            .collect();
        assert!(nodes.contains(&("/c/merged/dev/kvm".into(), 0o660)));
        assert!(nodes.contains(&("/c/merged/dev/net/tun".into(), 0o666)));
        // /dev/null was already made: one mknod only.
        let nulls = nodes
            .iter()
            .filter(|(p, _)| p == Path::new("/c/merged/dev/null"))
            .count();
        assert_eq!(nulls, 1);
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { .. }))
            .expect("pivot_root");
        assert_eq!(mounts(&calls[pivot..]), vec![], "nothing masked");
    }

    #[test]
    fn a_console_socket_gets_a_pty_of_the_containers_devpts_bound_on_console() {
        let sys = image();
        let options = RootfsOptions {
            terminal: true,
            console_socket: Some(7),
            ..RootfsOptions::default()
        };
        prepare_with(&spec(), &sys, &options).expect("prepare");
        let calls = sys.calls();
        let devpts = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "devpts"))
            .expect("devpts mounted");
        let send = calls
            .iter()
            .position(|c| {
                *c == Call::SendConsole {
                    socket: 7,
                    pts: "/c/merged/dev/pts".into(),
                    name_prefix: "/dev/pts".into(),
                }
            })
            .expect("console sent");
        assert!(devpts < send);
        let console = mounts(&calls)
            .into_iter()
            .find(|(_, target, ..)| target == "/c/merged/dev/console")
            .expect("console bound");
        assert_eq!(console.0, "/c/merged/dev/pts/0");
    }

    #[test]
    fn an_initramfs_root_is_left_by_move_and_chroot() {
        let sys = image().fail_when(|c| matches!(c, Call::PivotRoot { .. }), Errno::EINVAL);
        prepare(&spec(), &sys, false).expect("prepare");
        let calls = sys.calls();
        assert_eq!(
            calls[calls.len() - 5..],
            [
                Call::PivotRoot {
                    new_root: ".".into(),
                    put_old: ".".into()
                },
                Call::Warn(
                    "pivot_root into the container's root failed with EINVAL (root is the \
                     initramfs?): using move + chroot instead"
                        .into()
                ),
                Call::Mount {
                    source: Some(".".into()),
                    target: "/".into(),
                    fstype: None,
                    flags: MsFlags::MS_MOVE,
                    data: None,
                },
                Call::Chroot(".".into()),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn a_failed_overlay_mount_names_the_target() {
        let sys = image().fail_when(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"),
            Errno::EINVAL,
        );
        let err = prepare(&spec(), &sys, false).expect_err("overlay fails");
        assert_eq!(err.to_string(), "mount overlay on /c/merged");
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some("invalid argument".into())
        );
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (set, clear, data) = parse_mount_options("ro,size=64m,noexec,,mode=1777,exec,nosuid");
        assert_eq!(
            set,
            MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID
        );
        assert_eq!(clear, MsFlags::MS_NOEXEC);
        assert_eq!(data, "size=64m,mode=1777");
    }

    #[test]
    fn secure_join_keeps_symlinks_and_dotdot_inside_the_root() {
        let sys = RecordingSyscall::new()
            .with_file("/r/etc", FileKind::Dir, 0o755)
            .with_symlink("/r/abs", "/etc")
            .with_symlink("/r/rel", "../../etc")
            .with_symlink("/r/etc/loop", "/etc/loop");
        let join = |p: &str| secure_join(&sys, Path::new("/r"), p);
        assert_eq!(join("/etc/hosts"), Ok("/r/etc/hosts".into()));
        assert_eq!(join("/abs/hosts"), Ok("/r/etc/hosts".into()));
        assert_eq!(join("/rel/hosts"), Ok("/r/etc/hosts".into()));
        assert_eq!(join("/../../x/./y"), Ok("/r/x/y".into()));
        assert_eq!(join("/"), Ok("/r".into()));
        assert_eq!(join("/etc/loop/x"), Err(Errno::ELOOP));
    }
}
