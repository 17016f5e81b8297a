//! `docker exec --privileged`: every capability for the exec'd process.

use rmachine_tests_engine::{cap_eff, Engine};

#[test]
fn exec_privileged_gets_every_capability() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "capped", "busybox", "sleep", "1000"])?
        .ok()?;
    let plain = engine
        .docker(&["exec", "capped", "grep", "CapEff", "/proc/self/status"])?
        .ok()?;
    assert_eq!(cap_eff(&plain.stdout), "00000000a80425fb");
    let privileged = engine
        .docker(&[
            "exec",
            "--privileged",
            "capped",
            "grep",
            "CapEff",
            "/proc/self/status",
        ])?
        .ok()?;
    // Every capability this kernel knows: the bounding set of a root process outside.
    let host = std::fs::read_to_string("/proc/self/status")?;
    let all = host
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap_or("")
        .trim()
        .to_string();
    assert_eq!(cap_eff(&privileged.stdout), all);
    // The container itself keeps Docker's defaults.
    let after = engine
        .docker(&["exec", "capped", "grep", "CapEff", "/proc/1/status"])?
        .ok()?;
    assert_eq!(cap_eff(&after.stdout), "00000000a80425fb");
    Ok(())
}
