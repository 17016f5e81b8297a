//! `docker events --since 0` replays the backlog the engine keeps.

use std::time::Duration;

use rmachine_tests_engine::Engine;

/// `docker events --since 0` replays the events the engine kept, as dockerd does.
#[test]
fn events_since_zero_replays_the_backlog() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&["run", "--name", "gone", "busybox", "sh", "-c", "exit 3"])?;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 1;
    let events = engine.docker_within(
        Duration::from_secs(20),
        &[
            "events",
            "--since",
            "0",
            "--until",
            &until.to_string(),
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ],
    )?;
    assert_eq!(events.stdout, "gone 3\n", "{events:?}");
    Ok(())
}
