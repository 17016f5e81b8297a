//! Engine test harness: runs `rmachine-engine` on this host (as root, no VM) and drives it with
//! the real `docker` CLI, over its unix socket and over TCP with mutual TLS.
//!
//! The binaries come from the workspace's target directory (`cargo build --workspace` first):
//! the test executable lives in `target/<profile>/deps/`, so the engine and runtime are found
//! two levels up.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod registry;

/// The variable tests/run.sh (and so CI) sets to `1`: a test that cannot run here then fails
/// with the reason instead of passing as skipped.
pub const TESTS_REQUIRED: &str = "RMACHINE_TESTS_REQUIRED";

/// Says that the current test cannot run here and why: a failure under
/// [`TESTS_REQUIRED`]`=1`; otherwise a skip, reported on stderr past the test harness's output
/// capture (which hides what passing tests print) so that the runner shows it. The caller
/// returns after it.
pub fn cannot_run(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var(TESTS_REQUIRED).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run here: {reason} ({TESTS_REQUIRED}=1 makes this a failure)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// A `python3` command for a docker-py script when python3 has the `docker` package; otherwise
/// [`cannot_run`] says why. This machine's CA bundle variables are removed: they make docker-py
/// ignore its own TLS settings.
pub fn docker_py() -> Option<std::process::Command> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import docker"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        cannot_run("python3 with the docker package (docker-py) is missing");
        return None;
    }
    let mut python = std::process::Command::new("python3");
    python
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    Some(python)
}

/// True when the tests can run (root); otherwise [`cannot_run`] says why.
pub fn require_root() -> bool {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid == "0" {
        true
    } else {
        cannot_run("engine tests need root (namespaces, overlayfs); run them as root");
        false
    }
}

/// `target/<profile>`, found from the test executable's path.
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    Ok(dir.to_path_buf())
}

/// The workspace's build of the binary `name`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = target_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the workspace first (cargo build --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// What a docker command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Fails with the command's output unless it exited 0.
    pub fn ok(self) -> Result<Run> {
        if self.code != 0 {
            bail!(
                "command failed with {}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Paths of the generated TLS material.
#[derive(Debug, Clone)]
pub struct Certs {
    /// CA certificate (signs server and client).
    pub ca: PathBuf,
    /// Server certificate (127.0.0.1, localhost).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// A directory usable as DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem.
    pub client_dir: PathBuf,
}

/// Generates a CA, a server certificate and a client certificate under `dir`.
pub fn make_certs(dir: &Path) -> Result<Certs> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rmachine test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "rmachine-engine");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca)?;

    let client_dir = dir.join("client");
    fs::create_dir_all(&client_dir)?;
    let certs = Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_dir: client_dir.clone(),
    };
    fs::write(&certs.ca, ca.pem())?;
    fs::write(&certs.server_cert, server.pem())?;
    fs::write(&certs.server_key, server_key.serialize_pem())?;
    fs::write(client_dir.join("ca.pem"), ca.pem())?;
    fs::write(client_dir.join("cert.pem"), client.pem())?;
    fs::write(client_dir.join("key.pem"), client_key.serialize_pem())?;
    Ok(certs)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running engine with its own data root, socket, TLS port and docker config.
#[derive(Debug)]
pub struct Engine {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The unix socket.
    pub socket: PathBuf,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// TLS material.
    pub certs: Certs,
    /// More engine flags, after the harness's own.
    extra_args: Vec<String>,
    /// More environment variables for the engine.
    extra_env: Vec<(String, String)>,
    /// The runtime binary, when not the workspace's.
    runtime: Option<PathBuf>,
    /// The network namespace the engine runs in (see [`NetNs`]).
    pub netns: std::sync::Arc<NetNs>,
}

/// A named network namespace (`ip netns add`) with `lo` up, deleted on drop.
///
/// Every engine under test runs in one of its own: the bridge, veths, NAT rules and
/// `ip_forward` of an engine then live and die there, never on this shared host's own network
/// namespace. It outlives engine restarts, so a restarted engine finds what the killed one
/// left, as on a real host.
#[derive(Debug)]
pub struct NetNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl NetNs {
    /// Makes a new namespace with `lo` up.
    pub fn new() -> Result<NetNs> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNT: AtomicU32 = AtomicU32::new(0);
        // The pid alone repeats on a reused machine (a sandbox's pids start small), where a
        // namespace left by a killed run of the tests would make `ip netns add` fail: this
        // process's start time (ms) makes the name its own.
        static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let started = STARTED.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        });
        let name = format!(
            "rmt-{}-{started}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!(
                    "ip {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        run(&["netns", "add", &name])?;
        let netns = NetNs { name };
        run(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace file.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has joined the namespace (the network namespace is a
    /// per-thread attribute): sockets `f` opens are the namespace's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        enter_and_run(self.path(), f)
    }

    /// `program` run inside the namespace (through `nsenter`, which execs it: same PID).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }
}

thread_local! {
    /// The namespace this test's thread moved into with [`share_network_with_engines`]; the
    /// engines it starts afterwards run there too.
    static THREAD_NETNS: std::cell::RefCell<Option<std::sync::Arc<NetNs>>> =
        const { std::cell::RefCell::new(None) };
}

/// Moves the calling test's thread, and the threads and processes it starts from then on, into
/// a fresh network namespace that every engine it starts afterwards shares: servers the test
/// runs on 127.0.0.1 (registries, token issuers, HTTP servers) are the engine's 127.0.0.1 too,
/// and nothing of the test touches the host's own network.
pub fn share_network_with_engines() -> Result<()> {
    use std::os::fd::AsRawFd;
    let netns = NetNs::new()?;
    let path = netns.path();
    let file = fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns on a valid, open namespace descriptor affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    THREAD_NETNS.with(|shared| *shared.borrow_mut() = Some(std::sync::Arc::new(netns)));
    Ok(())
}

/// Runs `f` on a thread that joined the network namespace at `path`.
pub fn enter_and_run<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on a valid, open namespace descriptor affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Engine {
    /// Starts an engine in a fresh temp dir and waits until it answers `/_ping`.
    pub fn start() -> Result<Engine> {
        Engine::start_with_args(&[])
    }

    /// [`Engine::start`] with more engine flags (`--registry-mirror URL`).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Engine> {
        let mut engine = Engine::prepare_with_args(extra_args)?;
        engine.spawn()?;
        Ok(engine)
    }

    /// [`Engine::start_with_args`] with environment variables for the engine (`HTTP_PROXY`).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Engine> {
        let mut engine = Engine::prepare_with_args(extra_args)?;
        engine.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        engine.spawn()?;
        Ok(engine)
    }

    /// An engine's temp dir, certificates and socket path, not started yet ([`Engine::spawn`]
    /// starts it): for tests that prepare its data root first (e.g. mount a filesystem there).
    pub fn prepare() -> Result<Engine> {
        Engine::prepare_with_args(&[])
    }

    /// [`Engine::start`] with `runtime` as the engine's `--runtime` instead of the workspace's
    /// `rmachine-runtime` (tests that attack the runtime binary run a copy of it).
    pub fn start_with_runtime(runtime: Option<PathBuf>) -> Result<Engine> {
        let mut engine = Engine::prepare_with_args(&[])?;
        engine.runtime = runtime;
        engine.spawn()?;
        Ok(engine)
    }

    fn prepare_with_args(extra_args: &[&str]) -> Result<Engine> {
        let dir = tempfile::Builder::new()
            .prefix("rmachine-engine-test")
            .tempdir()?;
        let certs = make_certs(&dir.path().join("certs"))?;
        fs::create_dir_all(dir.path().join("docker-config"))?;
        Ok(Engine {
            child: None,
            socket: dir.path().join("docker.sock"),
            port: free_port()?,
            dir,
            certs,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            extra_env: Vec::new(),
            runtime: None,
            netns: match THREAD_NETNS.with(|shared| shared.borrow().clone()) {
                Some(shared) => shared,
                None => std::sync::Arc::new(NetNs::new()?),
            },
        })
    }

    /// The engine's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp dir holding everything of this engine.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The engine's data root.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The engine's log so far (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("engine.log")).unwrap_or_default()
    }

    /// Starts the engine process and waits until it answers `/_ping`.
    pub fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("engine.log"))?;
        let child = self
            .netns
            .command(binary("rmachine-engine")?)
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.dir.path().join("exec-root"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("-H")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(&self.certs.ca)
            .arg("--tlscert")
            .arg(&self.certs.server_cert)
            .arg("--tlskey")
            .arg(&self.certs.server_key)
            .arg("--runtime")
            .arg(match &self.runtime {
                Some(runtime) => runtime.clone(),
                None => binary("rmachine-runtime")?,
            })
            .arg("--label")
            .arg("purpose=test")
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "rmachine_engine=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start rmachine-engine")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping().is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("engine exited with {status} at start:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("engine did not answer /_ping within 20s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One raw `GET /_ping` over the unix socket.
    pub fn ping(&self) -> Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.ends_with("OK") {
            bail!("unexpected /_ping answer: {response}");
        }
        Ok(response)
    }

    /// One raw HTTP/1.0 request over the unix socket (JSON body when not empty); returns the
    /// status code and the response body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of headers in {response:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_string()))
    }

    /// Kills the engine with SIGKILL (no cleanup), as a crash would.
    pub fn crash(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the engine again on the same data root.
    pub fn restart(&mut self) -> Result<()> {
        self.crash()?;
        self.spawn()
    }

    /// Stops the engine with SIGTERM and returns its exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("engine did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn base_command(&self) -> Command {
        self.base_command_in(Command::new("docker"))
    }

    fn base_command_in(&self, mut cmd: Command) -> Command {
        cmd.env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_TLS")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        cmd
    }

    /// A `docker` command against the unix socket.
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.base_command();
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// Runs `docker ARGS` against the unix socket.
    pub fn docker(&self, args: &[&str]) -> Result<Run> {
        Ok(self.docker_command(args).output()?.into())
    }

    /// `docker inspect -f FORMAT NAME`, trimmed; fails if the CLI does.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String> {
        Ok(self
            .docker(&["inspect", "-f", format, name])?
            .ok()?
            .stdout
            .trim()
            .to_string())
    }

    /// Runs `docker ARGS`, failing (and killing the CLI) if it has not ended within `limit`:
    /// for commands a bug could leave hanging.
    pub fn docker_within(&self, limit: Duration, args: &[&str]) -> Result<Run> {
        let mut child = self
            .docker_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("docker {} did not end within {limit:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child.wait_with_output()?.into())
    }

    /// Runs `docker ARGS` with `input` on its stdin.
    pub fn docker_with_input(&self, args: &[&str], input: &[u8]) -> Result<Run> {
        feed(self.docker_command(args), input)
    }

    /// A `docker` command over TCP with mutual TLS, using `cert_path` as DOCKER_CERT_PATH. It
    /// runs in the engine's network namespace, where the engine's 127.0.0.1 is.
    pub fn docker_tls_command(&self, cert_path: &Path, args: &[&str]) -> Command {
        let mut cmd = self.base_command_in(self.netns.command("docker"));
        cmd.env("DOCKER_HOST", format!("tcp://127.0.0.1:{}", self.port))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path)
            .args(args);
        cmd
    }

    /// Runs `docker ARGS` over TCP with mutual TLS, using `cert_path` as DOCKER_CERT_PATH.
    pub fn docker_tls(&self, cert_path: &Path, args: &[&str]) -> Result<Run> {
        Ok(self.docker_tls_command(cert_path, args).output()?.into())
    }

    /// The common start of a test: an engine with `busybox:latest` loaded, or `None` (after
    /// saying why) when the tests cannot run here because they need root.
    pub fn with_busybox() -> Result<Option<Engine>> {
        if !require_root() {
            return Ok(None);
        }
        let engine = Engine::start()?;
        engine.load_busybox()?;
        Ok(Some(engine))
    }

    /// Loads the busybox test image as `busybox:latest`.
    pub fn load_busybox(&self) -> Result<()> {
        let tar = self.dir.path().join("busybox.tar");
        if !tar.exists() {
            busybox_tar(&tar)?;
        }
        let tar = tar.to_string_lossy().into_owned();
        let run = self.docker(&["load", "-i", &tar])?.ok()?;
        if !run.stdout.contains("Loaded image: busybox:latest") {
            bail!("unexpected docker load output: {}", run.stdout);
        }
        Ok(())
    }

    /// Waits until `check` holds for `docker ARGS`' output, or fails after `timeout`.
    pub fn wait_for(
        &self,
        args: &[&str],
        timeout: Duration,
        check: impl Fn(&Run) -> bool,
    ) -> Result<Run> {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.docker(args)?;
            if check(&run) {
                return Ok(run);
            }
            if Instant::now() > deadline {
                bail!("condition not met for docker {args:?}: {run:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.terminate().is_err() {
            let _ = self.crash();
        }
    }
}

/// A bare `rmachine-engine` command on `data_root` serving `socket` only (no TLS port): for a
/// second engine next to a test's [`Engine`]. It runs in a network namespace of its own
/// (`unshare --net`, which execs it: same PID), so nothing it sets up reaches this host's.
pub fn engine_command(data_root: &Path, socket: &Path) -> Result<Command> {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net")
        .arg("--")
        .arg(binary("rmachine-engine")?)
        .arg("--data-root")
        .arg(data_root)
        // Its own: each engine clears its exec root at start.
        .arg("--exec-root")
        .arg(data_root.with_extension("exec-root"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("--runtime")
        .arg(binary("rmachine-runtime")?)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Runs `cmd` with `input` on its stdin (closed afterwards) and collects its output.
pub fn feed(mut cmd: Command, input: &[u8]) -> Result<Run> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    stdin.write_all(input)?;
    drop(stdin);
    Ok(child.wait_with_output()?.into())
}

/// Writes a `docker save` archive of busybox (from Debian's busybox-static) to `out`.
pub fn busybox_tar(out: &Path) -> Result<()> {
    rmachine_fixtures::busybox_image(
        out,
        "busybox:latest",
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    Ok(())
}

/// The `CapEff:` value of a `/proc/PID/status` text (empty when absent).
pub fn cap_eff(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or("")
        .trim()
        .to_string()
}
