//! Harness for the end-to-end tier: real QEMU boots of the guest this repository builds, driven
//! only through the `rmachine` and `docker` command lines, as a user would.
//!
//! Every test gets its own store (a temp dir passed as `RMACHINE_STORAGE_PATH`) and its own
//! docker client config, so nothing leaks between tests or into the user's setup. A [`Machine`]
//! removes its VM on drop, even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The workspace root (this crate lives in `tests/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Directory of the workspace's built binaries (`target/<profile>`), found from the test
/// executable (`target/<profile>/deps/<test>`), which also honours `CARGO_TARGET_DIR`.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not under target/<profile>/deps")?;
    Ok(dir.to_path_buf())
}

/// The guest image built by `guest/build.sh`.
pub fn guest_image() -> Result<PathBuf> {
    let dir = workspace_root().join("guest/out");
    if !dir.join("manifest.json").is_file() {
        bail!(
            "no guest image at {}: run guest/build.sh first",
            dir.display()
        );
    }
    Ok(dir)
}

/// The arm64 guest image built by `ARCH=aarch64 guest/build.sh`.
pub fn arm64_guest_image() -> Result<PathBuf> {
    let dir = workspace_root().join("guest/out-aarch64");
    if !dir.join("manifest.json").is_file() {
        bail!(
            "no arm64 guest image at {}: run ARCH=aarch64 guest/build.sh first",
            dir.display()
        );
    }
    Ok(dir)
}

/// Debian's arm64 static busybox, which `ARCH=aarch64 guest/build.sh` unpacks from
/// `busybox-static:arm64` for the guest (`RMACHINE_BUSYBOX_ARM64` overrides it).
pub fn arm64_busybox() -> Result<PathBuf> {
    let path = std::env::var_os("RMACHINE_BUSYBOX_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("guest/work/aarch64/busybox/bin/busybox"));
    if !path.is_file() {
        bail!(
            "no arm64 busybox at {}: run ARCH=aarch64 guest/build.sh first, or set \
             RMACHINE_BUSYBOX_ARM64",
            path.display()
        );
    }
    Ok(path)
}

/// Output of a finished command, with helpers that make assertion failures readable.
#[derive(Debug)]
pub struct Run {
    /// What was run, for messages.
    pub what: String,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    fn from_output(what: String, output: Output, elapsed: Duration) -> Self {
        Run {
            what,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }

    /// Fails unless the command exited 0; returns self for chaining.
    pub fn success(self) -> Result<Self> {
        if self.code != 0 {
            bail!(
                "`{}` exited {}\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Every guest boot stage, in boot order (`rmachine inspect`'s `Timeline.Guest`).
pub const GUEST_STAGES: [&str; 8] = [
    "InitStarted",
    "ModulesLoaded",
    "DataDiskMounted",
    "NetworkUp",
    "SshUp",
    "EngineStarted",
    "EngineUp",
    "TlsListening",
];

/// A machine created in a private store; removed (VM killed, files deleted) on drop.
pub struct Machine {
    /// The machine's name.
    pub name: String,
    store: std::sync::Arc<tempfile::TempDir>,
    docker_config: std::sync::Arc<tempfile::TempDir>,
    bins: PathBuf,
}

impl Machine {
    /// A handle for a machine named `name` in a fresh store; nothing is created yet.
    pub fn new(name: &str) -> Result<Self> {
        Ok(Machine {
            name: name.to_string(),
            store: std::sync::Arc::new(tempfile::Builder::new().prefix("rmachine-e2e-").tempdir()?),
            docker_config: std::sync::Arc::new(tempfile::tempdir()?),
            bins: bin_dir()?,
        })
    }

    /// A handle for another machine named `name` in this one's store (which lives as long
    /// as either handle).
    pub fn sibling(&self, name: &str) -> Machine {
        Machine {
            name: name.to_string(),
            store: self.store.clone(),
            docker_config: self.docker_config.clone(),
            bins: self.bins.clone(),
        }
    }

    /// The private store.
    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// The private docker client configuration (where `rmachine` writes machines' contexts).
    pub fn docker_config(&self) -> &Path {
        self.docker_config.path()
    }

    /// Runs `rmachine ARGS` against this machine's store, with the workspace's binaries first
    /// on PATH (the example external driver `rmachine-driver-extqemu` is one).
    pub fn rmachine(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = Command::new(self.bins.join("rmachine"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.bins.clone()).chain(std::env::split_paths(&path)),
        )?;
        cmd.args(args)
            .env("PATH", path)
            .env("RMACHINE_STORAGE_PATH", self.store.path())
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null());
        run(cmd, format!("rmachine {}", args.join(" ")))
    }

    /// Machine `name`'s console log once `until` holds for its text, or as it is after
    /// `limit`: a line may still be crossing the guest's serial port when a command returns.
    /// The caller asserts on the text it gets.
    pub fn console_when(
        &self,
        name: &str,
        limit: Duration,
        until: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let path = self.store().join("machines").join(name).join("console.log");
        let deadline = Instant::now() + limit;
        loop {
            let console = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if until(&console) || Instant::now() >= deadline {
                return Ok(console);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One side of the machine's last boot timeline as `rmachine inspect` holds it (`side`:
    /// `Guest` or `Host`): `(stage, ms)` pairs in order.
    pub fn timeline(&self, side: &str) -> Result<Vec<(String, u64)>> {
        let format =
            format!("{{{{range .Timeline.{side}}}}}{{{{.Stage}}}}={{{{.Ms}}}} {{{{end}}}}");
        let out = self
            .rmachine(&["inspect", "--format", &format, &self.name])?
            .success()?;
        out.stdout
            .split_whitespace()
            .map(|item| {
                let (stage, ms) = item
                    .split_once('=')
                    .with_context(|| format!("not STAGE=MS: {item:?}"))?;
                Ok((stage.to_owned(), ms.parse()?))
            })
            .collect()
    }

    /// The last boot's guest timeline, once checked: every stage of [`GUEST_STAGES`] is there,
    /// it begins with `InitStarted` and never goes back (`when` names the boot in errors).
    pub fn checked_guest_timeline(&self, when: &str) -> Result<Vec<(String, u64)>> {
        let guest = self.timeline("Guest")?;
        eprintln!("{when}: guest timeline {guest:?}");
        for stage in GUEST_STAGES {
            anyhow::ensure!(
                guest.iter().any(|(s, _)| s == stage),
                "{when}: guest stage {stage} missing from {guest:?}"
            );
        }
        anyhow::ensure!(
            guest.first().map(|(s, _)| s.as_str()) == Some("InitStarted"),
            "{when}: the guest timeline does not begin with InitStarted: {guest:?}"
        );
        anyhow::ensure!(
            guest.windows(2).all(|w| w[0].1 <= w[1].1),
            "{when}: guest timeline not monotonic: {guest:?}"
        );
        Ok(guest)
    }

    /// `rmachine create -d qemu` with the workspace's guest image and extra `args`.
    pub fn create(&self, args: &[&str]) -> Result<Run> {
        self.create_from(&guest_image()?, args)
    }

    /// `rmachine create -d qemu` with the guest image in `image` and extra `args`.
    pub fn create_from(&self, image: &Path, args: &[&str]) -> Result<Run> {
        self.create_with_driver_from("qemu", image, args)
    }

    /// `rmachine create -d DRIVER` with the workspace's guest image and extra `args`.
    pub fn create_with_driver(&self, driver: &str, args: &[&str]) -> Result<Run> {
        self.create_with_driver_from(driver, &guest_image()?, args)
    }

    /// `rmachine create -d DRIVER` with the guest image in `image` and extra `args`.
    fn create_with_driver_from(&self, driver: &str, image: &Path, args: &[&str]) -> Result<Run> {
        let image = image.to_string_lossy();
        let mut all = vec![
            "create",
            "-d",
            driver,
            "--no-progress",
            "--guest-image",
            &image,
        ];
        all.extend_from_slice(args);
        all.push(&self.name);
        self.rmachine(&all)
    }

    /// The environment `rmachine env NAME` prints, parsed from its bash form, exactly what
    /// `eval $(rmachine env NAME)` would set.
    pub fn docker_env(&self) -> Result<Vec<(String, String)>> {
        let out = self
            .rmachine(&["env", "--shell", "bash", &self.name])?
            .success()?;
        parse_bash_env(&out.stdout)
    }

    /// Runs the real `docker` CLI against this machine (env from `rmachine env`).
    pub fn docker(&self, args: &[&str]) -> Result<Run> {
        self.docker_with_stdin(args, None)
    }

    /// Like [`Machine::docker`], feeding `stdin_file` to the command's stdin.
    pub fn docker_with_stdin(&self, args: &[&str], stdin_file: Option<&Path>) -> Result<Run> {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_CONFIG", self.docker_config.path())
            .envs(self.docker_env()?);
        match stdin_file {
            Some(path) => cmd.stdin(std::fs::File::open(path)?),
            None => cmd.stdin(Stdio::null()),
        };
        run(cmd, format!("docker {}", args.join(" ")))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Best effort: a failed test must not leave a QEMU process behind.
        let _ = self.rmachine(&["rm", "-f", "-y", &self.name]);
    }
}

/// The variables `rmachine env --shell bash` printed (`text`), as `eval` would set them.
pub fn parse_bash_env(text: &str) -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let (key, value) = rest
            .split_once('=')
            .with_context(|| format!("malformed env line {line:?}"))?;
        vars.push((key.to_string(), value.trim_matches('"').to_string()));
    }
    if !vars.iter().any(|(k, _)| k == "DOCKER_HOST") {
        bail!("rmachine env printed no DOCKER_HOST:\n{text}");
    }
    Ok(vars)
}

/// Runs `cmd` (described as `what` in messages), printing what it did.
pub fn run(mut cmd: Command, what: String) -> Result<Run> {
    eprintln!("+ {what}");
    let started = Instant::now();
    let output = cmd
        .output()
        .with_context(|| format!("cannot run `{what}`"))?;
    let run = Run::from_output(what, output, started.elapsed());
    eprintln!(
        "  -> exit {} in {:.1}s\n{}{}",
        run.code,
        run.elapsed.as_secs_f64(),
        indent(&run.stdout),
        indent(&run.stderr)
    );
    Ok(run)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  | {l}\n")).collect()
}
