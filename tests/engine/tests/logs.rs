//! `docker logs` options: `--until` at the exact time of a line, `--details` with the chosen
//! log attributes (daemon/server/httputils/logstream).

use anyhow::Context;
use rmachine_tests_engine::Engine;

#[test]
fn logs_until_includes_a_line_stamped_exactly_then() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "stamped",
            "busybox",
            "sh",
            "-c",
            "echo one; sleep 1; echo two",
        ])?
        .ok()?;
    let stamped = engine.docker(&["logs", "-t", "stamped"])?.ok()?;
    let first = stamped.stdout.lines().next().unwrap_or("");
    let (time, line) = first
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("no timestamp: {}", stamped.stdout))?;
    assert_eq!(line, "one");
    let until = engine.docker(&["logs", "--until", time, "stamped"])?.ok()?;
    assert_eq!(until.stdout, "one\n");
    Ok(())
}

#[test]
fn logs_details_prints_the_chosen_attributes_before_each_line() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "detailed",
            "--label",
            "team=blue green",
            "--label",
            "other=x",
            "-e",
            "APP=1",
            "--log-opt",
            "labels=team",
            "--log-opt",
            "env=APP,MISSING",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ])?
        .ok()?;
    let details = engine.docker(&["logs", "--details", "detailed"])?.ok()?;
    assert_eq!(details.stdout, "APP=1,team=blue+green out\n");
    assert_eq!(details.stderr, "APP=1,team=blue+green err\n");
    let stamped = engine
        .docker(&["logs", "--details", "-t", "detailed"])?
        .ok()?;
    let (time, rest) = stamped.stdout.split_once(' ').context("no timestamp")?;
    assert!(time.ends_with('Z'), "{}", stamped.stdout);
    assert_eq!(rest, "APP=1,team=blue+green out\n");
    // Without --details nothing changes.
    let plain = engine.docker(&["logs", "detailed"])?.ok()?;
    assert_eq!(plain.stdout, "out\n");

    // Without attributes, --details still puts a space before each line.
    engine
        .docker(&["run", "--name", "bare", "busybox", "echo", "hi"])?
        .ok()?;
    let bare = engine.docker(&["logs", "--details", "bare"])?.ok()?;
    assert_eq!(bare.stdout, " hi\n");

    // An option the json-file driver does not know is refused at create.
    let bad = engine.docker(&["create", "--log-opt", "colour=red", "busybox"])?;
    assert_eq!(bad.code, 1);
    assert_eq!(
        bad.stderr.trim_end(),
        "Error response from daemon: unknown log opt 'colour' for json-file log driver"
    );

    // The `none` driver keeps nothing; drivers this engine lacks are refused as dockerd refuses
    // one it was built without (daemon/logger/factory.go).
    let quiet = engine
        .docker(&[
            "run",
            "--name",
            "quiet",
            "--log-driver",
            "none",
            "busybox",
            "echo",
            "hi",
        ])?
        .ok()?;
    assert_eq!(quiet.stdout, "hi\n");
    let logs = engine.docker(&["logs", "quiet"])?;
    assert_eq!(logs.code, 1);
    assert_eq!(
        logs.stderr.trim_end(),
        "Error response from daemon: configured logging driver does not support reading"
    );
    let syslog = engine.docker(&["create", "--log-driver", "syslog", "busybox"])?;
    assert_eq!(
        syslog.stderr.trim_end(),
        "Error response from daemon: logger: no log driver named 'syslog' is registered"
    );
    assert_eq!(
        engine.inspect("bare", "{{json .HostConfig.LogConfig}}")?,
        r#"{"Type":"json-file","Config":{}}"#
    );
    Ok(())
}
