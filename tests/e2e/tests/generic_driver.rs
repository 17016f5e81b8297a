//! `rmachine create -d generic` against a real OpenSSH server on this machine: the engine it
//! installs runs for real (no VM), and `env`, `ssh`, `stop`/`start` and `rm` act on it.
//!
//! The server runs in this test's own network namespace and in a private mount namespace with
//! tmpfs over /opt and /var/lib, so the install (`/opt/rmachine`, `/var/lib/rmachine-engine`)
//! never touches this host. Needs root, `/usr/sbin/sshd` (.ci/setup installs openssh-server
//! without starting it), `ssh-keygen`, the `rmachine` CLI build, and the static musl engine and
//! runtime that guest/build.sh builds (target/<arch>-unknown-linux-musl/release, or the
//! directory `RMACHINE_GENERIC_BINARIES` names).
//!
//! It boots no VM but lives in the e2e tier, which runs once the guest images are built: in CI
//! the host tiers run while the guest lane is still compiling those static binaries.
#![cfg(rmachine_e2e)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmachine_tests_engine::{
    binary, cannot_run, free_port, require_root, share_network_with_engines, target_dir, Run,
};

const NAME: &str = "gen";

/// The sshd under test, its private mount namespace, and everything started in it.
struct Host {
    sshd: Child,
    dir: tempfile::TempDir,
    rmachine: PathBuf,
}

impl Host {
    fn rmachine(&self, args: &[&str]) -> Result<Run> {
        let out = Command::new(&self.rmachine)
            .args(args)
            .env("RMACHINE_STORAGE_PATH", self.dir.path().join("store"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .output()
            .context("run rmachine")?;
        Ok(out.into())
    }

    /// `rmachine create -d generic NAME` against this host's sshd on `port`, logging in with `key`.
    fn create_generic(&self, name: &str, port: u16, key: &Path) -> Result<Run> {
        let port = port.to_string();
        let key = key.display().to_string();
        self.rmachine(&[
            "create",
            "-d",
            "generic",
            "--no-progress",
            "--generic-ip-address",
            "127.0.0.1",
            "--generic-ssh-port",
            &port,
            "--generic-ssh-key",
            &key,
            name,
        ])
    }

    /// `docker ARGS` with the environment `rmachine env` prints.
    fn docker(&self, args: &[&str]) -> Result<Run> {
        let env = self.rmachine(&["env", "--shell", "bash", NAME])?.ok()?;
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .stdin(Stdio::null());
        for line in env.stdout.lines() {
            if let Some((key, value)) = line
                .strip_prefix("export ")
                .and_then(|rest| rest.split_once('='))
            {
                cmd.env(key, value.trim_matches('"'));
            }
        }
        Ok(cmd.output().context("run docker")?.into())
    }

    /// What the host sees at `path` (through the sshd's mount namespace).
    fn entries(&self, path: &str) -> Result<Vec<String>> {
        let dir = PathBuf::from(format!("/proc/{}/root{path}", self.sshd.id()));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// Processes in the sshd's mount namespace: sshd, and what sessions left running.
    fn namespace_pids(&self) -> Vec<u32> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let Some(ours) = ns(&self.sshd.id().to_string()) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| ns(&pid.to_string()).as_ref() == Some(&ours))
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A failed test must leave no engine behind: remove the machine, then end every
        // process this test started in the private mount namespace.
        let _ = self.rmachine(&["rm", "-f", "-y", NAME]);
        for pid in self.namespace_pids() {
            // SAFETY: kill(2) on a process id this test started; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.sshd.wait();
    }
}

fn keygen(path: &Path) -> Result<()> {
    Run::from(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .output()
            .context("run ssh-keygen")?,
    )
    .ok()?;
    Ok(())
}

fn start_host(rmachine: PathBuf) -> Result<(Host, u16)> {
    share_network_with_engines()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    keygen(&d.join("user_key"))?;
    keygen(&d.join("host_key"))?;
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys"))?;
    let port = free_port()?;
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
             PidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            host = d.join("host_key").display(),
            auth = d.join("authorized_keys").display(),
        ),
    )?;
    let script = format!(
        "mount -t tmpfs tmpfs /opt && mount -t tmpfs tmpfs /var/lib && mkdir -p /run/sshd \
         && exec /usr/sbin/sshd -D -e -f {}",
        d.join("sshd_config").display()
    );
    let sshd = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start sshd")?;
    let mut host = Host {
        sshd,
        dir,
        rmachine,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = host.sshd.try_wait()? {
            let mut err = String::new();
            if let Some(mut stderr) = host.sshd.stderr.take() {
                stderr.read_to_string(&mut err)?;
            }
            bail!("sshd exited with {status}: {err}");
        }
        if Instant::now() > deadline {
            bail!("sshd does not listen on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((host, port))
}

#[test]
fn create_env_run_stop_start_and_rm_on_an_ssh_host() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        cannot_run("/usr/sbin/sshd is missing (.ci/setup installs openssh-server)");
        return Ok(());
    }
    // rmachine reads the same variable; unset, both use the workspace's musl build.
    let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let statics = match std::env::var_os("RMACHINE_GENERIC_BINARIES") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir()?
            .parent()
            .context("no target directory")?
            .join(&triple)
            .join("release"),
    };
    if !statics.join("rmachine-engine").exists() || !statics.join("rmachine-init").exists() {
        cannot_run(&format!(
            "no static engine and runtime in {} (guest/build.sh builds them)",
            statics.display()
        ));
        return Ok(());
    }
    let (host, port) = start_host(binary("rmachine")?)?;
    let key = host.dir.path().join("user_key");

    let create = host.create_generic(NAME, port, &key)?.ok()?;
    assert!(
        create.stdout.contains("Docker is up and running!"),
        "{}",
        create.stdout
    );
    assert_eq!(
        host.rmachine(&["status", NAME])?.ok()?.stdout.trim(),
        "Running"
    );
    // The host key was pinned at create, for the driver's ssh and for `ssh`/`scp`.
    let host_key = std::fs::read_to_string(host.dir.path().join("host_key.pub"))?;
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let machine = host.dir.path().join("store/machines").join(NAME);
    for pin in ["generic_known_hosts", "guest_host_key.pub"] {
        let text = std::fs::read_to_string(machine.join(pin))?;
        assert!(text.contains(&host_key.join(" ")), "{pin}: {text}");
    }
    assert_eq!(
        host.entries("/opt/rmachine/bin")?,
        ["rmachine-engine", "rmachine-runtime"]
    );
    // A second machine on the same host is refused, and its clean-up leaves the first intact.
    let second = host.create_generic("other", port, &key)?;
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "/opt/rmachine already exists on root@127.0.0.1:{port}: remove the machine that uses this host first"
        )),
        "{}",
        second.stderr
    );
    assert!(!host.dir.path().join("store/machines/other").exists());
    assert_eq!(
        host.entries("/opt/rmachine/bin")?,
        ["rmachine-engine", "rmachine-runtime"]
    );

    let uname = host.rmachine(&["ssh", NAME, "uname -s"])?.ok()?;
    assert_eq!(uname.stdout.trim(), "Linux");
    let local = host.dir.path().join("hello.txt");
    std::fs::write(&local, "hello host\n")?;
    host.rmachine(&[
        "scp",
        &local.display().to_string(),
        &format!("{NAME}:/opt/rmachine/hello.txt"),
    ])?
    .ok()?;
    let copied = host
        .rmachine(&["ssh", NAME, "cat /opt/rmachine/hello.txt"])?
        .ok()?;
    assert_eq!(copied.stdout, "hello host\n");

    let tar = host.dir.path().join("busybox.tar");
    rmachine_fixtures::busybox_image(
        &tar,
        "busybox:latest",
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    host.docker(&["load", "-i", &tar.display().to_string()])?
        .ok()?;
    let hi = host
        .docker(&["run", "--rm", "busybox", "echo", "hi"])?
        .ok()?;
    assert_eq!(hi.stdout, "hi\n");

    host.rmachine(&["stop", NAME])?.ok()?;
    assert_eq!(
        host.rmachine(&["status", NAME])?.ok()?.stdout.trim(),
        "Stopped"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 2376)).is_err(),
        "the engine still listens after stop"
    );
    host.rmachine(&["start", NAME])?.ok()?;
    assert_eq!(
        host.rmachine(&["status", NAME])?.ok()?.stdout.trim(),
        "Running"
    );
    // The image survived the restart: the data root is the host's.
    let again = host
        .docker(&["run", "--rm", "busybox", "echo", "hi"])?
        .ok()?;
    assert_eq!(again.stdout, "hi\n");

    let ls = host
        .rmachine(&[
            "ls",
            "--format",
            "{{.Name}} {{.DriverName}} {{.State}} {{.URL}}",
        ])?
        .ok()?;
    assert_eq!(ls.stdout, "gen generic Running tcp://127.0.0.1:2376\n");

    // New certificates reach the host's engine (start re-installs them).
    let old_cert = std::fs::read(host.dir.path().join("store/machines/gen/server.pem"))?;
    host.rmachine(&["regenerate-certs", "-f", NAME])?.ok()?;
    assert_ne!(
        std::fs::read(host.dir.path().join("store/machines/gen/server.pem"))?,
        old_cert
    );
    host.docker(&["version"])?.ok()?;

    host.rmachine(&["kill", NAME])?.ok()?;
    assert_eq!(
        host.rmachine(&["status", NAME])?.ok()?.stdout.trim(),
        "Stopped"
    );
    host.rmachine(&["start", NAME])?.ok()?;

    host.rmachine(&["rm", "-y", NAME])?.ok()?;
    assert!(
        host.entries("/opt")?.is_empty(),
        "{:?}",
        host.entries("/opt")?
    );
    assert!(
        host.entries("/var/lib")?.is_empty(),
        "{:?}",
        host.entries("/var/lib")?
    );
    assert!(!host.dir.path().join("store/machines").join(NAME).exists());
    // Only sshd is left: rm stopped the engine and its supervisor.
    // (sshd's process for rm's own session may take a moment to exit.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left: Vec<String> = host
            .namespace_pids()
            .into_iter()
            .filter(|pid| *pid != host.sshd.id())
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
