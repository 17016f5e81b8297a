//! Containers cannot touch the runtime binary (issue 13, the CVE-2019-5736 class): what of the
//! runtime runs inside a container (the `--init` PID 1, the `docker exec` helper between
//! joining the namespaces and `execve`) must give no way to the host's `rmachine-runtime` file
//! through `/proc/PID/exe`.
//!
//! Each test runs the engine with a private copy of the runtime, attacks it from a container
//! with busybox (`chmod`/`chown`/`truncate` follow the `/proc/PID/exe` magic link) and checks
//! that the copy's mode, owner, size and contents did not change.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rmachine_tests_engine::{binary, require_root, Engine};

/// What an attack could change in the runtime binary.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    contents: Vec<u8>,
}

impl Snapshot {
    fn of(path: &Path) -> Result<Snapshot> {
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        Ok(Snapshot {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            contents: fs::read(path)?,
        })
    }

    /// The snapshot without the contents, for messages.
    fn describe(&self) -> String {
        format!(
            "mode {:o} owner {}:{} size {}",
            self.mode, self.uid, self.gid, self.size
        )
    }
}

/// An engine running `runtime`, a copy of the workspace's runtime in a directory of its own,
/// with busybox loaded; `None` when not root.
fn engine_with_runtime_copy() -> Result<Option<(Engine, tempfile::TempDir, PathBuf)>> {
    if !require_root() {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("rmachine-runtime-copy")
        .tempdir()?;
    let runtime = dir.path().join("rmachine-runtime");
    fs::copy(binary("rmachine-runtime")?, &runtime)?;
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o755))?;
    let engine = Engine::start_with_runtime(Some(runtime.clone()))?;
    engine.load_busybox()?;
    Ok(Some((engine, dir, runtime)))
}

fn assert_unchanged(runtime: &Path, before: &Snapshot, what: &str) -> Result<()> {
    let after = Snapshot::of(runtime)?;
    assert!(
        after == *before,
        "{what} changed the runtime binary: before {}, after {}",
        before.describe(),
        after.describe()
    );
    Ok(())
}

/// The `--init` PID 1 is the runtime's code: from a default container, and from one that may
/// ptrace (so only the sealed executable protects the file, not the non-dumpable flag),
/// changing `/proc/1/exe` fails and leaves the host's binary as it was.
#[test]
fn init_process_cannot_touch_the_runtime_binary() -> Result<()> {
    let Some((engine, _dir, runtime)) = engine_with_runtime_copy()? else {
        return Ok(());
    };
    let before = Snapshot::of(&runtime)?;
    let attack = "readlink /proc/1/exe; echo readlink=$?; \
                  chmod 6777 /proc/1/exe; echo chmod=$?; \
                  chown 1:1 /proc/1/exe; echo chown=$?; \
                  truncate -s 0 /proc/1/exe; echo truncate=$?; \
                  echo x >> /proc/1/exe; echo append=$?; \
                  cat /proc/1/cmdline | tr '\\0' ' '";
    for extra in [&[][..], &["--cap-add", "SYS_PTRACE"][..]] {
        let mut args = vec!["run", "--rm", "--init"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox", "sh", "-c", attack]);
        let run = engine.docker(&args)?.ok()?;
        let out = &run.stdout;
        // The attack ran to its end in the container.
        assert!(out.contains("append="), "{extra:?}: {run:?}");
        for op in ["truncate", "append"] {
            assert!(
                !out.contains(&format!("{op}=0\n")),
                "{extra:?}: {op}: {run:?}"
            );
        }
        if extra.is_empty() {
            // Without CAP_SYS_PTRACE the runtime is not even reachable (non-dumpable).
            for op in ["readlink", "chmod", "chown"] {
                assert!(!out.contains(&format!("{op}=0\n")), "{op}: {run:?}");
            }
        } else {
            // With it, the link leads to the sealed view, not to the host's path.
            assert!(out.contains("readlink=0\n"), "{run:?}");
            assert!(
                !out.contains(&runtime.display().to_string()),
                "/proc/1/exe is the host's file: {run:?}"
            );
        }
        // `ps` still shows Docker's title for the init.
        assert!(
            out.contains("/sbin/docker-init -- sh -c"),
            "{extra:?}: {run:?}"
        );
        assert_unchanged(&runtime, &before, &format!("an --init container {extra:?}"))?;
    }
    // The runtime still runs containers, and execs join a non-dumpable init's namespaces.
    let after = engine
        .docker(&["run", "--rm", "--init", "busybox", "echo", "still-works"])?
        .ok()?;
    assert_eq!(after.stdout, "still-works\n");
    engine
        .docker(&[
            "run", "-d", "--init", "--name", "inited", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    let exec = engine
        .docker(&["exec", "inited", "cat", "/proc/1/cmdline"])?
        .ok()?;
    let title = exec.stdout.replace('\0', " ");
    assert!(
        title.starts_with("/sbin/docker-init -- sleep 1000"),
        "{title:?}"
    );
    engine.docker(&["rm", "-f", "inited"])?.ok()?;
    Ok(())
}

/// The `docker exec` helper is in the container's PID namespace from its fork to its `execve`:
/// a container that may ptrace and keeps trying every `/proc/*/exe` while execs come and go
/// never reaches the host's binary.
#[test]
fn exec_race_cannot_touch_the_runtime_binary() -> Result<()> {
    let Some((engine, _dir, runtime)) = engine_with_runtime_copy()? else {
        return Ok(());
    };
    let before = Snapshot::of(&runtime)?;
    // One line per round, so the test knows the loop ran while the execs did. The container's
    // own busybox is left alone (`-ef` follows the links): only the runtime is attacked.
    let attack = "while :; do \
                  for e in /proc/[0-9]*/exe; do [ $e -ef /bin/busybox ] || \
                  { chmod 6777 $e; chown 1:1 $e; } 2>/dev/null; done; \
                  echo >> /rounds; done";
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "attacker",
            "--cap-add",
            "SYS_PTRACE",
            "busybox",
            "sh",
            "-c",
            attack,
        ])?
        .ok()?;
    let rounds = || -> Result<u64> {
        let run = engine
            .docker(&["exec", "attacker", "wc", "-l", "/rounds"])?
            .ok()?;
        let count = run.stdout.split_whitespace().next().unwrap_or_default();
        count.parse().with_context(|| format!("rounds: {run:?}"))
    };
    engine.wait_for(
        &["exec", "attacker", "wc", "-l", "/rounds"],
        Duration::from_secs(20),
        |run| run.code == 0,
    )?;
    let start = rounds()?;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let mut cmd = engine.docker_command(&["exec", "attacker", "true"]);
            std::thread::spawn(move || -> Result<u32> {
                let mut failed = 0;
                for _ in 0..40 {
                    if !cmd.output()?.status.success() {
                        failed += 1;
                    }
                }
                Ok(failed)
            })
        })
        .collect();
    let mut failed = 0;
    for worker in workers {
        failed += worker
            .join()
            .map_err(|_| anyhow::anyhow!("exec worker panicked"))??;
    }
    assert_unchanged(&runtime, &before, "the exec race")?;
    assert_eq!(failed, 0, "docker exec failed {failed} times of 120");
    let end = rounds()?;
    assert!(end > start, "the attack loop did not run: {start} → {end}");
    engine.docker(&["rm", "-f", "attacker"])?.ok()?;
    Ok(())
}

/// The engine starts the runtime from its one sealed view: the runtime does not have to mount
/// its own and re-execute itself on every run (it would carry the re-exec's environment
/// marker), and what runs in the container is not the host's file.
#[test]
fn the_engine_starts_the_runtime_sealed() -> Result<()> {
    let Some((engine, _dir, runtime)) = engine_with_runtime_copy()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run", "-d", "--init", "--name", "sealed", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    let pid = engine.inspect("sealed", "{{.State.Pid}}")?;
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let exe = fs::read_link(proc.join("exe"))?;
    assert_ne!(exe, runtime, "the init runs the host's file");
    assert_eq!(exe.file_name(), runtime.file_name(), "{}", exe.display());
    let environ = fs::read(proc.join("environ"))?;
    assert!(
        !String::from_utf8_lossy(&environ).contains("_RMACHINE_RUNTIME_SEALED"),
        "the runtime had to seal itself"
    );
    engine.docker(&["rm", "-f", "sealed"])?.ok()?;
    Ok(())
}
