//! `docker pull` and `docker login` through the real docker CLI against the engine and a real
//! registry (Debian's docker-registry on 127.0.0.1), seeded with the fixtures' images.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmachine_fixtures::registry::{push_blob, push_image, push_index, push_manifest, Pushed};
use rmachine_fixtures::{busybox, gzip, multi_layer, sha256_digest, Image, LayerBuilder};
use rmachine_tests_engine::registry::{
    require_registry, Auth, Registry, SlowProxy, PASSWORD, REFRESH_TOKEN, USER,
};
use rmachine_tests_engine::{require_root, share_network_with_engines, Engine};

fn setup(auth: Auth) -> Result<Option<(Engine, Registry)>> {
    if !require_root() || !require_registry() {
        return Ok(None);
    }
    share_network_with_engines()?;
    Ok(Some((Engine::start()?, Registry::start(auth)?)))
}

fn seed(registry: &Registry, repo: &str, tag: Option<&str>, image: &Image) -> Result<Pushed> {
    registry.seed(|host| push_image(host, repo, tag, image))
}

/// Entries of the image store's staging area (must be empty when no pull runs).
fn staging_entries(engine: &Engine) -> Vec<String> {
    fs::read_dir(engine.data_root().join("image/tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pull_by_tag_runs_records_the_digest_and_is_up_to_date_the_second_time() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "team/busybox", Some("latest"), &busybox()?)?;
    let name = format!("{}/team/busybox", registry.host);
    let run = engine.docker(&["pull", &name])?.ok()?;
    let layer = &pushed.layer_digests[0]["sha256:".len()..][..12];
    for line in [
        "Using default tag: latest".to_string(),
        "latest: Pulling from team/busybox".to_string(),
        format!("{layer}: Pull complete"),
        format!("Digest: {}", pushed.manifest_digest),
        format!("Status: Downloaded newer image for {name}:latest"),
    ] {
        assert!(
            run.stdout.contains(&line) || run.stderr.contains(&line),
            "missing {line:?} in {run:?}"
        );
    }
    assert_eq!(
        engine
            .docker(&["run", "--rm", &name, "echo", "pulled"])?
            .ok()?
            .stdout,
        "pulled\n"
    );
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, pushed.id);
    let digest_ref = format!("{name}@{}", pushed.manifest_digest);
    assert_eq!(
        engine.inspect(&name, "{{json .RepoDigests}}")?,
        format!("[\"{digest_ref}\"]")
    );
    let images = engine
        .docker(&[
            "images",
            "--digests",
            "--format",
            "{{.Repository}} {{.Tag}} {{.Digest}}",
        ])?
        .ok()?;
    assert!(
        images
            .stdout
            .contains(&format!("{name} latest {}", pushed.manifest_digest)),
        "{images:?}"
    );
    // The second pull sees the tag's manifest digest is the one it has (a HEAD) and fetches
    // nothing: with the config and layer gone from the registry it still succeeds, and, as
    // dockerd's once it finds the config here, lists no layer.
    fs::remove_file(registry.blob_file(&pushed.id))?;
    fs::remove_file(registry.blob_file(&pushed.layer_digests[0]))?;
    for reference in [format!("{name}:latest"), digest_ref.clone()] {
        let again = engine.docker(&["pull", &reference])?.ok()?;
        assert!(
            again
                .stdout
                .contains(&format!("Status: Image is up to date for {reference}")),
            "{again:?}"
        );
        assert!(
            again
                .stdout
                .contains(&format!("Digest: {}", pushed.manifest_digest)),
            "{again:?}"
        );
        assert!(!again.stdout.contains(layer), "{again:?}");
    }
    // By digest too, once the image is there.
    engine.docker(&["run", "--rm", &digest_ref, "true"])?.ok()?;
    assert!(staging_entries(&engine).is_empty());
    Ok(())
}

#[test]
fn multi_layer_images_are_stacked_with_their_whiteouts() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "multi", Some("v1"), &multi_layer()?)?;
    let name = format!("{}/multi:v1", registry.host);
    let run = engine.docker(&["pull", &name])?.ok()?;
    for digest in &pushed.layer_digests {
        let short = &digest["sha256:".len()..][..12];
        assert!(
            run.stdout.contains(&format!("{short}: Pull complete")),
            "{run:?}"
        );
    }
    let out = engine.docker(&["run", "--rm", &name])?.ok()?;
    assert_eq!(out.stdout, "b.txt\nkeep.txt\n");
    // A second image sharing the busybox layer finds it in the store.
    let base = seed(&registry, "base", Some("latest"), &busybox()?)?;
    let run = engine
        .docker(&["pull", &format!("{}/base", registry.host)])?
        .ok()?;
    let short = &base.layer_digests[0]["sha256:".len()..][..12];
    assert!(
        run.stdout.contains(&format!("{short}: Already exists")),
        "{run:?}"
    );
    Ok(())
}

#[test]
fn pull_by_digest_and_all_tags() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let one = seed(&registry, "app", Some("v1"), &busybox()?)?;
    let two = seed(&registry, "app", Some("v2"), &multi_layer()?)?;
    let repo = format!("{}/app", registry.host);
    let by_digest = format!("{repo}@{}", two.manifest_digest);
    let run = engine.docker(&["pull", &by_digest])?.ok()?;
    assert!(
        run.stdout
            .contains(&format!("Status: Downloaded newer image for {by_digest}")),
        "{run:?}"
    );
    // Pulled by digest: no tag, but the digest names it.
    let images = engine
        .docker(&["images", "--digests", "--format", "{{.Tag}} {{.Digest}}"])?
        .ok()?;
    assert_eq!(images.stdout, format!("<none> {}\n", two.manifest_digest));
    assert_eq!(engine.inspect(&by_digest, "{{.Id}}")?, two.id);

    let all = engine.docker(&["pull", "-a", &repo])?.ok()?;
    assert!(
        all.stdout
            .contains(&format!("Status: Downloaded newer image for {repo}")),
        "{all:?}"
    );
    assert_eq!(engine.inspect(&format!("{repo}:v1"), "{{.Id}}")?, one.id);
    assert_eq!(engine.inspect(&format!("{repo}:v2"), "{{.Id}}")?, two.id);
    // A tag pushed again names another manifest: the pull fetches it, not "up to date".
    let mut changed = busybox()?;
    changed.config["config"]["Env"] = serde_json::json!(["CHANGED=1"]);
    let three = seed(&registry, "app", Some("v1"), &changed)?;
    let again = engine.docker(&["pull", &format!("{repo}:v1")])?.ok()?;
    assert!(
        again
            .stdout
            .contains(&format!("Status: Downloaded newer image for {repo}:v1")),
        "{again:?}"
    );
    assert_eq!(engine.inspect(&format!("{repo}:v1"), "{{.Id}}")?, three.id);

    // `rmi name@digest` removes that digest reference only; the tag keeps the image.
    let untag = engine.docker(&["rmi", &by_digest])?.ok()?;
    assert_eq!(untag.stdout, format!("Untagged: {by_digest}\n"));
    assert_eq!(
        engine.inspect(&format!("{repo}:v2"), "{{json .RepoDigests}}")?,
        "[]"
    );
    let gone = engine.docker(&["rmi", &format!("{repo}:v2")])?.ok()?;
    assert!(
        gone.stdout
            .starts_with(&format!("Untagged: {repo}:v2\nDeleted: {}\n", two.id)),
        "{gone:?}"
    );
    Ok(())
}

#[test]
fn unknown_images_and_platforms_are_refused_with_dockerds_words() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    seed(&registry, "known", Some("v1"), &busybox()?)?;
    let name = format!("{}/known:nope", registry.host);
    let run = engine.docker(&["pull", &name])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "Error response from daemon: manifest for {name} not found: manifest unknown: manifest unknown"
        )),
        "{run:?}"
    );
    let run = engine.docker(&["pull", &format!("{}/nobody/here", registry.host)])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not found"), "{run:?}");

    // An index with other platforms only.
    let mut arm = busybox()?;
    arm.config["architecture"] = "arm64".into();
    let mut s390 = busybox()?;
    s390.config["architecture"] = "s390x".into();
    let (arm_pushed, index) = registry.seed(|host| {
        let a = push_image(host, "multi-arch", None, &arm)?;
        let s = push_image(host, "multi-arch", None, &s390)?;
        let index = push_index(
            host,
            "multi-arch",
            "foreign",
            &[(&a, "linux", "arm64"), (&s, "linux", "s390x")],
        )?;
        Ok((a, index))
    })?;
    let foreign = format!("{}/multi-arch:foreign", registry.host);
    let run = engine.docker(&["pull", &foreign])?;
    assert_eq!(run.code, 1, "{run:?}");
    let host_platform = format!("linux/{}", rmachine_fixtures::host_architecture());
    assert!(
        run.stderr.contains(&format!(
            "no matching manifest for {host_platform} in the manifest list entries"
        )),
        "{run:?}"
    );
    // --platform chooses among the entries; the index digest is the one recorded.
    let run = engine
        .docker(&["pull", "--platform", "linux/arm64", &foreign])?
        .ok()?;
    assert!(run.stdout.contains(&format!("Digest: {index}")), "{run:?}");
    assert_eq!(engine.inspect(&foreign, "{{.Id}}")?, arm_pushed.id);
    assert_eq!(engine.inspect(&foreign, "{{.Architecture}}")?, "arm64");
    Ok(())
}

#[test]
fn a_pull_of_another_variant_is_not_up_to_date() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let mut v6 = busybox()?;
    v6.config["architecture"] = "arm".into();
    v6.config["variant"] = "v6".into();
    let mut v7 = v6.clone();
    v7.config["variant"] = "v7".into();
    let (v6_pushed, v7_pushed) = registry.seed(|host| {
        let a = push_image(host, "arm", None, &v6)?;
        let b = push_image(host, "arm", None, &v7)?;
        let entry = |pushed: &Pushed, variant: &str| {
            serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": pushed.manifest_digest,
                "size": pushed.manifest_size,
                "platform": {"os": "linux", "architecture": "arm", "variant": variant},
            })
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry(&a, "v6"), entry(&b, "v7")],
        }))?;
        push_manifest(
            host,
            "arm",
            "latest",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )?;
        Ok((a, b))
    })?;
    let name = format!("{}/arm", registry.host);
    engine
        .docker(&["pull", "--platform", "linux/arm/v7", &name])?
        .ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, v7_pushed.id);
    let run = engine
        .docker(&["pull", "--platform", "linux/arm/v6", &name])?
        .ok()?;
    assert!(!run.stdout.contains("Image is up to date"), "{run:?}");
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, v6_pushed.id);
    assert_eq!(engine.inspect(&name, "{{.Variant}}")?, "v6");
    let again = engine
        .docker(&["pull", "--platform", "linux/arm/v6", &name])?
        .ok()?;
    assert!(again.stdout.contains("Image is up to date"), "{again:?}");
    Ok(())
}

#[test]
fn a_two_platform_index_gives_the_engines_platform() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let native = busybox()?;
    let mut other = busybox()?;
    other.config["architecture"] = "riscv64".into();
    let (native_pushed, index) = registry.seed(|host| {
        let n = push_image(host, "both", None, &native)?;
        let o = push_image(host, "both", None, &other)?;
        let index = push_index(
            host,
            "both",
            "latest",
            &[
                (&o, "linux", "riscv64"),
                (&n, "linux", rmachine_fixtures::host_architecture()),
            ],
        )?;
        Ok((n, index))
    })?;
    let name = format!("{}/both", registry.host);
    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, native_pushed.id);
    assert_eq!(
        engine.inspect(&name, "{{json .RepoDigests}}")?,
        format!("[\"{name}@{index}\"]")
    );
    engine.docker(&["run", "--rm", &name, "true"])?.ok()?;
    Ok(())
}

#[test]
fn a_corrupted_blob_is_rejected_and_nothing_is_stored() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "broken", Some("latest"), &busybox()?)?;
    let blob = registry.blob_file(&pushed.layer_digests[0]);
    let mut bytes = fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, &bytes)?;
    let name = format!("{}/broken", registry.host);
    let run = engine.docker(&["pull", &name])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "filesystem layer verification failed for digest {}",
            pushed.layer_digests[0]
        )) || run.stdout.contains("filesystem layer verification failed"),
        "{run:?}"
    );
    let images = engine.docker(&["images", "-q"])?.ok()?;
    assert_eq!(images.stdout, "");
    let layers = fs::read_dir(engine.data_root().join("image/layers"))?.count();
    assert_eq!(layers, 0);
    assert!(
        staging_entries(&engine).is_empty(),
        "{:?}",
        staging_entries(&engine)
    );
    Ok(())
}

#[test]
fn an_engine_host_without_a_ca_bundle_gets_an_error_not_a_panic() -> Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let registry = Registry::start(Auth::Open)?;
    let empty = tempfile::tempdir()?;
    let bundle = empty.path().join("ca.pem");
    fs::write(&bundle, "")?;
    let bundle = bundle.to_string_lossy().into_owned();
    let dir = empty.path().to_string_lossy().into_owned();
    // As in a guest built without one: rustls finds no root certificate at all.
    let engine =
        Engine::start_with_env(&[], &[("SSL_CERT_FILE", &bundle), ("SSL_CERT_DIR", &dir)])?;
    let name = format!("{}/any:latest", registry.host);
    let run = engine.docker(&["pull", &name])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "cannot set up a client for registry {}",
            registry.host
        )),
        "{run:?}"
    );
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    Ok(())
}

#[test]
fn an_unreachable_registry_is_named_in_the_error() -> Result<()> {
    let Some((engine, mut registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    registry.stop();
    let name = format!("{}/gone:latest", registry.host);
    let started = Instant::now();
    let run = engine.docker(&["pull", &name])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot reach registry {}", registry.host)),
        "{run:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    Ok(())
}

fn login_flow(auth: Auth) -> Result<()> {
    let Some((engine, registry)) = setup(auth)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "private/app", Some("latest"), &busybox()?)?;
    let name = format!("{}/private/app", registry.host);
    let anonymous = engine.docker(&["pull", &name])?;
    assert_eq!(anonymous.code, 1, "{anonymous:?}");
    assert!(
        anonymous.stderr.contains("pull access denied for"),
        "{anonymous:?}"
    );

    let wrong = engine.docker(&["login", "-u", USER, "-p", "wrong", &registry.host])?;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("401"), "{wrong:?}");

    let mut cmd = engine.docker_command(&["login", "-u", USER, "--password-stdin", &registry.host]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        format!("{PASSWORD}\n").as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Login Succeeded"), "{stdout}");

    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, pushed.id);
    engine.docker(&["rmi", &name])?.ok()?;

    engine.docker(&["logout", &registry.host])?.ok()?;
    let after = engine.docker(&["pull", &name])?;
    assert_eq!(after.code, 1, "{after:?}");
    Ok(())
}

#[test]
fn basic_auth_registries_need_a_login() -> Result<()> {
    login_flow(Auth::Htpasswd)
}

#[test]
fn token_auth_registries_need_a_login() -> Result<()> {
    login_flow(Auth::Token)
}

/// The engine keeps a registry client (and its bearer tokens) between pulls: a repository
/// made public after a refused anonymous pull must pull at once, not when the token expires.
#[test]
fn a_repository_made_public_pulls_anonymously_right_after_a_refused_pull() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Token)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "private/app", Some("latest"), &busybox()?)?;
    let name = format!("{}/private/app", registry.host);
    let refused = engine.docker(&["pull", &name])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("pull access denied for"),
        "{refused:?}"
    );
    registry.make_public();
    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, pushed.id);
    Ok(())
}

/// The engine keeps a registry client (and its bearer tokens) per credentials between
/// operations: when the registry stops accepting those tokens (its signing key rotated), a
/// push that meets the 401 drops the kept client and is tried once more with a new one,
/// instead of failing until the tokens expire.
#[test]
fn a_push_after_the_registry_refuses_the_kept_tokens_retries_with_a_new_client() -> Result<()> {
    let Some((engine, mut registry)) = setup(Auth::Token)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "private/app", Some("latest"), &busybox()?)?;
    let name = format!("{}/private/app", registry.host);
    // The CLI's stored user and password (not an identity token, which the engine trades for
    // a new access token, and so a new client, at every operation).
    let config = engine.dir().join("docker-config");
    fs::create_dir_all(&config)?;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    fs::write(
        config.join("config.json"),
        serde_json::json!({"auths": {registry.host.as_str(): {"auth": basic}}}).to_string(),
    )?;
    let limit = Duration::from_secs(120);
    // Leaves a kept client holding a pull token for the repository.
    engine.docker_within(limit, &["pull", &name])?.ok()?;
    registry.rotate_token_key()?;
    let rotated_at = registry.log().len();
    let tagged = format!("{name}:v2");
    engine.docker(&["tag", &name, &tagged])?.ok()?;
    let push = engine.docker_within(limit, &["push", &tagged])?.ok()?;
    assert!(push.stdout.contains("v2: digest: sha256:"), "{push:?}");
    // The push did meet the 401 it is about: the registry refused a token of the old key
    // (what a kept client holds), not only the challenges of a client without one
    // ("authorization token required").
    let since_rotation = registry
        .log()
        .get(rotated_at..)
        .unwrap_or_default()
        .to_string();
    assert!(
        since_rotation.contains("error authorizing context: invalid token"),
        "no token refused after the key rotation: the push did not exercise the retry\n\
         registry log since the rotation:\n{since_rotation}"
    );
    // What the registry now holds under v2 is the image.
    engine.docker(&["rmi", &tagged, &name])?.ok()?;
    engine.docker_within(limit, &["pull", &tagged])?.ok()?;
    assert_eq!(engine.inspect(&tagged, "{{.Id}}")?, pushed.id);
    Ok(())
}

/// An incompressible layer of `size` bytes (xorshift), so a throttled pull takes a while.
#[test]
fn a_token_login_keeps_an_identity_token_that_pulls_and_pushes() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Token)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "private/app", Some("latest"), &busybox()?)?;
    let name = format!("{}/private/app", registry.host);
    let mut cmd = engine.docker_command(&["login", "-u", USER, "--password-stdin", &registry.host]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        format!("{PASSWORD}\n").as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CLI keeps the identity token the engine returned, and drops the password.
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(engine.dir().join("docker-config/config.json"))?)?;
    let stored = &config["auths"][registry.host.as_str()];
    assert_eq!(stored["identitytoken"], REFRESH_TOKEN, "{config}");

    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, pushed.id);
    assert!(
        registry.token_refreshes() >= 1,
        "the pull traded the identity token for an access token"
    );
    let copy = format!("{}/private/copy:v1", registry.host);
    engine.docker(&["tag", &name, &copy])?.ok()?;
    let push = engine.docker(&["push", &copy])?.ok()?;
    assert!(push.stdout.contains("v1: digest: sha256:"), "{push:?}");
    Ok(())
}

fn big_image(size: usize) -> Result<Image> {
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut layer = LayerBuilder::new();
    layer.file("big.bin", &data, 0o644);
    let mut image = busybox()?;
    image.layers.push(layer.build()?);
    Ok(image)
}

#[test]
fn an_engine_killed_mid_pull_restarts_consistent_and_pulls_again() -> Result<()> {
    let Some((mut engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "big", Some("latest"), &big_image(6 << 20)?)?;
    let proxy = SlowProxy::start(&registry.host, 1 << 20)?;
    let name = format!("{}/big", proxy.host);
    let mut pull = engine
        .docker_command(&["pull", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait until a layer is being extracted into the staging area.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !staging_entries(&engine)
        .iter()
        .any(|e| e.starts_with("layer-"))
    {
        assert!(Instant::now() < deadline, "the pull never started staging");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    engine.crash()?;
    let _ = pull.wait();
    engine.spawn()?;
    assert!(
        staging_entries(&engine).is_empty(),
        "{:?}",
        staging_entries(&engine)
    );
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, "");
    let run = engine.docker(&["pull", &name])?.ok()?;
    assert!(
        run.stdout
            .contains(&format!("Digest: {}", pushed.manifest_digest)),
        "{run:?}"
    );
    engine
        .docker(&["run", "--rm", &name, "test", "-s", "/big.bin"])?
        .ok()?;
    Ok(())
}

#[test]
fn pushing_progress_has_the_layers_size_as_total() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    // Two MiB of incompressible data: more than one `Pushing` step.
    let mut layer = LayerBuilder::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    layer.file("noise", &data, 0o644);
    let tar = layer.build()?;
    let mut image = busybox()?;
    image.config["rootfs"]["diff_ids"] = serde_json::json!([sha256_digest(&tar)]);
    image.layers = vec![tar];
    let name = format!("{}/noise", registry.host);
    seed(&registry, "noise", Some("1"), &image)?;
    engine.docker(&["pull", &format!("{name}:1")])?.ok()?;
    let size: u64 = engine.inspect(&format!("{name}:1"), "{{.Size}}")?.parse()?;
    let other = format!("{}/noise2", registry.host);
    engine
        .docker(&["tag", &format!("{name}:1"), &format!("{other}:1")])?
        .ok()?;
    // Forget where the layer came from, so the push compresses and uploads it.
    fs::remove_file(engine.data_root().join("image/distribution.json"))?;
    let (status, body) = engine.request("POST", &format!("/images/{other}/push?tag=1"), "")?;
    assert_eq!(status, 200, "{body}");
    let totals: Vec<u64> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["status"] == "Pushing")
        .filter_map(|v| v["progressDetail"]["total"].as_u64())
        .collect();
    assert!(!totals.is_empty(), "{body}");
    assert!(
        totals.iter().all(|t| *t == size),
        "{totals:?} vs {size}: {body}"
    );
    Ok(())
}

#[test]
fn push_then_rmi_then_pull_back_and_run() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    engine.load_busybox()?;
    let name = format!("{}/fresh/bb:1", registry.host);
    engine.docker(&["tag", "busybox:latest", &name])?.ok()?;
    let id = engine.inspect(&name, "{{.Id}}")?;
    let run = engine.docker(&["push", &name])?.ok()?;
    assert!(
        run.stdout.contains(&format!(
            "The push refers to repository [{}/fresh/bb]",
            registry.host
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains(": Pushed"), "{run:?}");
    let digest_line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("1: digest: sha256:"))
        .with_context(|| format!("no digest line in {run:?}"))?
        .to_string();
    let again = engine.docker(&["push", &name])?.ok()?;
    assert!(again.stdout.contains(": Layer already exists"), "{again:?}");
    assert!(again.stdout.contains(&digest_line), "{again:?}");
    // Another repository of the same registry gets the layer mounted, not uploaded.
    let other = format!("{}/other/bb:2", registry.host);
    engine.docker(&["tag", &name, &other])?.ok()?;
    let mounted = engine.docker(&["push", &other])?.ok()?;
    assert!(
        mounted.stdout.contains(": Mounted from fresh/bb"),
        "{mounted:?}"
    );

    engine
        .docker(&["rmi", &name, &other, "busybox:latest"])?
        .ok()?;
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, "");
    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, id);
    assert_eq!(
        engine
            .docker(&["run", "--rm", &name, "echo", "round trip"])?
            .ok()?
            .stdout,
        "round trip\n"
    );
    Ok(())
}

#[test]
fn a_layer_that_cannot_be_read_mid_push_leaves_no_blob_in_the_registry() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    engine.load_busybox()?;
    // A layer of 12 MB of random data (several upload chunks) then a small file.
    engine
        .docker(&[
            "run",
            "--network",
            "none",
            "--name",
            "big",
            "busybox",
            "sh",
            "-c",
            "head -c 12000000 /dev/urandom > /a && echo z > /z",
        ])?
        .ok()?;
    let name = format!("{}/broken/bb:1", registry.host);
    engine.docker(&["commit", "big", &name])?.ok()?;
    let diff_id = engine.inspect(&name, "{{index .RootFS.Layers 1}}")?;
    // The layer is compressed while it uploads: a file gone from the store fails the export
    // after the chunks of /a have been sent.
    let diff = engine
        .data_root()
        .join("image/layers")
        .join(diff_id.trim_start_matches("sha256:"))
        .join("diff");
    fs::remove_file(diff.join("z"))?;
    let run = engine.docker(&["push", &name])?;
    assert_eq!(run.code, 1, "{run:?}");
    // Nothing half-sent was committed: no blob as large as the random data, no manifest.
    let storage = registry
        .blob_file("sha256:0000")
        .ancestors()
        .nth(5)
        .context("registry storage")?
        .to_path_buf();
    let blobs = storage.join("blobs/sha256");
    for prefix in fs::read_dir(&blobs).into_iter().flatten().flatten() {
        for blob in fs::read_dir(prefix.path())?.flatten() {
            let size = fs::metadata(blob.path().join("data"))?.len();
            assert!(size < 4 << 20, "{} has {size} bytes", blob.path().display());
        }
    }
    assert!(
        !storage
            .join("repositories/broken/bb/_manifests/tags/1")
            .exists(),
        "a manifest was pushed: {run:?}"
    );
    Ok(())
}

/// Serves `body` at any path over plain HTTP; returns the base URL and the request lines seen.
fn serve_blob(body: Vec<u8>) -> Result<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(read_half);
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) <= 2 {
                    break;
                }
            }
            if let Ok(mut seen) = seen2.lock() {
                seen.push(request_line.trim_end().to_string());
            }
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = stream.write_all(&body);
        }
    });
    Ok((format!("http://{addr}"), seen))
}

#[test]
fn foreign_layers_come_from_the_registry_never_their_urls_and_are_never_pushed() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let base = busybox()?;
    let mut extra = LayerBuilder::new();
    extra.file("foreign.txt", b"from the registry\n", 0o644);
    let foreign_tar = extra.build()?;
    let foreign_gz = gzip(&foreign_tar)?;
    let foreign_digest = sha256_digest(&foreign_gz);
    // The URL names a server on the engine's own loopback: dockerd on Linux never fetches
    // it (it could be any internal service), it takes the blob from the registry.
    let (url, requests) = serve_blob(foreign_gz.clone())?;
    let url = format!("{url}/base/layer.tar.gz");
    registry.seed(|host| {
        let mut config = base.config.clone();
        config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": [
            sha256_digest(&base.layers[0]), sha256_digest(&foreign_tar)]});
        config["config"]["Cmd"] = serde_json::json!(["cat", "/foreign.txt"]);
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = push_blob(host, "win/app", &config_bytes)?;
        let base_gz = gzip(&base.layers[0])?;
        let base_digest = push_blob(host, "win/app", &base_gz)?;
        assert_eq!(push_blob(host, "win/app", &foreign_gz)?, foreign_digest);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": config_bytes.len(), "digest": config_digest},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "size": base_gz.len(), "digest": base_digest},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "size": foreign_gz.len(), "digest": foreign_digest, "urls": [url]},
            ],
        }))?;
        push_manifest(
            host,
            "win/app",
            "1",
            "application/vnd.docker.distribution.manifest.v2+json",
            &manifest,
        )
    })?;
    let name = format!("{}/win/app:1", registry.host);
    let short = &foreign_digest["sha256:".len()..][..12];
    let run = engine.docker(&["pull", &name])?.ok()?;
    assert!(
        run.stdout.contains(&format!("{short}: Pull complete")),
        "{run:?}"
    );
    assert_eq!(
        engine.docker(&["run", "--rm", &name])?.ok()?.stdout,
        "from the registry\n"
    );

    // Pushed elsewhere, the layer is skipped and the manifest keeps its descriptor.
    let other = format!("{}/mine/app:2", registry.host);
    engine.docker(&["tag", &name, &other])?.ok()?;
    let push = engine.docker(&["push", &other])?.ok()?;
    let diff_short = &sha256_digest(&foreign_tar)["sha256:".len()..][..12];
    assert!(
        push.stdout
            .contains(&format!("{diff_short}: Skipped foreign layer")),
        "{push:?}"
    );
    let repo = registry
        .blob_file(&foreign_digest)
        .ancestors()
        .nth(5)
        .context("registry storage")?
        .join("repositories/mine/app");
    let hex = &foreign_digest["sha256:".len()..];
    assert!(!repo.join("_layers/sha256").join(hex).exists());
    let link = fs::read_to_string(repo.join("_manifests/tags/2/current/link"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(registry.blob_file(link.trim()))?)?;
    assert_eq!(
        manifest["layers"][1],
        serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "size": foreign_gz.len(), "digest": foreign_digest, "urls": [url]})
    );
    let seen = requests
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(
        seen.is_empty(),
        "the foreign layer's URL was fetched: {seen:?}"
    );
    Ok(())
}

#[test]
fn an_oci_uncompressed_non_distributable_layer_is_not_pushed_under_a_docker_type() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    let mut layer = LayerBuilder::new();
    layer.file("nd.txt", b"non-distributable\n", 0o644);
    let tar = layer.build()?;
    let tar_digest = sha256_digest(&tar);
    let mut config = busybox()?.config;
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": [tar_digest]});
    registry.seed(|host| {
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = push_blob(host, "nd/app", &config_bytes)?;
        push_blob(host, "nd/app", &tar)?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": config_bytes.len(), "digest": config_digest},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar",
                 "size": tar.len(), "digest": tar_digest,
                 "urls": ["http://127.0.0.1:9/nd.tar"]},
            ],
        }))?;
        push_manifest(
            host,
            "nd/app",
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
    })?;
    let name = format!("{}/nd/app:1", registry.host);
    engine.docker(&["pull", &name])?.ok()?;
    let other = format!("{}/nd/copy:1", registry.host);
    engine.docker(&["tag", &name, &other])?.ok()?;
    let push = engine.docker(&["push", &other])?;
    assert_eq!(push.code, 1, "{push:?}");
    assert!(
        push.stderr.contains(&format!(
            "cannot push non-distributable layer {tar_digest}: its media type \
             application/vnd.oci.image.layer.nondistributable.v1.tar has no Docker schema 2 \
             equivalent"
        )),
        "{push:?}"
    );
    Ok(())
}

#[test]
fn pushing_a_missing_image_or_without_credentials_fails() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Htpasswd)? else {
        return Ok(());
    };
    let missing = engine.docker(&["push", &format!("{}/none:1", registry.host)])?;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("An image does not exist locally with the tag"),
        "{missing:?}"
    );
    engine.load_busybox()?;
    let name = format!("{}/locked/bb:1", registry.host);
    engine.docker(&["tag", "busybox:latest", &name])?.ok()?;
    let refused = engine.docker(&["push", &name])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("unauthorized"), "{refused:?}");
    Ok(())
}

#[test]
fn search_lists_matching_repositories_of_a_private_registry() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    registry.seed(|host| {
        let image = busybox()?;
        for repo in ["team/web", "team/db", "tools/webhook"] {
            push_image(host, repo, Some("latest"), &image)?;
        }
        Ok(())
    })?;
    let term = format!("{}/web", registry.host);
    // `IsOfficial` prints `[OK]` for official images, nothing otherwise.
    let run = engine
        .docker(&[
            "search",
            "--format",
            "{{.Name}} {{.StarCount}} {{.IsOfficial}}",
            &term,
        ])?
        .ok()?;
    assert_eq!(
        run.stdout,
        format!("{h}/team/web 0 \n{h}/tools/webhook 0 \n", h = registry.host)
    );
    let limited = engine
        .docker(&["search", "--limit", "1", "--format", "{{.Name}}", &term])?
        .ok()?;
    assert_eq!(limited.stdout.lines().count(), 1, "{limited:?}");
    let official = engine
        .docker(&[
            "search",
            "--filter",
            "is-official=true",
            "--format",
            "{{.Name}}",
            &term,
        ])?
        .ok()?;
    assert_eq!(official.stdout, "");
    let starred = engine
        .docker(&[
            "search",
            "--filter",
            "stars=1",
            "--format",
            "{{.Name}}",
            &term,
        ])?
        .ok()?;
    assert_eq!(starred.stdout, "");
    Ok(())
}

#[test]
fn docker_hub_names_are_pulled_through_the_registry_mirror() -> Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let mirror = Registry::start(Auth::Open)?;
    let pushed = seed(&mirror, "library/busybox", Some("latest"), &busybox()?)?;
    let engine =
        Engine::start_with_args(&["--registry-mirror", &format!("http://{}", mirror.host)])?;
    let run = engine.docker(&["pull", "busybox"])?.ok()?;
    assert!(
        run.stdout.contains("latest: Pulling from library/busybox"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("Status: Downloaded newer image for busybox:latest"),
        "{run:?}"
    );
    assert_eq!(engine.inspect("busybox", "{{.Id}}")?, pushed.id);
    assert_eq!(
        engine.inspect("busybox", "{{json .RepoDigests}}")?,
        format!("[\"busybox@{}\"]", pushed.manifest_digest)
    );
    Ok(())
}

#[test]
fn an_insecure_registry_speaking_tls_is_reached_over_https_without_checks() -> Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let registry = Registry::start_tls()?;
    let pushed = seed(&registry, "secure/bb", Some("latest"), &busybox()?)?;
    // Loopback is insecure by default: the self-signed certificate is not checked, but TLS
    // is used since the registry speaks it (plain HTTP would get a 400 from it).
    let engine = Engine::start()?;
    let name = format!("{}/secure/bb", registry.host);
    engine.docker(&["pull", &name])?.ok()?;
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, pushed.id);
    let other = format!("{}/secure/copy:1", registry.host);
    engine.docker(&["tag", &name, &other])?.ok()?;
    engine.docker(&["push", &other])?.ok()?;
    Ok(())
}

#[test]
fn an_interrupted_docker_pull_is_cancelled_and_leaves_nothing() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Open)? else {
        return Ok(());
    };
    seed(&registry, "slow", Some("latest"), &big_image(6 << 20)?)?;
    let proxy = SlowProxy::start(&registry.host, 1 << 20)?;
    let name = format!("{}/slow", proxy.host);
    let mut pull = engine
        .docker_command(&["pull", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !staging_entries(&engine)
        .iter()
        .any(|e| e.starts_with("layer-"))
    {
        assert!(Instant::now() < deadline, "the pull never started staging");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C of the CLI: the connection closes.
    pull.kill()?;
    let _ = pull.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !staging_entries(&engine).is_empty() {
        assert!(
            Instant::now() < deadline,
            "staging not cleaned: {:?}",
            staging_entries(&engine)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(engine.log().contains("client disconnected, cancelling"));
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, "");
    Ok(())
}

#[test]
fn pulls_go_through_the_http_proxy_of_the_engines_environment() -> Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let registry = Registry::start(Auth::Open)?;
    let pushed = seed(&registry, "proxied", Some("latest"), &busybox()?)?;
    // A relay to the registry: only through it can the engine reach a name that does not
    // resolve.
    let proxy = SlowProxy::start(&registry.host, 64 << 20)?;
    let engine = Engine::start_with_env(
        &["--insecure-registry", "registry.invalid:5000"],
        &[
            ("HTTP_PROXY", &format!("http://{}", proxy.host)),
            ("NO_PROXY", ""),
        ],
    )?;
    let name = "registry.invalid:5000/proxied";
    engine.docker(&["pull", name])?.ok()?;
    assert_eq!(engine.inspect(name, "{{.Id}}")?, pushed.id);
    Ok(())
}

/// Runs `docker build` (classic builder) of `dockerfile` with `args`, as the CLI user would.
fn build_from(
    engine: &Engine,
    dockerfile: &str,
    args: &[&str],
) -> Result<rmachine_tests_engine::Run> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("Dockerfile"), dockerfile)?;
    let d = dir.path().to_string_lossy().into_owned();
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push(&d);
    Ok(engine
        .docker_command(&all)
        .env("DOCKER_BUILDKIT", "0")
        .output()?
        .into())
}

#[test]
fn build_pulls_a_missing_from_image_with_the_clis_logins() -> Result<()> {
    let Some((engine, registry)) = setup(Auth::Htpasswd)? else {
        return Ok(());
    };
    let pushed = seed(&registry, "private/base", Some("latest"), &busybox()?)?;
    let dockerfile = format!(
        "FROM {}/private/base\nRUN echo built > /built\n",
        registry.host
    );
    let anonymous = build_from(&engine, &dockerfile, &["-t", "app"])?;
    assert_ne!(anonymous.code, 0, "{anonymous:?}");
    assert!(
        anonymous.stderr.contains("pull access denied for"),
        "{anonymous:?}"
    );
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, "");

    let mut cmd = engine.docker_command(&["login", "-u", USER, "--password-stdin", &registry.host]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        format!("{PASSWORD}\n").as_bytes(),
    )?;
    assert!(child.wait_with_output()?.status.success());

    // The CLI sends its logins in X-Registry-Config; the builder pulls with them.
    let built = build_from(&engine, &dockerfile, &["-t", "app"])?.ok()?;
    assert!(
        built.stdout.contains(&format!(
            "Status: Downloaded newer image for {}/private/base:latest",
            registry.host
        )),
        "{built:?}"
    );
    assert!(
        built.stdout.contains("Successfully tagged app:latest"),
        "{built:?}"
    );
    let base = format!("{}/private/base", registry.host);
    assert_eq!(engine.inspect(&base, "{{.Id}}")?, pushed.id);
    let run = engine
        .docker(&["run", "--rm", "app", "cat", "/built"])?
        .ok()?;
    assert_eq!(run.stdout, "built\n");

    // --pull asks the registry again even though the image is here.
    let again = build_from(&engine, &dockerfile, &["--pull", "-t", "app"])?.ok()?;
    assert!(
        again
            .stdout
            .contains(&format!("Status: Image is up to date for {base}:latest")),
        "{again:?}"
    );
    Ok(())
}

#[test]
fn docker_py_pushes_and_pulls_with_credentials() -> Result<()> {
    let Some(mut python) = rmachine_tests_engine::docker_py() else {
        return Ok(());
    };
    let Some((engine, registry)) = setup(Auth::Htpasswd)? else {
        return Ok(());
    };
    engine.load_busybox()?;
    let repository = format!("{}/py/bb", registry.host);
    engine
        .docker(&["tag", "busybox:latest", &format!("{repository}:1")])?
        .ok()?;
    let id = engine.inspect("busybox:latest", "{{.Id}}")?;
    // docker-py sends the credentials as X-Registry-Auth; push errors arrive in the stream.
    let script = r#"
import sys, docker
client = docker.DockerClient(base_url="unix://" + sys.argv[1])
repo, user, password = sys.argv[2], sys.argv[3], sys.argv[4]
denied = list(client.images.push(repo, tag="1", stream=True, decode=True,
                                 auth_config={"username": user, "password": "wrong"}))
print("denied:", [m.get("error") for m in denied if "error" in m])
pushed = list(client.images.push(repo, tag="1", stream=True, decode=True,
                                 auth_config={"username": user, "password": password}))
errors = [m["error"] for m in pushed if "error" in m]
if errors:
    sys.exit("push failed: %s" % errors)
print("pushed:", [m["aux"]["Digest"] for m in pushed if "aux" in m])
client.images.remove(repo + ":1")
image = client.images.pull(repo, tag="1", auth_config={"username": user, "password": password})
print("pulled:", image.id, ",".join(image.tags))
try:
    client.images.pull(repo, tag="1", auth_config={"username": user, "password": "wrong"})
    print("wrong credentials pulled")
except docker.errors.APIError as e:
    print("refused:", e.explanation)
"#;
    let out = python
        .args(["-c", script])
        .arg(&engine.socket)
        .args([&repository, USER, PASSWORD])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("denied: ['unauthorized: "), "{stdout}");
    assert!(stdout.contains("pushed: ['sha256:"), "{stdout}");
    let pulled = stdout
        .lines()
        .find(|l| l.starts_with("pulled: "))
        .with_context(|| format!("no pull in {stdout}"))?;
    assert!(pulled.starts_with(&format!("pulled: {id} ")), "{stdout}");
    assert!(
        pulled
            .split([' ', ','])
            .any(|t| t == format!("{repository}:1")),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused: pull access denied for"),
        "{stdout}"
    );
    engine
        .docker(&["run", "--rm", &format!("{repository}:1"), "true"])?
        .ok()?;
    Ok(())
}
