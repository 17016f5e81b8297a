//! The generic driver: turns an existing Linux host (x86_64 or arm64), reached over SSH with
//! the user's key as root or as a user with passwordless sudo, into a machine.
//!
//! `create` uploads our static engine and runtime and the engine's TLS files (read from the
//! configuration drive the host wrote, so certificates stay the host's business) under
//! [`INSTALL_DIR`], and installs a service: a systemd unit where systemd runs, else a small
//! shell supervisor started detached. `start`/`stop`/`state` act on that service; `remove`
//! stops it and deletes exactly [`INSTALL_DIR`], [`DATA_ROOT`] and the unit file.
//!
//! Remote commands run through the system `ssh` client (the [`CommandRunner`] seam), with
//! the host key pinned in the machine directory at `create`.
#![warn(missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rmachine_driver::runner::{CommandOutput, CommandRunner, CommandSpec, TokioRunner};
use rmachine_driver::{
    Capabilities, Driver, DriverError, DriverInfo, Endpoints, MachineDir, SshLogin, StopMode,
    VmSpec, VmState,
};
use rmachine_guest_config::GuestConfig;
use serde::{Deserialize, Serialize};

/// The driver's name.
pub const DRIVER: &str = "generic";
/// Everything the driver installs on the host except the data root and the unit file.
pub const INSTALL_DIR: &str = "/opt/rmachine";
/// The engine's data root on the host.
pub const DATA_ROOT: &str = "/var/lib/rmachine-engine";
/// The systemd unit, on hosts that run systemd.
pub const UNIT_FILE: &str = "/etc/systemd/system/rmachine-engine.service";
/// The engine's TLS port.
pub const ENGINE_PORT: u16 = 2376;
/// Where the driver looks for the static binaries before the workspace's build output: a
/// directory holding `rmachine-engine` and `rmachine-init` for the host's architecture.
pub const BINARIES_ENV: &str = "RMACHINE_GENERIC_BINARIES";

const UNIT: &str = "rmachine-engine";
const STATE_FILE: &str = "generic.json";
const KNOWN_HOSTS: &str = "generic_known_hosts";
/// The copy of the user's SSH key in the machine directory (docker-machine kept one too).
const KEY_FILE: &str = "id_generic";
const SSH_HINT: &str = "install the OpenSSH client (Debian: openssh-client)";
/// How long one remote command may take (uploads of ~30 MB binaries included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// `--generic-*` flags.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct GenericOptions {
    /// IP address of the host to turn into a machine (required with -d generic)
    #[arg(
        id = "generic_ip_address",
        long = "generic-ip-address",
        env = "GENERIC_IP_ADDRESS",
        value_name = "IP"
    )]
    #[serde(rename = "genericIpAddress", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,

    /// SSH user: root, or a user with passwordless sudo [default: root]
    #[arg(
        id = "generic_ssh_user",
        long = "generic-ssh-user",
        env = "GENERIC_SSH_USER",
        value_name = "USER"
    )]
    #[serde(rename = "genericSshUser", skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,

    /// SSH private key [default: ~/.ssh/id_rsa]
    #[arg(
        id = "generic_ssh_key",
        long = "generic-ssh-key",
        env = "GENERIC_SSH_KEY",
        value_name = "PATH"
    )]
    #[serde(rename = "genericSshKey", skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,

    /// SSH port [default: 22]
    #[arg(
        id = "generic_ssh_port",
        long = "generic-ssh-port",
        env = "GENERIC_SSH_PORT",
        value_name = "PORT"
    )]
    #[serde(rename = "genericSshPort", skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
}

/// What `create` learnt about the host, kept in the machine directory.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct HostFacts {
    /// Commands need `sudo -n` (the user is not root).
    sudo: bool,
    /// The engine runs as a systemd unit, else under the shell supervisor.
    systemd: bool,
}

/// Asks the host for its system, architecture, user id, sudo and systemd, one per line.
const PROBE_SCRIPT: &str = "uname -s; uname -m; id -u; \
    if sudo -n true >/dev/null 2>&1; then echo sudo; else echo nosudo; fi; \
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd; else echo nosystemd; fi";

/// What the probe found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    os: String,
    arch: String,
    root: bool,
    sudo: bool,
    systemd: bool,
}

/// The generic driver.
pub struct GenericDriver {
    options: GenericOptions,
    runner: Arc<dyn CommandRunner>,
    binaries: Option<PathBuf>,
}

impl GenericDriver {
    /// The driver with `options`, running `ssh` for real.
    pub fn new(options: GenericOptions) -> Self {
        Self::with_runner(options, Arc::new(TokioRunner))
    }

    /// The driver with a given command runner (tests pass a recording one).
    pub fn with_runner(options: GenericOptions, runner: Arc<dyn CommandRunner>) -> Self {
        Self {
            options,
            runner,
            binaries: std::env::var_os(BINARIES_ENV).map(PathBuf::from),
        }
    }

    fn user(&self) -> String {
        self.options
            .ssh_user
            .clone()
            .unwrap_or_else(|| "root".to_string())
    }

    fn port(&self) -> u16 {
        self.options.ssh_port.unwrap_or(22)
    }

    fn key(&self) -> PathBuf {
        self.options.ssh_key.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".ssh")
                .join("id_rsa")
        })
    }

    fn ip(&self) -> Result<IpAddr, DriverError> {
        self.options
            .ip_address
            .ok_or_else(|| DriverError::InvalidOptions {
                driver: DRIVER.to_string(),
                problems: vec!["--generic-ip-address is required".to_string()],
            })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.options.ip_address.is_none() {
            problems.push("--generic-ip-address is required".to_string());
        }
        if self.options.ssh_port == Some(0) {
            problems.push("--generic-ssh-port 0 is not a port".to_string());
        }
        if self.options.ssh_user.as_deref().is_some_and(|u| {
            u.is_empty()
                || u.starts_with('-')
                || u.contains(|c: char| c.is_whitespace() || c == '@')
        }) {
            problems.push("--generic-ssh-user is not a user name".to_string());
        }
        let key = self.key();
        if !key.is_file() {
            problems.push(format!("ssh key {} does not exist", key.display()));
        }
        problems
    }

    /// `ssh` running `command` on the host; `known_hosts` `None` trusts any host key and
    /// records none (the probe before the machine directory exists).
    /// Once the machine directory exists, the key is the copy `create` made there (the
    /// user's file may move) and the host key is checked against the pin there.
    fn ssh(
        &self,
        dir: Option<&MachineDir>,
        pin: bool,
        command: &str,
    ) -> Result<CommandSpec, DriverError> {
        let ip = self.ip()?;
        let (file, checking, key) = match dir {
            Some(dir) => (
                dir.file(KNOWN_HOSTS).display().to_string(),
                if pin { "accept-new" } else { "yes" },
                dir.file(KEY_FILE),
            ),
            None => ("/dev/null".to_string(), "no", self.key()),
        };
        Ok(CommandSpec::new("ssh")
            .args([
                "-i".to_string(),
                key.display().to_string(),
                "-p".to_string(),
                self.port().to_string(),
                "-o".to_string(),
                "BatchMode=yes".to_string(),
                "-o".to_string(),
                "IdentitiesOnly=yes".to_string(),
                "-o".to_string(),
                "ConnectTimeout=10".to_string(),
                "-o".to_string(),
                "LogLevel=ERROR".to_string(),
                "-o".to_string(),
                format!("UserKnownHostsFile={file}"),
                "-o".to_string(),
                format!("StrictHostKeyChecking={checking}"),
                "--".to_string(),
                format!("{}@{ip}", self.user()),
                command.to_string(),
            ])
            .timeout(COMMAND_TIMEOUT)
            .install_hint(SSH_HINT))
    }

    /// Runs `command` on the host; ssh's own failures (exit 255) say the host is unreachable.
    /// `dir` is the machine's, absent only in `precheck` (before there is a machine).
    async fn remote(
        &self,
        dir: Option<&MachineDir>,
        cmd: &CommandSpec,
    ) -> Result<CommandOutput, DriverError> {
        let out = self.runner.run(cmd).await?;
        if out.timed_out {
            return Err(DriverError::Timeout {
                machine: dir.map_or_else(|| self.target(), |d| d.name.clone()),
                what: format!("a command over ssh to {}", self.target()),
                seconds: COMMAND_TIMEOUT.as_secs(),
            });
        }
        if out.status == 255 {
            return Err(self.host_error(
                dir,
                "ssh",
                format!(
                    "{}: cannot log in as {}: {}",
                    self.target(),
                    self.user(),
                    first_line(&out.stderr_text())
                ),
            ));
        }
        Ok(out)
    }

    /// An error about the host: naming the machine once there is one, else the driver.
    fn host_error(
        &self,
        dir: Option<&MachineDir>,
        channel: &'static str,
        message: String,
    ) -> DriverError {
        match dir {
            Some(dir) => DriverError::Protocol {
                machine: dir.name.clone(),
                channel,
                message,
            },
            None => DriverError::Plugin {
                driver: DRIVER.to_string(),
                message,
            },
        }
    }

    /// Runs `script` on the host with root rights (through `sudo -n` unless the user is root).
    async fn run_root(
        &self,
        dir: &MachineDir,
        facts: HostFacts,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<CommandOutput, DriverError> {
        let command = format!("{}sh -c {}", sudo_prefix(facts), quote(script));
        let mut cmd = self.ssh(Some(dir), false, &command)?;
        if let Some(bytes) = stdin {
            cmd = cmd.stdin(bytes);
        }
        self.remote(Some(dir), &cmd).await
    }

    async fn run_root_ok(
        &self,
        dir: &MachineDir,
        facts: HostFacts,
        what: &str,
        script: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<String, DriverError> {
        let out = self.run_root(dir, facts, script, stdin).await?;
        if !out.is_success() {
            return Err(self.host_error(
                Some(dir),
                "ssh",
                format!(
                    "{what} on {} failed: {}",
                    self.target(),
                    first_line(&out.stderr_text())
                ),
            ));
        }
        Ok(out.stdout_text())
    }

    fn target(&self) -> String {
        match self.options.ip_address {
            Some(ip) => format!("{}@{ip}:{}", self.user(), self.port()),
            None => "generic host".to_string(),
        }
    }

    /// Checks the host: reachable, Linux, a supported architecture, root rights.
    async fn probe(&self, dir: Option<&MachineDir>, pin: bool) -> Result<Probe, DriverError> {
        let out = self.remote(dir, &self.ssh(dir, pin, PROBE_SCRIPT)?).await?;
        let text = out.stdout_text();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let os = lines.first().copied().unwrap_or_default().to_string();
        if os != "Linux" {
            return Err(self.host_error(
                dir,
                "host",
                format!(
                    "{} runs {}, not Linux",
                    self.target(),
                    if os.is_empty() {
                        "an unknown system"
                    } else {
                        &os
                    }
                ),
            ));
        }
        if lines.len() < 5 {
            return Err(self.host_error(
                dir,
                "ssh",
                format!(
                    "{}: unexpected answer to the host probe: {text:?}",
                    self.target()
                ),
            ));
        }
        let arch = lines[1].to_string();
        if musl_triple(&arch).is_none() {
            return Err(self.host_error(
                dir,
                "host",
                format!(
                    "{} is {arch}; the generic driver supports x86_64 and aarch64",
                    self.target()
                ),
            ));
        }
        let probe = Probe {
            os,
            arch,
            root: lines[2] == "0",
            sudo: lines[3] == "sudo",
            systemd: lines[4] == "systemd",
        };
        if !probe.root && !probe.sudo {
            return Err(self.host_error(
                dir,
                "host",
                format!(
                    "{}: {} is not root and cannot run sudo without a password",
                    self.target(),
                    self.user()
                ),
            ));
        }
        Ok(probe)
    }

    /// The directory holding the static binaries for `arch`.
    fn binaries_dir(&self, arch: &str) -> Result<PathBuf, DriverError> {
        let dir = match &self.binaries {
            Some(dir) => dir.clone(),
            None => workspace_target()
                .map(|t| {
                    t.join(musl_triple(arch).unwrap_or_default())
                        .join("release")
                })
                .unwrap_or_default(),
        };
        for bin in ["rmachine-engine", "rmachine-init"] {
            if !dir.join(bin).is_file() {
                return Err(DriverError::MissingFile {
                    what: "static binary (build it with guest/build.sh or point RMACHINE_GENERIC_BINARIES at a directory holding rmachine-engine and rmachine-init)",
                    path: dir.join(bin),
                });
            }
        }
        Ok(dir)
    }

    fn facts(&self, dir: &MachineDir) -> Result<HostFacts, DriverError> {
        let path = dir.file(STATE_FILE);
        let text = std::fs::read(&path).map_err(|source| DriverError::Io {
            machine: dir.name.clone(),
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "generic.json",
            message: e.to_string(),
        })
    }

    /// Uploads the TLS files and the service definition from the configuration drive.
    async fn install_config(
        &self,
        dir: &MachineDir,
        facts: HostFacts,
        spec: &VmSpec,
    ) -> Result<(), DriverError> {
        let file = std::fs::File::open(&spec.config_drive).map_err(|source| DriverError::Io {
            machine: dir.name.clone(),
            path: spec.config_drive.clone(),
            source,
        })?;
        let config = GuestConfig::read_drive(std::io::BufReader::new(file)).map_err(|e| {
            DriverError::Protocol {
                machine: dir.name.clone(),
                channel: "configuration drive",
                message: e.to_string(),
            }
        })?;
        for (name, pem, mode) in [
            ("ca.pem", &config.ca_pem, "0644"),
            ("server.pem", &config.server_cert_pem, "0644"),
            ("server-key.pem", &config.server_key_pem, "0600"),
        ] {
            let path = format!("{INSTALL_DIR}/tls/{name}");
            let script = format!(
                "umask 077 && cat > {path}.tmp && chmod {mode} {path}.tmp && mv -f {path}.tmp {path}"
            );
            self.run_root_ok(
                dir,
                facts,
                &format!("installing {path}"),
                &script,
                Some(pem.clone().into_bytes()),
            )
            .await?;
        }
        let args = engine_command(&config);
        let (path, text) = if facts.systemd {
            (
                UNIT_FILE.to_string(),
                systemd_unit(&args, &config.engine.env),
            )
        } else {
            (
                format!("{INSTALL_DIR}/supervise.sh"),
                supervisor_script(&args, &config.engine.env),
            )
        };
        let script =
            format!("cat > {path}.tmp && chmod 0644 {path}.tmp && mv -f {path}.tmp {path}");
        self.run_root_ok(
            dir,
            facts,
            &format!("installing {path}"),
            &script,
            Some(text.into_bytes()),
        )
        .await?;
        if facts.systemd {
            self.run_root_ok(
                dir,
                facts,
                "systemctl daemon-reload",
                "systemctl daemon-reload",
                None,
            )
            .await?;
        }
        Ok(())
    }
}

/// Copies the private key with owner-only permissions (ssh refuses a key others can read).
fn copy_key(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(to)?, &bytes)
}

fn sudo_prefix(facts: HostFacts) -> &'static str {
    if facts.sudo {
        "sudo -n "
    } else {
        ""
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// The Rust target whose static binaries run on a host of `uname -m` `arch`.
pub fn musl_triple(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" | "amd64" => Some("x86_64-unknown-linux-musl"),
        "aarch64" | "arm64" => Some("aarch64-unknown-linux-musl"),
        _ => None,
    }
}

/// `target/` of the workspace this executable was built in (a development tree).
fn workspace_target() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    for _ in 0..4 {
        if dir.file_name().is_some_and(|n| n == "target") {
            return Some(dir.to_path_buf());
        }
        dir = dir.parent()?;
    }
    None
}

/// `text` as one single-quoted shell word.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The engine's command line on the host (as the guest's init runs it, with the host's paths).
fn engine_command(config: &GuestConfig) -> Vec<String> {
    let mut args: Vec<String> = vec![
        format!("{INSTALL_DIR}/bin/rmachine-engine"),
        "--data-root".into(),
        DATA_ROOT.into(),
        "-H".into(),
        format!("unix://{INSTALL_DIR}/engine.sock"),
        "-H".into(),
        format!("tcp://0.0.0.0:{}", config.engine.port),
        "--tlsverify".into(),
        "--tlscacert".into(),
        format!("{INSTALL_DIR}/tls/ca.pem"),
        "--tlscert".into(),
        format!("{INSTALL_DIR}/tls/server.pem"),
        "--tlskey".into(),
        format!("{INSTALL_DIR}/tls/server-key.pem"),
    ];
    for label in &config.engine.labels {
        args.extend(["--label".into(), label.clone()]);
    }
    for registry in &config.engine.insecure_registries {
        args.extend(["--insecure-registry".into(), registry.clone()]);
    }
    for mirror in &config.engine.registry_mirrors {
        args.extend(["--registry-mirror".into(), mirror.clone()]);
    }
    args
}

fn systemd_unit(args: &[String], env: &[String]) -> String {
    let mut unit = String::from(
        "# Installed by rmachine (generic driver); `rmachine rm` removes it.\n\
         [Unit]\nDescription=rmachine engine\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=simple\nRestart=always\nRestartSec=1\nKillMode=process\nTimeoutStopSec=20\n\
         Delegate=yes\nLimitNOFILE=1048576\nTasksMax=infinity\n",
    );
    for kv in env {
        unit.push_str(&format!("Environment=\"{}\"\n", unit_quoted(kv)));
    }
    let line: Vec<String> = args
        .iter()
        .map(|a| format!("\"{}\"", unit_quoted(a)))
        .collect();
    unit.push_str(&format!(
        "ExecStart={}\n\n[Install]\nWantedBy=multi-user.target\n",
        line.join(" ")
    ));
    unit
}

/// A value inside a double-quoted systemd unit word: `\\` and `"` escaped, and `%` and `$`
/// doubled so that systemd expands neither specifiers nor variables in it.
fn unit_quoted(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$")
}

/// The supervisor of hosts without systemd: restarts the engine when it exits, and on TERM
/// passes TERM on and waits for the engine.
fn supervisor_script(args: &[String], env: &[String]) -> String {
    let mut script = String::from(
        "#!/bin/sh\n# Installed by rmachine (generic driver): keeps the engine running on a host without systemd.\n",
    );
    for kv in env {
        if let Some((key, value)) = kv.split_once('=') {
            script.push_str(&format!("export {key}={}\n", quote(value)));
        }
    }
    let line: Vec<String> = args.iter().map(|a| quote(a)).collect();
    script.push_str(&format!(
        "child=\n\
         trap 'kill -TERM \"$child\" 2>/dev/null; wait \"$child\"; exit 0' TERM INT\n\
         while :; do\n\
         \x20 {} >>{INSTALL_DIR}/engine.log 2>&1 &\n\
         \x20 child=$!\n\
         \x20 echo \"$child\" >{INSTALL_DIR}/engine.pid\n\
         \x20 wait \"$child\"\n\
         \x20 sleep 1\n\
         done\n",
        line.join(" ")
    ));
    script
}

const SUPERVISOR_PID: &str = "/opt/rmachine/supervise.pid";

/// The shell that answers `running`, `stopped` (or a systemd state) on the host.
fn state_script(facts: HostFacts) -> String {
    if facts.systemd {
        format!("systemctl is-active {UNIT} || true")
    } else {
        format!(
            "pid=$(cat {SUPERVISOR_PID} 2>/dev/null) && [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null && echo active || echo inactive"
        )
    }
}

fn stop_script(facts: HostFacts, kill: bool) -> String {
    if facts.systemd {
        if kill {
            format!("systemctl kill -s KILL {UNIT} >/dev/null 2>&1; systemctl stop {UNIT}")
        } else {
            format!("systemctl stop {UNIT}")
        }
    } else {
        let signal = if kill { "KILL" } else { "TERM" };
        format!(
            "pid=$(cat {SUPERVISOR_PID} 2>/dev/null) || exit 0\n\
             if [ {signal} = KILL ]; then kill -KILL \"$(cat {INSTALL_DIR}/engine.pid 2>/dev/null)\" 2>/dev/null; fi\n\
             kill -{signal} \"$pid\" 2>/dev/null\n\
             i=0\n\
             while kill -0 \"$pid\" 2>/dev/null; do\n\
             \x20 i=$((i+1)); [ $i -gt 40 ] && exit 3\n\
             \x20 sleep 0.5\n\
             done\n\
             rm -f {SUPERVISOR_PID} {INSTALL_DIR}/engine.pid\n"
        )
    }
}

/// Stops the service and deletes exactly what `create` installed.
fn remove_script(facts: HostFacts) -> String {
    let stop = if facts.systemd {
        format!(
            "systemctl disable --now {UNIT} >/dev/null 2>&1; rm -f {UNIT_FILE}; systemctl daemon-reload"
        )
    } else {
        // In a subshell: the stop's early exits must not skip the removal.
        format!("(\n{}\n)", stop_script(facts, false))
    };
    format!("{stop}\nrm -rf {INSTALL_DIR} {DATA_ROOT}\n")
}

fn start_script(facts: HostFacts) -> String {
    if facts.systemd {
        format!("systemctl start {UNIT}")
    } else {
        // setsid and closed descriptors: the supervisor outlives the ssh session.
        format!(
            "pid=$(cat {SUPERVISOR_PID} 2>/dev/null) && kill -0 \"$pid\" 2>/dev/null && exit 0\n\
             setsid sh {INSTALL_DIR}/supervise.sh </dev/null >>{INSTALL_DIR}/engine.log 2>&1 &\n\
             echo $! >{SUPERVISOR_PID}\n"
        )
    }
}

impl Driver for GenericDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: DRIVER.to_string(),
            capabilities: Capabilities {
                graceful_stop: true,
                pause: false,
                console_log: false,
                shares: false,
                // The engine runs on someone else's host, not beside our init.
                sftp_shares: false,
                existing_host: true,
                save_state: false,
                virtio_fs: false,
                fast_boot_files: false,
            },
        }
    }

    async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_string(),
                problems,
            });
        }
        if !spec.shares.is_empty() {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_string(),
                op: "--share".to_string(),
            });
        }
        let probe = self.probe(None, false).await?;
        self.binaries_dir(&probe.arch)?;
        Ok(())
    }

    async fn create(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        if dir.file(STATE_FILE).exists() {
            return Ok(());
        }
        let key = self.key();
        copy_key(&key, &dir.file(KEY_FILE)).map_err(|source| DriverError::Io {
            machine: dir.name.clone(),
            path: key.clone(),
            source,
        })?;
        // This connection pins the host key for every later one.
        let probe = self.probe(Some(dir), true).await?;
        let facts = HostFacts {
            sudo: !probe.root,
            systemd: probe.systemd,
        };
        let bins = self.binaries_dir(&probe.arch)?;
        // A host that already has any of these belongs to another machine or to someone
        // else: refuse rather than take it over (and later delete what we did not install).
        let existing = self
            .run_root_ok(
                dir,
                facts,
                "checking for an earlier install",
                &format!(
                    "for p in {INSTALL_DIR} {DATA_ROOT} {UNIT_FILE}; do [ -e \"$p\" ] && echo \"$p\"; done; true"
                ),
                None,
            )
            .await?;
        if let Some(path) = existing.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Err(self.host_error(
                Some(dir),
                "host",
                format!(
                    "{path} already exists on {}: remove the machine that uses this host first",
                    self.target()
                ),
            ));
        }
        let json = serde_json::to_vec(&facts).unwrap_or_default();
        std::fs::write(dir.file(STATE_FILE), json).map_err(|source| DriverError::Io {
            machine: dir.name.clone(),
            path: dir.file(STATE_FILE),
            source,
        })?;
        self.run_root_ok(
            dir,
            facts,
            "creating the install directories",
            &format!("mkdir -p {INSTALL_DIR}/bin {INSTALL_DIR}/tls {DATA_ROOT} && chmod 0700 {INSTALL_DIR}/tls"),
            None,
        )
        .await?;
        for (from, to) in [
            ("rmachine-engine", "rmachine-engine"),
            ("rmachine-init", "rmachine-runtime"),
        ] {
            let path = bins.join(from);
            let bytes = std::fs::read(&path).map_err(|source| DriverError::Io {
                machine: dir.name.clone(),
                path: path.clone(),
                source,
            })?;
            let target = format!("{INSTALL_DIR}/bin/{to}");
            self.run_root_ok(
                dir,
                facts,
                &format!("uploading {target}"),
                &format!(
                    "cat > {target}.tmp && chmod 0755 {target}.tmp && mv -f {target}.tmp {target}"
                ),
                Some(bytes),
            )
            .await?;
        }
        self.install_config(dir, facts, spec).await?;
        if facts.systemd {
            self.run_root_ok(
                dir,
                facts,
                "enabling the unit",
                &format!("systemctl enable {UNIT}"),
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn start(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        let facts = self.facts(dir)?;
        // The host rewrites the configuration drive before each start (new certificates).
        self.install_config(dir, facts, spec).await?;
        self.run_root_ok(
            dir,
            facts,
            "starting the engine",
            &start_script(facts),
            None,
        )
        .await?;
        Ok(())
    }

    async fn stop(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        let facts = self.facts(dir)?;
        let kill = matches!(mode, StopMode::Kill);
        let out = self
            .run_root(dir, facts, &stop_script(facts, kill), None)
            .await?;
        match out.status {
            0 => Ok(()),
            3 => Err(DriverError::Timeout {
                machine: dir.name.clone(),
                what: "the engine to stop".to_string(),
                seconds: 20,
            }),
            _ => Err(DriverError::Protocol {
                machine: dir.name.clone(),
                channel: "ssh",
                message: format!(
                    "stopping the engine failed: {}",
                    first_line(&out.stderr_text())
                ),
            }),
        }
    }

    async fn remove(&self, dir: &MachineDir) -> Result<(), DriverError> {
        // Nothing was installed before the facts were written.
        let Ok(facts) = self.facts(dir) else {
            return Ok(());
        };
        self.run_root_ok(
            dir,
            facts,
            "removing the install",
            &remove_script(facts),
            None,
        )
        .await?;
        for file in [STATE_FILE, KEY_FILE, KNOWN_HOSTS] {
            let _ = std::fs::remove_file(dir.file(file));
        }
        Ok(())
    }

    async fn state(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        let facts = self.facts(dir)?;
        let out = self
            .run_root_ok(
                dir,
                facts,
                "querying the engine",
                &state_script(facts),
                None,
            )
            .await?;
        Ok(match out.trim() {
            "active" => VmState::Running,
            "activating" | "reloading" => VmState::Starting,
            "deactivating" => VmState::Stopping,
            "failed" => VmState::Error,
            _ => VmState::Stopped,
        })
    }

    async fn endpoints(&self, _dir: &MachineDir) -> Result<Endpoints, DriverError> {
        let ip = self.ip()?;
        Ok(Endpoints {
            ssh: SocketAddr::new(ip, self.port()),
            engine: SocketAddr::new(ip, ENGINE_PORT),
        })
    }

    fn ssh_login(&self, dir: &MachineDir) -> Option<SshLogin> {
        Some(SshLogin {
            user: self.user(),
            key: dir.file(KEY_FILE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    /// `sh -n` accepts `script` (the host runs these through `sh -c`).
    fn assert_shell_syntax(script: &str) {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_service_script_is_valid_shell() {
        let mut config = GuestConfig {
            format_version: rmachine_guest_config::FORMAT_VERSION,
            hostname: "m".into(),
            ca_pem: String::new(),
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
            authorized_keys: Vec::new(),
            engine: rmachine_guest_config::EngineConfig {
                port: ENGINE_PORT,
                labels: vec!["owner=it's me".into()],
                insecure_registries: Vec::new(),
                registry_mirrors: Vec::new(),
                env: vec!["HTTP_PROXY=http://p:3128".into()],
            },
            shares: Vec::new(),
            network: None,
        };
        config.engine.labels.push("provider=generic".into());
        let args = engine_command(&config);
        assert_shell_syntax(&supervisor_script(&args, &config.engine.env));
        for systemd in [false, true] {
            let facts = HostFacts {
                sudo: false,
                systemd,
            };
            assert_shell_syntax(&start_script(facts));
            assert_shell_syntax(&stop_script(facts, false));
            assert_shell_syntax(&stop_script(facts, true));
            assert_shell_syntax(&state_script(facts));
            assert_shell_syntax(&remove_script(facts));
        }
        let unit = systemd_unit(&args, &config.engine.env);
        assert!(
            unit.contains("Environment=\"HTTP_PROXY=http://p:3128\""),
            "{unit}"
        );
        assert!(unit.contains("\"--label\" \"owner=it's me\""), "{unit}");
        // systemd expands `%` specifiers and `$` variables even inside quotes.
        let unit = systemd_unit(&["--label".into(), "cost=5%$HOME".into()], &[]);
        assert!(unit.contains("\"--label\" \"cost=5%%$$HOME\""), "{unit}");
    }

    #[test]
    fn only_x86_64_and_arm64_are_supported() {
        assert!(musl_triple("x86_64").is_some());
        assert!(musl_triple("aarch64").is_some());
        assert!(musl_triple("riscv64").is_none());
    }

    /// Once there is a machine, an error about its host names the machine, then the host.
    #[tokio::test]
    async fn errors_after_precheck_name_the_machine() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, "not read by a fake ssh").unwrap();
        let dir = MachineDir::new("dev", tmp.path().join("dev"));
        std::fs::create_dir_all(dir.path()).unwrap();
        let options = GenericOptions {
            ip_address: Some("192.0.2.1".parse().unwrap()),
            ssh_user: None,
            ssh_key: Some(key),
            ssh_port: None,
        };
        let probe = GenericDriver::new(options.clone())
            .ssh(Some(&dir), true, PROBE_SCRIPT)
            .unwrap()
            .argv();
        let runner = Arc::new(rmachine_driver::runner::RecordingRunner::new([(
            probe,
            CommandOutput::failure(
                255,
                "ssh: connect to host 192.0.2.1 port 22: No route to host\n",
            ),
        )]));
        let driver = GenericDriver::with_runner(options, runner.clone());
        let spec = VmSpec {
            cpus: 1,
            memory_mb: 1024,
            disk_size_mb: 20000,
            boot: rmachine_driver::BootImage {
                kernel: PathBuf::new(),
                initrd: PathBuf::new(),
                cmdline: String::new(),
                arch: String::new(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: Vec::new(),
            },
            config_drive: dir.file("config.img"),
            guest_ports: rmachine_driver::GuestPorts::default(),
            shares: Vec::new(),
        };
        let error = driver.create(&dir, &spec).await.unwrap_err().to_string();
        runner.assert_done();
        assert_eq!(
            error,
            "machine \"dev\": ssh: root@192.0.2.1:22: cannot log in as root: ssh: connect to host 192.0.2.1 port 22: No route to host"
        );
    }

    /// The driver for 192.0.2.1 with a key that exists, answering its probe with `reply`.
    async fn precheck_with(user: &str, reply: CommandOutput) -> (String, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, "not read by a fake ssh").unwrap();
        let options = GenericOptions {
            ip_address: Some("192.0.2.1".parse().unwrap()),
            ssh_user: Some(user.to_string()),
            ssh_key: Some(key.clone()),
            ssh_port: None,
        };
        let probe = GenericDriver::new(options.clone())
            .ssh(None, false, PROBE_SCRIPT)
            .unwrap()
            .argv();
        let runner = Arc::new(rmachine_driver::runner::RecordingRunner::new([(
            probe, reply,
        )]));
        let mut driver = GenericDriver::with_runner(options, runner.clone());
        driver.binaries = Some(tmp.path().join("no-binaries"));
        let spec = VmSpec {
            cpus: 1,
            memory_mb: 1024,
            disk_size_mb: 20000,
            boot: rmachine_driver::BootImage {
                kernel: PathBuf::new(),
                initrd: PathBuf::new(),
                cmdline: String::new(),
                arch: String::new(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: Vec::new(),
            },
            config_drive: tmp.path().join("config.img"),
            guest_ports: rmachine_driver::GuestPorts::default(),
            shares: Vec::new(),
        };
        let error = driver.precheck(&spec).await.unwrap_err().to_string();
        runner.assert_done();
        (error, tmp)
    }

    #[tokio::test]
    async fn an_unreachable_host_is_one_line() {
        let (error, _tmp) = precheck_with(
            "root",
            CommandOutput::failure(
                255,
                "ssh: connect to host 192.0.2.1 port 22: Connection refused\n",
            ),
        )
        .await;
        assert_eq!(
            error,
            "driver generic: root@192.0.2.1:22: cannot log in as root: ssh: connect to host 192.0.2.1 port 22: Connection refused"
        );
    }

    #[tokio::test]
    async fn a_host_that_is_not_linux_is_refused() {
        let (error, _tmp) = precheck_with(
            "root",
            CommandOutput::success("Darwin\narm64\n0\nsudo\nnosystemd\n"),
        )
        .await;
        assert_eq!(
            error,
            "driver generic: root@192.0.2.1:22 runs Darwin, not Linux"
        );
    }

    #[tokio::test]
    async fn an_unsupported_architecture_is_refused() {
        let (error, _tmp) = precheck_with(
            "root",
            CommandOutput::success("Linux\nriscv64\n0\nsudo\nnosystemd\n"),
        )
        .await;
        assert_eq!(
            error,
            "driver generic: root@192.0.2.1:22 is riscv64; the generic driver supports x86_64 and aarch64"
        );
    }

    #[tokio::test]
    async fn a_user_without_root_or_sudo_is_refused() {
        let (error, _tmp) = precheck_with(
            "bob",
            CommandOutput::success("Linux\nx86_64\n1000\nnosudo\nsystemd\n"),
        )
        .await;
        assert_eq!(
            error,
            "driver generic: bob@192.0.2.1:22: bob is not root and cannot run sudo without a password"
        );
    }

    #[tokio::test]
    async fn missing_binaries_name_the_file_and_how_to_build_it() {
        let (error, tmp) = precheck_with(
            "bob",
            CommandOutput::success("Linux\nx86_64\n1000\nsudo\nsystemd\n"),
        )
        .await;
        let expected = tmp.path().join("no-binaries").join("rmachine-engine");
        assert!(error.contains(&expected.display().to_string()), "{error}");
        assert!(error.contains("guest/build.sh"), "{error}");
    }

    #[test]
    fn missing_address_and_key_are_reported_together() {
        let driver = GenericDriver::new(GenericOptions {
            ssh_key: Some(PathBuf::from("/nonexistent/key")),
            ..Default::default()
        });
        assert_eq!(
            driver.problems(),
            vec![
                "--generic-ip-address is required".to_string(),
                "ssh key /nonexistent/key does not exist".to_string()
            ]
        );
    }
}
