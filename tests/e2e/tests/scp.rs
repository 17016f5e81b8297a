//! `rmachine scp` against real guests (both ways, and machine to machine), `mount`,
//! `regenerate-certs`, a certificate reissued by `start` after an address change, two machines
//! started at once, the machine's docker context,
//! and `create` leaving its caller's pipes alone once QEMU has daemonized.
#![cfg(rmachine_e2e)]

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmachine_e2e::{bin_dir, guest_image, Machine};
use rmachine_fixtures::{busybox_image, ArchiveFormat};
use rmachine_guest_config::timeline::{GuestStage, Stage, STAGE_MARKER};

/// Removes a second machine of the same store on drop (the harness removes only its own).
struct Also<'a>(&'a Machine, &'a str);

impl Drop for Also<'_> {
    fn drop(&mut self) {
        let _ = self.0.rmachine(&["rm", "-f", "-y", self.1]);
    }
}

/// `rmachine create` as `$(rmachine create …)` or a test runner runs it: stdout is a pipe, and
/// the pipe is also open as descriptor 7 without close-on-exec. Fails if reading that pipe to
/// its end does not finish when rmachine exits, or if QEMU holds the pipe.
fn create_through_a_pipe(machine: &Machine) -> Result<()> {
    let image = guest_image()?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$@\" 7>&1")
        .arg("sh")
        .arg(bin_dir()?.join("rmachine"))
        .args(["create", "-d", "qemu", "--no-progress", "--guest-image"])
        .arg(&image)
        .arg(&machine.name)
        .env("RMACHINE_STORAGE_PATH", machine.store())
        .env("DOCKER_CONFIG", machine.docker_config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn rmachine create")?;
    let mut stdout = child.stdout.take().context("stdout pipe")?;
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", stdout.as_raw_fd()))?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = child.wait()?;
    let exited = Instant::now();
    while !reader.is_finished() {
        if exited.elapsed() > Duration::from_secs(20) {
            bail!("rmachine create exited ({status}) but its stdout pipe stays open: a child holds it");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    eprintln!("{text}");
    if !status.success() {
        bail!("rmachine create failed: {status}\n{text}");
    }
    let pidfile = machine
        .store()
        .join("machines")
        .join(&machine.name)
        .join("qemu.pid");
    let pid = std::fs::read_to_string(&pidfile)?.trim().to_owned();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let target = std::fs::read_link(entry?.path()).unwrap_or_default();
        if target == pipe {
            bail!(
                "QEMU (pid {pid}) holds the caller's pipe {}",
                pipe.display()
            );
        }
    }
    Ok(())
}

/// Replaces machine `name`'s engine certificate by one the store's CA issued for an address
/// the machine no longer has (192.168.64.7): not 127.0.0.1, where QEMU's forwards reach it.
/// Returns the certificate and its key (PEM).
fn cert_for_an_old_address(machine: &Machine, name: &str) -> Result<(String, String)> {
    let certs = machine.store().join("certs");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca-key.pem"))?)?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(certs.join("ca.pem"))?, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![
        "192.168.64.7".to_string(),
        "localhost".to_string(),
        name.to_string(),
    ])?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let dir = machine.store().join("machines").join(name);
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Gives running machine `name` an engine certificate for an address it no longer has, on
/// the host and in the guest (as if it had been issued before a bridged VM's new lease): the
/// engine presents it from its next connection on.
fn stale_cert_in_the_running_guest(machine: &Machine, name: &str) -> Result<()> {
    let (cert, key) = cert_for_an_old_address(machine, name)?;
    let tls = "/run/rmachine/tls";
    ssh_out(
        machine,
        name,
        &format!(
            "printf '%s' '{key}' > {tls}/k.tmp && mv {tls}/k.tmp {tls}/server-key.pem && \
             printf '%s' '{cert}' > {tls}/c.tmp && mv {tls}/c.tmp {tls}/server.pem"
        ),
    )?;
    Ok(())
}

/// `docker ARGS` with fixed variables (not from `rmachine env`, which would reissue).
fn docker_plain(machine: &Machine, vars: &[(String, String)], args: &[&str]) -> Result<Output> {
    Ok(Command::new("docker")
        .args(args)
        .env("DOCKER_CONFIG", machine.docker_config())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()?)
}

/// The guest's uptime in seconds: a machine that was not restarted keeps counting.
fn guest_uptime(machine: &Machine, name: &str) -> Result<f64> {
    let out = ssh_out(machine, name, "cat /proc/uptime")?;
    out.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("/proc/uptime: {out:?}"))
}

/// The IP addresses (as bytes) a PEM certificate's subjectAltName names.
fn ip_sans(pem: &str) -> Result<Vec<Vec<u8>>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
    let (_, cert) = X509Certificate::from_der(&pem.contents)?;
    Ok(cert
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::IPAddress(bytes) => Some(bytes.to_vec()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// How long the machine's last boot took by its own timeline: its last host mark (ms since
/// its boot began).
fn last_host_mark_ms(machine: &Machine, name: &str) -> Result<u64> {
    let path = machine
        .store()
        .join("machines")
        .join(name)
        .join("config.json");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    record["Timeline"]["Host"]
        .as_array()
        .and_then(|marks| marks.iter().filter_map(|m| m["Ms"].as_u64()).max())
        .ok_or_else(|| anyhow::anyhow!("{name} recorded no host marks: {}", record["Timeline"]))
}

fn ssh_out(machine: &Machine, name: &str, command: &str) -> Result<String> {
    Ok(machine.rmachine(&["ssh", name, command])?.success()?.stdout)
}

#[test]
fn scp_copies_both_ways_and_between_machines() -> Result<()> {
    let machine = Machine::new("scp-a")?;
    create_through_a_pipe(&machine)?;

    // The docker context named after the machine reaches its engine.
    docker_version_through_context(&machine, "scp-a").context("before the restarts")?;

    let local = tempfile::tempdir()?;
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub"))?;
    std::fs::write(tree.join("a.txt"), "alpha\n")?;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(tree.join("sub/big.bin"), &big)?;
    let tree_arg = tree.to_string_lossy().into_owned();

    // Host to machine, recursive, into root's home.
    machine
        .rmachine(&["scp", "-r", &tree_arg, "scp-a:"])?
        .success()?;
    assert_eq!(
        ssh_out(&machine, "scp-a", "cat /root/tree/a.txt")?,
        "alpha\n"
    );
    assert_eq!(
        ssh_out(&machine, "scp-a", "wc -c < /root/tree/sub/big.bin")?.trim(),
        big.len().to_string()
    );

    // mount: the guest's directory through sshfs, then unmounted.
    let mnt = local.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mnt_arg = mnt.to_string_lossy().into_owned();
    machine
        .rmachine(&["mount", "scp-a:/root/tree", &mnt_arg])?
        .success()?;
    let through_mount = std::fs::read_to_string(mnt.join("a.txt"));
    machine
        .rmachine(&["mount", "-u", "scp-a:/root/tree", &mnt_arg])?
        .success()?;
    assert_eq!(through_mount?, "alpha\n");
    assert!(!mnt.join("a.txt").exists(), "unmounted");

    // Machine to host.
    let back = local.path().join("back.bin");
    machine
        .rmachine(&["scp", "scp-a:tree/sub/big.bin", &back.to_string_lossy()])?
        .success()?;
    assert!(std::fs::read(&back)? == big, "downloaded bytes differ");

    // Delta: an unchanged tree is left alone, modification times come across.
    machine
        .rmachine(&["scp", "-r", "-d", "-q", &tree_arg, "scp-a:/root/delta"])?
        .success()?;
    let mtime = std::fs::metadata(tree.join("a.txt"))?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    assert_eq!(
        ssh_out(&machine, "scp-a", "stat -c %Y /root/delta/tree/a.txt")?.trim(),
        mtime.to_string()
    );

    // A container keeps running through every certificate change below: none of them
    // restarts the machine (the engine takes new files at its next connection).
    let tar = local.path().join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    machine
        .docker_with_stdin(&["load"], Some(&tar))?
        .success()?;
    machine
        .docker(&["run", "-d", "--name", "keeper", "busybox", "sleep", "3600"])?
        .success()?;
    let keeper = || -> Result<String> {
        Ok(machine
            .docker(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.StartedAt}}",
                "keeper",
            ])?
            .success()?
            .stdout)
    };
    let kept = keeper()?;
    assert!(kept.starts_with("true "), "{kept}");
    let up_before = guest_uptime(&machine, "scp-a")?;
    let since_up_before = std::time::Instant::now();

    // regenerate-certs: a new engine certificate put in service in the running machine, docker
    // works, and ssh still accepts the guest.
    let server_pem = machine.store().join("machines/scp-a/server.pem");
    let before = std::fs::read_to_string(&server_pem)?;
    machine
        .rmachine(&["regenerate-certs", "-f", "--no-progress", "scp-a"])?
        .success()?;
    assert_ne!(std::fs::read_to_string(&server_pem)?, before);
    machine
        .docker(&["version", "--format", "{{.Server.Version}}"])?
        .success()?;
    assert_eq!(ssh_out(&machine, "scp-a", "echo still")?, "still\n");

    // The running engine presents a certificate naming only an address the machine no longer
    // has: docker's TLS check fails, `ls` notices, puts one naming 127.0.0.1 in service within
    // its timeout and shows the machine healthy; then the same again through `env`.
    let vars = machine.docker_env()?;
    for fixer in ["ls", "env"] {
        stale_cert_in_the_running_guest(&machine, "scp-a")?;
        let stale = std::fs::read_to_string(&server_pem)?;
        let refused = docker_plain(&machine, &vars, &["version"])?;
        assert!(
            !refused.status.success(),
            "docker accepted a certificate that does not name 127.0.0.1"
        );
        let began = Instant::now();
        match fixer {
            "ls" => {
                let ls = machine
                    .rmachine(&[
                        "ls",
                        "--timeout",
                        "20",
                        "--format",
                        "{{.Name}} {{.State}} {{.DockerVersion}} [{{.Error}}]",
                    ])?
                    .success()?;
                let row = ls
                    .stdout
                    .lines()
                    .find(|l| l.starts_with("scp-a "))
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    row.starts_with("scp-a Running v") && row.ends_with(" []"),
                    "{}",
                    ls.stdout
                );
            }
            _ => {
                machine.docker_env()?;
            }
        }
        eprintln!(
            "{fixer} put a certificate for the new address in service in {:.1}s",
            began.elapsed().as_secs_f64()
        );
        let reissued = std::fs::read_to_string(&server_pem)?;
        assert_ne!(reissued, stale, "{fixer} reissued the certificate");
        assert!(ip_sans(&reissued)?.contains(&vec![127, 0, 0, 1]));
        let out = docker_plain(
            &machine,
            &vars,
            &["version", "--format", "{{.Server.Version}}"],
        )?;
        assert!(
            out.status.success(),
            "after {fixer}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(keeper()?, kept, "the container ran on through the reissues");
    // The wall time between the two reads is a lower bound of the uptime gained (a reboot
    // in between would have reset it below that); 0.05 s for /proc/uptime's resolution.
    let elapsed = since_up_before.elapsed().as_secs_f64();
    let up_after = guest_uptime(&machine, "scp-a")?;
    assert!(
        up_after + 0.05 >= up_before + elapsed,
        "the guest was not restarted: uptime {up_before} s then {up_after} s, {elapsed} s apart"
    );
    // Gone before the stops below, which would wait for `sleep` (deaf to SIGTERM as PID 1).
    machine.docker(&["rm", "-f", "keeper"])?.success()?;
    machine
        .rmachine(&["scp", "-r", &tree_arg, "scp-a:/root/"])?
        .success()?;

    // Machine to machine, through the host.
    let image = guest_image()?;
    let image = image.to_string_lossy().into_owned();
    let _b = Also(&machine, "scp-b");
    machine
        .rmachine(&[
            "create",
            "-d",
            "qemu",
            "--no-progress",
            "--guest-image",
            &image,
            "scp-b",
        ])?
        .success()?;
    machine
        .rmachine(&["scp", "-r", "scp-a:/root/tree", "scp-b:/root/copy"])?
        .success()?;
    assert_eq!(
        ssh_out(&machine, "scp-b", "cat /root/copy/a.txt")?,
        "alpha\n"
    );
    assert_eq!(
        ssh_out(&machine, "scp-b", "wc -c < /root/copy/sub/big.bin")?.trim(),
        big.len().to_string()
    );

    // Both machines stopped, then started by one command (a thread each). scp-a's engine
    // certificate names only an address it had before (a bridged VM's earlier DHCP lease):
    // start notices that the address it now reports is not named, waits for the engine
    // presenting the machine's certificate, puts one that names the address in service in the
    // running guest (no second boot), and docker reaches both engines over TLS.
    machine.rmachine(&["stop", "scp-a", "scp-b"])?.success()?;
    cert_for_an_old_address(&machine, "scp-a")?;
    let stale = std::fs::read_to_string(&server_pem)?;
    let began = Instant::now();
    let started = machine
        .rmachine(&["start", "--no-progress", "scp-a", "scp-b"])?
        .success()?;
    eprintln!(
        "start scp-a scp-b (one certificate reissued) took {:.1}s\n{}",
        began.elapsed().as_secs_f64(),
        started.stdout
    );
    let reissued = std::fs::read_to_string(&server_pem)?;
    assert_ne!(reissued, stale, "start reissued the certificate");
    let ips = ip_sans(&reissued)?;
    assert!(
        ips.contains(&vec![127, 0, 0, 1]),
        "the reissued certificate names the address the engine is reached at: {ips:?}"
    );
    // The engine of this boot took it while it ran: this boot's console lines (after its
    // init's first stage line, whether QEMU rewrites console.log at each start or appends to
    // it) show it. A reboot with the certificate would boot with it and never log a change.
    // The engine logs the change as it serves the new certificate, the moment `start` sees it:
    // the line may still be on its way through the guest's serial port. A reboot never writes it.
    let served = |lines: &[&str]| {
        lines
            .iter()
            .any(|l| l.contains("TLS files changed: serving the new certificate"))
    };
    let console = machine.console_when("scp-a", Duration::from_secs(15), |c| {
        served(&this_boots_lines(c))
    })?;
    let this_boot = this_boots_lines(&console);
    assert!(
        served(&this_boot),
        "scp-a's engine did not take the certificate while it ran (rebooted?):\n{}",
        this_boot.join("\n")
    );
    // One thread each, not one after the other: the command took less than the two boots
    // added up (each machine's last host mark is its boot's length).
    let took = began.elapsed();
    let boots: u64 = ["scp-a", "scp-b"]
        .iter()
        .map(|name| last_host_mark_ms(&machine, name))
        .sum::<Result<u64>>()?;
    assert!(
        took < Duration::from_millis(boots),
        "start scp-a scp-b took {took:?}, the two boots {boots} ms together: they ran one after \
         the other"
    );
    machine
        .docker(&["version", "--format", "{{.Server.Version}}"])?
        .success()?;
    for name in ["scp-a", "scp-b"] {
        docker_version_through_context(&machine, name)
            .with_context(|| format!("{name} after the concurrent start"))?;
    }

    // A missing remote file is named.
    let missing = machine.rmachine(&["scp", "scp-a:/nope", &back.to_string_lossy()])?;
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (1, "scp: scp-a:/nope: No such file or directory\n")
    );
    Ok(())
}

/// `docker --context NAME version` with no DOCKER_* variables: the machine's docker context
/// alone must reach its engine.
fn docker_version_through_context(machine: &Machine, name: &str) -> Result<()> {
    let out = Command::new("docker")
        .args([
            "--context",
            name,
            "version",
            "--format",
            "{{.Server.Version}}",
        ])
        .env("DOCKER_CONFIG", machine.docker_config())
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()?;
    if !out.status.success() {
        bail!(
            "docker --context {name} version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The console lines of the guest's last boot: from the last line where its init reports
/// that it started (all of them when there is none).
fn this_boots_lines(console: &str) -> Vec<&str> {
    let lines: Vec<&str> = console.lines().collect();
    let started = lines
        .iter()
        .rposition(|l| {
            l.split_once(STAGE_MARKER)
                .and_then(|(_, json)| serde_json::from_str::<GuestStage>(json.trim_end()).ok())
                .is_some_and(|s| s.stage == Stage::InitStarted)
        })
        .unwrap_or(0);
    lines[started..].to_vec()
}
