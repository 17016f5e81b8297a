//! Root integration tests: the built `rmachine-runtime` runs busybox containers, driven the way
//! the engine drives it (spec file, sync pipe on fd 3, stdio pipes or a PTY), and the tests
//! assert what a user of the container would see.
//!
//! They need root (CI runs as root); without it each test says so and returns, or fails under
//! `RMACHINE_TESTS_REQUIRED=1` (tests/run.sh). Every mount
//! happens in the container's own mount namespace: `no_mount_leaks_onto_the_host` checks that.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use rmachine_runtime::cgroup::{Cgroup, CgroupMode};
use rmachine_runtime::spec::{
    CapabilitySpec, EtcFile, ExecFile, ExecSpec, Failed, Features, Mount, MountKind,
    NetworkNamespace, Process, Resources, Rootfs, RuntimeSpec, SpecFile, SyncMessage,
    OOM_KILLED_FILE, SPEC_FILE, SYNC_FD,
};
use tempfile::TempDir;

mod common;
use common::cannot_run;

/// Returns early when not root (failing under `RMACHINE_TESTS_REQUIRED=1`, see
/// [`common::cannot_run`]): these tests mount and create namespaces.
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            cannot_run("this test needs root");
            return;
        }
    };
}

/// A one-layer busybox image, shared read-only by every test. It is built once into cargo's
/// per-target scratch directory (built aside, then renamed into place, so concurrent test
/// binaries never see half of it) and kept for later runs.
fn busybox_layer() -> &'static Path {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    LAYER.get_or_init(|| {
        let layer = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime-busybox-layer");
        if !layer.join("bin/busybox").exists() {
            let building = tempfile::Builder::new()
                .prefix("runtime-busybox-layer-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("temp dir for the busybox layer");
            build_busybox_rootfs(building.path());
            // Losing the race to another test binary is fine: its layer is the same.
            let built = building.keep();
            if fs::rename(&built, &layer).is_err() {
                let _ = fs::remove_dir_all(&built);
            }
        }
        layer
    })
}

fn build_busybox_rootfs(root: &Path) {
    fs::create_dir_all(root.join("bin")).expect("mkdir bin");
    fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy /usr/bin/busybox");
    let list = Command::new("/usr/bin/busybox")
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if link.exists() {
            continue;
        }
        fs::create_dir_all(link.parent().expect("applet paths have a directory"))
            .expect("mkdir for applet");
        symlink("/bin/busybox", &link).expect("applet symlink");
    }
    fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .expect("write passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("write group");
}

/// A fresh 64-hex-digit container id.
fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:032x}{:032x}", std::process::id(), n)
}

/// One container: its state directory and the spec the test adjusts before running it.
struct Container {
    dir: TempDir,
    spec: RuntimeSpec,
    features: Features,
}

/// What the runtime did, as the engine sees it.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    sync: Option<SyncMessage>,
}

impl Container {
    fn new(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rmachine-runtime-test-")
            .tempdir()
            .expect("temp dir for the container");
        for sub in ["upper", "work", "merged"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir container dir");
        }
        let spec = RuntimeSpec {
            // Unique, since each container gets (and at exit removes) a cgroup named by it.
            id: unique_id(),
            rootfs: Rootfs {
                lower_dirs: vec![busybox_layer().to_path_buf()],
                upper_dir: dir.path().join("upper"),
                work_dir: dir.path().join("work"),
                merged_dir: dir.path().join("merged"),
            },
            process: Process {
                args: args.iter().map(|a| a.to_string()).collect(),
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                terminal: false,
            },
            hostname: "0123456789ab".into(),
            mounts: vec![],
            etc_files: vec![],
            readonly_rootfs: false,
            network: NetworkNamespace::Loopback,
        };
        Self {
            dir,
            spec,
            features: Features::default(),
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn run(&self) -> Outcome {
        self.run_with_stdin(None)
    }

    fn run_with_stdin(&self, input: Option<&str>) -> Outcome {
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let (mut child, sync) = self.spawn([stdin, Stdio::piped(), Stdio::piped()]);
        if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        finish(child, sync)
    }

    /// Starts the runtime with `stdio` (stdin, stdout, stderr) and the sync pipe on fd 3.
    fn spawn(&self, stdio: [Stdio; 3]) -> (Child, fs::File) {
        let file = SpecFile {
            spec: self.spec.clone(),
            features: self.features.clone(),
        };
        fs::write(
            self.dir.path().join(SPEC_FILE),
            serde_json::to_vec_pretty(&file).expect("spec serializes"),
        )
        .expect("write spec");
        spawn_runtime(&["run".as_ref(), self.dir.path().as_os_str()], stdio)
    }

    /// Starts the container in the background; returns the runtime and the
    /// host PID of the container's PID 1.
    fn start_detached(&self) -> (Child, i32) {
        let (child, sync) = self.spawn([Stdio::null(), Stdio::null(), Stdio::null()]);
        match read_sync(sync) {
            Some(SyncMessage::Started { pid }) => (child, pid),
            other => panic!("the container did not start: {other:?}"),
        }
    }

    /// `rmachine-runtime exec` of `process` in this (running) container.
    fn exec(&self, pid: i32, process: Process) -> Outcome {
        let file = self.dir.path().join("exec.json");
        fs::write(
            &file,
            serde_json::to_vec(&ExecSpec { pid, process }).expect("exec spec serializes"),
        )
        .expect("write exec spec");
        let (child, sync) = spawn_runtime(
            &[
                "exec".as_ref(),
                self.dir.path().as_os_str(),
                file.as_os_str(),
            ],
            [Stdio::null(), Stdio::piped(), Stdio::piped()],
        );
        finish(child, sync)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // A test that killed the monitor left its cgroup behind (the monitor removes it).
        if let Ok(cgroup) = Cgroup::for_container(&self.spec.id, None) {
            let _ = cgroup.remove();
        }
    }
}

fn spawn_runtime(args: &[&std::ffi::OsStr], stdio: [Stdio; 3]) -> (Child, fs::File) {
    spawn_runtime_in(args, stdio, false)
}

/// [`spawn_runtime`]; with `pure_v2`, the runtime runs in a mount namespace of its own where
/// `/sys/fs/cgroup` is the host's cgroup v2 tree, so it sees a pure v2 host like the guest.
fn spawn_runtime_in(
    args: &[&std::ffi::OsStr],
    stdio: [Stdio; 3],
    pure_v2: bool,
) -> (Child, fs::File) {
    let (sync_read, sync_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("sync pipe");
    let raw = sync_write.as_raw_fd();
    let [stdin, stdout, stderr] = stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmachine-runtime"));
    cmd.args(args).stdin(stdin).stdout(stdout).stderr(stderr);
    // SAFETY: runs in the forked child before exec and only calls dup2 and fcntl, which
    // are async-signal-safe, on a descriptor open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if raw == SYNC_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pure_v2 {
                let fail = || std::io::Error::last_os_error();
                if libc::unshare(libc::CLONE_NEWNS) < 0 {
                    return Err(fail());
                }
                let root = c"/".as_ptr();
                let null = std::ptr::null();
                let no_data = std::ptr::null();
                if libc::mount(null, root, null, libc::MS_REC | libc::MS_SLAVE, no_data) < 0 {
                    return Err(fail());
                }
                let target = c"/sys/fs/cgroup".as_ptr();
                let cgroup2 = c"cgroup2".as_ptr();
                if libc::mount(cgroup2, target, cgroup2, 0, no_data) < 0 {
                    return Err(fail());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn rmachine-runtime");
    drop(cmd);
    drop(sync_write);
    (child, fs::File::from(sync_read))
}

fn finish(child: Child, sync: fs::File) -> Outcome {
    let output = child.wait_with_output().expect("wait for the runtime");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        sync: read_sync(sync),
    }
}

fn read_sync(mut sync: fs::File) -> Option<SyncMessage> {
    let mut text = String::new();
    sync.read_to_string(&mut text).expect("read sync pipe");
    assert!(
        text.is_empty() || text.ends_with('\n') && text.lines().count() == 1,
        "the sync pipe carries at most one line: {text:?}"
    );
    (!text.is_empty()).then(|| serde_json::from_str(text.trim_end()).expect("sync message"))
}

fn assert_started(outcome: &Outcome) {
    match outcome.sync {
        Some(SyncMessage::Started { pid }) => assert!(pid > 1, "host pid, got {pid}"),
        ref other => panic!("expected Started, got {other:?} ({outcome:?})"),
    }
}

#[test]
fn echo_prints_hello_and_exits_zero() {
    require_root!();
    let outcome = Container::new(&["echo", "hello"]).run();
    assert_started(&outcome);
    assert_eq!(outcome.stdout, "hello\n");
    assert_eq!(outcome.stderr, "");
    assert_eq!(outcome.code, Some(0));
}

#[test]
fn the_exit_code_of_the_process_is_the_runtimes() {
    require_root!();
    let outcome = Container::new(&["sh", "-c", "exit 3"]).run();
    assert_started(&outcome);
    assert_eq!(outcome.code, Some(3));
}

#[test]
fn a_container_killed_by_a_signal_exits_128_plus_the_signal() {
    require_root!();
    let container = Container::new(&["sleep", "100"]);
    let (mut child, sync) = container.spawn([Stdio::null(), Stdio::null(), Stdio::null()]);
    let Some(SyncMessage::Started { pid }) = read_sync(sync) else {
        panic!("the container did not start");
    };
    // What `docker kill` does: SIGKILL to the host pid the runtime reported.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the container");
    let status = child.wait().expect("wait for the runtime");
    assert_eq!(status.code(), Some(137));
}

#[test]
fn a_grandchild_killed_by_a_signal_is_seen_by_its_shell() {
    require_root!();
    // PID 1 of a namespace cannot be killed from inside by a signal it does not handle, so
    // `kill -9 $$` is tried on a child shell, as a user sees it in Docker too.
    let outcome = Container::new(&["sh", "-c", "sh -c 'kill -9 $$'; echo $?"]).run();
    assert_eq!(outcome.stdout, "137\n");
    assert_eq!(outcome.code, Some(0));
}

#[test]
fn the_process_is_pid_1_of_its_own_namespace() {
    require_root!();
    let outcome = Container::new(&["sh", "-c", "echo $$; ps -o pid,comm; true"]).run();
    let mut lines = outcome.stdout.lines();
    assert_eq!(lines.next(), Some("1"));
    // Only the container's processes are visible: the shell and ps.
    let processes: Vec<&str> = lines.skip(1).collect();
    assert_eq!(processes.len(), 2, "{processes:?}");
}

#[test]
fn hostname_is_the_specs() {
    require_root!();
    let mut container = Container::new(&["hostname"]);
    container.spec.hostname = "c0ffee123456".into();
    let outcome = container.run();
    assert_eq!(outcome.stdout, "c0ffee123456\n");
}

#[test]
fn the_default_network_has_only_loopback_and_it_is_up() {
    require_root!();
    let outcome = Container::new(&[
        "sh",
        "-c",
        "cat /proc/net/dev; ip link; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping-ok",
    ])
    .run();
    let interfaces: Vec<&str> = outcome
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| {
            !name.is_empty() && !name.contains('|') && !name.chars().all(|c| c.is_ascii_digit())
        })
        .filter(|name| !name.starts_with("link/"))
        .collect();
    assert!(
        interfaces.iter().all(|name| *name == "lo"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("1: lo: <LOOPBACK,UP"),
        "{}",
        outcome.stdout
    );
    assert!(!outcome.stdout.contains("2: "), "{}", outcome.stdout);
    assert!(outcome.stdout.ends_with("ping-ok\n"), "{}", outcome.stdout);
}

fn net_namespace_of(pid: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .expect("read net namespace link")
        .display()
        .to_string()
}

#[test]
fn host_network_shares_the_runtimes_namespace() {
    require_root!();
    let mut container = Container::new(&["readlink", "/proc/self/ns/net"]);
    container.spec.network = NetworkNamespace::Host;
    let outcome = container.run();
    assert_eq!(outcome.stdout.trim(), net_namespace_of("self"));
}

#[test]
fn a_namespace_path_is_joined() {
    require_root!();
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .expect("start a process in a new network namespace");
    // unshare execs sleep once the namespace exists; wait until it has.
    let holder_pid = holder.id().to_string();
    let mut expected = net_namespace_of(&holder_pid);
    for _ in 0..100 {
        if expected != net_namespace_of("self") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        expected = net_namespace_of(&holder_pid);
    }
    let mut container = Container::new(&["readlink", "/proc/self/ns/net"]);
    container.spec.network = NetworkNamespace::Path {
        path: PathBuf::from(format!("/proc/{holder_pid}/ns/net")),
    };
    let outcome = container.run();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_ne!(expected, net_namespace_of("self"));
    assert_eq!(outcome.stdout.trim(), expected);
}

#[test]
fn writes_land_in_the_upper_dir_not_the_image() {
    require_root!();
    let container = Container::new(&["sh", "-c", "echo data > /created && rm /bin/vi"]);
    let outcome = container.run();
    assert_eq!(outcome.code, Some(0), "{outcome:?}");
    assert_eq!(
        fs::read_to_string(container.path("upper/created")).expect("file in upper"),
        "data\n"
    );
    assert!(!busybox_layer().join("created").exists());
    // The deletion is a whiteout in the upper dir; the image keeps its file.
    assert!(busybox_layer().join("bin/vi").exists());
    assert!(fs::symlink_metadata(container.path("upper/bin/vi")).is_ok());
}

#[test]
fn layers_are_stacked_topmost_first() {
    require_root!();
    let top = TempDir::new().expect("temp dir");
    fs::create_dir(top.path().join("etc")).expect("mkdir");
    fs::write(top.path().join("etc/motd"), "from the top layer\n").expect("write");
    let mut container = Container::new(&["cat", "/etc/motd"]);
    container
        .spec
        .rootfs
        .lower_dirs
        .insert(0, top.path().to_path_buf());
    let outcome = container.run();
    assert_eq!(outcome.stdout, "from the top layer\n");
}

#[test]
fn command_not_found_fails_like_docker() {
    require_root!();
    let outcome = Container::new(&["nope"]).run();
    assert_eq!(
        outcome.sync,
        Some(SyncMessage::Failed(Failed {
            message: "exec: \"nope\": executable file not found in $PATH".into(),
            exit_code: 127,
        }))
    );
    assert_eq!(outcome.code, Some(127));
    // The engine reports the failure; the container's stderr stays clean.
    assert_eq!(outcome.stderr, "");
}

#[test]
fn a_file_that_is_not_executable_fails_with_126() {
    require_root!();
    let outcome = Container::new(&["/etc/passwd"]).run();
    assert_eq!(
        outcome.sync,
        Some(SyncMessage::Failed(Failed {
            message: "exec: \"/etc/passwd\": permission denied".into(),
            exit_code: 126,
        }))
    );
    assert_eq!(outcome.code, Some(126));
}

#[test]
fn the_command_is_looked_up_in_the_containers_path() {
    require_root!();
    let mut container = Container::new(&["mytool", "arg"]);
    let tools = container.path("upper/opt/tools");
    fs::create_dir_all(&tools).expect("mkdir");
    fs::write(tools.join("mytool"), "#!/bin/sh\necho \"mytool $1\"\n").expect("write");
    fs::set_permissions(tools.join("mytool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    container.spec.process.env = vec!["PATH=/opt/tools:/bin".into()];
    let outcome = container.run();
    assert_eq!(outcome.stdout, "mytool arg\n");
}

#[test]
fn without_path_in_env_the_default_path_is_used() {
    require_root!();
    let mut container = Container::new(&["sh", "-c", "echo ok"]);
    container.spec.process.env = vec![];
    let outcome = container.run();
    assert_eq!(outcome.stdout, "ok\n");
}

#[test]
fn the_environment_is_exactly_the_specs() {
    require_root!();
    let mut container = Container::new(&["env"]);
    container.spec.process.env = vec!["PATH=/usr/bin".into(), "FOO=bar baz".into()];
    let outcome = container.run();
    let mut lines: Vec<&str> = outcome.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["FOO=bar baz", "PATH=/usr/bin"]);
}

#[test]
fn a_missing_cwd_is_created() {
    require_root!();
    let mut container = Container::new(&["pwd"]);
    container.spec.process.cwd = "/does/not/exist".into();
    let outcome = container.run();
    assert_eq!(outcome.stdout, "/does/not/exist\n");
    assert!(container.path("upper/does/not/exist").is_dir());
}

#[test]
fn uid_gid_and_groups_are_applied() {
    require_root!();
    let mut container = Container::new(&["sh", "-c", "id -u; id -g; id -G; touch /denied"]);
    container.spec.process.uid = 1000;
    container.spec.process.gid = 1000;
    container.spec.process.additional_gids = vec![10, 20];
    let outcome = container.run();
    assert_eq!(outcome.stdout, "1000\n1000\n1000 10 20\n");
    assert!(
        outcome.stderr.contains("Permission denied"),
        "{}",
        outcome.stderr
    );
    assert_eq!(outcome.code, Some(1));
}

#[test]
fn only_stdio_is_inherited() {
    require_root!();
    let outcome = Container::new(&["sh", "-c", "ls /proc/1/fd; true"]).run();
    assert_eq!(outcome.stdout, "0\n1\n2\n");
}

#[test]
fn stdin_reaches_the_container() {
    require_root!();
    let outcome = Container::new(&["cat"]).run_with_stdin(Some("piped input\n"));
    assert_eq!(outcome.stdout, "piped input\n");
}

#[test]
fn standard_filesystems_and_devices_are_there() {
    require_root!();
    let outcome = Container::new(&[
        "sh",
        "-c",
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c && ls /dev/pts && readlink /dev/ptmx && readlink /dev/fd && \
         touch /sys/x 2>/dev/null || echo sys-read-only; grep -E ' /dev/(shm|mqueue) ' /proc/mounts | cut -d' ' -f1-3",
    ])
    .run();
    assert_eq!(
        outcome.stdout,
        "4\nptmx\npts/ptmx\n/proc/self/fd\nsys-read-only\nshm /dev/shm tmpfs\nmqueue /dev/mqueue mqueue\n",
        "{outcome:?}"
    );
}

#[test]
fn readonly_rootfs_refuses_writes() {
    require_root!();
    let host = TempDir::new().expect("temp dir");
    fs::write(host.path().join("hosts"), "127.0.0.1 localhost\n").expect("write");
    let mut container = Container::new(&[
        "sh",
        "-c",
        "touch /x; echo tmp > /dev/shm/ok && cat /dev/shm/ok; \
         echo more >> /etc/hosts 2>/dev/null || echo hosts-read-only",
    ]);
    container.spec.readonly_rootfs = true;
    container.spec.etc_files = vec![EtcFile {
        source: host.path().join("hosts"),
        destination: "/etc/hosts".into(),
    }];
    let outcome = container.run();
    assert!(
        outcome.stderr.contains("Read-only file system"),
        "{}",
        outcome.stderr
    );
    assert_eq!(outcome.stdout, "tmp\nhosts-read-only\n");
}

#[test]
fn root_in_the_container_has_dockers_default_capabilities() {
    require_root!();
    let outcome = Container::new(&[
        "sh",
        "-c",
        "grep -E '^Cap(Inh|Eff|Bnd)' /proc/self/status; \
         mount -t tmpfs none /mnt 2>/dev/null || echo mount-denied",
    ])
    .run();
    assert_eq!(
        outcome.stdout,
        "CapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nmount-denied\n"
    );

    let mut user = Container::new(&["grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"]);
    user.spec.process.uid = 1000;
    let outcome = user.run();
    assert_eq!(
        outcome.stdout,
        "CapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n"
    );
}

#[test]
fn kernel_paths_are_masked_or_read_only() {
    require_root!();
    let outcome = Container::new(&[
        "sh",
        "-c",
        "cat /proc/keys /proc/timer_list | wc -c; ls /sys/firmware | wc -l; \
         echo x > /proc/sys/kernel/domainname 2>/dev/null || echo proc-sys-read-only",
    ])
    .run();
    // Both files exist and are non-empty on the host (and on Debian's kernel).
    assert!(!fs::read_to_string("/proc/timer_list")
        .expect("host /proc/timer_list")
        .is_empty());
    assert_eq!(outcome.stdout, "0\n0\nproc-sys-read-only\n", "{outcome:?}");
}

#[test]
fn binds_tmpfs_and_etc_files_are_mounted() {
    require_root!();
    let host = TempDir::new().expect("temp dir");
    fs::write(host.path().join("f"), "host file\n").expect("write");
    fs::write(host.path().join("hostname"), "etc-hostname\n").expect("write");
    let mut container = Container::new(&[
        "sh",
        "-c",
        "cat /data/f; touch /data/new 2>/dev/null || echo data-read-only; \
         echo rw > /rw/new && echo rw-ok; grep ' /scratch ' /proc/mounts | cut -d' ' -f3,4; \
         cat /etc/hostname",
    ]);
    container.spec.mounts = vec![
        Mount {
            destination: "/data".into(),
            kind: MountKind::Bind {
                source: host.path().to_path_buf(),
            },
            readonly: true,
            propagation: String::new(),
        },
        Mount {
            destination: "/rw".into(),
            kind: MountKind::Bind {
                source: host.path().to_path_buf(),
            },
            readonly: false,
            propagation: String::new(),
        },
        Mount {
            destination: "/scratch".into(),
            kind: MountKind::Tmpfs {
                options: "size=1m,mode=1777,noexec".into(),
            },
            readonly: false,
            propagation: String::new(),
        },
    ];
    container.spec.etc_files = vec![EtcFile {
        source: host.path().join("hostname"),
        destination: "/etc/hostname".into(),
    }];
    let outcome = container.run();
    assert_eq!(
        outcome.stdout,
        "host file\ndata-read-only\nrw-ok\ntmpfs rw,nosuid,nodev,noexec,relatime,size=1024k\netc-hostname\n",
        "{outcome:?}"
    );
    assert!(host.path().join("new").exists());
}

#[test]
fn a_symlink_in_the_image_cannot_send_a_mount_outside_the_rootfs() {
    require_root!();
    let outside = TempDir::new().expect("temp dir");
    let mut container = Container::new(&["sh", "-c", "grep -c ' /escape ' /proc/mounts"]);
    // An image whose /escape points at a host directory by absolute path.
    symlink(outside.path(), container.path("upper/escape")).expect("symlink");
    container.spec.mounts = vec![Mount {
        destination: "/escape/inner".into(),
        kind: MountKind::Tmpfs {
            options: String::new(),
        },
        readonly: false,
        propagation: String::new(),
    }];
    let outcome = container.run();
    assert_eq!(
        outcome.code,
        Some(1),
        "the tmpfs went to {}/inner inside the rootfs",
        outside.path().display()
    );
    assert!(!outside.path().join("inner").exists());
    let inside = container
        .path("upper")
        .join(outside.path().strip_prefix("/").expect("absolute"))
        .join("inner");
    assert!(inside.is_dir(), "{}", inside.display());
}

#[test]
fn a_failed_mount_names_what_failed() {
    require_root!();
    let mut container = Container::new(&["true"]);
    container.spec.rootfs.lower_dirs = vec![PathBuf::from("/nonexistent-layer")];
    let outcome = container.run();
    let merged = container.path("merged");
    match outcome.sync {
        Some(SyncMessage::Failed(Failed { message, exit_code })) => {
            assert_eq!(exit_code, 1);
            assert!(
                message.starts_with(&format!("mount overlay on {}: ", merged.display())),
                "{message}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(outcome.code, Some(1));
}

/// Everything written to a PTY until its last slave descriptor closes, without the `\r`s.
fn read_master(master: OwnedFd) -> String {
    let mut output = Vec::new();
    let mut master = fs::File::from(master);
    let mut buf = [0u8; 4096];
    // EIO once the last slave descriptor is closed: the process has exited.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&output).replace('\r', "")
}

#[test]
fn a_terminal_becomes_the_controlling_tty() {
    require_root!();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut container = Container::new(&[
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo stdin-is-a-tty; : < /dev/tty && echo has-controlling-tty",
    ]);
    container.spec.process.terminal = true;
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
    let (mut child, sync) =
        container.spawn([slave(&pty.slave), slave(&pty.slave), slave(&pty.slave)]);
    drop(pty.slave);
    let message = read_sync(sync);
    assert!(
        matches!(message, Some(SyncMessage::Started { .. })),
        "{message:?}"
    );
    let output = read_master(pty.master);
    let status = child.wait().expect("wait for the runtime");
    assert_eq!(status.code(), Some(0), "{output}");
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some("/dev/console"), "{output}");
    assert_eq!(lines.next(), Some("stdin-is-a-tty"), "{output}");
    assert_eq!(lines.next(), Some("has-controlling-tty"), "{output}");
}

#[test]
fn manual_runs_print_failures_on_stderr_with_the_container_id() {
    require_root!();
    let container = Container::new(&["nope"]);
    fs::write(
        container.dir.path().join(SPEC_FILE),
        serde_json::to_vec(&container.spec).expect("spec serializes"),
    )
    .expect("write spec");
    let output = Command::new(env!("CARGO_BIN_EXE_rmachine-runtime"))
        .arg("run")
        .arg(container.dir.path())
        .output()
        .expect("run the runtime");
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "rmachine-runtime: container {}: exec: \"nope\": executable file not found in $PATH\n",
            container.spec.id
        )
    );
}

#[test]
fn no_mount_leaks_onto_the_host() {
    require_root!();
    let container = Container::new(&["true"]);
    let outcome = container.run();
    assert_eq!(outcome.code, Some(0));
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = container.dir.path().display().to_string();
    assert!(!mounts.contains(&dir), "{mounts}");
}

fn exec_process(args: &[&str]) -> Process {
    Process {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/bin:/usr/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        terminal: false,
    }
}

#[test]
fn exec_runs_in_the_containers_namespaces_and_root() {
    require_root!();
    let mut container =
        Container::new(&["sh", "-c", "echo made-by-pid-1 > /marker; exec sleep 100"]);
    container.spec.hostname = "execbox".into();
    let (mut runtime, pid) = container.start_detached();
    // Wait for the container's shell to write its marker.
    for _ in 0..200 {
        if container.path("upper/marker").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut process = exec_process(&[
        "sh",
        "-c",
        "hostname; cat /marker; tr '\\0' ' ' < /proc/1/cmdline; echo; [ $$ != 1 ] && echo not-pid-1; pwd; id -u; cat /proc/net/dev | grep -c :",
    ]);
    process.cwd = "/etc".into();
    process.uid = 1000;
    let outcome = container.exec(pid, process);
    assert!(
        matches!(outcome.sync, Some(SyncMessage::Started { pid: exec_pid }) if exec_pid != pid),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.stdout, "execbox\nmade-by-pid-1\nsleep 100 \nnot-pid-1\n/etc\n1000\n1\n",
        "{outcome:?}"
    );
    assert_eq!(outcome.code, Some(0));

    let code = container.exec(pid, exec_process(&["sh", "-c", "exit 5"]));
    assert_eq!(code.code, Some(5));

    let missing = container.exec(pid, exec_process(&["nope"]));
    assert_eq!(missing.code, Some(127));
    assert_eq!(
        missing.sync,
        Some(SyncMessage::Failed(Failed {
            message: "exec: \"nope\": executable file not found in $PATH".into(),
            exit_code: 127,
        }))
    );

    let mut bad_cwd = exec_process(&["true"]);
    bad_cwd.cwd = "/not/here".into();
    let bad_cwd = container.exec(pid, bad_cwd);
    assert_eq!(bad_cwd.code, Some(1));
    assert!(
        matches!(&bad_cwd.sync, Some(SyncMessage::Failed(f)) if f.message == "chdir to cwd (\"/not/here\") set in config.json failed: no such file or directory"),
        "{bad_cwd:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the container");
    assert_eq!(runtime.wait().expect("wait").code(), Some(137));

    let gone = container.exec(pid, exec_process(&["true"]));
    assert_eq!(gone.code, Some(1));
    match gone.sync {
        Some(SyncMessage::Failed(Failed { message, .. })) => assert!(
            message.starts_with(&format!("container process {pid} is not running: ")),
            "{message}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_missing_spec_is_reported_on_the_sync_pipe() {
    let dir = TempDir::new().expect("temp dir");
    let (child, sync) = spawn_runtime(
        &["run".as_ref(), dir.path().as_os_str()],
        [Stdio::null(), Stdio::piped(), Stdio::piped()],
    );
    let outcome = finish(child, sync);
    assert_eq!(outcome.code, Some(1));
    assert_eq!(
        outcome.sync,
        Some(SyncMessage::Failed(Failed {
            message: format!(
                "read spec {}: no such file or directory",
                dir.path().join(SPEC_FILE).display()
            ),
            exit_code: 1,
        }))
    );
}

/// Whether host PID `pid` is gone (or a zombie waiting for its new parent to reap it).
fn is_dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses: `PID (COMM) S ...`.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn killing_the_monitor_kills_the_container_whatever_its_user() {
    require_root!();
    for uid in [0, 1000] {
        let mut container = Container::new(&["sleep", "100"]);
        container.spec.process.uid = uid;
        container.spec.process.gid = uid;
        let (mut runtime, pid) = container.start_detached();
        assert!(!is_dead(pid));
        runtime.kill().expect("kill the monitor");
        runtime.wait().expect("reap the monitor");
        let died = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            is_dead(pid)
        });
        assert!(died, "container of uid {uid} outlived its monitor");
    }
}

#[test]
fn exec_with_a_terminal_gets_it_as_controlling_tty() {
    require_root!();
    let container = Container::new(&["sleep", "100"]);
    let (mut runtime, pid) = container.start_detached();
    let mut process = exec_process(&[
        "sh",
        "-c",
        "[ -t 0 ] && echo stdin-is-a-tty; : < /dev/tty && echo has-controlling-tty",
    ]);
    process.terminal = true;
    let file = container.path("exec.json");
    fs::write(
        &file,
        serde_json::to_vec(&ExecSpec { pid, process }).expect("exec spec serializes"),
    )
    .expect("write exec spec");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
    let (mut exec, sync) = spawn_runtime(
        &[
            "exec".as_ref(),
            container.dir.path().as_os_str(),
            file.as_os_str(),
        ],
        [slave(&pty.slave), slave(&pty.slave), slave(&pty.slave)],
    );
    drop(pty.slave);
    let message = read_sync(sync);
    assert!(
        matches!(message, Some(SyncMessage::Started { .. })),
        "{message:?}"
    );
    let output = read_master(pty.master);
    assert_eq!(
        exec.wait().expect("wait for exec").code(),
        Some(0),
        "{output}"
    );
    // /dev/tty opens only for a process with a controlling terminal.
    assert_eq!(output, "stdin-is-a-tty\nhas-controlling-tty\n");
    let _ = runtime.kill();
    let _ = runtime.wait();
}

// ---- Features: cgroups, capabilities, --privileged, --init, console socket ----

/// This host's cgroup v2 tree, when it is not mounted on /sys/fs/cgroup (a hybrid host).
fn hybrid_v2_tree() -> Option<&'static Path> {
    let unified = Path::new("/sys/fs/cgroup/unified");
    (rmachine_runtime::cgroup::detect(Path::new("/sys/fs/cgroup")).ok() == Some(CgroupMode::V1)
        && rmachine_runtime::cgroup::detect(unified).ok() == Some(CgroupMode::V2))
    .then_some(unified)
}

#[test]
fn on_a_v2_host_the_container_has_its_own_cgroup_namespace_and_tree() {
    require_root!();
    let Some(tree) = hybrid_v2_tree() else {
        cannot_run("needs a hybrid host to pose as a pure v2 one");
        return;
    };
    let container = Container::new(&[
        "sh",
        "-c",
        "grep ^0:: /proc/self/cgroup; grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f3,4 | cut -d, -f1; \
         [ -f /sys/fs/cgroup/cgroup.procs ] && echo has-procs; \
         echo x > /sys/fs/cgroup/cgroup.freeze 2>/dev/null || echo read-only; sleep 100",
    ]);
    let file = SpecFile {
        spec: container.spec.clone(),
        features: container.features.clone(),
    };
    fs::write(
        container.path(SPEC_FILE),
        serde_json::to_vec(&file).expect("spec serializes"),
    )
    .expect("write spec");
    let (mut runtime, sync) = spawn_runtime_in(
        &["run".as_ref(), container.dir.path().as_os_str()],
        [Stdio::null(), Stdio::piped(), Stdio::piped()],
        true,
    );
    let pid = match read_sync(sync) {
        Some(SyncMessage::Started { pid }) => pid,
        other => panic!("the container did not start: {other:?}"),
    };
    let mut stdout = std::io::BufReader::new(runtime.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    for _ in 0..4 {
        std::io::BufRead::read_line(&mut stdout, &mut seen).expect("read the container's output");
    }
    assert_eq!(seen, "0::/\ncgroup2 ro\nhas-procs\nread-only\n");
    // What the engine does in-process, here on the same tree.
    let cgroup = Cgroup::under(tree, CgroupMode::V2, &container.spec.id, None).expect("cgroup");
    let dir = cgroup.path("any").expect("v2 has one directory");
    assert!(wait_until(10, || cgroup
        .pids()
        .is_ok_and(|p| p.contains(&pid))));
    // docker exec lands in the same cgroup and sees the same namespace.
    let exec_file = container.path("exec.json");
    let process = exec_process(&["grep", "^0::", "/proc/self/cgroup"]);
    fs::write(
        &exec_file,
        serde_json::to_vec(&ExecSpec { pid, process }).expect("exec spec serializes"),
    )
    .expect("write exec spec");
    let (exec, exec_sync) = spawn_runtime_in(
        &[
            "exec".as_ref(),
            container.dir.path().as_os_str(),
            exec_file.as_os_str(),
        ],
        [Stdio::null(), Stdio::piped(), Stdio::piped()],
        true,
    );
    let exec = finish(exec, exec_sync);
    assert_eq!(exec.stdout, "0::/\n", "{exec:?}");
    if dir.join("cgroup.freeze").exists() {
        cgroup.freeze().expect("freeze");
        assert!(cgroup.is_frozen().expect("state"));
        cgroup.thaw().expect("thaw");
    }
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(runtime.wait().expect("wait").code(), Some(137));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let _ = fs::remove_dir(tree.join("rmachine"));
}

/// Polls `check` every 10 ms for up to `seconds`.
fn wait_until(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    check()
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal the container");
}

fn cgroup_of(container: &Container) -> Cgroup {
    Cgroup::for_container(&container.spec.id, None).expect("this host has cgroups")
}

/// The first line of a cgroup interface file, or `None` (with a message) when the host lacks
/// the controller.
fn cgroup_file(cgroup: &Cgroup, controller: &str, file: &str) -> Option<String> {
    let Some(dir) = cgroup.path(controller) else {
        cannot_run(&format!("no {controller} controller on this host"));
        return None;
    };
    match fs::read_to_string(dir.join(file)) {
        Ok(content) => Some(content.trim().to_string()),
        Err(err) => {
            cannot_run(&format!("{file}: {err}"));
            None
        }
    }
}

#[test]
fn limits_land_in_the_containers_cgroup_which_is_removed_at_exit() {
    require_root!();
    let mut container = Container::new(&["sleep", "100"]);
    container.features.resources = Some(Resources {
        memory_bytes: Some(64 << 20),
        memory_swap_bytes: Some(128 << 20),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(512),
        pids_limit: Some(50),
        ..Resources::default()
    });
    let (mut runtime, pid) = container.start_detached();
    let cgroup = cgroup_of(&container);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    assert!(
        own.contains(&format!("/rmachine/{}", container.spec.id)),
        "{own}"
    );
    assert!(cgroup.pids().expect("pids").contains(&pid));
    let expected = match cgroup.mode() {
        CgroupMode::V2 => [
            ("memory", "memory.max", "67108864"),
            ("cpu", "cpu.max", "50000 100000"),
            ("pids", "pids.max", "50"),
        ],
        CgroupMode::V1 => [
            ("memory", "memory.limit_in_bytes", "67108864"),
            ("cpu", "cpu.cfs_quota_us", "50000"),
            ("pids", "pids.max", "50"),
        ],
    };
    for (controller, file, value) in expected {
        if let Some(content) = cgroup_file(&cgroup, controller, file) {
            assert_eq!(content, value, "{file}");
        }
    }
    if cgroup.path("memory").is_some() {
        assert_eq!(cgroup.stats().expect("stats").memory_limit, Some(64 << 20));
    }
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(runtime.wait().expect("wait").code(), Some(137));
    for controller in ["memory", "cpu", "pids", "freezer"] {
        if let Some(dir) = cgroup.path(controller) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}

#[test]
fn the_pids_limit_caps_a_fork_bomb() {
    require_root!();
    // The subshell forks 40 sleepers; it dies at the first refused fork (ash gives up), and
    // PID 1 then execs without forking.
    let mut container = Container::new(&[
        "sh",
        "-c",
        "(for i in $(seq 1 40); do sleep 30 & done) 2>/dev/null; exec sleep 30",
    ]);
    container.features.resources = Some(Resources {
        pids_limit: Some(10),
        ..Resources::default()
    });
    let (mut runtime, pid) = container.start_detached();
    let cgroup = cgroup_of(&container);
    if cgroup.path("pids").is_none() {
        cannot_run("no pids controller on this host");
    } else {
        // Settled: the subshell is gone and PID 1 is `sleep`.
        let settled = wait_until(10, || {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        assert!(settled, "PID 1 never became sleep");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let current = cgroup.stats().expect("stats").pids_current;
        assert!((8..=10).contains(&current), "{current} tasks, limit 10");
        assert_eq!(cgroup.pids().expect("pids").len() as u64, current);
        let events = cgroup_file(&cgroup, "pids", "pids.events").unwrap_or_default();
        assert!(!events.is_empty() && !events.contains("max 0"), "{events}");
    }
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = runtime.wait();
}

fn read_count(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn freeze_stops_the_container_and_thaw_resumes_it_and_stats_count() {
    require_root!();
    let container = Container::new(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /count; done",
    ]);
    let (mut runtime, pid) = container.start_detached();
    let cgroup = cgroup_of(&container);
    let count = container.path("upper").join("count");
    assert!(wait_until(10, || read_count(&count).is_some_and(|n| n > 10)));
    if cgroup.mode() == CgroupMode::V1 && cgroup.path("freezer").is_none() {
        cannot_run("no freezer controller on this host");
    } else {
        cgroup.freeze().expect("freeze");
        assert!(cgroup.is_frozen().expect("state"));
        let frozen_at = read_count(&count);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(read_count(&count), frozen_at, "the loop ran while frozen");
        cgroup.thaw().expect("thaw");
        assert!(!cgroup.is_frozen().expect("state"));
        let before = frozen_at.unwrap_or(0);
        assert!(
            wait_until(5, || read_count(&count).is_some_and(|n| n > before + 10)),
            "the loop did not resume"
        );
    }
    let stats = cgroup.stats().expect("stats");
    if cgroup.path("cpuacct").is_some() || cgroup.mode() == CgroupMode::V2 {
        assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    }
    if cgroup.path("memory").is_some() {
        assert!(stats.memory_usage > 0, "{stats:?}");
        assert_eq!(stats.memory_limit, None, "no --memory given");
    }
    if cgroup.path("pids").is_some() {
        assert!(stats.pids_current >= 1, "{stats:?}");
    }
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(runtime.wait().expect("wait").code(), Some(137));
}

#[test]
fn running_out_of_memory_is_recorded() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    container.features.resources = Some(Resources {
        memory_bytes: Some(32 << 20),
        memory_swap_bytes: Some(32 << 20),
        ..Resources::default()
    });
    let cgroup = cgroup_of(&container);
    if cgroup.path("memory").is_none() {
        cannot_run("no memory controller on this host");
        return;
    }
    let outcome = container.run();
    assert_started(&outcome);
    assert_eq!(outcome.code, Some(137), "{outcome:?}");
    assert!(!outcome.stdout.contains("survived"));
    assert!(container.path(OOM_KILLED_FILE).exists());
}

fn cap_eff(container: &Container) -> String {
    let outcome = container.run();
    assert_started(&outcome);
    outcome.stdout
}

#[test]
fn cap_add_and_cap_drop_change_the_capabilities() {
    require_root!();
    let mut container = Container::new(&["grep", "CapEff", "/proc/self/status"]);
    container.features.capabilities = Some(CapabilitySpec {
        add: vec!["NET_ADMIN".into()],
        drop: vec!["cap_chown".into()],
    });
    assert_eq!(cap_eff(&container), "CapEff:\t00000000a80435fa\n");

    container.features.capabilities = Some(CapabilitySpec {
        add: vec!["SYS_ADMIN".into()],
        drop: vec!["ALL".into()],
    });
    assert_eq!(cap_eff(&container), "CapEff:\t0000000000200000\n");

    // SYS_ADMIN lets the container mount: the capability really is there.
    let mut mounter = Container::new(&[
        "sh",
        "-c",
        "mkdir -p /m && mount -t tmpfs none /m && echo mounted",
    ]);
    mounter.features.capabilities = Some(CapabilitySpec {
        add: vec!["CAP_SYS_ADMIN".into()],
        drop: vec![],
    });
    assert_eq!(cap_eff(&mounter), "mounted\n");
}

#[test]
fn an_unknown_capability_fails_like_docker() {
    require_root!();
    let mut container = Container::new(&["true"]);
    container.features.capabilities = Some(CapabilitySpec {
        add: vec!["FOO".into()],
        drop: vec![],
    });
    let outcome = container.run();
    assert_eq!(
        outcome.sync,
        Some(SyncMessage::Failed(Failed {
            message: "invalid CapAdd: unknown capability: \"CAP_FOO\"".into(),
            exit_code: 1,
        }))
    );
    assert_eq!(outcome.code, Some(1));
}

/// A host character device a default container does not get.
fn host_only_device() -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut names: Vec<String> = fs::read_dir("/dev")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_char_device()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            ![
                "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
            ]
            .contains(&n.as_str())
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// A capability set of the test process itself, from /proc/self/status.
fn own_capabilities(set: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("the set is listed")
}

#[test]
fn privileged_containers_get_everything() {
    require_root!();
    let device = host_only_device();
    let script = format!(
        "grep CapEff /proc/self/status; grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; \
         grep -c ' /proc/sys ' /proc/mounts; {}",
        device.as_ref().map_or(String::new(), |d| format!(
            "[ -c /dev/{d} ] && echo has-{d}"
        ))
    );
    let mut container = Container::new(&["sh", "-c", &script]);
    container.features.privileged = true;
    // Every capability the runtime itself has (this sandbox may lack some).
    let all = own_capabilities("CapBnd") & ((1 << 41) - 1);
    let mut expected = format!("CapEff:\t{all:016x}\nrw\n0\n");
    if let Some(d) = &device {
        expected.push_str(&format!("has-{d}\n"));
    }
    assert_eq!(cap_eff(&container), expected);
}

#[test]
fn init_is_pid_1_and_runs_the_command_as_its_child() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "cat /proc/1/comm; echo $$; tr '\\0' ' ' </proc/1/cmdline; echo; exit 3",
    ]);
    container.features.init = true;
    let outcome = container.run();
    assert_started(&outcome);
    assert_eq!(outcome.code, Some(3), "the child's status: {outcome:?}");
    let mut lines = outcome.stdout.lines();
    assert_eq!(lines.next(), Some("docker-init"));
    assert_eq!(lines.next(), Some("2"), "the command is PID 1's child");
    // The full title needs CAP_SYS_RESOURCE; without it the runtime's own argv is rewritten,
    // which may cut the title short.
    let cmdline = lines.next().unwrap_or_default();
    assert!(
        cmdline.starts_with("/sbin/docker-init -- sh -c cat"),
        "{cmdline}"
    );
}

#[test]
fn init_forwards_sigterm_to_its_child() {
    require_root!();
    let mut container = Container::new(&["sleep", "1000"]);
    container.features.init = true;
    let (mut runtime, pid) = container.start_detached();
    // Give the child time to exec (the signal would otherwise kill the runtime's copy).
    std::thread::sleep(std::time::Duration::from_millis(200));
    kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exited = wait_until(10, || runtime.try_wait().ok().flatten().is_some());
    assert!(exited, "SIGTERM was not forwarded");
    assert_eq!(runtime.wait().expect("wait").code(), Some(143));
}

/// The states of the host processes whose parent is host PID `pid`.
fn child_states(pid: i32) -> Vec<char> {
    let mut states = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        let ppid: Option<i32> = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            if ppid == pid {
                states.push(state);
            }
        }
    }
    states
}

#[test]
fn init_reaps_orphans_that_pid_1_would_leave_as_zombies() {
    require_root!();
    for init in [false, true] {
        let mut container = Container::new(&["sh", "-c", "(sleep 0.1 &); exec sleep 100"]);
        container.features.init = init;
        let (mut runtime, pid) = container.start_detached();
        std::thread::sleep(std::time::Duration::from_millis(800));
        let zombies = child_states(pid).iter().filter(|s| **s == 'Z').count();
        // Without an init, PID 1 is `sleep`, which never reaps the orphan it inherits.
        assert_eq!(zombies, usize::from(!init), "init: {init}");
        kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = runtime.wait();
    }
}

/// Accepts the runtime's connection on `listener` and receives the slave's name and the master.
fn receive_console(listener: &std::os::unix::net::UnixListener) -> (String, OwnedFd) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    listener.set_nonblocking(true).expect("nonblocking");
    let mut stream = None;
    assert!(
        wait_until(10, || {
            stream = listener.accept().ok().map(|(s, _)| s);
            stream.is_some()
        }),
        "the runtime never connected"
    );
    let stream = stream.expect("checked above");
    stream.set_nonblocking(false).expect("blocking");
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut master = None;
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            assert_eq!(fds.len(), 1);
            // SAFETY: the kernel just installed this descriptor for us.
            master = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    let len = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    (name, master.expect("a descriptor was sent"))
}

#[test]
fn a_console_socket_gets_a_pty_of_the_containers_own_devpts() {
    require_root!();
    for init in [false, true] {
        let mut container = Container::new(&["sh"]);
        let socket = container.path("console.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).expect("bind console socket");
        container.spec.process.terminal = true;
        container.features.console_socket = Some(socket);
        container.features.init = init;
        let (mut runtime, sync) = container.spawn([Stdio::null(), Stdio::null(), Stdio::null()]);
        let (name, master) = receive_console(&listener);
        assert_eq!(name, "/dev/pts/0");
        let message = read_sync(sync);
        assert!(
            matches!(message, Some(SyncMessage::Started { .. })),
            "{message:?}"
        );
        let mut input = fs::File::from(master.try_clone().expect("dup master"));
        // The shell is in the terminal's foreground process group, with or without an init.
        input
            .write_all(
                b"tty; : < /dev/tty && echo has-controlling-tty; \
                  [ $(cut -d' ' -f5 /proc/$$/stat) = $(cut -d' ' -f8 /proc/$$/stat) ] \
                  && echo foreground; exit 7\n",
            )
            .expect("type into the terminal");
        let output = read_master(master);
        assert_eq!(
            runtime.wait().expect("wait").code(),
            Some(7),
            "init {init}: {output}"
        );
        let lines: Vec<&str> = output.lines().collect();
        assert!(lines.contains(&"/dev/pts/0"), "init {init}: {output}");
        assert!(
            lines.contains(&"has-controlling-tty"),
            "init {init}: {output}"
        );
        assert!(lines.contains(&"foreground"), "init {init}: {output}");
    }
}

#[test]
fn exec_with_a_console_socket_gets_its_own_pty() {
    require_root!();
    let container = Container::new(&["sleep", "100"]);
    let (mut runtime, pid) = container.start_detached();
    let socket = container.path("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind console socket");
    let mut process = exec_process(&["tty"]);
    process.terminal = true;
    let file = container.path("exec.json");
    fs::write(
        &file,
        serde_json::to_vec(&ExecFile {
            exec: ExecSpec { pid, process },
            console_socket: Some(socket),
            privileged: false,
        })
        .expect("exec spec serializes"),
    )
    .expect("write exec spec");
    let (mut exec, sync) = spawn_runtime(
        &[
            "exec".as_ref(),
            container.dir.path().as_os_str(),
            file.as_os_str(),
        ],
        [Stdio::null(), Stdio::null(), Stdio::null()],
    );
    let (name, master) = receive_console(&listener);
    let message = read_sync(sync);
    assert!(
        matches!(message, Some(SyncMessage::Started { .. })),
        "{message:?}"
    );
    let output = read_master(master);
    assert_eq!(exec.wait().expect("wait for exec").code(), Some(0));
    assert_eq!(output, format!("{name}\n"));
    assert!(name.starts_with("/dev/pts/"), "{name}");
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = runtime.wait();
}

// ---- Device nodes: nodev mounts and the device cgroup ----

/// The major and minor of one of the host's block devices (its disk, usually), or 8:0.
fn host_block_device() -> (u32, u32) {
    let mut names: Vec<String> = fs::read_dir("/sys/dev/block")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .find_map(|n| {
            let (major, minor) = n.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .unwrap_or((8, 0))
}

/// How many lines of `stderr` are a refusal to open a device.
fn refusals(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("Permission denied") || l.contains("Operation not permitted"))
        .count()
}

#[test]
fn a_default_container_cannot_open_nodes_it_makes_but_its_dev_works() {
    require_root!();
    let (major, minor) = host_block_device();
    let script = format!(
        "mkdir /tmp; for d in /tmp /dev /dev/shm; do mknod $d/disk b {major} {minor} && head -c1 $d/disk; done; \
         mknod /tmp/null c 1 3 && echo x > /tmp/null; \
         echo x > /dev/null && echo null-ok; \
         for d in zero full random urandom; do head -c 4 /dev/$d | wc -c; done; \
         : < /dev/ptmx && echo ptmx-ok; grep -E ' / ' /proc/mounts | grep -c nodev; \
         grep -E ' /dev ' /proc/mounts | grep -c nodev"
    );
    let outcome = Container::new(&["sh", "-c", &script]).run();
    assert_started(&outcome);
    // CAP_MKNOD is kept (Docker's default set): the nodes are made, then refused on open.
    assert!(!outcome.stderr.contains("mknod:"), "{outcome:?}");
    assert_eq!(refusals(&outcome.stderr), 4, "{outcome:?}");
    assert_eq!(
        outcome.stdout, "null-ok\n4\n4\n4\n4\nptmx-ok\n1\n1\n",
        "{outcome:?}"
    );
}

/// The device cgroup alone: a bind mount of a host directory is not nodev, so only the cgroup
/// (v1 `devices`, or the v2 eBPF program with `pure_v2`) stands between a node made there and
/// the host's disk.
fn device_cgroup_refuses_the_disk(pure_v2: bool) {
    let host = TempDir::new().expect("temp dir");
    let (major, minor) = host_block_device();
    let mut container = Container::new(&[
        "sh",
        "-c",
        &format!(
            "mknod /data/disk b {major} {minor} && head -c1 /data/disk; \
             mknod /data/null c 1 3 && echo x > /data/null && echo allowed-null-ok"
        ),
    ]);
    container.spec.mounts = vec![Mount {
        destination: "/data".into(),
        kind: MountKind::Bind {
            source: host.path().to_path_buf(),
        },
        readonly: false,
        propagation: String::new(),
    }];
    let file = SpecFile {
        spec: container.spec.clone(),
        features: container.features.clone(),
    };
    fs::write(
        container.path(SPEC_FILE),
        serde_json::to_vec(&file).expect("spec serializes"),
    )
    .expect("write spec");
    let (child, sync) = spawn_runtime_in(
        &["run".as_ref(), container.dir.path().as_os_str()],
        [Stdio::null(), Stdio::piped(), Stdio::piped()],
        pure_v2,
    );
    let outcome = finish(child, sync);
    assert_started(&outcome);
    assert!(
        outcome
            .stderr
            .contains("head: /data/disk: Operation not permitted"),
        "{outcome:?}"
    );
    assert_eq!(outcome.stdout, "allowed-null-ok\n", "{outcome:?}");
    if pure_v2 {
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup/unified/rmachine"));
    }
}

#[test]
fn the_v1_device_cgroup_refuses_devices_outside_dockers_list() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/devices/devices.list").exists() {
        cannot_run("needs the v1 devices controller");
        return;
    }
    device_cgroup_refuses_the_disk(false);
}

#[test]
fn the_v2_device_program_refuses_devices_outside_dockers_list() {
    require_root!();
    if hybrid_v2_tree().is_none() {
        cannot_run("needs a hybrid host to pose as a pure v2 one");
        return;
    }
    device_cgroup_refuses_the_disk(true);
}

#[test]
fn tmpfs_mounts_are_nodev_unless_they_ask_for_dev() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "mknod /scratch/null c 1 3; echo x > /scratch/null || echo scratch-nodev; \
         mknod /devs/null c 1 3; echo x > /devs/null && echo devs-dev",
    ]);
    let tmpfs = |destination: &str, options: &str| Mount {
        destination: destination.into(),
        kind: MountKind::Tmpfs {
            options: options.into(),
        },
        readonly: false,
        propagation: String::new(),
    };
    container.spec.mounts = vec![tmpfs("/scratch", "size=1m"), tmpfs("/devs", "size=1m,dev")];
    let outcome = container.run();
    assert_eq!(outcome.stdout, "scratch-nodev\ndevs-dev\n", "{outcome:?}");
    assert_eq!(refusals(&outcome.stderr), 1, "{outcome:?}");
}

#[test]
fn privileged_containers_can_open_nodes_they_make() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "mkdir /tmp; mknod /tmp/null c 1 3 && echo x > /tmp/null && echo rootfs-node-ok; \
         mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo dev-node-ok",
    ]);
    container.features.privileged = true;
    let outcome = container.run();
    assert_eq!(
        outcome.stdout, "rootfs-node-ok\ndev-node-ok\n",
        "{outcome:?}"
    );
}

#[test]
fn exec_processes_get_the_device_cgroup_too() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/devices/devices.list").exists() {
        cannot_run("needs the v1 devices controller");
        return;
    }
    let host = TempDir::new().expect("temp dir");
    let mut container = Container::new(&["sleep", "100"]);
    container.spec.mounts = vec![Mount {
        destination: "/data".into(),
        kind: MountKind::Bind {
            source: host.path().to_path_buf(),
        },
        readonly: false,
        propagation: String::new(),
    }];
    let (mut runtime, pid) = container.start_detached();
    let (major, minor) = host_block_device();
    let outcome = container.exec(
        pid,
        exec_process(&[
            "sh",
            "-c",
            &format!("mknod /data/disk b {major} {minor} && head -c1 /data/disk"),
        ]),
    );
    assert!(
        outcome
            .stderr
            .contains("head: /data/disk: Operation not permitted"),
        "{outcome:?}"
    );
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(runtime.wait().expect("wait").code(), Some(137));
}

fn namespace_of(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .expect("read namespace link")
        .display()
        .to_string()
}

#[test]
fn host_pid_ipc_and_uts_modes_keep_the_runtimes_namespaces() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "for ns in pid ipc uts; do readlink /proc/self/ns/$ns; done; hostname",
    ]);
    container.features.namespaces = rmachine_runtime::spec::Namespaces {
        pid: rmachine_runtime::spec::Namespace::Host,
        ipc: rmachine_runtime::spec::Namespace::Host,
        uts: rmachine_runtime::spec::Namespace::Host,
        cgroup: None,
    };
    let outcome = container.run();
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        outcome.stdout,
        format!(
            "{}\n{}\n{}\n{}",
            namespace_of("self", "pid"),
            namespace_of("self", "ipc"),
            namespace_of("self", "uts"),
            host_name
        ),
        "{outcome:?}"
    );
}

#[test]
fn rlimits_sysctls_oom_score_and_devices_are_applied() {
    require_root!();
    let mut container = Container::new(&[
        "sh",
        "-c",
        "grep 'Max open files' /proc/self/limits; cat /proc/sys/kernel/msgmax \
         /proc/self/oom_score_adj; echo x > /dev/mynull && echo wrote",
    ]);
    container.features.rlimits = vec![rmachine_runtime::spec::Rlimit {
        name: "nofile".into(),
        soft: 321,
        hard: 654,
    }];
    container.features.sysctls = [("kernel.msgmax".to_string(), "4242".to_string())].into();
    container.features.oom_score_adj = Some(300);
    container.features.devices = vec![rmachine_runtime::spec::Device {
        source: "/dev/null".into(),
        destination: "/dev/mynull".into(),
        allow: "c 1:3 rw".parse().expect("rule"),
    }];
    let outcome = container.run();
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{outcome:?}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "321", "654", "files"]
    );
    assert_eq!(lines[1..], ["4242", "300", "wrote"]);
    // The host's knob is untouched.
    assert_ne!(
        fs::read_to_string("/proc/sys/kernel/msgmax").expect("msgmax"),
        "4242\n"
    );
}

#[test]
fn a_sysctl_outside_the_containers_namespaces_fails_the_start() {
    require_root!();
    let mut container = Container::new(&["true"]);
    container.features.sysctls = [("vm.swappiness".to_string(), "1".to_string())].into();
    let outcome = container.run();
    assert_eq!(
        outcome.sync,
        Some(SyncMessage::Failed(rmachine_runtime::spec::Failed {
            message: "sysctl \"vm.swappiness\" is not in a separate kernel namespace".into(),
            exit_code: 1,
        })),
        "{outcome:?}"
    );
}
