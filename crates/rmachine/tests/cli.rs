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
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
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
fn usage_errors_are_reported_as_docker_machine_reports_them() {
    let env = Env::new();
    // urfave/cli: "Incorrect Usage.", a blank line and the command's help on stdout; Go's
    // flag error on stderr.
    for (args, stderr, help) in [
        (
            &["create", "--bogus", "m1"][..],
            "flag provided but not defined: -bogus\n",
            "Usage: rmachine create",
        ),
        (
            &["ls", "--bogus=1"][..],
            "flag provided but not defined: -bogus\n",
            "Usage: rmachine ls",
        ),
        (
            &["--bogus"][..],
            "flag provided but not defined: -bogus\n",
            "Usage: rmachine [OPTIONS] <COMMAND>",
        ),
        (
            &["create", "m1", "--driver"][..],
            "flag needs an argument: -driver\n",
            "Usage: rmachine create",
        ),
    ] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, stderr, "{args:?}");
        assert!(
            run.stdout.starts_with("Incorrect Usage.\n\n"),
            "{args:?}: {}",
            run.stdout
        );
        assert!(run.stdout.contains(help), "{args:?}: {}", run.stdout);
    }
    // A missing machine name: the command's help, then its own error.
    for (args, stderr) in [
        (&["create"][..], "Error: No machine name specified\n"),
        (
            &["rm"][..],
            "Error: Expected to get one or more machine names as arguments\n",
        ),
    ] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}");
        assert_eq!(run.stderr, stderr, "{args:?}");
        let usage = format!("Usage: rmachine {} [OPTIONS] <NAME", args[0]);
        assert!(run.stdout.contains(&usage), "{}", run.stdout);
        assert!(!run.stdout.contains("Incorrect Usage."), "{}", run.stdout);
    }
    // No command at all: the help, as docker-machine.
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("Usage: rmachine"), "{}", run.stdout);
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
        assert_eq!(run.stderr, NOPE, "{args:?}");
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
    assert_eq!(
        run.stderr,
        "Driver \"bogus\" not found. Available drivers: qemu, virtualbox, hyperv, generic\n"
    );
    assert!(!env.store().join("machines").exists());
}

#[test]
fn create_generic_help_lists_its_flags_only() {
    let env = Env::new();
    let help = env.run(&["create", "-d", "generic", "--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    for flag in [
        "--generic-ip-address",
        "--generic-ssh-user",
        "--generic-ssh-key",
        "--generic-ssh-port",
    ] {
        assert!(help.stdout.contains(flag), "{flag}: {}", help.stdout);
    }
    assert!(!help.stdout.contains("--qemu-"), "{}", help.stdout);
    let qemu = env.run(&["create", "--help"]);
    assert!(!qemu.stdout.contains("--generic-"), "{}", qemu.stdout);
}

#[test]
fn create_generic_refuses_vm_sizing_options() {
    let env = Env::new();
    let run = env.run(&[
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        "192.0.2.1",
        "--cpus",
        "4",
        "--published-bind-address",
        "0.0.0.0",
        "x",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "Error creating machine: --cpus: driver generic uses an existing host as it is\n--published-bind-address: driver generic uses an existing host as it is\n"
    );
    assert!(!env.store().join("machines").join("x").exists());
}

/// A generic machine boots no guest image: the flags are refused by name, while the
/// environment's image settings (meant for the machines that boot one) are ignored.
#[test]
fn create_generic_refuses_guest_image_flags_and_ignores_their_environment() {
    let env = Env::new();
    let run = env.run(&[
        "create",
        "-d",
        "generic",
        "--generic-ip-address",
        "192.0.2.1",
        "--guest-image",
        "/images/g1",
        "--guest-image-url",
        "https://example.com/{version}/",
        "x",
    ]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error creating machine: --guest-image: driver generic boots no guest image\n--guest-image-url: driver generic boots no guest image\n"
        )
    );
    let run = env.run_with(
        &[
            "create",
            "-d",
            "generic",
            "--generic-ssh-key",
            "/nonexistent/key",
            "x",
        ],
        |cmd| {
            cmd.env("RMACHINE_GUEST_IMAGE", "/images/g1")
                .env("RMACHINE_GUEST_IMAGE_URL", "https://example.com/{version}/");
        },
    );
    // The driver's own precheck is what stops this one.
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            3,
            "Error with pre-create check: \"invalid generic options: --generic-ip-address is required; ssh key /nonexistent/key does not exist\"\n"
        )
    );
    assert!(!env.store().join("machines").join("x").exists());
}

#[test]
fn create_generic_without_an_address_says_what_is_missing_and_leaves_nothing() {
    let env = Env::new();
    let run = env.run(&[
        "create",
        "-d",
        "generic",
        "--generic-ssh-key",
        "/nonexistent/key",
        "x",
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "Error with pre-create check: \"invalid generic options: --generic-ip-address is required; ssh key /nonexistent/key does not exist\"\n"
    );
    assert!(!env.store().join("machines").join("x").exists());
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
         run guest/build.sh or pass --guest-image PATH|URL\n"
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
        (1, "Host is not running\n")
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

/// A guest image whose manifest matches its (dummy) files.
fn valid_image(image: &Path) {
    image_with_initrd(image, b"initrd");
}

/// A guest image whose initramfs is `initrd`.
fn image_with_initrd(image: &Path, initrd: &[u8]) {
    std::fs::create_dir_all(image).expect("image dir");
    std::fs::write(image.join("vmlinuz"), b"kernel").expect("kernel");
    std::fs::write(image.join("initrd.img"), initrd).expect("initrd");
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
}

#[test]
fn precheck_failure_exits_3_and_writes_nothing() {
    let env = Env::new();
    let image = env.dir.path().join("image");
    valid_image(&image);
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

#[test]
fn qemu_does_not_inherit_the_callers_descriptors() {
    let env = Env::new();
    let image = env.dir.path().join("image");
    valid_image(&image);
    // A stand-in QEMU that reports whether descriptor 7, which the caller opened without
    // close-on-exec, reached it.
    let report = env.dir.path().join("report");
    let qemu = env.dir.path().join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        format!(
            "#!/bin/sh\nif [ -e /proc/$$/fd/7 ]; then echo leaked; else echo clean; fi >> {}\nexit 1\n",
            report.display()
        ),
    )
    .expect("stand-in qemu");
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&qemu)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let run = env.run_with(&[], |cmd| {
        // `sh` opens descriptor 7 without close-on-exec and execs rmachine with it, as a test
        // runner or `3>&1`-style redirection would.
        let rmachine = cmd.get_program().to_owned();
        let image = image.to_str().unwrap_or("").to_owned();
        let qemu = qemu.to_str().unwrap_or("").to_owned();
        *cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec \"$@\" 7>/dev/null")
            .arg("sh")
            .arg(rmachine)
            .args(["create", "--no-progress", "--guest-image", &image])
            .args(["--qemu-program", &qemu, "x"])
            .env("RMACHINE_STORAGE_PATH", env.store())
            .env_remove("RMACHINE_GUEST_IMAGE")
            .env_remove("RMACHINE_DRIVER")
            .stdin(Stdio::null());
    });
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&report).expect("the stand-in ran"),
        "clean\n"
    );
}

#[test]
fn errors_are_printed_alone_as_docker_machine_does() {
    let env = Env::new();
    env.write_machine("m1");
    let run = env.run(&["create", "--no-progress", "m1"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Docker machine \"m1\" already exists\n")
    );
}

#[test]
fn scp_names_unknown_and_stopped_machines() {
    let env = Env::new();
    let run = env.run(&["scp", "/etc/hostname", "nope:/tmp/"]);
    assert_eq!((run.code, run.stderr.as_str()), (1, NOPE));
    env.write_machine("m1");
    let run = env.run(&["scp", "-r", "m1:/etc", "/tmp/x"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error: Cannot run SCP command: Host \"m1\" is not running\n"
        )
    );
    let run = env.run(&["scp", "docker@m1:/etc/hostname", "."]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "scp: user \"docker\": the guest has only the user \"root\"\n"
        )
    );
    // Both sides local: a plain copy, and a missing source is named.
    let src = env.dir.path().join("src.txt");
    std::fs::write(&src, "hi").expect("src");
    let dst = env.dir.path().join("dst.txt");
    let run = env.run(&[
        "scp",
        src.to_str().unwrap_or(""),
        dst.to_str().unwrap_or(""),
    ]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&dst).expect("copied"), "hi");
    let run = env.run(&["scp", "/nonexistent/x", dst.to_str().unwrap_or("")]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "scp: /nonexistent/x: No such file or directory\n")
    );
}

#[test]
fn regenerate_certs_asks_then_makes_a_new_engine_certificate() {
    let env = Env::new();
    let dir = env.write_machine("m1");

    // Without a terminal and without -f it refuses instead of waiting for an answer.
    let run = env.run(&["regenerate-certs", "m1"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): \n"
    );
    assert!(run.stderr.contains("pass -f"), "{}", run.stderr);
    assert!(!dir.join("server.pem").exists());

    let run = env.run(&[
        "regenerate-certs",
        "-f",
        "--client-certs",
        "--no-progress",
        "m1",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("Regenerating TLS certificates\n"),
        "{}",
        run.stdout
    );
    let first = std::fs::read_to_string(dir.join("server.pem")).expect("server.pem");
    assert!(env.store().join("certs/ca.pem").exists());

    let run = env.run(&["regenerate-certs", "-f", "--no-progress", "m1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let second = std::fs::read_to_string(dir.join("server.pem")).expect("server.pem");
    assert_ne!(first, second, "a new certificate each time");

    let run = env.run(&["regenerate-certs", "-f", "nope"]);
    assert_eq!((run.code, run.stderr.as_str()), (1, NOPE));
}

#[test]
fn ls_filters_as_docker_machine_does() {
    let env = Env::new();
    env.write_machine("web1");
    env.write_machine("db1");
    let names = |filters: &[&str]| {
        let mut args = vec!["ls", "-q"];
        for filter in filters {
            args.extend(["--filter", filter]);
        }
        let run = env.run(&args);
        assert_eq!(run.code, 0, "{filters:?}: {}", run.stderr);
        run.stdout
    };
    assert_eq!(names(&["name=^w.b"]), "web1\n");
    assert_eq!(names(&["name=web1", "name=db1"]), "db1\nweb1\n");
    assert_eq!(names(&["label=provider=QEMU"]), "db1\nweb1\n");
    assert_eq!(names(&["label=provider=virtualbox"]), "");
    assert_eq!(names(&["driver=qemu", "state=stopped", "name=db"]), "db1\n");
    assert_eq!(names(&["swarm=anything"]), "");

    let run = env.run(&["ls", "--filter", "nokey"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Unsupported filter syntax\n")
    );
    let run = env.run(&["ls", "--filter", "color=red"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Unsupported filter key 'color'\n")
    );
    let run = env.run(&["ls", "--filter", "name=["]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("regex parse error"),
        "{}",
        run.stderr
    );
}

#[test]
fn completion_scripts_for_each_shell() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F _rmachine"),
        ("zsh", "#compdef rmachine"),
        ("fish", "complete -c rmachine"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let run = env.run(&["completion", shell]);
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        assert!(run.stdout.contains("regenerate-certs"), "{shell}");
    }
    let run = env.run(&["completion", "tcsh"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("invalid value 'tcsh'"),
        "{}",
        run.stderr
    );
}

#[test]
fn rm_removes_the_machines_docker_context_only() {
    let env = Env::new();
    env.write_machine("m1");
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .env("DOCKER_CONFIG", env.dir.path().join("docker"))
            .output()
            .expect("docker runs")
    };
    for (name, description) in [("m1", "rmachine machine m1"), ("mine", "my own")] {
        let out = docker(&[
            "context",
            "create",
            name,
            "--description",
            description,
            "--docker",
            "host=tcp://127.0.0.1:1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = env.run(&["rm", "-y", "m1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = docker(&["context", "ls", "--format", "{{.Name}}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "default\nmine\n");
}

#[test]
fn inspect_templates_range_index_and_print_lists_as_go_does() {
    let env = Env::new();
    env.write_machine("m1");
    let inspect = |format: &str| env.run(&["inspect", "-f", format, "m1"]);
    let run = inspect("{{.HostOptions.EngineOptions.Labels}}");
    assert_eq!(run.stdout, "[provider=qemu]\n", "{}", run.stderr);
    let run = inspect("{{range .HostOptions.EngineOptions.Labels}}label {{.}};{{end}}");
    assert_eq!(run.stdout, "label provider=qemu;\n", "{}", run.stderr);
    let run =
        inspect("{{index .Driver \"SSHPort\"}} {{index .HostOptions.EngineOptions.Labels 0}}");
    assert_eq!(run.stdout, "40022 provider=qemu\n", "{}", run.stderr);
    let run = inspect("{{range .X}}");
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "template: unbalanced range in \"{{range .X}}\"\n")
    );
}

#[test]
fn upgrade_names_a_missing_image_and_unknown_machines() {
    let env = Env::new();
    env.write_machine("m1");
    let run = env.run(&["upgrade", "--guest-image", "/nonexistent", "m1"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "guest image /nonexistent: no manifest.json there; run guest/build.sh or pass --guest-image PATH|URL\n"
        )
    );
    let run = env.run(&["upgrade", "nope"]);
    assert_eq!((run.code, run.stderr.as_str()), (1, NOPE));
    let run = env.run(&["provision", "m1"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Host is not running\n")
    );
}

#[test]
fn mount_needs_a_machine_path_and_a_running_machine() {
    let env = Env::new();
    env.write_machine("m1");
    let run = env.run(&["mount", "/local/only"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "/local/only: expected machine:path\n")
    );
    let run = env.run(&["mount", "m1:/root", "/mnt/x"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error: Cannot run SSH command: Host \"m1\" is not running\n"
        )
    );
    let run = env.run(&["mount", "nope:/root"]);
    assert_eq!((run.code, run.stderr.as_str()), (1, NOPE));
}

#[test]
fn the_port_agent_shows_in_inspect_and_goes_with_rm() {
    let env = Env::new();
    let dir = env.write_machine("m1");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_rmachine"))
        .args(["port-agent", "m1"])
        .env("RMACHINE_STORAGE_PATH", env.store())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let format = "{{.PortAgent.Running}} {{.PortAgent.Pid}} {{.PortAgent.Connected}}";
    let expected = format!("true {} false\n", agent.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut shown = String::new();
    while std::time::Instant::now() < deadline {
        shown = env.run(&["inspect", "-f", format, "m1"]).stdout;
        if shown == expected {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(shown, expected);
    // The machine is stopped: the agent says why it cannot follow the engine.
    let error = env
        .run(&["inspect", "-f", "{{.PortAgent.LastError}}", "m1"])
        .stdout;
    assert!(!error.trim().is_empty(), "{error:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("port-agent.pid"))
            .expect("pid file")
            .trim(),
        agent.id().to_string()
    );

    let run = env.run(&["rm", "-y", "m1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // rm waited for the agent, which has exited.
    let status = agent.try_wait().expect("wait for the agent");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent still running or failed"
    );
    assert!(!dir.exists());
}

#[test]
fn published_bind_address_must_be_an_ip_address() {
    let env = Env::new();
    let run = env.run(&["create", "--published-bind-address", "localhost", "m1"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "invalid value 'localhost' for '--published-bind-address <ADDR>': invalid IP address syntax"
        ),
        "{}",
        run.stderr
    );
    assert!(!env.store().exists());
}

/// Writes `rmachine-driver-NAME` (a shell script with `body`) into `dir`, executable.
fn write_plugin(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).expect("plugin dir");
    let path = dir.join(format!("rmachine-driver-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("plugin");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// A plugin speaking protocol 1 in shell: it declares two flags, records the precheck request
/// in `$PLUGIN_LOG` and fails it with a structured error.
const SHELL_PLUGIN: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed 's/^{"id":\([0-9]*\).*/\1/')
  case "$line" in
    *'"method":"handshake"'*)
      echo "{\"id\":$id,\"result\":{\"version\":1,\"info\":{\"name\":\"shelly\",\"capabilities\":{\"gracefulStop\":false,\"pause\":false,\"consoleLog\":false,\"shares\":false}}}}" ;;
    *'"method":"flags"'*)
      echo "{\"id\":$id,\"result\":{\"flags\":[{\"name\":\"shelly-zone\",\"help\":\"Zone to create the machine in\",\"kind\":\"string\",\"default\":\"eu\"},{\"name\":\"shelly-fast\",\"help\":\"Go fast\",\"kind\":\"bool\"}]}}" ;;
    *'"method":"precheck"'*)
      printf '%s\n' "$line" >> "$PLUGIN_LOG"
      echo "{\"id\":$id,\"error\":{\"kind\":\"failed\",\"message\":\"zone us is full\"}}" ;;
    *)
      echo "{\"id\":$id,\"error\":{\"kind\":\"badRequest\",\"message\":\"unexpected\"}}" ;;
  esac
done
"#;

fn with_plugins(dir: &Path) -> impl FnOnce(&mut Command) + '_ {
    move |cmd: &mut Command| {
        cmd.env("PATH", format!("{}:/usr/bin:/bin", dir.display()));
    }
}

#[test]
fn create_help_lists_only_the_chosen_drivers_flags() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "shelly", SHELL_PLUGIN);

    let help = env.run_with(
        &["create", "-d", "shelly", "--help"],
        with_plugins(&plugins),
    );
    assert_eq!(help.code, 0, "{}", help.stderr);
    assert!(
        help.stdout.contains("--shelly-zone <VALUE>")
            && help
                .stdout
                .contains("Zone to create the machine in [default: eu]")
            && help.stdout.contains("--shelly-fast"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains("--qemu-"), "{}", help.stdout);

    // The driver may also come from --driver=NAME or RMACHINE_DRIVER, as clap reads them.
    let long = env.run_with(
        &["create", "--driver=shelly", "--help"],
        with_plugins(&plugins),
    );
    assert!(long.stdout.contains("--shelly-zone"), "{}", long.stdout);
    let from_env = env.run_with(&["create", "--help"], |cmd| {
        with_plugins(&plugins)(cmd);
        cmd.env("RMACHINE_DRIVER", "shelly");
    });
    assert!(
        from_env.stdout.contains("--shelly-zone"),
        "{}",
        from_env.stdout
    );

    let qemu = env.run_with(&["create", "--help"], with_plugins(&plugins));
    assert!(qemu.stdout.contains("--qemu-accel"), "{}", qemu.stdout);
    assert!(!qemu.stdout.contains("--shelly-"), "{}", qemu.stdout);
    assert!(!qemu.stdout.contains("--virtualbox-"), "{}", qemu.stdout);

    let vbox = env.run(&["create", "-d", "virtualbox", "--help"]);
    assert!(
        vbox.stdout.contains("--virtualbox-memory"),
        "{}",
        vbox.stdout
    );
    assert!(!vbox.stdout.contains("--qemu-accel"), "{}", vbox.stdout);
    assert!(!vbox.stdout.contains("--hyperv-memory"), "{}", vbox.stdout);
    let hyperv = env.run(&["create", "--driver=hyperv", "--help"]);
    assert!(
        hyperv.stdout.contains("--hyperv-virtual-switch"),
        "{}",
        hyperv.stdout
    );
    assert!(!hyperv.stdout.contains("--generic-"), "{}", hyperv.stdout);
    // The flags every driver takes stay.
    assert!(vbox.stdout.contains("--memory") && hyperv.stdout.contains("--disk-size"));
}

#[test]
fn an_external_driver_gets_its_flags_and_its_errors_are_one_line() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "shelly", SHELL_PLUGIN);
    let log = env.dir.path().join("plugin.log");
    let image = env.dir.path().join("image");
    valid_image(&image);
    let image = image.to_string_lossy().into_owned();

    let run = env.run_with(
        &[
            "create",
            "--no-progress",
            "--guest-image",
            &image,
            "-d",
            "shelly",
            "--shelly-zone",
            "us",
            "--shelly-fast",
            "x",
        ],
        |cmd| {
            with_plugins(&plugins)(cmd);
            cmd.env("PLUGIN_LOG", &log);
        },
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "Error with pre-create check: \"driver shelly: zone us is full\"\n"
    );
    assert!(!env.store().join("machines/x").exists());
    let request: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).expect("log").trim()).expect("json");
    assert_eq!(
        request["params"]["options"],
        serde_json::json!({"shelly-zone": "us", "shelly-fast": true})
    );

    let foreign = env.run_with(
        &["create", "-d", "shelly", "--qemu-accel", "tcg", "x"],
        with_plugins(&plugins),
    );
    assert_eq!(foreign.code, 1);
    assert_eq!(
        foreign.stderr,
        "Error: --qemu-accel is a flag of the qemu driver, not of shelly\n"
    );
}

/// A plugin whose name starts like a built-in driver's (`qemu-remote`) still takes its own
/// flags; the built-in's stay refused.
#[test]
fn a_plugin_named_like_a_built_in_prefix_takes_its_own_flags() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(
        &plugins,
        "qemu-remote",
        &SHELL_PLUGIN.replace("shelly", "qemu-remote"),
    );
    let log = env.dir.path().join("plugin.log");
    let image = env.dir.path().join("image");
    valid_image(&image);
    let image = image.to_string_lossy().into_owned();
    let run = env.run_with(
        &[
            "create",
            "--no-progress",
            "--guest-image",
            &image,
            "-d",
            "qemu-remote",
            "--qemu-remote-zone",
            "us",
            "x",
        ],
        |cmd| {
            with_plugins(&plugins)(cmd);
            cmd.env("PLUGIN_LOG", &log);
        },
    );
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            3,
            "Error with pre-create check: \"driver qemu-remote: zone us is full\"\n"
        )
    );
    let request: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).expect("log").trim()).expect("json");
    assert_eq!(
        request["params"]["options"],
        serde_json::json!({"qemu-remote-zone": "us"})
    );
    let foreign = env.run_with(
        &["create", "-d", "qemu-remote", "--qemu-accel", "tcg", "x"],
        with_plugins(&plugins),
    );
    assert_eq!(
        (foreign.code, foreign.stderr.as_str()),
        (
            1,
            "Error: --qemu-accel is a flag of the qemu driver, not of qemu-remote\n"
        )
    );
}

/// Another driver's environment variables are ignored, as docker-machine ignores them; only
/// its typed flags are refused.
#[test]
fn another_drivers_environment_variables_are_ignored() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "shelly", SHELL_PLUGIN);
    let log = env.dir.path().join("plugin.log");
    let image = env.dir.path().join("image");
    valid_image(&image);
    let image = image.to_string_lossy().into_owned();
    let run = env.run_with(
        &[
            "create",
            "--no-progress",
            "--guest-image",
            &image,
            "-d",
            "shelly",
            "--shelly-zone",
            "us",
            "x",
        ],
        |cmd| {
            with_plugins(&plugins)(cmd);
            cmd.env("PLUGIN_LOG", &log)
                .env("QEMU_ACCEL", "bogus")
                .env("QEMU_PROGRAM", "/opt/qemu")
                .env("VIRTUALBOX_MEMORY_SIZE", "4096")
                .env("HYPERV_VIRTUAL_SWITCH", "External");
        },
    );
    // The plugin's precheck ran: nothing stopped the create before it.
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            3,
            "Error with pre-create check: \"driver shelly: zone us is full\"\n"
        )
    );
    // A typed flag of another driver is still refused, by its name.
    let typed = env.run_with(
        &["create", "-d", "shelly", "--virtualbox-memory", "4096", "x"],
        with_plugins(&plugins),
    );
    assert_eq!(
        (typed.code, typed.stderr.as_str()),
        (
            1,
            "Error: --virtualbox-memory is a flag of the virtualbox driver, not of shelly\n"
        )
    );
}

/// A plugin flag named like one of rmachine's own is refused at flag discovery.
#[test]
fn a_plugin_flag_that_shadows_a_create_flag_is_refused() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(
        &plugins,
        "engine",
        &SHELL_PLUGIN
            .replace("\\\"shelly\\\"", "\\\"engine\\\"")
            .replace("shelly-zone", "engine-env")
            .replace("shelly-fast", "engine-fast"),
    );
    let run = env.run_with(&["create", "-d", "engine", "x"], with_plugins(&plugins));
    assert_eq!(
        (run.code, run.stderr),
        (
            1,
            format!(
                "Error: driver engine: {} declares the flag --engine-env, which is already a flag of rmachine create; the plugin must rename it\n",
                plugins.join("rmachine-driver-engine").display()
            )
        )
    );
    let help = env.run_with(
        &["create", "-d", "engine", "--help"],
        with_plugins(&plugins),
    );
    assert_eq!(help.code, 1, "{}", help.stdout);
}

#[test]
fn unknown_drivers_list_the_plugins_on_path() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "shelly", SHELL_PLUGIN);
    let run = env.run_with(&["create", "-d", "bogus", "x"], with_plugins(&plugins));
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "Driver \"bogus\" not found. Available drivers: qemu, virtualbox, hyperv, generic, shelly\n"
    );
}

#[test]
fn broken_plugins_get_one_clear_line_each() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(
        &plugins,
        "crashy",
        "echo 'loading config' >&2\necho 'panic: no cloud credentials' >&2\nexit 3\n",
    );
    write_plugin(
        &plugins,
        "future",
        "read -r line\necho '{\"id\":1,\"result\":{\"version\":2,\"info\":{\"name\":\"future\",\"capabilities\":{}}}}'\n",
    );
    write_plugin(&plugins, "noisy", "read -r line\necho 'hello, world'\n");
    let program = |name: &str| plugins.join(format!("rmachine-driver-{name}"));
    let cases = [
        (
            "crashy",
            format!(
                "Error: driver crashy: {} exited with status 3 before answering handshake: panic: no cloud credentials\n",
                program("crashy").display()
            ),
        ),
        (
            "future",
            format!(
                "Error: driver future: {} speaks driver protocol version 2, rmachine speaks version 1\n",
                program("future").display()
            ),
        ),
        (
            "noisy",
            format!(
                "Error: driver noisy: {} answered handshake with \"hello, world\", which is not driver protocol 1\n",
                program("noisy").display()
            ),
        ),
    ];
    for (name, expected) in cases {
        let run = env.run_with(&["create", "-d", name, "x"], with_plugins(&plugins));
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert_eq!(run.stderr, expected, "{name}");
        assert!(!env.store().join("machines/x").exists(), "{name}");
    }
}

#[test]
fn rm_cleans_the_store_when_the_plugin_is_broken() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "crashy", "echo 'panic: gone' >&2\nexit 3\n");
    let dir = env.write_machine("m");
    let record_path = dir.join("config.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    record["DriverName"] = serde_json::json!("crashy");
    std::fs::write(&record_path, record.to_string()).expect("write record");

    let ls = env.run_with(&["ls"], with_plugins(&plugins));
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with("m ") && l.contains("exited with status 3")),
        "{}",
        ls.stdout
    );

    let rm = env.run_with(&["rm", "-y", "m"], with_plugins(&plugins));
    assert_eq!(rm.code, 1, "{}", rm.stderr);
    assert_eq!(rm.stderr.lines().count(), 1, "{}", rm.stderr);
    assert!(rm.stderr.contains("panic: gone"), "{}", rm.stderr);
    assert!(dir.exists());

    let forced = env.run_with(&["rm", "-f", "-y", "m"], with_plugins(&plugins));
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(!dir.exists());
}

/// A loopback HTTP server for the files of one directory, as a release page serves guest
/// images; it stops when dropped, so later requests are refused.
struct FileServer {
    url: String,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    fn serve(root: &Path) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, stopping) = (root.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let Ok(read_half) = conn.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(read_half);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let _ = match std::fs::read(root.join(path.trim_start_matches('/'))) {
                    Ok(body) => conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| conn.write_all(&body)),
                    Err(_) => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        Self {
            url: format!("http://{addr}/"),
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `create` of machine `x` from `image` with a QEMU that does not exist: it stops at the
/// precheck (exit 3), after the image was found or downloaded.
fn create_until_precheck(env: &Env, image: &str) -> Run {
    env.run_with(
        &[
            "create",
            "--no-progress",
            "--guest-image",
            image,
            "--qemu-program",
            "/nonexistent/qemu-system-x86_64",
            "x",
        ],
        |cmd| {
            for proxy in [
                "http_proxy",
                "HTTP_PROXY",
                "https_proxy",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "all_proxy",
            ] {
                cmd.env_remove(proxy);
            }
        },
    )
}

fn cache_entries(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.store().join("cache/guest"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The cache lock stays; staging directories must not.
                .filter(|name| name != ".lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn create_downloads_the_guest_image_once_then_works_offline() {
    let env = Env::new();
    let release = env.dir.path().join("release");
    valid_image(&release);
    let server = FileServer::serve(&release);
    let url = server.url.clone();
    let run = create_until_precheck(&env, &url);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "Downloading {url}initrd.img...\nDownloading {url}vmlinuz...\nRunning pre-create checks...\n"
        )
    );
    assert_eq!(cache_entries(&env), ["t1-x86_64"]);
    assert_eq!(
        std::fs::read(env.store().join("cache/guest/t1-x86_64/initrd.img")).expect("cached initrd"),
        b"initrd"
    );

    // Offline: the second create finds the image in the cache and never asks the network.
    drop(server);
    let run = create_until_precheck(&env, &url);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(run.stdout, "Running pre-create checks...\n");
}

#[test]
fn a_tampered_download_is_one_error_line_and_nothing_is_cached() {
    let env = Env::new();
    let release = env.dir.path().join("release");
    valid_image(&release);
    std::fs::write(release.join("vmlinuz"), b"not the kernel").expect("tamper");
    let server = FileServer::serve(&release);
    let run = create_until_precheck(&env, &server.url);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "Error creating machine: downloaded guest image file {}vmlinuz is corrupt: sha256 ",
            server.url
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("; it was discarded and nothing was cached\n"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(cache_entries(&env).is_empty(), "{:?}", cache_entries(&env));
    assert!(!env.store().join("machines/x").exists());
}

#[test]
fn an_unreachable_image_url_is_one_error_line() {
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/guest/", listener.local_addr().expect("address"));
    drop(listener);
    let run = create_until_precheck(&env, &url);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "Error creating machine: cannot download {url}manifest.json: "
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Connection refused"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_full_disk_while_downloading_is_one_error_line_and_nothing_is_cached() {
    let env = Env::new();
    let release = env.dir.path().join("release");
    image_with_initrd(&release, &vec![7u8; 2 << 20]);
    let server = FileServer::serve(&release);
    let store = env.store();
    std::fs::create_dir_all(&store).expect("store dir");
    // The store on a 1 MiB tmpfs in a mount namespace of its own: the 2 MiB initramfs cannot
    // fit. What the cache holds afterwards is listed from inside that namespace.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{store}' || exit 99; \
         \"$0\" create --no-progress --guest-image {url} \
           --qemu-program /nonexistent/qemu-system-x86_64 x; code=$?; \
         echo \"cache: $(ls -A '{store}/cache/guest')\"; exit $code",
        store = store.display(),
        url = server.url,
    );
    let run = env.run_with(&[], |cmd| {
        let rmachine = cmd.get_program().to_owned();
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(rmachine)
            .env("RMACHINE_STORAGE_PATH", &store)
            .env_remove("RMACHINE_GUEST_IMAGE")
            .env_remove("RMACHINE_DRIVER")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdin(Stdio::null());
        *cmd = unshare;
    });
    assert_eq!(run.code, 1, "needs root for the tmpfs: {}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "Error creating machine: cannot write the downloaded guest image to {}/cache/guest/.download-",
            store.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("/initrd.img; nothing was cached: No space left on device (os error 28)\n"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.ends_with("cache: \n"), "{}", run.stdout);
}

#[test]
fn an_interrupted_create_is_listed_as_an_error_and_rm_cleans_it() {
    let env = Env::new();
    let image = env.dir.path().join("image");
    valid_image(&image);
    // A stand-in QEMU that passes the precheck and then hangs where a real one boots.
    let booting = env.dir.path().join("booting");
    let qemu = env.dir.path().join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) echo 'QEMU emulator version 7.2.0'; exit 0;; esac\n\
             echo $$ > {booting}.tmp && mv {booting}.tmp {booting}\nexec sleep 120\n",
            booting = booting.display()
        ),
    )
    .expect("stand-in qemu");
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&qemu)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let mut create = Command::new(env!("CARGO_BIN_EXE_rmachine"))
        .args(["create", "--no-progress", "--guest-image"])
        .arg(&image)
        .arg("--qemu-program")
        .arg(&qemu)
        .args(["--qemu-accel", "tcg", "--no-share", "x"])
        .env("RMACHINE_STORAGE_PATH", env.store())
        .env("DOCKER_CONFIG", env.dir.path().join("docker"))
        .env_remove("RMACHINE_GUEST_IMAGE")
        .env_remove("RMACHINE_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start create");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !booting.exists() {
        if let Ok(Some(status)) = create.try_wait() {
            panic!("create ended before the VM booted: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in QEMU never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // While create runs, ls says so.
    let run = env.run(&["ls", "--format", "{{.Name}} {{.State}} {{.Error}}"]);
    assert_eq!(run.stdout, "x Creating \n", "{}", run.stderr);

    create.kill().expect("SIGKILL create");
    let _ = create.wait();
    if let Ok(pid) = std::fs::read_to_string(&booting) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }

    let run = env.run(&["ls", "--format", "{{.Name}} {{.State}} {{.Error}}"]);
    assert_eq!(
        run.stdout,
        "x Error create did not finish (interrupted); remove it with \"rmachine rm x\"\n",
        "{}",
        run.stderr
    );
    let run = env.run(&["rm", "-y", "x"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Successfully removed x\n"),
        "{}",
        run.stderr
    );
    assert!(!env.store().join("machines/x").exists());
    let run = env.run(&["ls", "-q"]);
    assert_eq!(run.stdout, "");
}

/// A plugin that makes its "VM" at create (a line in `$PLUGIN_LOG`), then hangs there, as a
/// hypervisor booting would; it logs every remove request (and hangs in it too when
/// `$PLUGIN_HANG_REMOVE` is set) and writes its pid to `$PLUGIN_PID`.
#[cfg(unix)]
const HANGING_PLUGIN: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed 's/^{"id":\([0-9]*\).*/\1/')
  case "$line" in
    *'"method":"handshake"'*)
      echo "{\"id\":$id,\"result\":{\"version\":1,\"info\":{\"name\":\"hangs\",\"capabilities\":{\"gracefulStop\":false,\"pause\":false,\"consoleLog\":false,\"shares\":false}}}}" ;;
    *'"method":"create"'*)
      echo create >> "$PLUGIN_LOG"
      echo $$ > "$PLUGIN_PID.tmp" && mv "$PLUGIN_PID.tmp" "$PLUGIN_PID"
      exec sleep 120 ;;
    *'"method":"flags"'*)
      echo "{\"id\":$id,\"result\":{\"flags\":[]}}" ;;
    *'"method":"remove"'*)
      echo remove >> "$PLUGIN_LOG"
      if [ -n "$PLUGIN_HANG_REMOVE" ]; then exec sleep 120; fi
      echo "{\"id\":$id,\"result\":null}" ;;
    *)
      echo "{\"id\":$id,\"result\":null}" ;;
  esac
done
"#;

/// Starts `create -d hangs x` and waits until the plugin is inside its create request.
#[cfg(unix)]
fn create_until_the_plugin_hangs(env: &Env, plugins: &Path) -> (std::process::Child, PathBuf) {
    create_until_the_plugin_hangs_with(env, plugins, |_| {})
}

/// [`create_until_the_plugin_hangs`], with `tweak` applied to the command.
#[cfg(unix)]
fn create_until_the_plugin_hangs_with(
    env: &Env,
    plugins: &Path,
    tweak: impl FnOnce(&mut Command),
) -> (std::process::Child, PathBuf) {
    let image = env.dir.path().join("image");
    valid_image(&image);
    let pid = env.dir.path().join("plugin.pid");
    let mut create = Command::new(env!("CARGO_BIN_EXE_rmachine"));
    create
        .args(["create", "--no-progress", "--guest-image"])
        .arg(&image)
        .args(["-d", "hangs", "x"])
        .env("RMACHINE_STORAGE_PATH", env.store())
        .env("DOCKER_CONFIG", env.dir.path().join("docker"))
        .env("PATH", format!("{}:/usr/bin:/bin", plugins.display()))
        .env("PLUGIN_LOG", env.dir.path().join("plugin.log"))
        .env("PLUGIN_PID", &pid)
        .env_remove("RMACHINE_GUEST_IMAGE")
        .env_remove("RMACHINE_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tweak(&mut create);
    let create = create.spawn().expect("start create");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pid.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never got the create request"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (create, pid)
}

#[cfg(unix)]
fn end_plugin(pid: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pid) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
}

/// A create ended during the driver's create by SIGTERM ends the plugin, then undoes the VM
/// through the driver; one ended by SIGKILL leaves a record, so `rm` still asks the driver to
/// remove what it made.
#[cfg(unix)]
#[test]
fn a_create_killed_during_the_drivers_create_leaves_nothing_the_driver_made() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "hangs", HANGING_PLUGIN);
    let log = env.dir.path().join("plugin.log");

    let (mut create, pid) = create_until_the_plugin_hangs(&env, &plugins);
    let term = Command::new("kill")
        .args(["-TERM", &create.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = create.wait().expect("create ends");
    assert!(!status.success());
    // The plugin creating the VM was ended (and reaped) before create exited.
    let plugin = std::fs::read_to_string(&pid).expect("plugin pid");
    let alive = Command::new("kill")
        .args(["-0", plugin.trim()])
        .stderr(Stdio::null())
        .status()
        .expect("kill -0");
    if alive.success() {
        end_plugin(&pid);
        panic!("the plugin outlived the interrupted create");
    }
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "create\nremove\n"
    );
    assert!(!env.store().join("machines/x").exists());

    std::fs::remove_file(&log).expect("log");
    std::fs::remove_file(&pid).expect("pid");
    let (mut create, pid) = create_until_the_plugin_hangs(&env, &plugins);
    create.kill().expect("SIGKILL create");
    let _ = create.wait();
    end_plugin(&pid);
    // Nothing but rm, ls and inspect acts on the half-made machine; the plugin hears nothing.
    let unfinished = "create did not finish (interrupted); remove it with \"rmachine rm x\"";
    for args in [
        &["start", "x"][..],
        &["stop", "x"],
        &["restart", "x"],
        &["kill", "x"],
        &["status", "x"],
        &["url", "x"],
        &["ip", "x"],
        &["env", "x"],
        &["config", "x"],
        &["ssh", "x", "true"],
        &["scp", "x:/etc/hostname", "."],
        &["regenerate-certs", "-f", "x"],
        &["provision", "x"],
        &["upgrade", "x"],
    ] {
        let run = env.run_with(args, |cmd| {
            with_plugins(&plugins)(cmd);
            cmd.env("PLUGIN_LOG", &log);
        });
        assert_ne!(run.code, 0, "{args:?}");
        assert!(run.stderr.contains(unfinished), "{args:?}: {}", run.stderr);
    }
    let run = env.run(&["inspect", "--format", "{{.DriverName}}", "x"]);
    assert_eq!(run.stdout, "hangs\n", "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "create\n");
    let run = env.run_with(&["rm", "-y", "x"], |cmd| {
        with_plugins(&plugins)(cmd);
        cmd.env("PLUGIN_LOG", &log);
    });
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Successfully removed x\n"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "create\nremove\n"
    );
    assert!(!env.store().join("machines/x").exists());
}

/// Waits (bounded) for `child` to end.
#[cfg(unix)]
fn wait_bounded(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// SIGHUP (the terminal gone: progress lines fail with EPIPE/EIO) still undoes the create; a
/// second signal during that undo ends create at once and leaves the machine for `rm`.
#[cfg(unix)]
#[test]
fn a_create_hung_up_still_undoes_and_a_second_signal_leaves_the_machine_for_rm() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    write_plugin(&plugins, "hangs", HANGING_PLUGIN);
    let log = env.dir.path().join("plugin.log");
    let (mut create, _) = create_until_the_plugin_hangs_with(&env, &plugins, |cmd| {
        cmd.stdout(Stdio::piped()).env("PLUGIN_HANG_REMOVE", "1");
    });
    // The terminal goes away: every later write to stdout fails.
    drop(create.stdout.take());
    let hup = Command::new("kill")
        .args(["-HUP", &create.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&log).unwrap_or_default() != "create\nremove\n" {
        if let Ok(Some(status)) = create.try_wait() {
            panic!("create ended before undoing: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "create never asked the driver to remove the VM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let term = Command::new("kill")
        .args(["-TERM", &create.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = wait_bounded(&mut create, "create, signalled twice,");
    assert!(!status.success());
    assert_ne!(status.code(), Some(101), "create panicked");
    let run = env.run(&["ls", "--format", "{{.Name}} {{.State}} {{.Error}}"]);
    assert_eq!(
        run.stdout,
        "x Error create did not finish (interrupted); remove it with \"rmachine rm x\"\n",
        "{}",
        run.stderr
    );
    let run = env.run_with(&["rm", "-y", "x"], |cmd| {
        with_plugins(&plugins)(cmd);
        cmd.env("PLUGIN_LOG", &log);
    });
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Successfully removed x\n"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "create\nremove\nremove\n"
    );
    assert!(!env.store().join("machines/x").exists());
}

#[test]
fn an_unknown_command_gets_docker_machines_message() {
    let env = Env::new();
    let run = env.run(&["bogus"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            1,
            "",
            format!(
                "rmachine: 'bogus' is not a rmachine command. See '{} --help'.\n",
                env!("CARGO_BIN_EXE_rmachine")
            )
            .as_str()
        )
    );
}

/// `guest/publish.sh` lays out release files that `create` downloads from a URL template like
/// the default one (`…/guest-v{version}-{arch}/`), for the guest's architecture.
#[test]
fn published_release_images_download_by_version_and_arch() {
    let env = Env::new();
    let version = env!("CARGO_PKG_VERSION");
    // What guest/build.sh writes and publish.sh requires: rmachine's version with a hash
    // after it, built with the plain release profile.
    let releasable = |dir: &Path, arch: &str| {
        let manifest = dir.join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
        json["arch"] = arch.into();
        json["version"] = format!("{version}-t1").into();
        json["buildProfile"] = "release".into();
        std::fs::write(&manifest, json.to_string()).expect("manifest");
    };
    let x86 = env.dir.path().join("out");
    valid_image(&x86);
    releasable(&x86, "x86_64");
    let arm = env.dir.path().join("out-aarch64");
    image_with_initrd(&arm, b"arm initrd");
    releasable(&arm, "aarch64");

    let publish = |dest: &Path| {
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../guest/publish.sh"
        ))
        .arg(dest)
        .args([&x86, &arm])
        .output()
        .expect("run guest/publish.sh")
    };
    let site = env.dir.path().join("site");
    let out = publish(&site);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for arch in ["x86_64", "aarch64"] {
        let mut files: Vec<String> =
            std::fs::read_dir(site.join(format!("guest-v{version}-{arch}")))
                .expect("release dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
        files.sort();
        assert_eq!(files, ["initrd.img", "manifest.json", "vmlinuz"], "{arch}");
    }
    // Publishing the same images again changes nothing; another image under the same
    // version is refused.
    assert!(publish(&site).status.success());
    image_with_initrd(&x86, b"other initrd");
    releasable(&x86, "x86_64");
    let out = publish(&site);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "guest-v{version}-x86_64 holds another image ({version}-t1); a published release is never replaced"
        )),
        "{stderr}"
    );
    // A file that does not match its manifest is never published.
    std::fs::write(x86.join("vmlinuz"), b"tampered").expect("kernel");
    let out = publish(&env.dir.path().join("site2"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vmlinuz: FAILED (its sha256 differs from the manifest's)"),
        "{stderr}"
    );
    assert!(!env
        .dir
        .path()
        .join("site2")
        .join(format!("guest-v{version}-x86_64"))
        .exists());
    valid_image(&x86);
    releasable(&x86, "x86_64");

    // An installed binary (outside the workspace's target/, so no guest/out is found)
    // downloads what the template names for the guest's architecture.
    let bin = env.dir.path().join("bin/rmachine");
    std::fs::create_dir_all(bin.parent().expect("bin dir")).expect("bin dir");
    std::fs::copy(env!("CARGO_BIN_EXE_rmachine"), &bin).expect("copy rmachine");
    let server = FileServer::serve(&site);
    let template = format!("{}guest-v{{version}}-{{arch}}/", server.url);
    let create = |extra: &[&str], name: &str| {
        let out = Command::new(&bin)
            .args(["create", "--no-progress", "--guest-image-url", &template])
            .args(["--qemu-program", "/nonexistent/qemu"])
            .args(extra)
            .arg(name)
            .env("RMACHINE_STORAGE_PATH", env.store())
            .env_remove("RMACHINE_GUEST_IMAGE")
            .env_remove("RMACHINE_GUEST_IMAGE_URL")
            .env_remove("RMACHINE_DRIVER")
            .env("DOCKER_CONFIG", env.dir.path().join("docker"))
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .expect("run rmachine");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = create(&[], "a");
    assert_eq!(code, Some(3), "{stdout}");
    let base = format!("{}guest-v{version}-x86_64/", server.url);
    assert!(
        stdout.starts_with(&format!(
            "Downloading {base}initrd.img...\nDownloading {base}vmlinuz...\n"
        )),
        "{stdout}"
    );
    let (code, stdout) = create(&["--qemu-arch", "aarch64"], "b");
    assert_eq!(code, Some(3), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Downloading {}guest-v{version}-aarch64/initrd.img",
            server.url
        )),
        "{stdout}"
    );
    assert_eq!(
        cache_entries(&env),
        [
            format!("{version}-t1-aarch64"),
            format!("{version}-t1-x86_64")
        ]
    );
    assert_eq!(
        std::fs::read(
            env.store()
                .join(format!("cache/guest/{version}-t1-aarch64/initrd.img"))
        )
        .expect("initrd"),
        b"arm initrd"
    );
}

/// Commands on several machines run on all of them at once, as docker-machine's do: a machine
/// whose lock another command holds does not hold up the others.
#[test]
fn commands_on_several_machines_run_at_once() {
    use std::io::BufRead;
    let env = Env::new();
    let a = env.write_machine("a");
    env.write_machine("b");
    // Another command on a: this test holds a's lock (the store's flock).
    let holder = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(a.join(".lock"))
        .expect("open a's lock");
    holder.lock().expect("take a's lock");
    let mut kill = Command::new(env!("CARGO_BIN_EXE_rmachine"))
        .args(["kill", "a", "b"])
        .env("RMACHINE_STORAGE_PATH", env.store())
        .env_remove("RMACHINE_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rmachine kill");
    let stdout = kill.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.contains(&"Machine \"b\" was killed.".to_string()) {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = kill.kill();
                panic!("b waited for a's lock: {seen:?}");
            }
        }
    }
    assert!(!seen.contains(&"Machine \"a\" was killed.".to_string()));
    drop(holder);
    let status = kill.wait().expect("wait for kill");
    seen.extend(rx.iter());
    assert!(status.success(), "{seen:?}");
    assert!(
        seen.contains(&"Machine \"a\" was killed.".to_string()),
        "{seen:?}"
    );
}

/// `ls --timeout`: a plugin that answered but does not exit when its input closes is killed
/// once the timeout passes, not after the session's own wait for its exit.
#[test]
fn ls_does_not_wait_past_its_timeout_for_a_plugin_that_lingers_after_answering() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    let pid_file = plugins.join("lingers.pid");
    write_plugin(
        &plugins,
        "lingers",
        &format!(
            r#"echo $$ > '{}'
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed 's/^{{"id":\([0-9]*\).*/\1/')
  case "$line" in
    *'"method":"handshake"'*)
      echo "{{\"id\":$id,\"result\":{{\"version\":1,\"info\":{{\"name\":\"lingers\",\"capabilities\":{{\"gracefulStop\":false,\"pause\":false,\"consoleLog\":false,\"shares\":false}}}}}}}}" ;;
    *'"method":"state"'*)
      echo "{{\"id\":$id,\"result\":\"Stopped\"}}" ;;
    *)
      echo "{{\"id\":$id,\"result\":null}}" ;;
  esac
done
exec sleep 30
"#,
            pid_file.display()
        ),
    );
    let dir = env.write_machine("slow");
    let record_path = dir.join("config.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    record["DriverName"] = serde_json::json!("lingers");
    std::fs::write(&record_path, record.to_string()).expect("write record");

    let started = std::time::Instant::now();
    let run = env.run_with(
        &["ls", "--timeout", "1", "--format", "{{.Name}} {{.State}}"],
        with_plugins(&plugins),
    );
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("slow "), "{}", run.stdout);
    // The session waits up to 10 s for a plugin to exit on EOF; ls's timeout cuts that short.
    assert!(took < std::time::Duration::from_secs(5), "ls took {took:?}");
    let pid = std::fs::read_to_string(&pid_file).expect("the plugin wrote its pid");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    let alive = stat.is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    });
    assert!(
        !alive,
        "the lingering plugin (pid {}) outlived ls",
        pid.trim()
    );
}

/// `ls --timeout`: a machine whose driver does not answer in time is listed as `Timeout`, as
/// docker-machine lists it, and does not hold up the listing; `ls` exits right after printing
/// and leaves no plugin behind.
#[test]
fn ls_lists_a_machine_that_does_not_answer_in_time_as_timeout() {
    let env = Env::new();
    let plugins = env.dir.path().join("plugins");
    let pid_file = plugins.join("hung.pid");
    let child_file = plugins.join("child.pid");
    // A child of its own: only a kill of the plugin's process group ends both. (ls's timeout
    // of 2 s leaves a loaded host time to start both and write their pids.)
    write_plugin(
        &plugins,
        "hung",
        &format!(
            "echo $$ > '{}'\nsleep 30 &\necho $! > '{}'\nwait\n",
            pid_file.display(),
            child_file.display()
        ),
    );
    env.write_machine("ok");
    let dir = env.write_machine("slow");
    let record_path = dir.join("config.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    record["DriverName"] = serde_json::json!("hung");
    std::fs::write(&record_path, record.to_string()).expect("write record");

    let started = std::time::Instant::now();
    let run = env.run_with(
        &[
            "ls",
            "--timeout",
            "2",
            "--format",
            "{{.Name}} {{.DriverName}} {{.State}} {{.ResponseTime}}",
        ],
        with_plugins(&plugins),
    );
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().nth(1),
        Some("slow hung Timeout 2s"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.starts_with("ok qemu Stopped "), "{}", run.stdout);
    assert!(took < std::time::Duration::from_secs(6), "ls took {took:?}");
    // The plugin (a process group of its own) was ended and reaped before ls exited, and its
    // child with it.
    // A SIGKILLed process still needs the scheduler to die, which takes a moment on a loaded
    // machine: a few seconds' grace, far below the plugin's 30 s sleep.
    for (what, file) in [("plugin", &pid_file), ("plugin's child", &child_file)] {
        let pid = std::fs::read_to_string(file).expect("the plugin wrote the pid");
        let alive = || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
            stat.is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!alive(), "the hung {what} (pid {}) outlived ls", pid.trim());
    }
}

#[test]
fn virtualbox_share_folder_is_checked_before_anything_is_made() {
    let env = Env::new();
    let missing = env.dir.path().join("missing");
    let folder = format!("{}:code", missing.display());
    let cases = [
        (
            vec!["--virtualbox-share-folder", folder.as_str()],
            format!(
                "--virtualbox-share-folder {folder}: host folder {} does not exist or is not a \
                 folder",
                missing.display()
            ),
        ),
        (
            vec!["--virtualbox-share-folder", "code"],
            "--virtualbox-share-folder code: expected DIR:NAME".to_owned(),
        ),
        (
            vec![
                "--virtualbox-share-folder",
                "/tmp:code",
                "--virtualbox-no-share",
            ],
            "--virtualbox-no-share and --virtualbox-share-folder /tmp:code cannot be used together"
                .to_owned(),
        ),
        (
            vec!["--virtualbox-share-folder", "/tmp:code", "--no-share"],
            "--no-share and --virtualbox-share-folder /tmp:code cannot be used together".to_owned(),
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["create", "-d", "virtualbox"];
        args.extend(flags);
        args.push("x");
        let run = env.run(&args);
        assert_ne!(run.code, 0, "{args:?}");
        assert!(run.stderr.contains(&expected), "{args:?}: {}", run.stderr);
        assert!(!env.store().join("machines/x").exists(), "{args:?}");
    }
    // A malformed folder is listed with the other option problems, not left for later.
    let args = [
        "create",
        "-d",
        "virtualbox",
        "--cpus",
        "0",
        "--virtualbox-share-folder",
        "code",
        "x",
    ];
    let run = env.run(&args);
    assert_ne!(run.code, 0);
    for expected in [
        "--cpus must be at least 1",
        "--virtualbox-share-folder code: expected DIR:NAME",
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
}
