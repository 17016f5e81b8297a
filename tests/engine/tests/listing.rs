//! `docker ps` options and filters, and `docker logs` time windows, timestamps and tails.

use std::time::Duration;

use rmachine_tests_engine::Engine;

fn names(engine: &Engine, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut full = vec!["ps"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "{{.Names}}"]);
    Ok(engine
        .docker(&full)?
        .ok()?
        .stdout
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn ps_filters_limits_and_sizes() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&[
        "run", "--name", "failed", "-l", "tier=db", "busybox", "sh", "-c", "exit 3",
    ])?;
    engine
        .docker(&["run", "--name", "ok", "-l", "tier=web", "busybox", "true"])?
        .ok()?;
    engine
        .docker(&["create", "--name", "fresh", "busybox"])?
        .ok()?;
    let up = engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "up",
            "-l",
            "tier=web",
            "busybox",
            "sh",
            "-c",
            "head -c 5000 /dev/zero > /blob; exec sleep 1000",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();

    assert_eq!(names(&engine, &[])?, vec!["up"]);
    assert_eq!(
        names(&engine, &["-a"])?,
        vec!["up", "fresh", "ok", "failed"]
    );
    assert_eq!(names(&engine, &["-n", "2"])?, vec!["up", "fresh"]);
    assert_eq!(names(&engine, &["-l"])?, vec!["up"]);
    assert_eq!(
        names(&engine, &["-a", "--filter", "status=exited"])?,
        vec!["ok", "failed"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", "status=created"])?,
        vec!["fresh"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", "exited=3"])?,
        vec!["failed"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", "label=tier=web"])?,
        vec!["up", "ok"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", "label=tier"])?,
        vec!["up", "ok", "failed"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", "name=fre"])?,
        vec!["fresh"]
    );
    assert_eq!(
        names(&engine, &["-a", "--filter", &format!("id={}", &up[..8])])?,
        vec!["up"]
    );
    assert_eq!(
        names(&engine, &["--filter", "ancestor=busybox"])?,
        vec!["up"]
    );
    assert_eq!(
        names(&engine, &["--filter", "ancestor=busybox:latest"])?,
        vec!["up"]
    );
    let image_id = engine
        .docker(&["image", "inspect", "-f", "{{.Id}}", "busybox"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let short = &image_id["sha256:".len().."sha256:".len() + 12];
    assert_eq!(
        names(&engine, &["--filter", &format!("ancestor={short}")])?,
        vec!["up"]
    );
    assert!(names(&engine, &["-a", "--filter", "ancestor=nosuch"])?.is_empty());
    let quiet = engine.docker(&["ps", "-q"])?.ok()?;
    assert_eq!(quiet.stdout, format!("{}\n", &up[..12]));
    let no_trunc = engine.docker(&["ps", "-q", "--no-trunc"])?.ok()?;
    assert_eq!(no_trunc.stdout, format!("{up}\n"));

    engine.wait_for(
        &["ps", "-s", "--format", "{{.Names}} {{.Size}}"],
        Duration::from_secs(5),
        |r| r.stdout.starts_with("up 5kB (virtual "),
    )?;
    let size_rw = engine
        .docker(&["inspect", "-s", "-f", "{{.SizeRw}}", "up"])?
        .ok()?;
    assert_eq!(size_rw.stdout.trim(), "5000");
    Ok(())
}

#[test]
fn logs_select_by_time_tail_and_show_timestamps() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "talker",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two; sleep 2; echo three; echo four >&2",
        ])?
        .ok()?;

    let tail = engine.docker(&["logs", "--tail", "2", "talker"])?.ok()?;
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("three\n", "four\n")
    );

    let stamped = engine.docker(&["logs", "-t", "talker"])?.ok()?;
    let lines: Vec<&str> = stamped.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", stamped.stdout);
    for line in &lines {
        let (stamp, _) = line.split_once(' ').unwrap_or_default();
        // RFC 3339 with nanoseconds, in UTC: 2024-01-02T03:04:05.123456789Z.
        assert_eq!(stamp.len(), 30, "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{line}"
        );
    }
    assert!(lines[0].ends_with(" one"), "{}", lines[0]);

    // The third line came two seconds after the first: a window between them splits the log.
    let first = lines[0].split_once(' ').unwrap_or_default().0;
    let third = lines[2].split_once(' ').unwrap_or_default().0;
    let middle = {
        // One second after the first line, as RFC 3339 (what users type).
        let secs: u32 = first[17..19].parse()?;
        let minute_rollover = secs + 1 >= 60;
        if minute_rollover {
            // Rare: keep the test simple by using the third line's own time instead.
            third.to_string()
        } else {
            format!("{}{:02}{}", &first[..17], secs + 1, &first[19..])
        }
    };
    let since = engine
        .docker(&["logs", "--since", &middle, "talker"])?
        .ok()?;
    assert_eq!(since.stdout, "three\n");
    let until = engine
        .docker(&["logs", "--until", &middle, "talker"])?
        .ok()?;
    assert_eq!(until.stdout, "one\ntwo\n");
    let relative = engine.docker(&["logs", "--since", "10m", "talker"])?.ok()?;
    assert_eq!(relative.stdout, "one\ntwo\nthree\n");

    // Following a stopped container returns at once.
    let started = std::time::Instant::now();
    let follow = engine.docker(&["logs", "-f", "talker"])?.ok()?;
    assert_eq!(follow.stdout, "one\ntwo\nthree\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}
