//! `--security-opt`: Docker's default seccomp filter, `seccomp=unconfined`, `--privileged`,
//! `no-new-privileges`, and the errors for what the engine does not take.

use rmachine_tests_engine::Engine;

fn status_field(engine: &Engine, args: &[&str], field: &str) -> anyhow::Result<String> {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["busybox", "grep", field, "/proc/self/status"]);
    Ok(engine.docker(&all)?.ok()?.stdout)
}

#[test]
fn containers_run_under_dockers_default_seccomp_filter_unless_told_otherwise() -> anyhow::Result<()>
{
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Mode 2 is "filter".
    assert_eq!(status_field(&engine, &[], "Seccomp:")?, "Seccomp:\t2\n");
    for opts in [
        &["--security-opt", "seccomp=unconfined"][..],
        &["--privileged"][..],
    ] {
        assert_eq!(
            status_field(&engine, opts, "Seccomp:")?,
            "Seccomp:\t0\n",
            "{opts:?}"
        );
    }

    // A user namespace needs no capability, but Docker's profile refuses unshare without
    // CAP_SYS_ADMIN.
    let refused = engine.docker(&["run", "--rm", "busybox", "unshare", "-U", "true"])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("Operation not permitted"),
        "{}",
        refused.stderr
    );
    engine
        .docker(&[
            "run",
            "--rm",
            "--security-opt",
            "seccomp=unconfined",
            "busybox",
            "unshare",
            "-U",
            "true",
        ])?
        .ok()?;

    // An exec runs under the container's filter, --privileged or not (as runc).
    engine
        .docker(&[
            "run", "-d", "--name", "filtered", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    for exec in [
        &["exec", "filtered"][..],
        &["exec", "--privileged", "filtered"][..],
    ] {
        let mut args = exec.to_vec();
        args.extend_from_slice(&["grep", "Seccomp:", "/proc/self/status"]);
        assert_eq!(
            engine.docker(&args)?.ok()?.stdout,
            "Seccomp:\t2\n",
            "{exec:?}"
        );
    }
    // The privileged exec holds every capability, the filter still is the container's.
    let caps = engine
        .docker(&[
            "exec",
            "--privileged",
            "filtered",
            "grep",
            "CapEff",
            "/proc/self/status",
        ])?
        .ok()?;
    assert_ne!(
        caps.stdout, "CapEff:\t00000000a80425fb\n",
        "{}",
        caps.stdout
    );
    let unshare = engine.docker(&["exec", "--privileged", "filtered", "unshare", "-U", "true"])?;
    assert_eq!(unshare.code, 1, "{unshare:?}");
    engine.docker(&["rm", "-f", "filtered"])?.ok()?;
    Ok(())
}

#[test]
fn no_new_privileges_and_bad_security_options() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    assert_eq!(
        status_field(&engine, &[], "NoNewPrivs:")?,
        "NoNewPrivs:\t0\n"
    );
    assert_eq!(
        status_field(
            &engine,
            &["--security-opt", "no-new-privileges"],
            "NoNewPrivs:"
        )?,
        "NoNewPrivs:\t1\n"
    );

    let profile = engine.dir().join("profile.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)?;
    let custom = engine.docker(&[
        "run",
        "--rm",
        "--security-opt",
        &format!("seccomp={}", profile.display()),
        "busybox",
        "true",
    ])?;
    assert_eq!(custom.code, 125, "{custom:?}");
    assert!(
        custom
            .stderr
            .contains("custom seccomp profiles are not supported"),
        "{}",
        custom.stderr
    );
    let unknown = engine.docker(&[
        "run",
        "--rm",
        "--security-opt",
        "colour=blue",
        "busybox",
        "true",
    ])?;
    assert_eq!(unknown.code, 125, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains(r#"invalid --security-opt 2: "colour=blue""#),
        "{}",
        unknown.stderr
    );
    Ok(())
}

#[test]
fn docker_info_names_the_builtin_seccomp_profile() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let info = engine
        .docker(&["info", "--format", "{{json .SecurityOptions}}"])?
        .ok()?;
    assert_eq!(info.stdout.trim(), r#"["name=seccomp,profile=builtin"]"#);
    Ok(())
}
