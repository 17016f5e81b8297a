//! The walking skeleton, end to end: create → env → docker → ssh → stop/start → rm.
#![cfg(rmachine_e2e)]

use rmachine_e2e::{guest_image, Machine};
use rmachine_fixtures::{busybox_image, ArchiveFormat};
use rmachine_tests_engine::registry::{require_registry, Auth, Registry};

#[test]
fn machine_lifecycle_runs_containers_and_keeps_images() -> anyhow::Result<()> {
    if !require_registry() {
        anyhow::bail!("the registry this test pushes to and pulls from cannot run here");
    }
    // A registry on the host's loopback, which QEMU's user network shows the guest as 10.0.2.2.
    let registry = Registry::start(Auth::Open)?;
    let port = registry
        .host
        .rsplit_once(':')
        .map(|(_, port)| port.to_string())
        .unwrap_or_default();
    let from_guest = format!("10.0.2.2:{port}");
    let machine = Machine::new("e2e")?;
    let created = machine
        .create(&[
            "--cpus",
            "2",
            "--memory",
            "1024",
            "--engine-insecure-registry",
            &from_guest,
        ])?
        .success()?;
    eprintln!("create took {:.1}s", created.elapsed.as_secs_f64());
    assert!(
        created.stdout.contains("rmachine env e2e"),
        "create should end with the env hint:\n{}",
        created.stdout
    );

    let ls = machine.rmachine(&["ls"])?.success()?;
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("e2e "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("qemu") && row.contains("Running") && row.contains("tcp://127.0.0.1:"),
        "ls row: {row:?}"
    );

    let version = machine
        .docker(&["version", "--format", "{{.Server.Version}}"])?
        .success()?;
    assert!(!version.stdout.trim().is_empty());

    let tar = machine.store().join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    let load = machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    assert!(
        load.stdout.contains("Loaded image: busybox:latest"),
        "{}",
        load.stdout
    );

    let hello = machine
        .docker(&["run", "--rm", "busybox", "echo", "hello"])?
        .success()?;
    assert_eq!(hello.stdout, "hello\n");

    // The guest is pure cgroup v2 (this host is v1): limits must reach the container's cgroup.
    let limits = machine
        .docker(&[
            "run",
            "--rm",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
            "--cpuset-cpus",
            "0",
            "busybox",
            "cat",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/cpu.max",
            "/sys/fs/cgroup/pids.max",
            "/sys/fs/cgroup/cpuset.cpus",
        ])?
        .success()?;
    assert_eq!(limits.stdout, "67108864\n50000 100000\n20\n0\n");

    let detached = machine
        .docker(&[
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 1000",
        ])?
        .success()?;
    let id = detached.stdout.trim().to_string();
    let ps = machine
        .docker(&["ps", "--no-trunc", "--format", "{{.ID}} {{.Status}}"])?
        .success()?;
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("Up")),
        "ps shows the detached container running:\n{}",
        ps.stdout
    );
    let logs = machine.docker(&["logs", &id])?.success()?;
    assert_eq!(logs.stdout, "started\n");
    // An exec is born in the container's cgroup (clone3 on the guest's v2): its cgroup
    // namespace then shows that cgroup as the root.
    let exec_cgroup = machine
        .docker(&["exec", &id, "cat", "/proc/self/cgroup"])?
        .success()?;
    assert_eq!(exec_cgroup.stdout, "0::/\n");
    machine.docker(&["stop", "-t", "1", &id])?.success()?;
    let exited = machine
        .docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &id,
        ])?
        .success()?;
    assert_eq!(
        exited.stdout.trim(),
        "exited 137",
        "sh ignores SIGTERM as PID 1, so stop kills it"
    );
    machine.docker(&["rm", &id])?.success()?;

    // Images travel between the machine and a registry on the user's computer.
    let remote = format!("{from_guest}/e2e/busybox:pushed");
    machine.docker(&["tag", "busybox", &remote])?.success()?;
    let push = machine.docker(&["push", &remote])?.success()?;
    assert!(push.stdout.contains("digest: sha256:"), "{}", push.stdout);
    machine.docker(&["rmi", &remote])?.success()?;
    let pull = machine.docker(&["pull", &remote])?.success()?;
    assert!(
        pull.stdout
            .contains(&format!("Status: Downloaded newer image for {remote}")),
        "{}",
        pull.stdout
    );
    let pulled = machine
        .docker(&["run", "--rm", &remote, "echo", "pulled"])?
        .success()?;
    assert_eq!(pulled.stdout, "pulled\n");

    let uname = machine
        .rmachine(&["ssh", "e2e", "uname", "-s"])?
        .success()?;
    assert_eq!(uname.stdout.trim(), "Linux");
    let failing = machine.rmachine(&["ssh", "e2e", "exit 7"])?;
    assert_eq!(failing.code, 7, "ssh passes the remote exit code through");

    machine.rmachine(&["stop", "e2e"])?.success()?;
    let status = machine.rmachine(&["status", "e2e"])?.success()?;
    assert_eq!(status.stdout.trim(), "Stopped");

    machine.rmachine(&["start", "e2e"])?.success()?;
    let images = machine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .success()?;
    assert!(
        images.stdout.lines().any(|l| l == "busybox:latest"),
        "busybox survives stop/start:\n{}",
        images.stdout
    );

    // upgrade, on the running machine, to another guest image: the same files published under
    // a new version. The machine boots from the new cache entry and its images are kept.
    let upgraded_image = machine.store().join("upgrade-image");
    std::fs::create_dir_all(&upgraded_image)?;
    let current = guest_image()?;
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(current.join("manifest.json"))?)?;
    let version = format!(
        "{}-upgraded",
        manifest["version"].as_str().unwrap_or_default()
    );
    manifest["version"] = serde_json::Value::String(version.clone());
    std::fs::write(
        upgraded_image.join("manifest.json"),
        serde_json::to_vec(&manifest)?,
    )?;
    for entry in std::fs::read_dir(&current)? {
        let entry = entry?;
        if entry.file_name() != "manifest.json" {
            std::os::unix::fs::symlink(entry.path(), upgraded_image.join(entry.file_name()))?;
        }
    }
    let began = std::time::Instant::now();
    let upgrade = machine
        .rmachine(&[
            "upgrade",
            "--no-progress",
            "--guest-image",
            &upgraded_image.to_string_lossy(),
            "e2e",
        ])?
        .success()?;
    eprintln!("upgrade took {:.1}s", began.elapsed().as_secs_f64());
    assert!(
        upgrade
            .stdout
            .contains(&format!("Machine \"e2e\" runs guest image {version}.")),
        "{}",
        upgrade.stdout
    );
    let record = std::fs::read_to_string(machine.store().join("machines/e2e/config.json"))?;
    assert!(
        record.contains(&format!("{version}-x86_64")),
        "the machine boots from the new image's cache entry:\n{record}"
    );
    let images = machine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .success()?;
    assert!(
        images.stdout.lines().any(|l| l == "busybox:latest"),
        "busybox survives upgrade:\n{}",
        images.stdout
    );
    let kept = machine
        .docker(&["run", "--rm", "busybox", "echo", "kept"])?
        .success()?;
    assert_eq!(kept.stdout, "kept\n");

    machine.rmachine(&["rm", "-y", "e2e"])?.success()?;
    assert!(
        !machine.store().join("machines/e2e").exists(),
        "rm deletes the machine directory"
    );
    let gone = machine.rmachine(&["status", "e2e"])?;
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
    Ok(())
}
