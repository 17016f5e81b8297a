//! `docker build` through the classic builder (`DOCKER_BUILDKIT=0`): the real CLI against the
//! engine, with busybox as the base image.

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
    let history = engine
        .docker(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.CreatedBy}}",
            "user/image:tag",
        ])
        .map(|r| r.stdout)
        .unwrap_or_default();
    let _ = history;

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
