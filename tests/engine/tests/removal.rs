//! Removing containers: a restarting one only with force, and a `--rm` one whose start fails
//! early is removed and its `run` ends.

use std::time::Duration;

use rmachine_tests_engine::Engine;

#[test]
fn a_restarting_container_is_removed_only_with_force() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "flappy",
            "--restart",
            "always",
            "busybox",
            "sh",
            "-c",
            "exit 3",
        ])?
        .ok()?;
    // After five quick restarts the back-off is seconds long: the state stays `restarting`.
    engine.wait_for(
        &[
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            "flappy",
        ],
        Duration::from_secs(20),
        |r| {
            let mut fields = r.stdout.split_whitespace();
            let count: u32 = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            count >= 5 && fields.next() == Some("restarting")
        },
    )?;
    let rm = engine.docker(&["rm", "flappy"])?;
    assert_ne!(rm.code, 0);
    assert!(
        rm.stderr.contains(
            "cannot remove container \"flappy\": container is restarting: stop the container before removing or force remove"
        ),
        "{}",
        rm.stderr
    );
    engine.docker(&["rm", "-f", "flappy"])?.ok()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    // The pending restart was cancelled: nothing comes back once its delay is over.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    assert!(!engine.log().contains("restart by policy failed"));
    Ok(())
}

/// moby daemon/start.go: a start that fails before the process runs still removes a `--rm`
/// container, so `docker run --rm` (which waits for the removal) ends with the error.
#[test]
fn a_rm_container_whose_start_fails_early_is_removed_and_run_ends() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker_within(
        Duration::from_secs(30),
        &[
            "run",
            "--rm",
            "--name",
            "nouser",
            "-u",
            "nosuchuser",
            "busybox",
            "id",
        ],
    )?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("unable to find user nosuchuser: no matching entries in passwd file"),
        "{}",
        run.stderr
    );
    let left = engine
        .docker(&["ps", "-a", "-q", "--filter", "name=nouser"])?
        .ok()?;
    assert_eq!(left.stdout, "", "the --rm container is gone");
    Ok(())
}
