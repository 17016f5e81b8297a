//! A paused container across an engine crash (daemon/daemon.go `restore`): recorded as
//! paused, and not left frozen.

use std::time::{Duration, Instant};

use rmachine_tests_engine::Engine;

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_paused_container_is_recorded_and_not_left_frozen_by_an_engine_crash() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["run", "-d", "--name", "frozen", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let pid = engine.inspect("frozen", "{{.State.Pid}}")?;
    engine.docker(&["pause", "frozen"])?.ok()?;

    // The record on disk says paused, and so do ps and its status filter.
    let record = std::fs::read_to_string(
        engine
            .data_root()
            .join("containers")
            .join(&id)
            .join("config.v2.json"),
    )?;
    let record: serde_json::Value = serde_json::from_str(&record)?;
    assert_eq!(record["State"]["Paused"], true, "{record}");
    let ps = engine
        .docker(&[
            "ps",
            "--filter",
            "status=paused",
            "--format",
            "{{.Names}} {{.Status}}",
        ])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("frozen Up ") && ps.stdout.trim_end().ends_with("(Paused)"),
        "{}",
        ps.stdout
    );
    let running = engine
        .docker(&["ps", "-q", "--filter", "status=running"])?
        .ok()?;
    assert_eq!(running.stdout, "");

    // The engine dies; the frozen process cannot act on the SIGKILL it was sent meanwhile.
    engine.crash()?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&pid), "a frozen process should outlive its monitor");

    // As dockerd without live-restore: stopped at restart, thawed and gone, and shown so.
    engine.restart()?;
    assert_eq!(
        engine.inspect(
            "frozen",
            "{{.State.Status}} {{.State.Paused}} {{.State.ExitCode}}"
        )?,
        "exited false 255"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&pid) {
        anyhow::ensure!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
    let unpause = engine.docker(&["unpause", "frozen"])?;
    assert_eq!(unpause.code, 1);
    assert!(
        unpause
            .stderr
            .contains(&format!("Container {id} is not paused")),
        "{}",
        unpause.stderr
    );
    // It starts again normally.
    engine.docker(&["start", "frozen"])?.ok()?;
    assert_eq!(engine.inspect("frozen", "{{.State.Status}}")?, "running");
    Ok(())
}
