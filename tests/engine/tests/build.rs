//! `docker build` through the classic builder (`DOCKER_BUILDKIT=0`): the real CLI against the
//! engine, with busybox as the base image.

use anyhow::Context as _;
use std::fs;
use std::path::Path;

use rmachine_tests_engine::{Engine, Run};

/// Writes `files` (path, content) into a fresh context directory.
fn context(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (path, content) in files {
        let p = dir.path().join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(p, content)?;
    }
    Ok(dir)
}

/// The `created_by` lines of an image's `docker history`, oldest first.
fn history(engine: &Engine, image: &str) -> anyhow::Result<String> {
    let run = engine
        .docker(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", image])?
        .ok()?;
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.reverse();
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

fn build(engine: &Engine, dir: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let d = dir.to_string_lossy().into_owned();
    all.push(&d);
    Ok(engine
        .docker_command(&all)
        .env("DOCKER_BUILDKIT", "0")
        .output()?
        .into())
}

/// The lines of the build output that tell which steps were cached.
fn step_kinds(stdout: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        if let Some(step) = line.strip_prefix("Step ") {
            out.push(step.to_string());
        } else if line == " ---> Using cache" {
            out.push("cache".into());
        } else if line.starts_with(" ---> Running in ") {
            out.push("run".into());
        }
    }
    out
}

#[test]
fn a_three_step_build_runs_tags_and_is_cached() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN echo hello from run > /greeting && echo done\nCOPY app.txt /app/\nCMD [\"cat\", \"/greeting\", \"/app/app.txt\"]\n",
        ),
        ("app.txt", "the app\n"),
    ])?;
    let run = build(
        &engine,
        ctx.path(),
        &["-t", "user/image:tag", "-t", "second"],
    )?
    .ok()?;
    let out = &run.stdout;
    assert!(out.contains("Step 1/4 : FROM busybox\n"), "{out}");
    assert!(
        out.contains("Step 2/4 : RUN echo hello from run > /greeting && echo done\n"),
        "{out}"
    );
    assert!(out.contains("\ndone\n"), "{out}");
    assert!(
        out.contains(" ---> Removed intermediate container "),
        "{out}"
    );
    assert!(
        out.contains("Step 4/4 : CMD [\"cat\", \"/greeting\", \"/app/app.txt\"]\n"),
        "{out}"
    );
    assert!(out.contains("Successfully built "), "{out}");
    assert!(
        out.contains("Successfully tagged user/image:tag\n"),
        "{out}"
    );
    assert!(out.contains("Successfully tagged second:latest\n"), "{out}");
    assert_eq!(
        step_kinds(out),
        vec![
            "1/4 : FROM busybox",
            "2/4 : RUN echo hello from run > /greeting && echo done",
            "run",
            "3/4 : COPY app.txt /app/",
            "4/4 : CMD [\"cat\", \"/greeting\", \"/app/app.txt\"]"
        ]
    );
    let ran = engine.docker(&["run", "--rm", "user/image:tag"])?.ok()?;
    assert_eq!(ran.stdout, "hello from run\nthe app\n");
    // Build containers are gone.
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout.trim(), "");
    let steps = history(&engine, "user/image:tag")?;
    let ours: Vec<&str> = steps.lines().rev().take(3).collect();
    assert_eq!(
        ours[2], "/bin/sh -c echo hello from run > /greeting && echo done",
        "{steps}"
    );
    assert!(
        ours[1].starts_with("/bin/sh -c #(nop) COPY file:") && ours[1].ends_with(" in /app/ "),
        "{steps}"
    );
    assert_eq!(
        ours[0], "/bin/sh -c #(nop)  CMD [\"cat\" \"/greeting\" \"/app/app.txt\"]",
        "{steps}"
    );

    // The same build again: every step from the cache, the same image.
    let first_id = engine.inspect("user/image:tag", "{{.Id}}")?;
    let again = build(&engine, ctx.path(), &["-t", "user/image:tag"])?.ok()?;
    assert_eq!(
        step_kinds(&again.stdout),
        vec![
            "1/4 : FROM busybox",
            "2/4 : RUN echo hello from run > /greeting && echo done",
            "cache",
            "3/4 : COPY app.txt /app/",
            "cache",
            "4/4 : CMD [\"cat\", \"/greeting\", \"/app/app.txt\"]",
            "cache"
        ],
        "{}",
        again.stdout
    );
    assert_eq!(engine.inspect("user/image:tag", "{{.Id}}")?, first_id);

    // A changed COPY source: the RUN stays cached, the COPY and what follows run again.
    fs::write(ctx.path().join("app.txt"), "changed\n")?;
    let changed = build(&engine, ctx.path(), &["-t", "user/image:tag"])?.ok()?;
    assert_eq!(
        step_kinds(&changed.stdout),
        vec![
            "1/4 : FROM busybox",
            "2/4 : RUN echo hello from run > /greeting && echo done",
            "cache",
            "3/4 : COPY app.txt /app/",
            "4/4 : CMD [\"cat\", \"/greeting\", \"/app/app.txt\"]"
        ],
        "{}",
        changed.stdout
    );
    let ran = engine.docker(&["run", "--rm", "user/image:tag"])?.ok()?;
    assert_eq!(ran.stdout, "hello from run\nchanged\n");
    Ok(())
}

#[test]
fn a_failing_run_shows_its_output_and_dockers_error_and_tags_nothing() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo before the failure && exit 3\nCMD [\"true\"]\n",
    )])?;
    let run = build(&engine, ctx.path(), &["-t", "broken"])?;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains("before the failure\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(
            "The command '/bin/sh -c echo before the failure && exit 3' returned a non-zero code: 3"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("Step 3/3"), "{}", run.stdout);
    assert!(engine.docker(&["image", "inspect", "broken"])?.code != 0);
    // As dockerd without --force-rm, the failed step's container stays for inspection.
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout.lines().count(), 1, "{}", ps.stdout);
    let forced = build(&engine, ctx.path(), &["--force-rm", "-t", "broken"])?;
    assert_eq!(forced.code, 3);
    assert!(
        forced
            .stdout
            .contains(" ---> Removed intermediate container "),
        "{}",
        forced.stdout
    );
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout.lines().count(), 1, "{}", ps.stdout);
    Ok(())
}

#[test]
fn dockerfile_errors_are_mobys() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let cases: &[(&str, &str)] = &[
        ("FROM busybox\nFOO bar\n", "dockerfile parse error on line 2: unknown instruction: FOO"),
        ("FROM busybox\nCOPY missing.txt /x\n", "COPY failed: file not found in build context or excluded by .dockerignore: stat missing.txt: file does not exist"),
        ("FROM busybox\nCOPY ../outside /x\n", "forbidden path outside the build context: ../outside ()"),
        ("FROM busybox\nCOPY --from=busybox ../outside /x\n", "forbidden path outside the build context: ../outside ()"),
        // A FROM image the engine lacks is pulled, as dockerd's builder does.
        ("FROM 127.0.0.1:9/nosuchimage\n", "cannot reach registry 127.0.0.1:9"),
        ("FROM busybox\nCOPY --from=nostage /a /b\n", "invalid from flag value nostage"),
        ("FROM busybox\nRUN --mount=type=cache,target=/x true\n", "the --mount option requires BuildKit"),
        ("FROM busybox\nRUN <<EOF\n#!/usr/bin/python3\nprint(1)\nEOF\n", "a RUN heredoc starting with #! (a script for another interpreter) is not supported"),
        ("FROM busybox\nCOPY http://127.0.0.1:9/x /x\n", "COPY failed: source can't be a URL for COPY"),
    ];
    for (dockerfile, message) in cases {
        let ctx = context(&[("Dockerfile", dockerfile)])?;
        let run = build(&engine, ctx.path(), &[])?;
        assert_eq!(run.code, 1, "{dockerfile}: {run:?}");
        assert!(run.stderr.contains(message), "{dockerfile}: {}", run.stderr);
    }
    // A context without a Dockerfile, as a raw tar (the CLI checks directories itself).
    let ctx = context(&[("other", "FROM busybox\n")])?;
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .args(["-cf", "-", "."])
        .output()?;
    let mut cmd = engine.docker_command(&["build", "-"]);
    cmd.env("DOCKER_BUILDKIT", "0");
    let run = rmachine_tests_engine::feed(cmd, &tar.stdout)?;
    assert!(
        run.stderr
            .contains("Cannot locate specified Dockerfile: Dockerfile"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn multi_stage_copy_from_and_target() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "ARG BASE=busybox\nFROM ${BASE} AS builder\nRUN mkdir /out && echo built > /out/artifact && echo gone > /scratch\n\
         FROM busybox\nCOPY --from=builder /out/artifact /artifact\nCOPY --from=0 /out /out2\nCMD cat /artifact /out2/artifact\n",
    )])?;
    let run = build(&engine, ctx.path(), &["-t", "multi"])?.ok()?;
    assert!(
        run.stdout.contains("Step 1/7 : ARG BASE=busybox\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Step 2/7 : FROM ${BASE} AS builder\n"),
        "{}",
        run.stdout
    );
    let ran = engine.docker(&["run", "--rm", "multi"])?.ok()?;
    assert_eq!(ran.stdout, "built\nbuilt\n");
    let scratch = engine.docker(&["run", "--rm", "multi", "ls", "/scratch"])?;
    assert_ne!(scratch.code, 0, "the first stage's other files stay out");

    let target = build(&engine, ctx.path(), &["--target", "builder", "-t", "first"])?.ok()?;
    assert!(
        target.stdout.contains("Step 3/3 : RUN"),
        "{}",
        target.stdout
    );
    let ran = engine
        .docker(&["run", "--rm", "first", "cat", "/scratch"])?
        .ok()?;
    assert_eq!(ran.stdout, "gone\n");
    let unknown = build(&engine, ctx.path(), &["--target", "nostage"])?;
    assert_ne!(unknown.code, 0);
    assert!(
        unknown
            .stderr
            .contains("failed to reach build target nostage in Dockerfile"),
        "{}",
        unknown.stderr
    );
    Ok(())
}

#[test]
fn dockerignore_keeps_files_out_of_the_context() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY . /ctx/\nCMD find /ctx -type f\n",
        ),
        (
            ".dockerignore",
            "*.secret\nlogs\n!logs/keep.log\n**/*.tmp\n",
        ),
        ("a.secret", "x"),
        ("app/main.txt", "x"),
        ("app/deep/x.tmp", "x"),
        ("logs/drop.log", "x"),
        ("logs/keep.log", "x"),
    ])?;
    // Through the CLI (which filters too) and as a raw tar on stdin (filtered here only).
    build(&engine, ctx.path(), &["-t", "ignored"])?.ok()?;
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .args(["-cf", "-", "."])
        .output()?;
    let mut cmd = engine.docker_command(&["build", "-t", "ignored-raw", "-"]);
    cmd.env("DOCKER_BUILDKIT", "0");
    rmachine_tests_engine::feed(cmd, &tar.stdout)?.ok()?;
    for image in ["ignored", "ignored-raw"] {
        let ran = engine.docker(&["run", "--rm", image])?.ok()?;
        let mut files: Vec<&str> = ran.stdout.lines().collect();
        files.sort();
        assert_eq!(
            files,
            vec![
                "/ctx/.dockerignore",
                "/ctx/Dockerfile",
                "/ctx/app/main.txt",
                "/ctx/logs/keep.log"
            ],
            "{image}"
        );
    }
    Ok(())
}

#[test]
fn config_instructions_make_the_image_config_and_history() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nMAINTAINER Jane Doe <jane@example.com>\nARG VERSION=1.2\n\
         ENV APP_HOME=/srv/app GREETING=\"hello world\"\nENV FIRST=1 SECOND=${FIRST:-unset}\nLABEL version=$VERSION \"com.example.vendor\"=\"ACME\"\n\
         WORKDIR ${APP_HOME}\nWORKDIR sub\nEXPOSE 80 53/udp\nUSER nobody\nVOLUME /data\nSTOPSIGNAL SIGUSR1\n\
         HEALTHCHECK --interval=5s --retries=2 CMD true\nSHELL [\"/bin/sh\", \"-ec\"]\nONBUILD RUN echo triggered\n\
         ENTRYPOINT [\"/bin/echo\"]\nCMD [\"$GREETING\"]\n",
    )])?;
    build(
        &engine,
        ctx.path(),
        &["-t", "configured", "--label", "extra=yes"],
    )?
    .ok()?;
    let f = |format: &str| engine.inspect("configured", format);
    assert_eq!(f("{{.Author}}")?, "Jane Doe <jane@example.com>");
    assert!(f("{{json .Config.Env}}")?.contains("\"GREETING=hello world\""));
    // Words of one ENV see the environment from before it, as in moby.
    assert!(f("{{json .Config.Env}}")?.contains("\"SECOND=unset\""));
    assert_eq!(
        f("{{json .Config.Labels}}")?,
        r#"{"com.example.vendor":"ACME","extra":"yes","version":"1.2"}"#
    );
    assert_eq!(f("{{.Config.WorkingDir}}")?, "/srv/app/sub");
    assert_eq!(
        f("{{json .Config.ExposedPorts}}")?,
        r#"{"53/udp":{},"80/tcp":{}}"#
    );
    assert_eq!(f("{{.Config.User}}")?, "nobody");
    assert_eq!(f("{{json .Config.Volumes}}")?, r#"{"/data":{}}"#);
    assert_eq!(f("{{.Config.StopSignal}}")?, "SIGUSR1");
    assert_eq!(
        f("{{json .Config.Healthcheck.Test}}")?,
        r#"["CMD-SHELL","true"]"#
    );
    assert_eq!(f("{{json .Config.Shell}}")?, r#"["/bin/sh","-ec"]"#);
    assert_eq!(f("{{json .Config.OnBuild}}")?, r#"["RUN echo triggered"]"#);
    assert_eq!(f("{{json .Config.Entrypoint}}")?, r#"["/bin/echo"]"#);
    assert_eq!(f("{{json .Config.Cmd}}")?, r#"["$GREETING"]"#);
    let ran = engine.docker(&["run", "--rm", "configured"])?.ok()?;
    assert_eq!(ran.stdout, "$GREETING\n");
    let history = history(&engine, "configured")?;
    assert!(
        history.contains("/bin/sh -ec #(nop)  CMD [\"$GREETING\"]"),
        "{}",
        history
    );
    assert!(
        history.contains("/bin/sh -c #(nop)  MAINTAINER Jane Doe <jane@example.com>"),
        "{history}"
    );
    // The WORKDIR directory exists in the image, created by the build.
    let ls = engine
        .docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "ls",
            "configured",
            "-d",
            "/srv/app/sub",
        ])?
        .ok()?;
    assert_eq!(ls.stdout, "/srv/app/sub\n");

    // A child image runs the ONBUILD trigger after its FROM (a parent without VOLUME: the
    // engine has no anonymous volumes for the trigger's RUN container yet).
    let parent = context(&[("Dockerfile", "FROM busybox\nONBUILD RUN echo triggered\n")])?;
    build(&engine, parent.path(), &["-t", "parent"])?.ok()?;
    let child = context(&[("Dockerfile", "FROM parent\n")])?;
    let run = build(&engine, child.path(), &["-t", "child"])?.ok()?;
    assert!(
        run.stdout.contains("# Executing 1 build trigger\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\ntriggered\n"), "{}", run.stdout);
    assert_eq!(engine.inspect("child", "{{json .Config.OnBuild}}")?, "null");
    Ok(())
}

#[test]
fn build_args_quiet_iidfile_and_stdin_dockerfile() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nARG WHO=nobody\nRUN echo \"hi $WHO\" > /who && echo \"proxy $HTTP_PROXY\"\nCMD cat /who\n",
    )])?;
    let run = build(
        &engine,
        ctx.path(),
        &[
            "--build-arg",
            "WHO=you",
            "--build-arg",
            "UNUSED=1",
            "-t",
            "args",
        ],
    )?
    .ok()?;
    assert!(
        run.stdout
            .contains("[Warning] One or more build-args [UNUSED] were not consumed\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        engine.docker(&["run", "--rm", "args"])?.ok()?.stdout,
        "hi you\n"
    );
    let history = history(&engine, "args")?;
    assert!(
        history.contains("|1 WHO=you /bin/sh -c echo \"hi $WHO\" > /who"),
        "{history}"
    );

    // --iidfile takes the id from the stream's aux message.
    let aux_iid = ctx.path().join("aux-iid");
    build(
        &engine,
        ctx.path(),
        &["-t", "args", "--iidfile", &aux_iid.to_string_lossy()],
    )?
    .ok()?;
    assert_eq!(
        fs::read_to_string(&aux_iid)?,
        engine.inspect("args", "{{.Id}}")?
    );
    let iid = ctx.path().join("iid");
    let quiet = build(
        &engine,
        ctx.path(),
        &["-q", "--iidfile", &iid.to_string_lossy()],
    )?
    .ok()?;
    let id = fs::read_to_string(&iid)?;
    assert!(id.starts_with("sha256:") && id.trim().len() == 71, "{id}");
    assert_eq!(quiet.stdout.trim(), id.trim());

    // `-f -`: the Dockerfile from stdin, the context from the directory.
    let mut cmd = engine.docker_command(&[
        "build",
        "-f",
        "-",
        "-t",
        "stdin-df",
        &ctx.path().to_string_lossy(),
    ]);
    cmd.env("DOCKER_BUILDKIT", "0");
    rmachine_tests_engine::feed(cmd, b"FROM busybox\nCMD [\"echo\", \"from stdin\"]\n")?.ok()?;
    assert_eq!(
        engine.docker(&["run", "--rm", "stdin-df"])?.ok()?.stdout,
        "from stdin\n"
    );
    Ok(())
}

#[test]
fn the_cache_survives_an_engine_restart_and_no_cache_skips_it() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nENV A=1\nRUN echo ran\nCOPY f /f\n",
        ),
        ("f", "content"),
    ])?;
    build(&engine, ctx.path(), &["-t", "cached"])?.ok()?;
    engine.restart()?;
    let again = build(&engine, ctx.path(), &["-t", "cached"])?.ok()?;
    assert_eq!(
        again.stdout.matches(" ---> Using cache").count(),
        3,
        "{}",
        again.stdout
    );
    let fresh = build(&engine, ctx.path(), &["--no-cache", "-t", "cached"])?.ok()?;
    assert_eq!(
        fresh.stdout.matches(" ---> Using cache").count(),
        0,
        "{}",
        fresh.stdout
    );
    assert!(fresh.stdout.contains("\nran\n"), "{}", fresh.stdout);
    // `docker system df` counts the cached steps; `builder prune` forgets them, naming each.
    let build_cache_total = || -> anyhow::Result<String> {
        let df = engine.docker(&["system", "df"])?.ok()?;
        let line = df
            .stdout
            .lines()
            .find(|l| l.starts_with("Build Cache"))
            .with_context(|| format!("no Build Cache line in {}", df.stdout))?;
        Ok(line
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string())
    };
    // Three steps, and those the --no-cache build recorded over new parents.
    let total: usize = build_cache_total()?.parse()?;
    assert!(total >= 3, "{total}");
    // `docker system prune --filter until=` forwards the filter to every prune, the build
    // cache's too, which selects by a record's age: the entry recorded two hours ago goes,
    // the younger ones (and a young network) stay.
    engine.docker(&["network", "create", "young-net"])?.ok()?;
    let cache_dir = engine.data_root().join("builder").join("cache");
    let mut keys: Vec<String> = std::fs::read_dir(&cache_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 64)
        .collect();
    keys.sort();
    let old = keys.first().context("no cache entry")?.clone();
    std::fs::File::options()
        .write(true)
        .open(cache_dir.join(&old))?
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))?;
    let old_gone = engine
        .docker(&["system", "prune", "-f", "--filter", "until=1h"])?
        .ok()?;
    assert!(
        old_gone
            .stdout
            .contains(&format!("Deleted build cache objects:\n{old}\n")),
        "{}",
        old_gone.stdout
    );
    assert_eq!(build_cache_total()?, (total - 1).to_string());
    engine.docker(&["network", "inspect", "young-net"])?.ok()?;
    let young = engine
        .docker(&["builder", "prune", "-f", "--filter", "unused-for=1h"])?
        .ok()?;
    assert_eq!(
        young.stdout.lines().filter(|l| l.len() == 64).count(),
        0,
        "{}",
        young.stdout
    );
    assert_eq!(build_cache_total()?, (total - 1).to_string());
    let unknown = engine.docker(&["builder", "prune", "-f", "--filter", "dangling=true"])?;
    assert_ne!(unknown.code, 0, "{unknown:?}");
    assert!(
        unknown.stderr.contains("invalid filter 'dangling'"),
        "{}",
        unknown.stderr
    );
    let prune = engine.docker(&["builder", "prune", "-f"])?.ok()?;
    assert!(
        prune.stdout.starts_with("Deleted build cache objects:\n"),
        "{}",
        prune.stdout
    );
    assert_eq!(
        prune.stdout.lines().filter(|l| l.len() == 64).count(),
        total - 1,
        "{}",
        prune.stdout
    );
    assert!(
        prune.stdout.contains("Total reclaimed space: 0B"),
        "{}",
        prune.stdout
    );
    assert_eq!(build_cache_total()?, "0");
    let after = build(&engine, ctx.path(), &["-t", "cached"])?.ok()?;
    assert_eq!(
        after.stdout.matches(" ---> Using cache").count(),
        0,
        "{}",
        after.stdout
    );
    Ok(())
}

#[test]
fn an_interrupted_build_removes_its_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo started && sleep 60\n")])?;
    let mut cmd =
        engine.docker_command(&["build", "-t", "interrupted", &ctx.path().to_string_lossy()]);
    cmd.env("DOCKER_BUILDKIT", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let pid = engine.pid().context("engine pid")?;
    let mounts_under_data_root = || -> anyhow::Result<Vec<String>> {
        let root = engine.data_root().to_string_lossy().into_owned();
        Ok(std::fs::read_to_string(format!("/proc/{pid}/mounts"))?
            .lines()
            .filter(|l| l.contains(&root))
            .map(str::to_string)
            .collect())
    };
    let before = mounts_under_data_root()?;
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Wait until the RUN step's container runs, then interrupt the client as Ctrl-C does.
    for line in lines.by_ref() {
        if line? == "started" {
            break;
        }
    }
    assert_eq!(
        engine.docker(&["ps", "-q"])?.ok()?.stdout.lines().count(),
        1
    );
    let during = mounts_under_data_root()?;
    assert!(during.len() > before.len(), "{during:?}");
    nix_kill(child.id())?;
    let _ = child.wait();
    engine.wait_for(&["ps", "-aq"], std::time::Duration::from_secs(15), |r| {
        r.code == 0 && r.stdout.trim().is_empty()
    })?;
    assert!(engine.docker(&["image", "inspect", "interrupted"])?.code != 0);
    // The build container's root filesystem and mounts went with it.
    assert_eq!(mounts_under_data_root()?, before);
    Ok(())
}

fn nix_kill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill failed");
    Ok(())
}

#[test]
fn copy_and_add_follow_dockers_rules() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nWORKDIR /app\nCOPY *.txt ./\nCOPY dir /copied\nCOPY --chown=1:2 --chmod=600 a.txt /owned\n\
             ADD archive.tar.gz /unpacked/\nADD plain.tar /plain/\nCOPY archive.tar.gz /kept/\n\
             CMD find /app /copied /owned /unpacked /plain /kept | sort && stat -c '%u:%g %a' /owned\n",
        ),
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("c.md", "c"),
        ("dir/sub/file", "f"),
    ])?;
    // A gzip and a plain tar, each with one file.
    let src = tempfile::tempdir()?;
    fs::write(src.path().join("inside"), "inside")?;
    for (name, flags) in [("archive.tar.gz", "-czf"), ("plain.tar", "-cf")] {
        let status = std::process::Command::new("tar")
            .arg(flags)
            .arg(ctx.path().join(name))
            .arg("-C")
            .arg(src.path())
            .arg("inside")
            .status()?;
        anyhow::ensure!(status.success());
    }
    build(&engine, ctx.path(), &["-t", "copies"])?.ok()?;
    let ran = engine.docker(&["run", "--rm", "copies"])?.ok()?;
    assert_eq!(
        ran.stdout,
        "/app\n/app/a.txt\n/app/b.txt\n/copied\n/copied/sub\n/copied/sub/file\n/kept\n\
         /kept/archive.tar.gz\n/owned\n/plain\n/plain/inside\n/unpacked\n/unpacked/inside\n1:2 600\n"
    );
    // Two sources need a directory destination.
    let bad = context(&[
        ("Dockerfile", "FROM busybox\nCOPY a b /notadir\n"),
        ("a", ""),
        ("b", ""),
    ])?;
    let run = build(&engine, bad.path(), &[])?;
    assert!(
        run.stderr.contains("When using COPY with more than one source file, the destination must be a directory and end with a /"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn the_tutorials_static_site_image_builds_and_serves_its_files() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Docker's "static website" tutorial, on the local busybox (httpd applet) base.
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nMAINTAINER Docker Education Team <education@docker.com>\n\
             RUN mkdir -p /www && echo 'apt-get stand-in' > /www/setup.log\n\
             COPY site/ /www/\nEXPOSE 80\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
        ),
        ("site/index.html", "<h1>Hello from the static site</h1>\n"),
    ])?;
    let run = build(&engine, ctx.path(), &["-t", "static-site"])?.ok()?;
    assert!(
        run.stdout.contains("Step 3/6 : RUN mkdir -p /www"),
        "{}",
        run.stdout
    );
    let id = engine
        .docker(&["run", "-d", "static-site"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let fetched = engine
        .wait_for(
            &[
                "exec",
                &id,
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1/index.html",
            ],
            std::time::Duration::from_secs(10),
            |r| r.code == 0,
        )?
        .stdout;
    assert_eq!(fetched, "<h1>Hello from the static site</h1>\n");
    engine.docker(&["rm", "-f", &id])?.ok()?;
    Ok(())
}

#[test]
fn docker_py_images_build() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let Some(mut python) = rmachine_tests_engine::docker_py() else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo from docker-py > /made\nCMD [\"cat\", \"/made\"]\n",
    )])?;
    let script = r#"
import sys, docker
client = docker.DockerClient(base_url="unix://" + sys.argv[1])
image, logs = client.images.build(path=sys.argv[2], tag="pybuilt:1", rm=True)
print(",".join(image.tags))
print("".join(chunk.get("stream", "") for chunk in logs))
"#;
    let out = python
        .args(["-c", script])
        .arg(&engine.socket)
        .arg(ctx.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("pybuilt:1\n"), "{stdout}");
    assert!(
        stdout.contains("Step 2/3 : RUN echo from docker-py > /made\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Successfully tagged pybuilt:1\n"),
        "{stdout}"
    );
    assert_eq!(
        engine.docker(&["run", "--rm", "pybuilt:1"])?.ok()?.stdout,
        "from docker-py\n"
    );
    Ok(())
}

#[test]
fn run_steps_get_the_builds_network_hosts_and_limits() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN ls /sys/class/net > /nets && grep -c myhost /etc/hosts > /hosts && \
         (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max) > /mem && \
         grep Cpus_allowed_list /proc/self/status | tr -d '\\t' > /cpus\n\
         CMD cat /nets /hosts /mem /cpus\n",
    )])?;
    build(
        &engine,
        ctx.path(),
        &[
            "--network",
            "none",
            "--add-host",
            "myhost:10.1.2.3",
            "--memory",
            "64m",
            "--cpuset-cpus",
            "0",
            "-t",
            "limited",
        ],
    )?
    .ok()?;
    let ran = engine.docker(&["run", "--rm", "limited"])?.ok()?;
    // The RUN step's container had the build's memory limit and cpuset.
    assert_eq!(ran.stdout, "lo\n1\n67108864\nCpus_allowed_list:0\n");
    // A build step's container is created as `docker run`'s: an unknown network is
    // dockerd's error.
    let refused = build(
        &engine,
        ctx.path(),
        &["--no-cache", "--network", "nosuchnet"],
    )?;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("network nosuchnet not found"),
        "{}",
        refused.stderr
    );
    Ok(())
}

#[test]
fn heredocs_in_run_and_copy() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nARG WHO=heredoc\nRUN <<EOF\necho one > /lines\necho two >> /lines\nEOF\n\
         RUN cat <<A > /a && tr a-z A-Z <<'B' >> /a\nfirst $WHO\nA\nsecond $WHO\nB\n\
         COPY <<conf <<'raw' /etc/app/\nname=\"$WHO\"\nconf\nkept $WHO\nraw\n\
         CMD cat /lines /a /etc/app/conf /etc/app/raw\n",
    )])?;
    let run = build(&engine, ctx.path(), &["-t", "heredoc"])?.ok()?;
    assert!(
        run.stdout.contains("Step 3/6 : RUN <<EOF\n"),
        "{}",
        run.stdout
    );
    // Heredocs of a command line are its stdin, read by the shell as written.
    assert_eq!(
        engine.docker(&["run", "--rm", "heredoc"])?.ok()?.stdout,
        "one\ntwo\nfirst heredoc\nSECOND $WHO\nname=\"heredoc\"\nkept $WHO\n"
    );
    Ok(())
}

/// A directory outside every context holding `passwd`, and a check that it is untouched.
fn victim() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("passwd"), "original\n")?;
    Ok(dir)
}

fn assert_untouched(victim: &Path) -> anyhow::Result<()> {
    let mut names: Vec<_> = fs::read_dir(victim)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["passwd"], "files appeared in {}", victim.display());
    assert_eq!(fs::read_to_string(victim.join("passwd"))?, "original\n");
    Ok(())
}

#[test]
fn copy_never_writes_through_a_symlink_it_copied() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let victim = victim()?;
    // One source brings a link to the host's directory, the next writes below the same name.
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY a b /dst/\nCMD cat /dst/x/passwd\n",
        ),
        ("b/x/passwd", "evil\n"),
    ])?;
    fs::create_dir(ctx.path().join("a"))?;
    std::os::unix::fs::symlink(victim.path(), ctx.path().join("a/x"))?;
    build(&engine, ctx.path(), &["-t", "safe-two-sources"])?.ok()?;
    assert_untouched(victim.path())?;
    // As Docker's copy, the link in the destination is replaced by the directory.
    assert_eq!(
        engine
            .docker(&["run", "--rm", "safe-two-sources"])?
            .ok()?
            .stdout,
        "evil\n"
    );

    // A heredoc named as a link an earlier source copied.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nCOPY src <<EOF /d/\nevil\nEOF\nCMD cat /d/EOF\n",
    )])?;
    fs::create_dir(ctx.path().join("src"))?;
    std::os::unix::fs::symlink(victim.path().join("passwd"), ctx.path().join("src/EOF"))?;
    build(&engine, ctx.path(), &["-t", "safe-heredoc"])?.ok()?;
    assert_untouched(victim.path())?;
    assert_eq!(
        engine
            .docker(&["run", "--rm", "safe-heredoc"])?
            .ok()?
            .stdout,
        "evil\n"
    );

    // A stage whose lower layer has a link where its upper layer has a directory.
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox AS a\nRUN ln -s {v} /x\nRUN rm /x && mkdir /x && echo evil > /x/passwd\n\
             FROM busybox\nCOPY --from=a /x /y\nCMD cat /y/passwd\n",
            v = victim.path().display()
        ),
    )])?;
    build(&engine, ctx.path(), &["-t", "safe-layers"])?.ok()?;
    assert_untouched(victim.path())?;
    assert_eq!(
        engine.docker(&["run", "--rm", "safe-layers"])?.ok()?.stdout,
        "evil\n"
    );
    Ok(())
}

#[test]
fn context_symlinks_loop_or_lead_out_without_harm() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // A link to itself below the context: an error naming it, and the engine still serves.
    let ctx = context(&[("Dockerfile", "FROM busybox\nCOPY a /a\n")])?;
    std::os::unix::fs::symlink("a/x", ctx.path().join("a"))?;
    let run = build(&engine, ctx.path(), &[])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("too many levels of symbolic links: a"),
        "{}",
        run.stderr
    );
    engine.docker(&["version"])?.ok()?;

    // A Dockerfile that is a link to itself, sent as a raw tar (the CLI would stat it).
    let ctx = context(&[])?;
    std::os::unix::fs::symlink("Dockerfile", ctx.path().join("Dockerfile"))?;
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .args(["-cf", "-", "."])
        .output()?;
    let mut cmd = engine.docker_command(&["build", "-"]);
    cmd.env("DOCKER_BUILDKIT", "0");
    let run = rmachine_tests_engine::feed(cmd, &tar.stdout)?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("too many levels of symbolic links: Dockerfile"),
        "{}",
        run.stderr
    );
    engine.docker(&["version"])?.ok()?;

    // Absolute and `..` targets are taken inside the context, as moby's FollowSymlinkInScope.
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY abs up /got/\nCMD cat /got/abs /got/up\n",
        ),
        ("etc/passwd", "context passwd\n"),
    ])?;
    std::os::unix::fs::symlink("/etc/passwd", ctx.path().join("abs"))?;
    std::os::unix::fs::symlink("../../../../../../etc/passwd", ctx.path().join("up"))?;
    build(&engine, ctx.path(), &["-t", "scoped-links"])?.ok()?;
    assert_eq!(
        engine
            .docker(&["run", "--rm", "scoped-links"])?
            .ok()?
            .stdout,
        "context passwd\ncontext passwd\n"
    );
    Ok(())
}

#[test]
fn parser_directives_and_from_platform() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM --platform=linux/{host} busybox\n\
             RUN echo a `\n    && echo b > /x\nCMD cat /x\n"
        ),
    )])?;
    let run = build(&engine, ctx.path(), &["-t", "directives"])?.ok()?;
    assert!(
        run.stdout.contains(
            "[WARNING]: the classic builder ignores the syntax=docker/dockerfile:1 parser directive"
        ),
        "{}",
        run.stdout
    );
    // The backtick continued the line.
    assert!(run.stdout.contains("\na\n"), "{}", run.stdout);
    assert_eq!(
        engine.docker(&["run", "--rm", "directives"])?.ok()?.stdout,
        "b\n"
    );
    // Another platform cannot be built here and is named.
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM --platform=linux/{other} busybox\n"),
    )])?;
    let refused = build(&engine, ctx.path(), &[])?;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "FROM --platform=linux/{other} (only linux/{host} is built here)"
        )),
        "{}",
        refused.stderr
    );
    Ok(())
}

#[test]
fn dockerfiles_inside_and_outside_the_context_and_rm_false() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = context(&[
        (
            "sub/Other.df",
            "FROM busybox\nCOPY note /note\nCMD cat /note\n",
        ),
        ("note", "inside\n"),
    ])?;
    let inside = ctx.path().join("sub/Other.df");
    build(
        &engine,
        ctx.path(),
        &["-f", &inside.to_string_lossy(), "-t", "df:inside"],
    )?
    .ok()?;
    assert_eq!(
        engine.docker(&["run", "--rm", "df:inside"])?.ok()?.stdout,
        "inside\n"
    );
    // Outside the context: the CLI adds it to the context under another name.
    let elsewhere = context(&[(
        "Dockerfile",
        "FROM busybox\nCOPY note /copied\nRUN echo kept\nCMD cat /copied\n",
    )])?;
    let outside = elsewhere.path().join("Dockerfile");
    let run = build(
        &engine,
        ctx.path(),
        &[
            "-f",
            &outside.to_string_lossy(),
            "--rm=false",
            "-t",
            "df:outside",
        ],
    )?
    .ok()?;
    assert_eq!(
        engine.docker(&["run", "--rm", "df:outside"])?.ok()?.stdout,
        "inside\n"
    );
    // --rm=false: the RUN step's container stays.
    assert!(
        !run.stdout.contains("Removed intermediate container"),
        "{}",
        run.stdout
    );
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout.lines().count(), 1, "{}", ps.stdout);
    Ok(())
}
