//! `docker top`: ps argument forms rendered without a ps binary in the container, and the
//! STAT column's foreground-group mark (procps).

use anyhow::Context;
use rmachine_tests_engine::Engine;

#[test]
fn top_renders_ps_argument_forms_without_a_ps_binary() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"])?
        .ok()?;
    let custom = engine.docker(&["top", "busy", "-o", "pid,comm"])?.ok()?;
    let mut lines = custom.stdout.lines();
    let titles: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(titles, ["PID", "COMMAND"]);
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(1), Some(&"sleep"), "{}", custom.stdout);
    assert!(row[0].parse::<u32>().is_ok(), "{}", custom.stdout);

    let aux = engine.docker(&["top", "busy", "aux"])?.ok()?;
    let titles: Vec<&str> = aux
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        titles,
        ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"]
    );
    assert!(aux.stdout.contains("sleep 1000"), "{}", aux.stdout);
    assert!(aux.stdout.lines().nth(1).unwrap_or("").starts_with("root "));

    let ef = engine.docker(&["top", "busy", "-ef"])?.ok()?;
    assert!(ef.stdout.starts_with("UID"), "{}", ef.stdout);
    assert!(ef.stdout.contains("sleep 1000"), "{}", ef.stdout);

    let no_pid = engine.docker(&["top", "busy", "-o", "comm"])?;
    assert_ne!(no_pid.code, 0);
    assert!(
        no_pid
            .stderr
            .contains("Error response from daemon: Couldn't find PID field in ps output"),
        "{}",
        no_pid.stderr
    );
    let bad = engine.docker(&["top", "busy", "-Z"])?;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("Error response from daemon: ps: error: unsupported SysV option"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn top_stat_marks_the_foreground_group_of_a_tty_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-dit", "--name", "term", "busybox", "sh"])?
        .ok()?;
    engine
        .docker(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"])?
        .ok()?;
    let stat_of = |name: &str| -> anyhow::Result<String> {
        let top = engine.docker(&["top", name, "-o", "pid,stat,comm"])?.ok()?;
        let row = top.stdout.lines().nth(1).context("no process")?.to_string();
        Ok(row.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    // The shell leads its session and its group owns the terminal: procps prints `Ss+`.
    assert_eq!(stat_of("term")?, "Ss+");
    // Without a terminal: a session leader, never in a foreground group.
    assert_eq!(stat_of("plain")?, "Ss");
    Ok(())
}
