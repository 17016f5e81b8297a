//! `docker save` and its round trip through `docker load`, through the real CLI.

use std::io::Read;

use rmachine_tests_engine::Engine;

#[test]
fn save_several_images_rmi_and_load_them_back() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "c1",
            "busybox",
            "sh",
            "-c",
            "echo one > /one",
        ])?
        .ok()?;
    engine.docker(&["commit", "c1", "first:v1"])?.ok()?;
    engine.docker(&["rm", "c1"])?.ok()?;
    engine.docker(&["tag", "busybox", "second:v2"])?.ok()?;
    let first_id = engine.inspect("first:v1", "{{.Id}}")?;
    let second_id = engine.inspect("second:v2", "{{.Id}}")?;

    let out = engine.dir().join("both.tar");
    let out_s = out.to_string_lossy().into_owned();
    engine
        .docker(&["save", "-o", &out_s, "first:v1", "second:v2"])?
        .ok()?;

    // Docker 25+'s layout: OCI index and blobs beside manifest.json.
    let mut names = Vec::new();
    let mut manifest = serde_json::Value::Null;
    for entry in tar::Archive::new(std::fs::File::open(&out)?).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.display().to_string();
        if name == "manifest.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = serde_json::from_str(&text)?;
        }
        names.push(name);
    }
    for wanted in ["index.json", "oci-layout", "manifest.json", "repositories"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    assert_eq!(manifest.as_array().map(Vec::len), Some(2), "{manifest}");
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["first:v1"]));

    engine
        .docker(&["rmi", "first:v1", "second:v2", "busybox"])?
        .ok()?;
    assert!(engine
        .docker(&["images", "-q"])?
        .ok()?
        .stdout
        .trim()
        .is_empty());
    let load = engine.docker(&["load", "-i", &out_s])?.ok()?;
    assert!(
        load.stdout.contains("Loaded image: first:v1"),
        "{}",
        load.stdout
    );
    assert!(
        load.stdout.contains("Loaded image: second:v2"),
        "{}",
        load.stdout
    );
    assert_eq!(engine.inspect("first:v1", "{{.Id}}")?, first_id);
    assert_eq!(engine.inspect("second:v2", "{{.Id}}")?, second_id);
    let run = engine
        .docker(&["run", "--rm", "first:v1", "cat", "/one"])?
        .ok()?;
    assert_eq!(run.stdout, "one\n");

    // Saved by id: no tag comes back.
    let by_id = engine.dir().join("id.tar");
    let by_id_s = by_id.to_string_lossy().into_owned();
    engine
        .docker(&["save", "-o", &by_id_s, &second_id[7..19]])?
        .ok()?;
    engine.docker(&["rmi", "second:v2"])?.ok()?;
    let load = engine.docker(&["load", "-i", &by_id_s])?.ok()?;
    assert_eq!(load.stdout.trim(), format!("Loaded image ID: {second_id}"));

    // A bare repository name saves every tag of it.
    engine.docker(&["tag", "first:v1", "first:v1b"])?.ok()?;
    let repo = engine.dir().join("repo.tar");
    let repo_s = repo.to_string_lossy().into_owned();
    engine.docker(&["save", "-o", &repo_s, "first"])?.ok()?;
    engine.docker(&["rmi", "first:v1", "first:v1b"])?.ok()?;
    let load = engine.docker(&["load", "-i", &repo_s])?.ok()?;
    assert!(
        load.stdout.contains("Loaded image: first:v1\n"),
        "{}",
        load.stdout
    );
    assert!(
        load.stdout.contains("Loaded image: first:v1b"),
        "{}",
        load.stdout
    );

    let missing = engine.docker(&["save", "-o", &by_id_s, "nosuch"])?;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("No such image: nosuch:latest"),
        "{}",
        missing.stderr
    );
    Ok(())
}
