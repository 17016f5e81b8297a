//! Store-level tests: archives are built here, in memory, in both formats.

use super::testutil::{gzip, TarBuilder, TempDir};
use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An image config with the given diff ids; `cmd` varies it so ids differ.
fn config(diff_ids: &[String], cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": [cmd],
            "WorkingDir": "/work",
            "Labels": {"org.example": "yes"},
            "ExposedPorts": {"80/tcp": {}},
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}]
    }))
    .unwrap()
}

fn base_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755);
    t.file_with("bin/sh", b"#!fake shell\n", 0o755, 0, 0, 1_600_000_000);
    t.dir("etc", 0o755);
    t.file("etc/motd", b"hello\n");
    t.dir("var", 0o755);
    t.dir("var/cache", 0o755);
    t.file("var/cache/old", b"old");
    t.finish()
}

fn top_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755);
    t.file("etc/.wh.motd", b"");
    t.file("etc/new", b"new");
    t.dir("var/cache", 0o755);
    t.file("var/cache/.wh..wh..opq", b"");
    t.file("var/cache/fresh", b"fresh");
    t.finish()
}

/// Entries of a `docker save` archive.
struct SaveImage {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    tags: Vec<&'static str>,
}

fn docker_save(images: &[SaveImage]) -> Vec<u8> {
    let mut t = TarBuilder::new();
    let mut manifest = Vec::new();
    for img in images {
        let config_name = format!("{}.json", &sha(&img.config)[7..]);
        t.file(&config_name, &img.config);
        let mut layer_names = Vec::new();
        for layer in &img.layers {
            let dir = &sha(layer)[7..];
            let name = format!("{dir}/layer.tar");
            t.dir(dir, 0o755);
            t.file(&name, layer);
            layer_names.push(name);
        }
        manifest.push(json!({"Config": config_name, "RepoTags": img.tags, "Layers": layer_names}));
    }
    t.file("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    t.finish()
}

/// An OCI layout with gzip layers; `name` goes into the containerd annotation.
fn oci_layout(config: &[u8], layers: &[Vec<u8>], name: Option<&str>) -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    t.dir("blobs", 0o755);
    t.dir("blobs/sha256", 0o755);
    let mut descs = Vec::new();
    for layer in layers {
        let gz = gzip(layer);
        t.file(&format!("blobs/sha256/{}", &sha(&gz)[7..]), &gz);
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha(&gz),
            "size": gz.len()
        }));
    }
    t.file(&format!("blobs/sha256/{}", &sha(config)[7..]), config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    t.file(&format!("blobs/sha256/{}", &sha(&manifest)[7..]), &manifest);
    let mut annotations = serde_json::Map::new();
    if let Some(name) = name {
        annotations.insert("io.containerd.image.name".into(), json!(name));
        annotations.insert("org.opencontainers.image.ref.name".into(), json!("latest"));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
            "annotations": annotations
        }]
    });
    t.file("index.json", &serde_json::to_vec(&index).unwrap());
    t.finish()
}

fn load(store: &ImageStore, archive: &[u8]) -> Result<Vec<String>, ImageError> {
    let mut seen = Vec::new();
    let lines = store.load(&mut &archive[..], &mut |l| seen.push(l.to_string()))?;
    assert_eq!(lines, seen, "progress and result must agree");
    Ok(lines)
}

fn two_layer_image(tags: Vec<&'static str>) -> (SaveImage, String) {
    let layers = vec![base_layer(), top_layer()];
    let config = config(&[sha(&layers[0]), sha(&layers[1])], "sh");
    let id = sha(&config);
    (
        SaveImage {
            config,
            layers,
            tags,
        },
        id,
    )
}

fn never_used(_: &str) -> Option<String> {
    None
}

fn tmp_is_empty(store_root: &Path) -> bool {
    fs::read_dir(store_root.join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn docker_save_load_list_resolve_inspect() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    let diff_ids = vec![sha(&image.layers[0]), sha(&image.layers[1])];
    assert_eq!(
        load(&store, &docker_save(&[image])).unwrap(),
        vec!["Loaded image: busybox:latest"]
    );
    assert!(tmp_is_empty(tmp.path()));

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    let item = serde_json::to_value(&list[0]).unwrap();
    assert_eq!(item["Id"], json!(id));
    assert_eq!(item["RepoTags"], json!(["busybox:latest"]));
    assert_eq!(item["RepoDigests"], json!([]));
    assert_eq!(item["ParentId"], json!(""));
    assert_eq!(item["Created"], json!(1_704_164_645));
    // bin/sh (13) + motd (6) + old (3) in the base, new (3) + fresh (5) on top.
    assert_eq!(item["Size"], json!(30));
    assert_eq!(item["SharedSize"], json!(-1));
    assert_eq!(item["Containers"], json!(-1));
    assert_eq!(item["Labels"], json!({"org.example": "yes"}));

    let hex = &id[7..];
    for reference in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "library/busybox",
        id.as_str(),
        hex,
        &hex[..12],
        &hex[..3],
        &format!("sha256:{}", &hex[..12]),
    ] {
        let rec = store
            .resolve(reference)
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(rec.id, id, "{reference}");
    }
    let rec = store.resolve("busybox").unwrap();
    assert_eq!(rec.repo_tags, vec!["busybox:latest"]);
    assert_eq!(rec.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(rec.config.env, vec!["PATH=/usr/bin:/bin"]);
    assert_eq!(rec.config.working_dir, "/work");
    assert_eq!(rec.config.exposed_ports, vec!["80/tcp"]);
    assert_eq!(rec.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(rec.config.entrypoint, None);
    assert_eq!(rec.created, "2024-01-02T03:04:05Z");
    assert_eq!(rec.size, 30);

    let err = store.resolve("busybox:1.36").unwrap_err();
    assert_eq!(err.to_string(), "No such image: busybox:1.36");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert_eq!(
        store.resolve("nope").unwrap_err().to_string(),
        "No such image: nope:latest"
    );
    let missing = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        store.resolve(&missing).unwrap_err().to_string(),
        format!("No such image: {missing}")
    );
    let bad = store.resolve("BusyBox").unwrap_err();
    assert!(matches!(bad, ImageError::InvalidReference { .. }), "{bad}");
    assert_eq!(
        bad.to_string(),
        "invalid reference format: repository name (library/BusyBox) must be lowercase"
    );

    let body = serde_json::to_value(store.inspect("busybox").unwrap()).unwrap();
    assert_eq!(body["Id"], json!(id));
    assert_eq!(body["RepoTags"], json!(["busybox:latest"]));
    assert_eq!(body["RepoDigests"], json!([]));
    assert_eq!(body["Parent"], json!(""));
    assert_eq!(body["Comment"], json!(""));
    assert_eq!(body["Created"], json!("2024-01-02T03:04:05Z"));
    assert_eq!(body["Architecture"], json!("amd64"));
    assert_eq!(body["Os"], json!("linux"));
    assert_eq!(body["Size"], json!(30));
    assert_eq!(body["Config"]["Cmd"], json!(["sh"]));
    assert_eq!(body["Config"]["Env"], json!(["PATH=/usr/bin:/bin"]));
    assert_eq!(body["Config"]["Hostname"], json!(""));
    assert_eq!(body["Config"]["Entrypoint"], Value::Null);
    assert_eq!(
        body["RootFS"],
        json!({"Type": "layers", "Layers": diff_ids})
    );
    let last_tag = body["Metadata"]["LastTagTime"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(last_tag).is_ok(),
        "{last_tag}"
    );
}

#[test]
fn oci_layout_gzip_loads_with_the_same_id_and_its_annotation_tag() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec![]);
    // The whole archive gzip-compressed too, as `docker load` accepts.
    let archive = gzip(&oci_layout(
        &image.config,
        &image.layers,
        Some("docker.io/library/busybox:1.36"),
    ));
    assert_eq!(
        load(&store, &archive).unwrap(),
        vec!["Loaded image: busybox:1.36"]
    );
    assert_eq!(store.resolve("busybox:1.36").unwrap().id, id);
    let layers = store.rootfs_layers(&id).unwrap();
    assert_eq!(fs::read(layers[0].join("etc/new")).unwrap(), b"new");
    assert_eq!(fs::read(layers[1].join("etc/motd")).unwrap(), b"hello\n");
}

#[test]
fn untagged_archives_print_the_image_id() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec![]);
    assert_eq!(
        load(&store, &oci_layout(&image.config, &image.layers, None)).unwrap(),
        vec![format!("Loaded image ID: {id}")]
    );
    assert_eq!(
        load(&store, &docker_save(&[image])).unwrap(),
        vec![format!("Loaded image ID: {id}")]
    );
    assert_eq!(store.list().unwrap()[0].repo_tags, Vec::<String>::new());
}

#[test]
fn reloading_moves_a_tag_and_leaves_the_old_image_dangling() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let layer = base_layer();
    let old_config = config(&[sha(&layer)], "old");
    let new_config = config(&[sha(&layer)], "new");
    let (old_id, new_id) = (sha(&old_config), sha(&new_config));
    let save = |config: &Vec<u8>| {
        docker_save(&[SaveImage {
            config: config.clone(),
            layers: vec![layer.clone()],
            tags: vec!["busybox:latest"],
        }])
    };
    load(&store, &save(&old_config)).unwrap();
    assert_eq!(
        load(&store, &save(&old_config)).unwrap(),
        vec!["Loaded image: busybox:latest"],
        "reloading the same image moves nothing"
    );
    assert_eq!(
        load(&store, &save(&new_config)).unwrap(),
        vec![
            format!("The image busybox:latest already exists, renaming the old one with ID {old_id} to empty string"),
            "Loaded image: busybox:latest".to_string(),
        ]
    );
    assert_eq!(store.resolve("busybox").unwrap().id, new_id);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    let old = list.iter().find(|i| i.id == old_id).unwrap();
    assert!(old.repo_tags.is_empty());
    // Both images share the one layer directory.
    assert_eq!(
        store.rootfs_layers(&old_id).unwrap(),
        store.rootfs_layers(&new_id).unwrap()
    );
}

#[test]
fn state_survives_reopening() {
    let tmp = TempDir::new();
    let (image, id) = two_layer_image(vec!["busybox:latest", "example.com/team/app:v1"]);
    {
        let store = ImageStore::open(tmp.path()).unwrap();
        load(&store, &docker_save(&[image])).unwrap();
        store.tag(&id, "mine").unwrap();
    }
    let store = ImageStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.resolve(&id).unwrap().repo_tags,
        vec!["busybox:latest", "example.com/team/app:v1", "mine:latest"]
    );
    let repos: Value =
        serde_json::from_slice(&fs::read(tmp.path().join("repositories.json")).unwrap()).unwrap();
    assert_eq!(
        repos["Repositories"]["busybox"]["busybox:latest"],
        json!(id)
    );
    assert_eq!(store.rootfs_layers(&id).unwrap().len(), 2);
}

#[test]
fn tag_validates_and_moves() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    load(&store, &docker_save(&[image])).unwrap();
    store.tag("busybox", "localhost:5000/busybox:v2").unwrap();
    assert_eq!(store.resolve("localhost:5000/busybox:v2").unwrap().id, id);
    let bad = store.tag("busybox", "Bad").unwrap_err();
    assert!(matches!(bad, ImageError::InvalidReference { .. }), "{bad}");
    assert_eq!(
        store.tag("nope", "x").unwrap_err().to_string(),
        "No such image: nope:latest"
    );
}

#[test]
fn rootfs_layers_are_topmost_first_with_overlay_whiteouts() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    let (base_hex, top_hex) = (
        sha(&image.layers[0])[7..].to_string(),
        sha(&image.layers[1])[7..].to_string(),
    );
    load(&store, &docker_save(&[image])).unwrap();
    let layers = store.rootfs_layers(&id).unwrap();
    assert_eq!(
        layers,
        vec![
            tmp.path().join("layers").join(&top_hex).join("diff"),
            tmp.path().join("layers").join(&base_hex).join("diff"),
        ]
    );
    assert_eq!(store.rootfs_layers(&id[7..]).unwrap(), layers);
    let motd = fs::symlink_metadata(layers[0].join("etc/motd")).unwrap();
    assert!(motd.file_type().is_char_device());
    assert_eq!(motd.rdev(), 0);
    assert_eq!(
        layer::get_xattr(&layers[0].join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(layers[1].join("var/cache/old")).unwrap(), b"old");
    let sh = fs::metadata(layers[1].join("bin/sh")).unwrap();
    assert_eq!(sh.mode() & 0o7777, 0o755);
    assert_eq!(sh.mtime(), 1_600_000_000);
    assert!(matches!(
        store.rootfs_layers("sha256:0000").unwrap_err(),
        ImageError::NotFound { .. }
    ));
}

#[test]
fn remove_untags_then_deletes_image_and_unshared_layers() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest", "busybox:1"]);
    let layers = image.layers.clone();
    // A second image sharing only the base layer.
    let other_config = config(&[sha(&layers[0])], "other");
    let other_id = sha(&other_config);
    load(
        &store,
        &docker_save(&[
            image,
            SaveImage {
                config: other_config,
                layers: vec![layers[0].clone()],
                tags: vec!["other:latest"],
            },
        ]),
    )
    .unwrap();
    let short = &id[7..19];

    let err = store.remove(&id, false, &never_used).unwrap_err();
    assert!(
        matches!(err, ImageError::InUse { .. } | ImageError::Conflict { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories")
    );

    assert_eq!(
        store.remove("busybox:1", false, &never_used).unwrap(),
        vec![DeleteItem::Untagged("busybox:1".into())]
    );
    assert_eq!(
        store.resolve("busybox").unwrap().repo_tags,
        vec!["busybox:latest"]
    );

    let top_dir = store.rootfs_layers(&id).unwrap()[0]
        .parent()
        .unwrap()
        .to_path_buf();
    let base_dir = store.rootfs_layers(&id).unwrap()[1]
        .parent()
        .unwrap()
        .to_path_buf();
    let items = store.remove("busybox", false, &never_used).unwrap();
    let top_chain = chain_ids(&[sha(&layers[0]), sha(&layers[1])])[1].clone();
    assert_eq!(
        items,
        vec![
            DeleteItem::Untagged("busybox:latest".into()),
            DeleteItem::Deleted(id.clone()),
            DeleteItem::Deleted(top_chain),
        ]
    );
    assert_eq!(
        serde_json::to_value(&items).unwrap()[0],
        json!({"Untagged": "busybox:latest"})
    );
    assert!(!top_dir.exists(), "the unshared layer is deleted");
    assert!(base_dir.exists(), "the layer `other` uses is kept");
    assert!(matches!(
        store.resolve(&id),
        Err(ImageError::NotFound { .. })
    ));
    assert_eq!(store.list().unwrap().len(), 1);

    // Deleting the last image by id removes its tag and its layer.
    let items = store.remove(&other_id[7..19], false, &never_used).unwrap();
    assert_eq!(
        items,
        vec![
            DeleteItem::Untagged("other:latest".into()),
            DeleteItem::Deleted(other_id.clone()),
            DeleteItem::Deleted(sha(&layers[0])),
        ]
    );
    assert!(!base_dir.exists());
    assert!(store.list().unwrap().is_empty());
    let reopened = ImageStore::open(tmp.path()).unwrap();
    assert!(reopened.list().unwrap().is_empty());
    assert_eq!(
        store
            .remove("other", false, &never_used)
            .unwrap_err()
            .to_string(),
        "No such image: other:latest"
    );
}

#[test]
fn remove_refuses_images_in_use_and_force_only_untags() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    let diff_ids = vec![sha(&image.layers[0]), sha(&image.layers[1])];
    load(&store, &docker_save(&[image])).unwrap();
    let cid = "c0ffee0123456789".repeat(4);
    let used = |image: &str| (image == id).then(|| cid.clone());

    let err = store.remove("busybox", false, &used).unwrap_err();
    assert!(
        matches!(err, ImageError::InUse { .. } | ImageError::Conflict { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "conflict: unable to remove repository reference \"busybox\" (must force) - container c0ffee012345 is using its referenced image {}",
            &id[7..19]
        )
    );
    let err = store.remove(&id, false, &used).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "conflict: unable to delete {} (must be forced) - image is being used by stopped container c0ffee012345",
            &id[7..19]
        )
    );

    // A second tag can go even while the image is used: the image keeps a name.
    store.tag(&id, "busybox:keep").unwrap();
    assert_eq!(
        store.remove("busybox:keep", false, &used).unwrap(),
        vec![DeleteItem::Untagged("busybox:keep".into())]
    );

    assert_eq!(
        store.remove("busybox", true, &used).unwrap(),
        vec![DeleteItem::Untagged("busybox:latest".into())]
    );
    // Still there, dangling, with its layers: the container needs them.
    assert!(store.resolve(&id).unwrap().repo_tags.is_empty());
    assert!(store.rootfs_layers(&id).unwrap().iter().all(|p| p.exists()));
    assert_eq!(store.remove(&id, true, &used).unwrap(), vec![]);
    assert_eq!(
        store.remove(&id, false, &never_used).unwrap(),
        vec![
            DeleteItem::Deleted(id.clone()),
            DeleteItem::Deleted(chain_ids(&diff_ids)[1].clone()),
            DeleteItem::Deleted(diff_ids[0].clone()),
        ]
    );
}

#[test]
fn digest_references_are_removed_like_tags() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    load(&store, &docker_save(&[image])).unwrap();
    let pulled = format!("busybox@sha256:{}", "a".repeat(64));
    let mirrored = format!("mirror/busybox@sha256:{}", "b".repeat(64));
    store.add_repo_digest(&id, &pulled).unwrap();
    store.add_repo_digest(&id, &mirrored).unwrap();

    // Its references span two repositories: by id it needs force, as moby's.
    let err = store.remove(&id, false, &never_used).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("image is referenced in multiple repositories"),
        "{err}"
    );

    // `rmi name@digest` drops that RepoDigest only; the image keeps its tag.
    assert_eq!(
        store.remove(&pulled, false, &never_used).unwrap(),
        vec![DeleteItem::Untagged(pulled.clone())]
    );
    let reopened = ImageStore::open(tmp.path()).unwrap();
    let summary = reopened.list().unwrap().remove(0);
    assert_eq!(summary.repo_tags, vec!["busybox:latest"]);
    assert_eq!(summary.repo_digests, vec![mirrored.clone()]);

    // The repository's last tag takes its digests along; another repository's digest keeps
    // the image.
    store.add_repo_digest(&id, &pulled).unwrap();
    assert_eq!(
        store.remove("busybox", false, &never_used).unwrap(),
        vec![
            DeleteItem::Untagged("busybox:latest".into()),
            DeleteItem::Untagged(pulled.clone()),
        ]
    );
    let summary = store.list().unwrap().remove(0);
    assert!(summary.repo_tags.is_empty());
    assert_eq!(summary.repo_digests, vec![mirrored.clone()]);

    // The last reference gone, the image goes.
    let items = store.remove(&mirrored, false, &never_used).unwrap();
    assert_eq!(items[0], DeleteItem::Untagged(mirrored.clone()));
    assert_eq!(items[1], DeleteItem::Deleted(id.clone()));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn an_id_with_one_tag_and_its_digest_is_one_reference() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    load(&store, &docker_save(&[image])).unwrap();
    let pulled = format!("busybox@sha256:{}", "c".repeat(64));
    store.add_repo_digest(&id, &pulled).unwrap();
    let items = store.remove(&id[7..19], false, &never_used).unwrap();
    assert_eq!(
        items[..3],
        [
            DeleteItem::Untagged("busybox:latest".into()),
            DeleteItem::Untagged(pulled),
            DeleteItem::Deleted(id.clone()),
        ]
    );
}

#[test]
fn a_wrong_diff_id_fails_the_load_and_leaves_nothing() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let layer = base_layer();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let archive = docker_save(&[SaveImage {
        config: config(std::slice::from_ref(&wrong), "sh"),
        layers: vec![layer.clone()],
        tags: vec!["busybox:latest"],
    }]);
    let err = load(&store, &archive).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&sha(&layer)), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert!(fs::read_dir(tmp.path().join("layers"))
        .unwrap()
        .next()
        .is_none());
    assert!(tmp_is_empty(tmp.path()));
}

#[test]
fn a_hostile_layer_fails_the_load_and_writes_nothing_outside() {
    let tmp = TempDir::new();
    let store_root = tmp.path().join("store");
    let store = ImageStore::open(&store_root).unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let mut t = TarBuilder::new();
    t.symlink("escape", victim.to_str().unwrap());
    t.file("escape/owned", b"pwned");
    let layer = t.finish();
    let archive = docker_save(&[SaveImage {
        config: config(&[sha(&layer)], "sh"),
        layers: vec![layer],
        tags: vec!["evil:latest"],
    }]);
    let err = load(&store, &archive).unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    assert!(fs::read_dir(&victim).unwrap().next().is_none());
    assert!(fs::read_dir(store_root.join("layers"))
        .unwrap()
        .next()
        .is_none());
    assert!(tmp_is_empty(&store_root));
    assert!(store.resolve("evil").is_err());
}

#[test]
fn outer_archive_paths_cannot_escape_staging() {
    let tmp = TempDir::new();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let mut t = TarBuilder::new();
    t.raw_file("../../escaped", b"x");
    let err = load(&store, &t.finish()).unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive { .. }), "{err}");
    assert!(!tmp.path().join("escaped").exists());
    assert!(!tmp.path().parent().unwrap().join("escaped").exists());
}

#[test]
fn garbage_and_empty_input_are_invalid_archives() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    for input in [
        &b""[..],
        b"not a tar at all, just some text that is long enough",
    ] {
        let err = load(&store, input).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::InvalidArchive { .. }
                    | ImageError::InvalidLayer { .. }
                    | ImageError::DiffIdMismatch { .. }
                    | ImageError::DigestMismatch { .. }
            ),
            "{err}"
        );
    }
    let mut t = TarBuilder::new();
    t.file("hello.txt", b"hi");
    let err = load(&store, &t.finish()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid image archive: neither manifest.json (docker save) nor index.json (OCI layout) found"
    );
}

#[test]
fn legacy_symlinked_layers_in_docker_save_are_followed() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let layer = base_layer();
    let cfg = config(&[sha(&layer), sha(&layer)], "sh");
    let mut t = TarBuilder::new();
    t.file("cfg.json", &cfg);
    t.file("one/layer.tar", &layer);
    t.symlink("two/layer.tar", "../one/layer.tar");
    t.file(
        "manifest.json",
        &serde_json::to_vec(&json!([{"Config": "cfg.json", "RepoTags": ["dup:1"], "Layers": ["one/layer.tar", "two/layer.tar"]}]))
            .unwrap(),
    );
    assert_eq!(
        load(&store, &t.finish()).unwrap(),
        vec!["Loaded image: dup:1"]
    );
    assert_eq!(store.rootfs_layers(&sha(&cfg)).unwrap().len(), 2);
}

#[test]
fn a_corrupted_oci_blob_is_refused() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, _) = two_layer_image(vec![]);
    let good = oci_layout(&image.config, &image.layers, Some("busybox"));
    // Re-pack with the config blob's content changed but its name kept.
    let mut out = TarBuilder::new();
    let mut archive = tar::Archive::new(&good[..]);
    let config_name = format!("blobs/sha256/{}", &sha(&image.config)[7..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path == config_name {
            data[0] = b' ';
        }
        if entry.header().entry_type().is_dir() {
            out.dir(&path, 0o755);
        } else {
            out.file(&path, &data);
        }
    }
    let err = load(&store, &out.finish()).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn id_references_are_told_from_tags() {
    let id = format!("sha256:{}", "ab12".repeat(16));
    assert!(is_id_reference(&id, &id));
    assert!(is_id_reference(&id[7..], &id));
    assert!(is_id_reference("ab12ab", &id));
    assert!(is_id_reference("sha256:ab12", &id));
    assert!(!is_id_reference("busybox", &id));
    assert!(!is_id_reference("busybox:latest", &id));
    assert!(!is_id_reference("", &id));
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>(_: &T) {}
    let tmp = TempDir::new();
    let store = std::sync::Arc::new(ImageStore::open(tmp.path()).unwrap());
    shareable(&store);
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    let archive = docker_save(&[image]);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let archive = archive.clone();
            std::thread::spawn(move || load(&store, &archive).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec!["Loaded image: busybox:latest"]);
    }
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.resolve("busybox").unwrap().id, id);
    assert!(tmp_is_empty(tmp.path()));
}

#[test]
fn a_damaged_image_is_skipped_when_the_store_opens() {
    let tmp = TempDir::new();
    let (image, id) = two_layer_image(vec!["busybox:latest"]);
    let layer = base_layer();
    let other_config = config(&[sha(&layer)], "other");
    let other_id = sha(&other_config);
    {
        let store = ImageStore::open(tmp.path()).unwrap();
        load(
            &store,
            &docker_save(&[
                image,
                SaveImage {
                    config: other_config,
                    layers: vec![layer],
                    tags: vec!["other:latest"],
                },
            ]),
        )
        .unwrap();
    }
    fs::remove_file(tmp.path().join("blobs/sha256").join(&id[7..])).unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let ids: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![other_id]);
    assert_eq!(
        store.resolve("busybox").unwrap_err().to_string(),
        "No such image: busybox:latest"
    );
}

#[test]
fn save_writes_the_exact_layer_tars_and_loads_back_with_the_same_ids() {
    let tmp = TempDir::new();
    let store = ImageStore::open(&tmp.path().join("a")).unwrap();
    let (image, id) = two_layer_image(vec!["example:v1"]);
    let layers = image.layers.clone();
    load(&store, &docker_save(&[image])).unwrap();
    store.tag(&id, "example:v2").unwrap();

    // A layer rebuilds byte for byte from its tar-split and extracted tree.
    let mut rebuilt = Vec::new();
    let out = store.write_layer(&sha(&layers[1]), &mut rebuilt).unwrap();
    assert_eq!(rebuilt, layers[1]);
    assert_eq!(out.diff_id, sha(&layers[1]));

    let mut saved = Vec::new();
    store
        .save(
            &["example:v1".to_string(), "example:v2".to_string()],
            &mut saved,
        )
        .unwrap();
    let mut names = Vec::new();
    let mut manifest = Value::Null;
    let mut index = Value::Null;
    for e in tar::Archive::new(&saved[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut content = Vec::new();
        io::Read::read_to_end(&mut e, &mut content).unwrap();
        if name == "manifest.json" {
            manifest = serde_json::from_slice(&content).unwrap();
        }
        if name == "index.json" {
            index = serde_json::from_slice(&content).unwrap();
        }
        names.push(name);
    }
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    assert!(names.contains(&format!("blobs/sha256/{}", &id[7..])));
    assert_eq!(manifest[0]["RepoTags"], json!(["example:v1", "example:v2"]));
    assert_eq!(
        manifest[0]["Layers"],
        json!([
            format!("blobs/sha256/{}", &sha(&layers[0])[7..]),
            format!("blobs/sha256/{}", &sha(&layers[1])[7..])
        ])
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/example:v1"
    );

    // Into another store: same id, same tags.
    let other = ImageStore::open(&tmp.path().join("b")).unwrap();
    let lines = load(&other, &saved).unwrap();
    assert_eq!(
        lines,
        vec!["Loaded image: example:v1", "Loaded image: example:v2"]
    );
    assert_eq!(other.resolve("example:v2").unwrap().id, id);

    // An id-only save carries no tags.
    let mut by_id = Vec::new();
    store.save(&[id[7..19].to_string()], &mut by_id).unwrap();
    let third = ImageStore::open(&tmp.path().join("c")).unwrap();
    assert_eq!(
        load(&third, &by_id).unwrap(),
        vec![format!("Loaded image ID: {id}")]
    );
}

#[test]
fn create_image_stacks_a_layer_on_its_parent_with_history() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, parent) = two_layer_image(vec!["example:v1"]);
    load(&store, &docker_save(&[image])).unwrap();
    let mut t = TarBuilder::new();
    t.file("added", b"hello");
    let layer = t.finish();
    let id = store
        .create_image(NewImage {
            parent: Some(parent.clone()),
            config: json!({"architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z", "config": {"Cmd": ["x"]}}),
            steps: vec![
                NewStep {
                    layer: Some(Box::new(io::Cursor::new(layer.clone()))),
                    history: HistoryEntry {
                        created: "2025-01-01T00:00:00Z".to_string(),
                        created_by: "sh -c touch added".to_string(),
                        comment: "a comment".to_string(),
                        ..HistoryEntry::default()
                    },
                },
                NewStep {
                    layer: Some(Box::new(io::Cursor::new(vec![0u8; 1024]))),
                    history: HistoryEntry::default(),
                },
            ],
            tag: Some("example:child".to_string()),
        })
        .unwrap();
    let inspect = store.inspect("example:child").unwrap();
    assert_eq!(inspect.id, id);
    assert_eq!(inspect.parent, parent);
    assert_eq!(inspect.root_fs.layers.len(), 3);
    assert_eq!(inspect.root_fs.layers[2], sha(&layer));
    let history = store.history("example:child").unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0].id, id);
    assert_eq!(history[0].size, 0, "the empty layer adds nothing");
    // dockerd names one entry per image down the local parent chain, whatever the steps.
    assert_eq!(history[1].id, parent);
    assert_eq!(history[1].tags, vec!["example:v1"]);
    assert_eq!(history[1].comment, "a comment");
    assert_eq!(history[2].id, "<missing>");
    assert_eq!(history[2].created_by, "test");
    let layers = store.rootfs_layers(&id).unwrap();
    assert_eq!(fs::read(layers[0].join("added")).unwrap(), b"hello");

    // A corrupt layer stores nothing.
    let before = store.list().unwrap().len();
    let err = store
        .create_image(NewImage {
            parent: None,
            config: json!({}),
            steps: vec![NewStep {
                layer: Some(Box::new(io::Cursor::new(layer[..700].to_vec()))),
                history: HistoryEntry::default(),
            }],
            tag: None,
        })
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    assert_eq!(store.list().unwrap().len(), before);
    assert!(tmp_is_empty(tmp.path()));
}

#[test]
fn a_layer_without_tar_split_that_does_not_rebuild_fails_save_up_front() {
    let tmp = TempDir::new();
    let store = ImageStore::open(tmp.path()).unwrap();
    let (image, id) = two_layer_image(vec!["example:v1"]);
    let top = sha(&image.layers[1]);
    load(&store, &docker_save(&[image])).unwrap();
    // As a store written before tar-splits were kept.
    fs::remove_file(tmp.path().join("layers").join(&top[7..]).join(TAR_SPLIT)).unwrap();
    let err = store.save_selection(std::slice::from_ref(&id)).unwrap_err();
    assert!(err.to_string().contains("without its tar-split"), "{err}");
    let mut out = Vec::new();
    assert!(store.save(&[id], &mut out).is_err());
}

#[test]
fn a_saved_archive_loads_through_its_oci_index_alone() {
    let tmp = TempDir::new();
    let store = ImageStore::open(&tmp.path().join("a")).unwrap();
    let (image, id) = two_layer_image(vec!["example:v1"]);
    load(&store, &docker_save(&[image])).unwrap();
    let mut saved = Vec::new();
    store.save(&["example:v1".to_string()], &mut saved).unwrap();
    // The same archive without the classic files: what an OCI-only reader sees.
    let mut oci_only = tar::Builder::new(Vec::new());
    for e in tar::Archive::new(&saved[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "manifest.json" || name == "repositories" {
            continue;
        }
        let mut header = e.header().clone();
        let mut content = Vec::new();
        io::Read::read_to_end(&mut e, &mut content).unwrap();
        oci_only
            .append_data(&mut header, &name, &content[..])
            .unwrap();
    }
    let other = ImageStore::open(&tmp.path().join("b")).unwrap();
    let lines = load(&other, &oci_only.into_inner().unwrap()).unwrap();
    assert_eq!(lines, vec!["Loaded image: example:v1"]);
    assert_eq!(other.resolve("example:v1").unwrap().id, id);
}
