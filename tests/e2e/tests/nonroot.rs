//! A machine of a user who is not root, as on a Mac or a Linux desktop (the rest of the tier
//! runs as root). A throwaway user (useradd, home under /home; removed afterwards, also when
//! the test fails) runs `rmachine` with a clean environment: its own HOME, the default store
//! under it, no `--share`. `create` shares the home folder by default, over 9p on this host
//! (QEMU 7.2's C virtiofsd needs root; a Rust virtiofsd would be taken by a user too: the test
//! expects what the driver finds). Through `rmachine env` and the docker CLI, as that user: a
//! file the user wrote (a private one too) is read by a container through `-v $HOME/...`;
//! files and a folder a container's root (or its uid 1234) makes there appear on the host owned
//! by the user, with the modes the container gave them, and `-v` of a missing folder under the
//! home creates it as the user's. `ssh`, `stop` and `rm` work as that user.
//!
//! Making a user needs root: the test fails (never skips) when it cannot, saying why. Each
//! command run as the user is killed after [`USER_COMMAND_LIMIT`] (a hang fails the test), the
//! user's processes are killed before the user is removed, and users left by an earlier run
//! that was killed are removed first.
#![cfg(rmachine_e2e)]

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rmachine_e2e::{bin_dir, guest_image, parse_bash_env, run, Run};
use rmachine_fixtures::{busybox_image, ArchiveFormat};

/// Debian's PATH for a user (`/etc/profile`, without games): no sbin.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long one command run as the user may take (a `create` under a loaded CI runner
/// included) before `timeout` kills it.
const USER_COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// What the names of this test's users start with (then the test's pid).
const USER_PREFIX: &str = "rme2e";

/// A user made for this test; removed with its home by [`ThrowawayUser::remove`] or on drop.
struct ThrowawayUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    removed: bool,
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> Result<u32> {
    let out = Command::new("id")
        .args(args)
        .output()
        .context("cannot run id")?;
    ensure!(
        out.status.success(),
        "id {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("id {}: {:?}", args.join(" "), out.stdout))
}

impl ThrowawayUser {
    fn create() -> Result<Self> {
        let me = id(&["-u"])?;
        if me != 0 {
            bail!(
                "this test makes a throwaway user (useradd) and runs rmachine as it: it must run \
                 as root, it runs as uid {me}"
            );
        }
        remove_stale_users()?;
        let name = format!("{USER_PREFIX}{}", std::process::id());
        let home = Path::new("/home").join(&name);
        let made = Command::new("useradd")
            .args(["--create-home", "--home-dir"])
            .arg(&home)
            .args(["--shell", "/bin/sh", "--user-group", &name])
            .output()
            .context("cannot run useradd (Debian's passwd package; /usr/sbin on PATH)")?;
        ensure!(
            made.status.success(),
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        // Made now: removed on drop, whatever fails next.
        let mut user = ThrowawayUser {
            name,
            uid: 0,
            gid: 0,
            home,
            removed: false,
        };
        user.uid = id(&["-u", &user.name])?;
        user.gid = id(&["-g", &user.name])?;
        ensure!(user.uid != 0, "useradd made {} with uid 0", user.name);
        Ok(user)
    }

    /// `program` run as this user with only what a login would set: HOME, USER, LOGNAME, a
    /// user's PATH (plus `extra_path` first); started in the home folder, stdin empty; killed
    /// after [`USER_COMMAND_LIMIT`] (`timeout` exits 124, or 137 after its KILL).
    fn command(&self, program: impl AsRef<OsStr>, extra_path: Option<&Path>) -> Command {
        let path = match extra_path {
            Some(dir) => format!("{}:{USER_PATH}", dir.display()),
            None => USER_PATH.to_string(),
        };
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=10")
            .arg(USER_COMMAND_LIMIT.as_secs().to_string())
            .arg(program);
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("PATH", path)
            .current_dir(&self.home)
            // Run as root, std drops the supplementary groups before it switches.
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null());
        cmd
    }

    /// `sh -c SCRIPT` as this user.
    fn sh(&self, script: &str) -> Result<Run> {
        let mut cmd = self.command("sh", None);
        cmd.args(["-c", script]);
        run(cmd, format!("sh -c {script:?} (as {})", self.name))
    }

    /// Kills every process of the user, then removes it and its home.
    fn remove(&mut self) -> Result<()> {
        if !self.removed {
            remove_user(&self.name, self.uid)?;
            self.removed = true;
        }
        Ok(())
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            // Loudly: a user left behind is removed by the next run, but must be noticed.
            if std::thread::panicking() {
                eprintln!("{err:#}");
            } else {
                panic!("{err:#}");
            }
        }
    }
}

/// Kills every process of `uid` (a uid that belongs only to this test) until none is left.
fn kill_processes_of(uid: u32) -> Result<()> {
    for _ in 0..100 {
        let out = Command::new("ps")
            .args(["-o", "pid=", "-u", &uid.to_string()])
            .output()
            .context("cannot run ps")?;
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        // Some may end meanwhile: kill's status does not matter, the next ps does.
        let _ = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "processes of uid {uid} survive kill -9:\n{}",
        processes_of(uid)
    )
}

/// Kills the processes of user `name` (`uid`), then `userdel --remove`s it.
fn remove_user(name: &str, uid: u32) -> Result<()> {
    kill_processes_of(uid)?;
    let out = Command::new("userdel")
        .args(["--remove", name])
        .output()
        .with_context(|| format!("cannot run userdel for {name}"))?;
    ensure!(
        out.status.success(),
        "userdel --remove {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr).trim(),
        processes_of(uid)
    );
    Ok(())
}

/// Removes the users an earlier run of this test left when it was killed (no drop ran), but
/// not the one of a run still going (its pid, in the name, still runs this test).
fn remove_stale_users() -> Result<()> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let me = std::env::current_exe().context("locating the test executable")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(name), Some(uid)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Some(pid) = name.strip_prefix(USER_PREFIX) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let running = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == me);
        if running {
            continue;
        }
        let uid: u32 = uid
            .parse()
            .with_context(|| format!("/etc/passwd: uid of {name}: {uid:?}"))?;
        eprintln!("removing user {name} (uid {uid}) left by an earlier run");
        remove_user(name, uid)?;
    }
    Ok(())
}

/// `ps` lines of the processes of `uid`, for a message.
fn processes_of(uid: u32) -> String {
    Command::new("ps")
        .args(["-o", "pid,args", "-u", &uid.to_string()])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// The workspace's `rmachine` and guest image where the user can reach them whatever the
/// checkout's folders (or TMPDIR) allow (a clone under /root is not reachable): hard links (a
/// copy across filesystems) in a folder of the user's home that only root may change; removed
/// on drop (and with the home).
struct Staged {
    dir: PathBuf,
}

impl Staged {
    fn new(user: &ThrowawayUser) -> Result<Self> {
        let staged = Staged {
            dir: user.home.join("rmachine-e2e"),
        };
        let mkdir = |dir: &Path| {
            std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))
        };
        mkdir(&staged.dir)?;
        std::fs::set_permissions(&staged.dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod 755 {}", staged.dir.display()))?;
        mkdir(&staged.bin())?;
        link_or_copy(&bin_dir()?.join("rmachine"), &staged.bin().join("rmachine"))?;
        let image = guest_image()?;
        mkdir(&staged.image())?;
        let listing = |e| format!("cannot list {}: {e}", image.display());
        for entry in std::fs::read_dir(&image).with_context(|| listing("read_dir"))? {
            let entry = entry.with_context(|| listing("entry"))?;
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            if kind.is_file() {
                link_or_copy(&entry.path(), &staged.image().join(entry.file_name()))?;
            }
        }
        let reachable = user
            .sh("test -x rmachine-e2e/bin/rmachine && test -r rmachine-e2e/image/manifest.json")?;
        ensure!(
            reachable.code == 0,
            "user {} cannot run {} or read the guest image beside it",
            user.name,
            staged.bin().join("rmachine").display()
        );
        Ok(staged)
    }

    /// The folder holding `rmachine`.
    fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The guest image's folder.
    fn image(&self) -> PathBuf {
        self.dir.join("image")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hard-links `from` at `to`, or copies it where a link cannot be made; readable by anyone.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    let mode = std::fs::metadata(to)
        .with_context(|| format!("cannot stat {}", to.display()))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o004 != 0,
        "{} is not readable by other users (mode {mode:o})",
        from.display()
    );
    Ok(())
}

/// Machine `name` of `user`, in the user's default store; on drop removed as that user, and a
/// QEMU of it still running killed.
struct UserMachine<'a> {
    user: &'a ThrowawayUser,
    staged: &'a Staged,
    name: &'a str,
}

impl UserMachine<'_> {
    /// `rmachine ARGS` as the user.
    fn rmachine(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = self
            .user
            .command(self.staged.bin().join("rmachine"), Some(&self.staged.bin()));
        cmd.args(args);
        run(
            cmd,
            format!("rmachine {} (as {})", args.join(" "), self.user.name),
        )
    }

    /// The machine's folder in the user's default store (Linux: the XDG data folder).
    fn dir(&self) -> PathBuf {
        self.user
            .home
            .join(".local/share/rmachine/machines")
            .join(self.name)
    }

    /// `docker ARGS` as the user, with the variables `rmachine env` prints.
    fn docker(&self, args: &[&str]) -> Result<Run> {
        let env = self
            .rmachine(&["env", "--shell", "bash", self.name])?
            .success()?;
        let mut cmd = self.user.command("docker", None);
        cmd.args(args).envs(parse_bash_env(&env.stdout)?);
        run(
            cmd,
            format!("docker {} (as {})", args.join(" "), self.user.name),
        )
    }

    /// The pid of the machine's QEMU while it runs.
    fn qemu_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.dir().join("qemu.pid")).ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }
}

impl Drop for UserMachine<'_> {
    fn drop(&mut self) {
        let pid = self.qemu_pid();
        let _ = self.rmachine(&["rm", "-f", "-y", self.name]);
        // rm failed to stop it: this test's QEMU (the user's own) must not outlive the test.
        if let Some(pid) = pid.filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == self.user.uid)
        }) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Owner, group and permission bits of a host file.
fn owner_and_mode(path: &Path) -> Result<(u32, u32, u32)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{} on the host", path.display()))?;
    Ok((meta.uid(), meta.gid(), meta.mode() & 0o7777))
}

#[test]
fn a_user_who_is_not_root_shares_their_home_with_containers() -> Result<()> {
    let began = std::time::Instant::now();
    let mut user = ThrowawayUser::create()?;
    let tested = shares_home_as(&user);
    let removed = user.remove();
    eprintln!(
        "the non-root user's machine, end to end: {:.1}s",
        began.elapsed().as_secs_f64()
    );
    match (tested, removed) {
        (Err(err), Err(cleanup)) => Err(err.context(format!("and then: {cleanup:#}"))),
        (tested, removed) => tested.and(removed),
    }
}

/// The test proper, as `user` (removed by the caller whatever this returns).
fn shares_home_as(user: &ThrowawayUser) -> Result<()> {
    let staged = Staged::new(user)?;
    // The image `docker load` reads as the user.
    let tar = staged.dir.join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644))?;
    let machine = UserMachine {
        user,
        staged: &staged,
        name: "mine",
    };
    let home = user.home.to_string_lossy().into_owned();

    let image = staged.image().to_string_lossy().into_owned();
    machine
        .rmachine(&[
            "create",
            "-d",
            "qemu",
            "--no-progress",
            "--guest-image",
            &image,
            "--memory",
            "1024",
            machine.name,
        ])?
        .success()?;
    ensure!(
        machine.dir().join("config.json").is_file(),
        "the machine is not in the user's default store {}",
        machine.dir().display()
    );
    // QEMU runs as the user.
    let pid = machine.qemu_pid().context("no QEMU running after create")?;
    let qemu_uid = std::fs::metadata(format!("/proc/{pid}"))?.uid();
    assert_eq!(
        qemu_uid, user.uid,
        "QEMU (pid {pid}) runs as uid {qemu_uid}"
    );

    // The home folder is the one share, at the same path, over the transport a user gets:
    // 9p here, as QEMU 7.2's C virtiofsd needs root; virtio-fs only with a Rust virtiofsd.
    let rust_virtiofsd = rmachine_driver_qemu::virtiofs::find(false, |p| p.is_file());
    let shares = machine
        .rmachine(&["inspect", "--format", "{{json .Vm.shares}}", machine.name])?
        .success()?;
    let shares: serde_json::Value = serde_json::from_str(&shares.stdout)?;
    let shares = shares.as_array().context("Vm.shares is not a list")?;
    ensure!(shares.len() == 1, "one share expected: {shares:?}");
    assert_eq!(shares[0]["hostPath"], home.as_str());
    assert_eq!(shares[0]["guestPath"], home.as_str());
    let transport = shares[0]["transport"].as_str().unwrap_or_default();
    match &rust_virtiofsd {
        None => ensure!(
            transport == "9p",
            "a user's home share goes over 9p on this host (QEMU 7.2's C virtiofsd needs root \
             and no Rust virtiofsd is installed): inspect reports {transport:?}"
        ),
        Some(daemon) => ensure!(
            transport == "virtiofs",
            "a Rust virtiofsd ({}) runs as a user, so the home share goes over virtio-fs: \
             inspect reports {transport:?}",
            daemon.program.display()
        ),
    }
    assert_eq!(shares[0]["readOnly"], false);
    let fstype = transport;
    let mounts = machine
        .rmachine(&["ssh", machine.name, "cat /proc/mounts"])?
        .success()?;
    ensure!(
        mounts.stdout.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.get(1) == Some(&home.as_str()) && fields.get(2) == Some(&fstype)
        }),
        "{home} is not mounted over {fstype} in the guest: {}",
        mounts.stdout
    );

    // Files the user writes on the host, one of them private (0600).
    user.sh(
        "mkdir project && echo written by the user > project/from-host.txt && \
         (umask 077 && echo private > project/secret.txt)",
    )?
    .success()?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    let project = user.home.join("project");
    let made_by_docker = user.home.join("made-by-docker");
    let bind = format!("{}:/src", project.display());
    let missing_bind = format!("{}:/out", made_by_docker.display());
    let read = machine
        .docker(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "busybox",
            "cat",
            "/src/from-host.txt",
            "/src/secret.txt",
        ])?
        .success()?;
    assert_eq!(read.stdout, "written by the user\nprivate\n");

    // A container's root writes into the share and into a folder `-v` makes under the home.
    machine
        .docker(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "-v",
            &missing_bind,
            "busybox",
            "sh",
            "-c",
            "umask 022 && echo from a container > /src/from-container.txt && \
             echo kept private > /src/private.txt && chmod 600 /src/private.txt && \
             mkdir /src/made && mkdir /src/open && chmod 777 /src/open && \
             echo out > /out/file.txt",
        ])?
        .success()?;
    // A container user other than root (and than the user's uid on the host) too.
    machine
        .docker(&[
            "run",
            "--rm",
            "-u",
            "1234",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "umask 022 && echo by uid 1234 > /src/open/by-1234.txt",
        ])?
        .success()?;
    let (uid, gid) = (user.uid, user.gid);
    assert_eq!(
        std::fs::read_to_string(project.join("from-container.txt"))?,
        "from a container\n"
    );
    for (path, mode) in [
        (project.join("from-container.txt"), 0o644),
        (project.join("private.txt"), 0o600),
        (project.join("made"), 0o755),
        (project.join("open"), 0o777),
        (project.join("open/by-1234.txt"), 0o644),
        (made_by_docker.join("file.txt"), 0o644),
    ] {
        assert_eq!(
            owner_and_mode(&path)?,
            (uid, gid, mode),
            "{} as the container left it, owned by the user",
            path.display()
        );
    }
    let (folder_uid, folder_gid, _) = owner_and_mode(&made_by_docker)?;
    assert_eq!(
        (folder_uid, folder_gid),
        (uid, gid),
        "the folder -v made for a missing source belongs to the user"
    );
    // And the user can use what containers made, as their own.
    user.sh(
        "echo edited >> project/private.txt && rm -r project/made project/open made-by-docker",
    )?
    .success()?;

    // ssh, stop and rm as the user.
    let read = machine
        .rmachine(&[
            "ssh",
            machine.name,
            &format!("cat {}", project.join("private.txt").display()),
        ])?
        .success()?;
    assert_eq!(read.stdout, "kept private\nedited\n");
    machine.rmachine(&["stop", machine.name])?.success()?;
    let status = machine.rmachine(&["status", machine.name])?.success()?;
    assert_eq!(status.stdout, "Stopped\n");
    ensure!(machine.qemu_pid().is_none(), "QEMU still runs after stop");
    machine.rmachine(&["rm", "-y", machine.name])?.success()?;
    ensure!(
        !machine.dir().exists(),
        "rm left {}",
        machine.dir().display()
    );
    let ls = machine.rmachine(&["ls", "-q"])?.success()?;
    assert_eq!(ls.stdout, "", "rm left the machine listed");
    Ok(())
}
