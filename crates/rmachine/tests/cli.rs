//! CLI tests: the built `rmachine` binary against a temporary store, checking what a user sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A temporary store and a way to run `rmachine` on it.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, |_| {})
    }

    fn run_with(&self, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmachine"));
        cmd.args(args)
            .env("RMACHINE_STORAGE_PATH", self.store())
            .env_remove("RMACHINE_GUEST_IMAGE")
            .env_remove("RMACHINE_DRIVER")
            .env_remove("DOCKER_HOST")
            .env("SHELL", "/bin/bash")
            .stdin(Stdio::null());
        tweak(&mut cmd);
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("run rmachine");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Writes a machine record for a stopped QEMU machine, as `create` would have left it.
    fn write_machine(&self, name: &str) -> PathBuf {
        let dir = self.store().join("machines").join(name);
        std::fs::create_dir_all(&dir).expect("machine dir");
        let record = serde_json::json!({
            "ConfigVersion": 1,
            "Driver": {
                "IPAddress": "127.0.0.1",
                "MachineName": name,
                "SSHUser": "root",
                "SSHPort": 40022,
                "EnginePort": 42376,
                "SSHKeyPath": dir.join("id_ed25519"),
                "StorePath": self.store(),
                "qemuAccel": "tcg"
            },
            "DriverName": "qemu",
            "HostOptions": {
                "EngineOptions": {"Env": [], "InsecureRegistry": [], "Labels": ["provider=qemu"],
                                  "RegistryMirror": [], "TlsVerify": true},
                "AuthOptions": {"CertDir": "", "CaCertPath": "", "CaPrivateKeyPath": "",
                                "ServerCertPath": "", "ServerKeyPath": "", "ClientKeyPath": "",
                                "ClientCertPath": "", "ServerCertSANs": [], "StorePath": dir}
            },
            "Name": name,
            "Vm": {
                "cpus": 1, "memoryMb": 1024, "diskSizeMb": 20000,
                "boot": {"kernel": "/k", "initrd": "/i", "cmdline": ""},
                "configDrive": dir.join("config.img"),
                "guestPorts": {"ssh": 22, "engine": 2376}
            },
            "Created": "2026-01-01T00:00:00Z"
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&record).expect("json"),
        )
        .expect("write record");
        dir
    }
}

const NOPE: &str = "Docker machine \"nope\" does not exist. Use \"rmachine ls\" to list machines. Use \"rmachine create\" to add a new one.\n";

/// An image whose manifest sums do not match its files.
fn corrupt_image(dir: &Path) {
    std::fs::create_dir_all(dir).expect("image dir");
    std::fs::write(dir.join("vmlinuz"), b"kernel").expect("kernel");
    std::fs::write(dir.join("initrd.img"), b"initrd").expect("initrd");
    let manifest = serde_json::json!({
        "version": "t1", "arch": "x86_64", "kernel": "vmlinuz", "initrd": "initrd.img",
        "cmdline": "", "sha256": {"vmlinuz": "00", "initrd.img": "00"}
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("manifest");
}

#[test]
fn ls_on_an_empty_store_prints_the_header_only() {
    let env = Env::new();
    let run = env.run(&["ls"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "NAME   ACTIVE   DRIVER   STATE   URL   SWARM   DOCKER   ERRORS\n"
    );
    assert_eq!(env.run(&["ls", "-q"]).stdout, "");
}

#[test]
fn unknown_machines_get_docker_machines_message() {
    let env = Env::new();
    for args in [
        &["inspect", "nope"][..],
        &["ssh", "nope"],
        &["status", "nope"],
        &["env", "nope"],
    ] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}");
        assert_eq!(run.stderr, format!("Error: {NOPE}"), "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    let run = env.run(&["rm", "-y", "nope"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, format!("Error removing host \"nope\": {NOPE}"));
}

#[test]
fn create_rejects_a_bad_name_and_leaves_nothing() {
    let env = Env::new();
    let run = env.run(&["create", "bad name!"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "Error creating machine: Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -\n"
    );
    assert!(!env.store().join("machines").exists());
}

#[test]
fn create_with_an_unknown_driver() {
    let env = Env::new();
    let run = env.run(&["create", "-d", "bogus", "x"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "Error: Driver \"bogus\" not found.\n");
    assert!(!env.store().join("machines").exists());
}

#[test]
fn create_with_a_missing_guest_image_names_the_path() {
    let env = Env::new();
    let run = env.run(&[
        "create",
        "--no-progress",
        "--guest-image",
        "/nonexistent",
        "x",
    ]);
    assert_ne!(run.code, 0);
    assert_eq!(
        run.stderr,
        "Error creating machine: guest image /nonexistent: no manifest.json there; \
         run guest/build.sh or pass --guest-image DIR\n"
    );
    assert!(!env.store().join("machines/x").exists());
}

#[test]
fn create_with_a_corrupt_guest_image_is_refused() {
    let env = Env::new();
    let image = env.dir.path().join("image");
    corrupt_image(&image);
    let run = env.run(&[
        "create",
        "--no-progress",
        "--guest-image",
        image.to_str().unwrap_or(""),
        "x",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "Error creating machine: guest image file {} is corrupt: sha256 ",
            image.join("initrd.img").display()
        )),
        "{}",
        run.stderr
    );
    assert!(!env.store().join("machines/x").exists());
}

#[test]
fn env_unset_renders_for_the_shell() {
    let env = Env::new();
    let run = env.run(&["env", "-u", "--shell", "fish"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let program = env!("CARGO_BIN_EXE_rmachine");
    assert_eq!(
        run.stdout,
        format!(
            "set -e DOCKER_TLS_VERIFY;\nset -e DOCKER_HOST;\nset -e DOCKER_CERT_PATH;\n\
             set -e DOCKER_MACHINE_NAME;\nset -e DOCKER_BUILDKIT;\n\
             # Run this command to configure your shell: \n\
             # eval ({program} env -u --shell fish)\n"
        )
    );
    let run = env.run(&["env", "-u", "x"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "Error: Expected no machine name when the -u flag is present\n"
    );
}

#[test]
fn env_without_a_shell_says_how_to_pick_one() {
    let env = Env::new();
    let run = env.run_with(&["env", "-u"], |c| {
        c.env("SHELL", "");
    });
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "The default lines below are for a sh/bash shell, you can specify the shell you're using, with the --shell flag.\n\n"
    );
    assert_eq!(run.stderr, "Error: Unknown shell\n");
}

#[test]
fn a_stopped_machine_is_listed_inspected_and_removed() {
    let env = Env::new();
    let dir = env.write_machine("m1");

    let run = env.run(&["status", "m1"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Stopped\n"),
        "{}",
        run.stderr
    );

    let run = env.run(&["ls"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "NAME   ACTIVE   DRIVER   STATE     URL   SWARM   DOCKER    ERRORS\n\
         m1     -        qemu     Stopped                 Unknown   \n"
    );
    assert_eq!(env.run(&["ls", "-q"]).stdout, "m1\n");
    assert_eq!(
        env.run(&["ls", "-q", "--filter", "state=running"]).stdout,
        ""
    );

    let run = env.run(&[
        "inspect",
        "-f",
        "{{.Driver.IPAddress}} {{.DriverName}} {{json .HostOptions.EngineOptions.Labels}}",
        "m1",
    ]);
    assert_eq!(
        run.stdout, "127.0.0.1 qemu [\"provider=qemu\"]\n",
        "{}",
        run.stderr
    );
    let run = env.run(&["inspect", "m1"]);
    assert!(
        run.stdout.starts_with("{\n    \"ConfigVersion\": 1,\n"),
        "{}",
        run.stdout
    );

    for args in [&["env", "--shell", "fish", "m1"][..], &["config", "m1"]] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}");
        assert_eq!(
            run.stderr, "Error checking TLS connection: Host is not running\n",
            "{args:?}"
        );
    }
    let run = env.run(&["url", "m1"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Error: Host is not running\n")
    );
    let run = env.run(&["ssh", "m1", "true"]);
    assert_eq!(
        run.stderr,
        "Error: Cannot run SSH command: Host \"m1\" is not running\n"
    );

    // Without a terminal and without -y, rm refuses instead of waiting for an answer.
    let run = env.run(&["rm", "m1"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "About to remove m1\nWARNING: This action will delete both local reference and remote instance.\n"
    );
    assert!(run.stderr.contains("pass -y"), "{}", run.stderr);
    assert!(dir.exists());

    let run = env.run(&["rm", "-y", "m1"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Successfully removed m1\n"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists());
    assert!(
        env.store().join("machines").exists(),
        "rm must delete only the machine's directory"
    );
}

#[test]
fn the_default_machine_is_used_when_no_name_is_given() {
    let env = Env::new();
    let run = env.run(&["status"]);
    assert_eq!(
        run.stderr,
        "Error: No machine name(s) specified and no \"default\" machine exists\n"
    );
    env.write_machine("default");
    let run = env.run(&["status"]);
    assert_eq!(run.stdout, "Stopped\n", "{}", run.stderr);
}

#[test]
fn precheck_failure_exits_3_and_writes_nothing() {
    let env = Env::new();
    let image = env.dir.path().join("image");
    std::fs::create_dir_all(&image).expect("image dir");
    std::fs::write(image.join("vmlinuz"), b"kernel").expect("kernel");
    std::fs::write(image.join("initrd.img"), b"initrd").expect("initrd");
    let sum = |name: &str| {
        let out = Command::new("sha256sum")
            .arg(image.join(name))
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let manifest = serde_json::json!({
        "version": "t1", "arch": "x86_64", "kernel": "vmlinuz", "initrd": "initrd.img",
        "cmdline": "", "sha256": {"vmlinuz": sum("vmlinuz"), "initrd.img": sum("initrd.img")}
    });
    std::fs::write(image.join("manifest.json"), manifest.to_string()).expect("manifest");
    let run = env.run(&[
        "create",
        "--no-progress",
        "--guest-image",
        image.to_str().unwrap_or(""),
        "--qemu-program",
        "/nonexistent/qemu-system-x86_64",
        "x",
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("Error with pre-create check: \""),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "Running pre-create checks...\n");
    assert!(
        !env.store().exists(),
        "nothing may be written before the precheck passes"
    );
}
