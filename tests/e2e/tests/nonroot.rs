//! A machine of a user who is not root, as on a Mac or a Linux desktop (the rest of the tier
//! runs as root). A throwaway user (useradd, home under /home; removed afterwards, also when
//! the test fails) runs `rmachine` with a clean environment: its own HOME, the default store
//! under it, no `--share`. `create` shares the home folder by default, over 9p on this host
//! (QEMU 7.2's C virtiofsd needs root; a Rust virtiofsd would be taken by a user too: the test
//! expects what the driver finds). Through `rmachine env` and the docker CLI, as that user: a
//! file the user wrote (a private one too) is read by a container through `-v $HOME/...`;
//! files and a folder a container's root makes there appear on the host owned by the user, with
//! the modes the container gave them, and `-v` of a missing folder under the home creates it as
//! the user's. `ssh`, `stop` and `rm` work as that user.
//!
//! Making a user needs root: the test fails (never skips) when it cannot, saying why.
#![cfg(rmachine_e2e)]

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use rmachine_e2e::{bin_dir, guest_image, parse_bash_env, run, Run};
use rmachine_fixtures::{busybox_image, ArchiveFormat};

/// Debian's PATH for a user (`/etc/profile`, without games): no sbin.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A user made for this test; removed with its home on drop.
struct ThrowawayUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
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
        let name = format!("rme2e{}", std::process::id());
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
        };
        user.uid = id(&["-u", &user.name])?;
        user.gid = id(&["-g", &user.name])?;
        ensure!(user.uid != 0, "useradd made {} with uid 0", user.name);
        Ok(user)
    }

    /// `program` run as this user with only what a login would set: HOME, USER, LOGNAME, a
    /// user's PATH (plus `extra_path` first); started in the home folder, stdin empty.
    fn command(&self, program: impl AsRef<OsStr>, extra_path: Option<&Path>) -> Command {
        let path = match extra_path {
            Some(dir) => format!("{}:{USER_PATH}", dir.display()),
            None => USER_PATH.to_string(),
        };
        let mut cmd = Command::new(program);
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
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let removed = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
        match removed {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                // A process of the user still runs (it is named): the account goes anyway.
                eprintln!(
                    "userdel --remove {} failed: {}\n{}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    processes_of(self.uid)
                );
                let _ = Command::new("userdel")
                    .args(["--remove", "--force", &self.name])
                    .status();
            }
            Err(err) => eprintln!("cannot run userdel for {}: {err}", self.name),
        }
    }
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
        std::fs::create_dir(&staged.dir)?;
        std::fs::set_permissions(&staged.dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir(staged.bin())?;
        link_or_copy(&bin_dir()?.join("rmachine"), &staged.bin().join("rmachine"))?;
        let image = guest_image()?;
        std::fs::create_dir(staged.image())?;
        for entry in std::fs::read_dir(&image)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
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
        std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    }
    let mode = std::fs::metadata(to)?.permissions().mode();
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
    let user = ThrowawayUser::create()?;
    let staged = Staged::new(&user)?;
    // The image `docker load` reads as the user.
    let tar = staged.dir.join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644))?;
    let machine = UserMachine {
        user: &user,
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

    // The home folder is the one share, at the same path, over the transport a user gets.
    let transport = match rmachine_driver_qemu::virtiofs::find(false, |p| p.is_file()) {
        Some(_) => "virtiofs",
        None => "9p",
    };
    let shares = machine
        .rmachine(&["inspect", "--format", "{{json .Vm.shares}}", machine.name])?
        .success()?;
    let shares: serde_json::Value = serde_json::from_str(&shares.stdout)?;
    let shares = shares.as_array().context("Vm.shares is not a list")?;
    ensure!(shares.len() == 1, "one share expected: {shares:?}");
    assert_eq!(shares[0]["hostPath"], home.as_str());
    assert_eq!(shares[0]["guestPath"], home.as_str());
    assert_eq!(shares[0]["transport"], transport);
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
             mkdir /src/made && echo out > /out/file.txt",
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
    user.sh("echo edited >> project/private.txt && rm -r project/made made-by-docker")?
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
