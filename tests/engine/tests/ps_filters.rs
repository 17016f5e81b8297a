//! `docker ps --filter`: names as regular expressions, ids as unique prefixes (daemon/list.go).

use anyhow::Context;
use rmachine_tests_engine::Engine;

#[test]
fn name_filters_are_regular_expressions_with_or_without_the_slash() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for name in ["web", "web2", "myweb"] {
        engine
            .docker(&["create", "--name", name, "busybox", "true"])?
            .ok()?;
    }
    let names = |filter: &str| -> anyhow::Result<Vec<String>> {
        let run = engine
            .docker(&["ps", "-a", "--filter", filter, "--format", "{{.Names}}"])?
            .ok()?;
        let mut names: Vec<String> = run.stdout.lines().map(str::to_string).collect();
        names.sort();
        Ok(names)
    };
    assert_eq!(names("name=^/web$")?, ["web"]);
    assert_eq!(names("name=web")?, ["myweb", "web", "web2"]);
    assert_eq!(names("name=^/web")?, ["web", "web2"]);
    assert_eq!(names("name=web[0-9]")?, ["web2"]);
    // dockerd matches the name with and without its slash (daemon/list.go, since 18.09).
    assert_eq!(names("name=^web")?, ["web", "web2"]);
    assert!(names("name=^eb")?.is_empty());
    Ok(())
}

#[test]
fn id_filters_take_unique_prefixes_as_dockerd_does() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Create containers until two share a first hex digit: an ambiguous prefix.
    let mut ids: Vec<String> = Vec::new();
    let (shared, pair) = loop {
        let id = engine
            .docker(&["create", "busybox", "true"])?
            .ok()?
            .stdout
            .trim()
            .to_string();
        if let Some(other) = ids.iter().find(|i| i[..1] == id[..1]) {
            break (id[..1].to_string(), [other.clone(), id]);
        }
        ids.push(id);
    };
    let filter = |value: &str| -> anyhow::Result<Vec<String>> {
        let run = engine
            .docker(&[
                "ps",
                "-a",
                "--no-trunc",
                "-q",
                "--filter",
                &format!("id={value}"),
            ])?
            .ok()?;
        let mut out: Vec<String> = run.stdout.lines().map(str::to_string).collect();
        out.sort();
        Ok(out)
    };
    let one = &pair[0];
    // A unique prefix, or the whole id: that container.
    let unique = (2..=64)
        .map(|n| &one[..n])
        .find(|p| !pair[1].starts_with(p))
        .context("no unique prefix")?;
    assert_eq!(filter(unique)?, std::slice::from_ref(one));
    assert_eq!(filter(one)?, std::slice::from_ref(one));
    // An ambiguous prefix picks nothing, nor does a piece from the middle of an id.
    assert!(filter(&shared)?.is_empty());
    assert!(filter(&one[10..20])?.is_empty());
    // Several values add up.
    let mut both = pair.to_vec();
    both.sort();
    let run = engine
        .docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "-q",
            "--filter",
            &format!("id={}", pair[0]),
            "--filter",
            &format!("id={}", pair[1]),
        ])?
        .ok()?;
    let mut got: Vec<String> = run.stdout.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, both);
    Ok(())
}
