//! The driver against a recording VBoxManage: exact command sequences, failures midway, state
//! parsing. Fixtures follow VBoxManage's documented output (`showvminfo --machinereadable`,
//! error texts as docker-machine's parser matched them).

use super::*;
use rmachine_driver::runner::{CannedReply, CommandOutput, RecordingRunner};
use rmachine_driver::{BootImage, GuestPorts};

const VBM: &str = "/opt/vbox/VBoxManage";
/// The UUID the driver gives the machine's VM in these tests.
const VM: &str = "6f1c2b9e-8d3a-4c5e-9f7a-1b2c3d4e5f60";

fn options() -> VirtualBoxOptions {
    VirtualBoxOptions {
        program: Some(VBM.to_owned()),
        ..VirtualBoxOptions::default()
    }
}

fn fixed_ports() -> std::io::Result<(u16, u16)> {
    Ok((40022, 40376))
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: MachineDir,
    spec: VmSpec,
    runner: Arc<RecordingRunner>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let machine = tmp.path().join("machines").join("dev");
    std::fs::create_dir_all(&machine).expect("machine dir");
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).expect("image dir");
    std::fs::write(image.join("rmachine.iso"), b"iso").expect("iso");
    std::fs::write(machine.join("config.img"), vec![5u8; 1024]).expect("config.img");
    let spec = VmSpec {
        cpus: 2,
        memory_mb: 2048,
        disk_size_mb: 20000,
        boot: BootImage {
            kernel: image.join("vmlinuz"),
            initrd: image.join("initrd.img"),
            cmdline: "console=ttyS0".into(),
            iso: Some(image.join("rmachine.iso")),
            kernel_elf: None,
            initrd_uncompressed: None,
            features: Vec::new(),
            arch: String::new(),
        },
        config_drive: machine.join("config.img"),
        guest_ports: GuestPorts::default(),
        shares: Vec::new(),
    };
    Setup {
        dir: MachineDir::new("dev", machine),
        spec,
        runner: Arc::new(RecordingRunner::default()),
        _tmp: tmp,
    }
}

impl Setup {
    fn driver(&self, options: VirtualBoxOptions) -> VirtualBoxDriver {
        VirtualBoxDriver::with_runner(options, self.runner.clone())
            .with_host_check(HostCheck::None)
            .with_port_picker(fixed_ports)
            .with_retry_delay(Duration::ZERO)
            .with_uuid_source(|| VM.to_owned())
    }

    fn p(&self, name: &str) -> String {
        path_str(&self.dir.file(name))
    }

    fn ok(&self, args: &[&str], stdout: &str) {
        self.runner.expect(argv(args), ok(stdout));
    }

    fn fail(&self, args: &[&str], stderr: &str) {
        self.runner.expect(
            argv(args),
            CannedReply::Output(CommandOutput::failure(1, stderr)),
        );
    }

    /// `showvminfo` of a VM whose DVD holds the spec's ISO.
    fn info_with_iso(&self, state: &str, config: &str) -> String {
        let iso = path_str(self.spec.boot.iso.as_deref().expect("iso"));
        info(state, config).replace("/image/rmachine.iso", &iso)
    }

    fn saved(&self) -> VBoxState {
        load_required(&self.dir).expect("saved state")
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once(VBM)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn ok(stdout: &str) -> CannedReply {
    CannedReply::Output(CommandOutput::success(stdout))
}

const NOT_FOUND: &str = "VBoxManage: error: Could not find a registered machine named 'dev'\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports\n";

/// What VBoxManage answers when asked about a UUID it does not know (VirtualBox's
/// `findMachine` text).
const NOT_FOUND_UUID: &str = "VBoxManage: error: Could not find a registered machine with UUID {6f1c2b9e-8d3a-4c5e-9f7a-1b2c3d4e5f60}\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports\n";

fn info(state: &str, config: &str) -> String {
    format!(
        "name=\"dev\"\nostype=\"Linux_64\"\nmemory=2048\ncpus=2\nVMState=\"{state}\"\nVMStateChangeTime=\"2026-12-06T08:00:00.000000000\"\n\"SATA-0-0\"=\"/image/rmachine.iso\"\n\"SATA-1-0\"=\"/m/disk.vdi\"\n\"SATA-2-0\"=\"{config}\"\nnic1=\"nat\"\nForwarding(0)=\"engine,tcp,127.0.0.1,40376,,2376\"\nForwarding(1)=\"ssh,tcp,127.0.0.1,40022,,22\"\n"
    )
}

/// The commands `create` runs on a fresh machine, in order.
fn expect_create(s: &Setup) {
    for (argv, reply) in create_calls(s) {
        s.runner.expect(argv, reply);
    }
}

/// The commands `create` runs on a fresh machine and their answers, in order.
fn create_calls(s: &Setup) -> Vec<(Vec<String>, CannedReply)> {
    let calls = std::cell::RefCell::new(Vec::new());
    let push = |args: &[&str], stdout: &str| calls.borrow_mut().push((argv(args), ok(stdout)));
    let iso = path_str(s.spec.boot.iso.as_deref().expect("iso"));
    let base = path_str(s.dir.path());
    calls.borrow_mut().push((
        argv(&["showvminfo", "dev", "--machinereadable"]),
        CannedReply::Output(CommandOutput::failure(1, NOT_FOUND)),
    ));
    push(
        &[
            "createvm",
            "--name",
            "dev",
            "--uuid",
            VM,
            "--basefolder",
            &base,
            "--register",
        ],
        "Virtual machine 'dev' is created and registered.\n",
    );
    push(
        &[
            "modifyvm",
            VM,
            "--ostype",
            "Linux_64",
            "--firmware",
            "bios",
            "--cpus",
            "2",
            "--memory",
            "2048",
            "--acpi",
            "on",
            "--ioapic",
            "on",
            "--rtcuseutc",
            "on",
            "--pae",
            "on",
            "--hwvirtex",
            "on",
            "--nestedpaging",
            "on",
            "--boot1",
            "dvd",
            "--boot2",
            "none",
            "--boot3",
            "none",
            "--boot4",
            "none",
            "--audio",
            "none",
            "--usb",
            "off",
            "--uart1",
            "0x3F8",
            "4",
            "--uartmode1",
            "file",
            &s.p("console.log"),
        ],
        "",
    );
    push(
        &[
            "modifyvm",
            VM,
            "--nic1",
            "nat",
            "--nictype1",
            "virtio",
            "--cableconnected1",
            "on",
            "--natpf1",
            "ssh,tcp,127.0.0.1,40022,,22",
            "--natpf1",
            "engine,tcp,127.0.0.1,40376,,2376",
        ],
        "",
    );
    push(
        &[
            "storagectl",
            VM,
            "--name",
            "SATA",
            "--add",
            "sata",
            "--controller",
            "IntelAhci",
            "--portcount",
            "3",
            "--hostiocache",
            "on",
        ],
        "",
    );
    push(&attach_args("0", "dvddrive", &iso), "");
    push(
        &[
            "createmedium",
            "disk",
            "--filename",
            &s.p("disk.vdi"),
            "--size",
            "20000",
            "--format",
            "VDI",
        ],
        "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\nMedium created. UUID: 6f0a1a42-3c4e-4b8c-9d39-1f2ee4a0c0b1\n",
    );
    push(&attach_args("1", "hdd", &s.p("disk.vdi")), "");
    push(&attach_args("2", "hdd", &s.p("config.vhd")), "");
    calls.into_inner()
}

fn attach_args<'a>(port: &'a str, kind: &'a str, medium: &'a str) -> Vec<&'a str> {
    vec![
        "storageattach",
        VM,
        "--storagectl",
        "SATA",
        "--port",
        port,
        "--device",
        "0",
        "--type",
        kind,
        "--medium",
        medium,
    ]
}

#[tokio::test]
async fn create_defines_the_vm_then_does_nothing_the_second_time() {
    let s = setup();
    expect_create(&s);
    let driver = s.driver(options());
    driver.create(&s.dir, &s.spec).await.expect("create");
    s.runner.assert_done();
    let saved = s.saved();
    assert_eq!((saved.ssh_port, saved.engine_port), (40022, 40376));
    // The configuration drive went in as a fixed VHD holding config.img's bytes.
    let vhd = std::fs::read(s.dir.file("config.vhd")).expect("config.vhd");
    assert_eq!(&vhd[..1024], &[5u8; 1024][..]);
    assert_eq!(&vhd[vhd.len() - 512..][..8], b"conectix");
    let endpoints = driver.endpoints(&s.dir).await.expect("endpoints");
    assert_eq!(endpoints.ssh.to_string(), "127.0.0.1:40022");
    assert_eq!(endpoints.engine.to_string(), "127.0.0.1:40376");

    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("poweroff", "x"),
    );
    driver.create(&s.dir, &s.spec).await.expect("create again");
    s.runner.assert_done();
}

#[tokio::test]
async fn options_override_the_generic_sizes() {
    let s = setup();
    let driver = s.driver(VirtualBoxOptions {
        cpu_count: Some(4),
        memory: Some(3072),
        disk_size: Some(5000),
        ..options()
    });
    assert_eq!(driver.cpus(&s.spec), 4);
    assert_eq!(driver.memory(&s.spec), 3072);
    assert_eq!(driver.disk_size(&s.spec), 5000);
}

#[tokio::test]
async fn a_create_failing_midway_unregisters_the_vm_and_deletes_its_files() {
    let s = setup();
    let base = path_str(s.dir.path());
    s.fail(&["showvminfo", "dev", "--machinereadable"], NOT_FOUND);
    s.ok(
        &[
            "createvm",
            "--name",
            "dev",
            "--uuid",
            VM,
            "--basefolder",
            &base,
            "--register",
        ],
        "",
    );
    // VirtualBox's folder for the VM, as createvm makes it.
    std::fs::create_dir_all(s.dir.file("dev")).expect("vm folder");
    s.runner.expect(
        argv(&[
            "modifyvm",
            VM,
            "--ostype",
            "Linux_64",
            "--firmware",
            "bios",
            "--cpus",
            "2",
            "--memory",
            "2048",
            "--acpi",
            "on",
            "--ioapic",
            "on",
            "--rtcuseutc",
            "on",
            "--pae",
            "on",
            "--hwvirtex",
            "on",
            "--nestedpaging",
            "on",
            "--boot1",
            "dvd",
            "--boot2",
            "none",
            "--boot3",
            "none",
            "--boot4",
            "none",
            "--audio",
            "none",
            "--usb",
            "off",
            "--uart1",
            "0x3F8",
            "4",
            "--uartmode1",
            "file",
            &s.p("console.log"),
        ]),
        CannedReply::Output(CommandOutput::failure(
            1,
            "VBoxManage: error: Invalid memory size: 2048\n",
        )),
    );
    s.ok(&["unregistervm", VM, "--delete"], "");
    let err = s
        .driver(options())
        .create(&s.dir, &s.spec)
        .await
        .expect_err("create fails");
    assert_eq!(
        err.to_string(),
        format!("{VBM} failed (exit status 1): VBoxManage: error: Invalid memory size: 2048")
    );
    s.runner.assert_done();
    assert!(!s.dir.file("virtualbox.json").exists());
    assert!(!s.dir.file("dev").exists());
    // Files of the host stay.
    assert!(s.dir.file("config.img").exists());
}

#[tokio::test]
async fn a_data_disk_made_but_not_attached_is_deleted_on_failure() {
    let s = setup();
    let calls = create_calls(&s);
    let attach_disk = argv(&attach_args("1", "hdd", &s.p("disk.vdi")));
    let at = calls
        .iter()
        .position(|(argv, _)| *argv == attach_disk)
        .expect("create attaches the disk");
    for (argv, reply) in calls.into_iter().take(at) {
        s.runner.expect(argv, reply);
    }
    s.runner.expect(
        attach_disk,
        CannedReply::Output(CommandOutput::failure(
            1,
            "VBoxManage: error: Could not open the medium",
        )),
    );
    s.ok(&["closemedium", "disk", &s.p("disk.vdi"), "--delete"], "");
    s.ok(&["unregistervm", VM, "--delete"], "");
    s.driver(options())
        .create(&s.dir, &s.spec)
        .await
        .expect_err("create fails");
    s.runner.assert_done();
    assert!(!s.dir.file("virtualbox.json").exists());
}

/// A machine `create` has made (its saved state written as create writes it).
fn created() -> Setup {
    let s = setup();
    save(
        &s.dir,
        &VBoxState {
            vm_name: "dev".into(),
            vm_uuid: Some(VM.into()),
            ssh_port: 40022,
            engine_port: 40376,
            config_disk_id: [3; 16],
        },
    )
    .expect("save");
    s
}

#[tokio::test]
async fn start_recopies_the_config_drive_and_starts_headless() {
    let s = created();
    let vhd = s.p("config.vhd");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &s.info_with_iso("poweroff", &vhd),
    );
    s.ok(
        &[
            "storageattach",
            VM,
            "--storagectl",
            "SATA",
            "--port",
            "2",
            "--device",
            "0",
            "--medium",
            "none",
        ],
        "",
    );
    s.ok(&["closemedium", "disk", &vhd], "");
    s.ok(&attach_args("2", "hdd", &vhd), "");
    s.ok(
        &["startvm", VM, "--type", "headless"],
        "Waiting for VM \"dev\" to power on...\nVM \"dev\" has been successfully started.\n",
    );
    std::fs::write(&s.spec.config_drive, vec![6u8; 2048]).expect("new config.img");
    s.driver(options())
        .start(&s.dir, &s.spec)
        .await
        .expect("start");
    s.runner.assert_done();
    let bytes = std::fs::read(s.dir.file("config.vhd")).expect("vhd");
    assert_eq!(&bytes[..2048], &[6u8; 2048][..]);
}

#[tokio::test]
async fn start_of_a_running_vm_does_nothing() {
    let s = created();
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "x"),
    );
    s.driver(options())
        .start(&s.dir, &s.spec)
        .await
        .expect("start");
    s.runner.assert_done();
}

#[tokio::test]
async fn start_moves_a_forward_whose_port_was_taken() {
    let s = setup();
    let taken = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    save(
        &s.dir,
        &VBoxState {
            vm_name: "dev".into(),
            vm_uuid: Some(VM.into()),
            ssh_port: port,
            engine_port: 40376,
            config_disk_id: [3; 16],
        },
    )
    .expect("save");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &s.info_with_iso("poweroff", "none"),
    );
    s.ok(
        &[
            "modifyvm",
            VM,
            "--natpf1",
            "delete",
            "ssh",
            "--natpf1",
            "ssh,tcp,127.0.0.1,40022,,22",
        ],
        "",
    );
    s.ok(&attach_args("2", "hdd", &s.p("config.vhd")), "");
    s.ok(&["startvm", VM, "--type", "headless"], "");
    let driver = s.driver(options());
    driver.start(&s.dir, &s.spec).await.expect("start");
    s.runner.assert_done();
    assert_eq!(
        driver
            .endpoints(&s.dir)
            .await
            .expect("endpoints")
            .ssh
            .port(),
        40022
    );
}

#[tokio::test]
async fn state_comes_from_vmstate() {
    for (vmstate, want) in [
        ("running", VmState::Running),
        ("poweroff", VmState::Stopped),
        ("aborted", VmState::Stopped),
        ("paused", VmState::Paused),
        ("saved", VmState::Saved),
        ("stopping", VmState::Stopping),
        ("starting", VmState::Starting),
        ("gurumeditation", VmState::Error),
    ] {
        let s = created();
        s.ok(
            &["showvminfo", VM, "--machinereadable"],
            &info(vmstate, "none"),
        );
        let got = s.driver(options()).state(&s.dir).await.expect("state");
        assert_eq!(got, want, "{vmstate}");
        s.runner.assert_done();
    }
}

#[tokio::test]
async fn a_vm_removed_outside_rmachine_is_named_and_rm_still_cleans_up() {
    let s = created();
    s.fail(&["showvminfo", VM, "--machinereadable"], NOT_FOUND_UUID);
    let err = s.driver(options()).state(&s.dir).await.expect_err("no VM");
    assert_eq!(
        err.to_string(),
        format!("machine \"dev\": VBoxManage: VirtualBox has no VM \"dev\" (UUID {VM}) (removed outside rmachine?); `rmachine rm` removes the machine")
    );
    std::fs::write(s.dir.file("disk.vdi"), b"disk").expect("disk");
    s.fail(&["showvminfo", VM, "--machinereadable"], NOT_FOUND_UUID);
    s.driver(options()).remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
    assert!(!s.dir.file("disk.vdi").exists());
    assert!(!s.dir.file("virtualbox.json").exists());
    assert!(s.dir.file("config.img").exists());
    // And again, with nothing left at all.
    s.driver(options()).remove(&s.dir).await.expect("rm again");
    s.runner.assert_done();
}

#[tokio::test]
async fn rm_powers_off_a_running_vm_and_deletes_it() {
    let s = created();
    std::fs::create_dir_all(s.dir.file("dev").join("Logs")).expect("vm folder");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    s.ok(&["controlvm", VM, "poweroff"], "0%...10%...100%\n");
    s.ok(&["unregistervm", VM, "--delete"], "");
    s.driver(options()).remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
    assert!(!s.dir.file("dev").exists());
}

#[tokio::test]
async fn graceful_stop_presses_the_power_button_and_waits() {
    let s = created();
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    s.ok(&["controlvm", VM, "acpipowerbutton"], "");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("poweroff", "none"),
    );
    s.driver(options())
        .stop(
            &s.dir,
            StopMode::Graceful {
                timeout: Duration::from_secs(10),
            },
        )
        .await
        .expect("stop");
    s.runner.assert_done();
}

#[tokio::test]
async fn graceful_stop_times_out_when_the_guest_ignores_the_button() {
    let s = created();
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    s.ok(&["controlvm", VM, "acpipowerbutton"], "");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    let err = s
        .driver(options())
        .stop(
            &s.dir,
            StopMode::Graceful {
                timeout: Duration::from_millis(10),
            },
        )
        .await
        .expect_err("times out");
    assert!(matches!(err, DriverError::Timeout { .. }), "{err}");
    s.runner.assert_done();
}

#[tokio::test]
async fn kill_powers_off_and_stop_of_a_stopped_vm_does_nothing() {
    let s = created();
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("running", "none"),
    );
    s.ok(&["controlvm", VM, "poweroff"], "");
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("poweroff", "none"),
    );
    let driver = s.driver(options());
    driver.stop(&s.dir, StopMode::Kill).await.expect("kill");
    driver
        .stop(&s.dir, StopMode::Kill)
        .await
        .expect("kill again");
    s.runner.assert_done();
}

#[tokio::test]
async fn busy_sessions_are_retried() {
    let s = created();
    s.fail(
        &["controlvm", VM, "poweroff"],
        "VBoxManage: error: The machine 'dev' is already locked for a session (or being unlocked)\nVBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)",
    );
    s.ok(&["controlvm", VM, "poweroff"], "");
    let driver = s.driver(options());
    driver
        .vbm
        .run(&["controlvm", VM, "poweroff"])
        .await
        .expect("retried");
    s.runner.assert_done();
    // A lasting failure is not retried forever: five attempts, then the error.
    for _ in 0..5 {
        s.fail(
            &["controlvm", VM, "poweroff"],
            "VBoxManage: error: object is not ready",
        );
    }
    driver
        .vbm
        .run(&["controlvm", VM, "poweroff"])
        .await
        .expect_err("gives up");
    s.runner.assert_done();
}

#[tokio::test]
async fn an_error_line_with_exit_status_zero_is_a_failure() {
    let s = created();
    s.runner.expect(
        argv(&["startvm", VM, "--type", "headless"]),
        CannedReply::Output(CommandOutput {
            status: 0,
            stderr: b"VBoxManage: error: VT-x is not available (VERR_VMX_NO_VMX)\n".to_vec(),
            ..CommandOutput::default()
        }),
    );
    let err = s
        .driver(options())
        .vbm
        .run(&["startvm", VM, "--type", "headless"])
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("VERR_VMX_NO_VMX"), "{err}");
}

#[tokio::test]
async fn precheck_refuses_what_cannot_work() {
    let s = setup();
    // Options refused with their names.
    let err = s
        .driver(VirtualBoxOptions {
            share_folder: Some("/home/me".into()),
            hostonly_cidr: Some("192.168.99.0/24".into()),
            ..options()
        })
        .precheck(&s.spec)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("--virtualbox-share-folder /home/me: expected DIR:NAME"),
        "{text}"
    );
    assert!(
        text.contains("--virtualbox-hostonly-cidr 192.168.99.0/24: host-only cidr must be specified with a host address, not a network address"),
        "{text}"
    );

    // VBoxManage missing.
    s.runner.expect(argv(&["--version"]), CannedReply::Missing);
    let err = s
        .driver(options())
        .precheck(&s.spec)
        .await
        .expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("{VBM} not found: {}", vbm::INSTALL_HINT)
    );

    // Too old.
    s.ok(&["--version"], "5.2.44r139111\n");
    let err = s
        .driver(options())
        .precheck(&s.spec)
        .await
        .expect_err("old");
    assert!(err.to_string().contains("\"5.2.44r139111\""), "{err}");

    // VT-x/AMD-V off.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cpuinfo = tmp.path().join("cpuinfo");
    std::fs::write(&cpuinfo, "processor\t: 0\nflags\t\t: fpu vme de pse sse2\n").expect("write");
    s.ok(&["--version"], "7.0.14r161095\n");
    let err = s
        .driver(options())
        .with_host_check(HostCheck::CpuInfo(cpuinfo.clone()))
        .precheck(&s.spec)
        .await
        .expect_err("no vmx");
    assert!(err.to_string().contains("VT-x/AMD-V"), "{err}");
    std::fs::write(&cpuinfo, "flags\t\t: fpu vmx sse2\n").expect("write");
    s.ok(&["--version"], "7.0.14r161095\n");
    s.driver(options())
        .with_host_check(HostCheck::CpuInfo(cpuinfo))
        .precheck(&s.spec)
        .await
        .expect("vmx present");

    // Hyper-V running beside VirtualBox (Windows).
    s.ok(&["--version"], "7.0.14r161095\n");
    s.runner.expect(
        [
            "powershell.exe",
            "-NoProfile",
            "-NonInteractive",
            "-Command",
            "(Get-CimInstance -ClassName Win32_ComputerSystem).HypervisorPresent",
        ],
        ok("True\r\n"),
    );
    let err = s
        .driver(options())
        .with_host_check(HostCheck::HyperV("powershell.exe".into()))
        .precheck(&s.spec)
        .await
        .expect_err("hyper-v");
    assert!(err.to_string().contains("Hyper-V"), "{err}");
    s.runner.assert_done();

    // A guest image without an ISO.
    let mut spec = s.spec.clone();
    spec.boot.iso = None;
    let err = s
        .driver(options())
        .precheck(&spec)
        .await
        .expect_err("no iso");
    assert!(
        err.to_string().contains("rebuild it with guest/build.sh"),
        "{err}"
    );
}

/// The real process path: a fake VBoxManage script on disk that records its arguments and
/// answers `showvminfo` from a fixture.
#[tokio::test]
async fn a_fake_vboxmanage_program_is_run_and_its_output_parsed() {
    let s = created();
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("calls.log");
    let fixture = tmp.path().join("showvminfo.txt");
    std::fs::write(&fixture, info("running", "none")).expect("fixture");
    let script = tmp.path().join("VBoxManage");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1\" in\n  showvminfo) cat '{}' ;;\n  *) echo \"VBoxManage: error: unknown $1\" >&2; exit 1 ;;\nesac\n",
            log.display(),
            fixture.display()
        ),
    )
    .expect("script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let driver = VirtualBoxDriver::new(VirtualBoxOptions {
        program: Some(path_str(&script)),
        ..VirtualBoxOptions::default()
    });
    assert_eq!(driver.state(&s.dir).await.expect("state"), VmState::Running);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        format!("showvminfo {VM} --machinereadable\n")
    );
}

#[tokio::test]
async fn create_refuses_a_name_virtualbox_already_has_and_rm_leaves_that_vm_alone() {
    let s = setup();
    // The user's own VM called "dev", or one an interrupted create left behind.
    s.ok(
        &["showvminfo", "dev", "--machinereadable"],
        &info("running", "none"),
    );
    let driver = s.driver(options());
    let err = driver.create(&s.dir, &s.spec).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "machine \"dev\": VBoxManage: VirtualBox already has a VM named \"dev\" that this machine did not create; remove or rename that VM, or choose another machine name"
    );
    s.runner.assert_done();
    assert!(!s.dir.file("virtualbox.json").exists());
    // The host's clean-up after the failed create runs no VBoxManage command at all.
    driver.remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
}

#[tokio::test]
async fn a_record_made_before_uuids_still_names_the_vm() {
    let s = setup();
    std::fs::write(
        s.dir.file("virtualbox.json"),
        r#"{"vmName":"dev","sshPort":40022,"enginePort":40376,"configDiskId":[3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3]}"#,
    )
    .expect("old record");
    s.ok(
        &["showvminfo", "dev", "--machinereadable"],
        &info("running", "none"),
    );
    let driver = s.driver(options());
    assert_eq!(driver.state(&s.dir).await.expect("state"), VmState::Running);
    // rm deletes the VM of that name only if its settings lie in the machine directory, and
    // by the UUID it learns.
    let ours = format!(
        "{}UUID=\"{VM}\"\nCfgFile=\"{}\"\n",
        info("poweroff", "none"),
        path_str(&s.dir.file("dev").join("dev.vbox"))
    );
    s.ok(&["showvminfo", "dev", "--machinereadable"], &ours);
    s.ok(&["unregistervm", VM, "--delete"], "");
    driver.remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
}

#[tokio::test]
async fn a_record_made_before_uuids_never_deletes_another_vm_of_that_name() {
    let s = setup();
    std::fs::write(
        s.dir.file("virtualbox.json"),
        r#"{"vmName":"dev","sshPort":40022,"enginePort":40376,"configDiskId":[3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3]}"#,
    )
    .expect("old record");
    let theirs = format!(
        "{}UUID=\"{VM}\"\nCfgFile=\"/home/u/VirtualBox VMs/dev/dev.vbox\"\n",
        info("poweroff", "none")
    );
    s.ok(&["showvminfo", "dev", "--machinereadable"], &theirs);
    let err = s
        .driver(options())
        .remove(&s.dir)
        .await
        .expect_err("not ours");
    assert!(
        err.to_string()
            .contains("keeps its settings in \"/home/u/VirtualBox VMs/dev/dev.vbox\", outside"),
        "{err}"
    );
    s.runner.assert_done();
    assert!(s.dir.file("virtualbox.json").exists());
}

#[tokio::test]
async fn start_after_upgrade_puts_the_new_iso_in_the_dvd_drive() {
    let s = created();
    let vhd = s.p("config.vhd");
    let iso = path_str(s.spec.boot.iso.as_deref().expect("iso"));
    // The VM still holds the ISO of the image it was created with.
    s.ok(
        &["showvminfo", VM, "--machinereadable"],
        &info("poweroff", &vhd),
    );
    s.ok(&attach_args("0", "dvddrive", &iso), "");
    s.ok(
        &[
            "storageattach",
            VM,
            "--storagectl",
            "SATA",
            "--port",
            "2",
            "--device",
            "0",
            "--medium",
            "none",
        ],
        "",
    );
    s.ok(&["closemedium", "disk", &vhd], "");
    s.ok(&attach_args("2", "hdd", &vhd), "");
    s.ok(&["startvm", VM, "--type", "headless"], "");
    s.driver(options())
        .start(&s.dir, &s.spec)
        .await
        .expect("start");
    s.runner.assert_done();
}

#[test]
fn host_only_networks_parse_and_plan_their_dhcp() {
    let net = HostOnlyNet::parse("192.168.99.1/24").expect("parses");
    assert_eq!(net.mask().to_string(), "255.255.255.0");
    let (server, lower, upper) = net.dhcp_plan();
    assert_eq!(
        (server.to_string(), lower.to_string(), upper.to_string()),
        (
            "192.168.99.2".into(),
            "192.168.99.100".into(),
            "192.168.99.254".into()
        )
    );
    let (server, ..) = HostOnlyNet::parse("10.5.0.7/16")
        .expect("parses")
        .dhcp_plan();
    assert_eq!(server.to_string(), "10.5.0.1");
    // The host's own address is never in the range.
    let (_, lower, upper) = HostOnlyNet::parse("192.168.59.200/24")
        .expect("parses")
        .dhcp_plan();
    assert_eq!(
        (lower.to_string(), upper.to_string()),
        ("192.168.59.100".into(), "192.168.59.199".into())
    );
    let (_, lower, upper) = HostOnlyNet::parse("192.168.59.120/24")
        .expect("parses")
        .dhcp_plan();
    assert_eq!(
        (lower.to_string(), upper.to_string()),
        ("192.168.59.121".into(), "192.168.59.254".into())
    );
    for bad in [
        "192.168.99.1",
        "192.168.99.1/31",
        "300.1.1.1/24",
        "192.168.99.255/24",
    ] {
        assert!(HostOnlyNet::parse(bad).is_err(), "{bad}");
    }
}

/// `--virtualbox-hostonly-cidr`: a new host-only interface with that address, its DHCP server,
/// and the VM's second card on it; the rest of create is unchanged.
#[tokio::test]
async fn create_with_a_host_only_network_adds_the_interface_dhcp_and_second_card() {
    let s = setup();
    let calls = create_calls(&s);
    let nat = calls
        .iter()
        .position(|(argv, _)| argv.iter().any(|a| a == "--natpf1"))
        .expect("create sets up NAT");
    let mut calls = calls.into_iter();
    for (argv, reply) in calls.by_ref().take(nat + 1) {
        s.runner.expect(argv, reply);
    }
    // Another host-only interface exists, on another network.
    s.ok(
        &["list", "hostonlyifs"],
        "Name:            vboxnet0\nGUID:            786f6276-656e-4074-8000-0a0027000000\nDHCP:            Disabled\nIPAddress:       192.168.56.1\nNetworkMask:     255.255.255.0\nStatus:          Up\n\n",
    );
    s.ok(
        &["hostonlyif", "create"],
        "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\nInterface 'vboxnet1' was successfully created\n",
    );
    s.ok(
        &[
            "hostonlyif",
            "ipconfig",
            "vboxnet1",
            "--ip",
            "192.168.99.1",
            "--netmask",
            "255.255.255.0",
        ],
        "",
    );
    s.ok(
        &["list", "dhcpservers"],
        "NetworkName:    HostInterfaceNetworking-vboxnet0\nIP:             192.168.56.100\nEnabled:        Yes\n\n",
    );
    s.ok(
        &[
            "dhcpserver",
            "add",
            "--netname",
            "HostInterfaceNetworking-vboxnet1",
            "--ip",
            "192.168.99.2",
            "--netmask",
            "255.255.255.0",
            "--lowerip",
            "192.168.99.100",
            "--upperip",
            "192.168.99.254",
            "--enable",
        ],
        "",
    );
    s.ok(
        &[
            "modifyvm",
            VM,
            "--nic2",
            "hostonly",
            "--nictype2",
            "virtio",
            "--nicpromisc2",
            "deny",
            "--hostonlyadapter2",
            "vboxnet1",
            "--cableconnected2",
            "on",
        ],
        "",
    );
    for (argv, reply) in calls {
        s.runner.expect(argv, reply);
    }
    s.driver(VirtualBoxOptions {
        hostonly_cidr: Some("192.168.99.1/24".into()),
        ..options()
    })
    .create(&s.dir, &s.spec)
    .await
    .expect("create");
    s.runner.assert_done();
}

#[tokio::test]
async fn an_existing_host_only_interface_and_dhcp_server_are_reused() {
    let s = setup();
    s.ok(
        &["list", "hostonlyifs"],
        "Name:            vboxnet3\nIPAddress:       192.168.99.1\nNetworkMask:     255.255.255.0\n\n",
    );
    // An enabled server that fits is used as it is (other VMs may rely on its settings).
    s.ok(
        &["list", "dhcpservers"],
        "NetworkName:    HostInterfaceNetworking-vboxnet3\nDhcpd IP:       192.168.99.6\nLowerIPAddress: 192.168.99.10\nUpperIPAddress: 192.168.99.50\nNetworkMask:    255.255.255.0\nEnabled:        Yes\n\n",
    );
    let driver = s.driver(options());
    let net = HostOnlyNet::parse("192.168.99.1/24").expect("parses");
    let mut made = Made::default();
    let adapter = driver
        .hostonly_adapter(&s.dir, &net, &mut made)
        .await
        .expect("adapter");
    assert_eq!(adapter, "vboxnet3");
    driver
        .hostonly_dhcp(&s.dir, &net, &adapter, &mut made)
        .await
        .expect("dhcp");
    s.runner.assert_done();
    assert_eq!((made.hostonlyif, made.dhcpserver), (None, None));
}

#[tokio::test]
async fn an_existing_dhcp_server_that_does_not_fit_is_left_alone_and_named() {
    let s = setup();
    s.ok(
        &["list", "dhcpservers"],
        "NetworkName:    HostInterfaceNetworking-vboxnet3\nIP:             192.168.99.6\nlowerIPAddress: 192.168.99.1\nupperIPAddress: 192.168.99.254\nNetworkMask:    255.255.255.0\nEnabled:        Yes\n\n",
    );
    let net = HostOnlyNet::parse("192.168.99.1/24").expect("parses");
    let err = s
        .driver(options())
        .hostonly_dhcp(&s.dir, &net, "vboxnet3", &mut Made::default())
        .await
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "machine \"dev\": VBoxManage: the DHCP server of vboxnet3 (HostInterfaceNetworking-vboxnet3: server 192.168.99.6, mask 255.255.255.0, range 192.168.99.1-192.168.99.254, enabled Yes) does not fit 192.168.99.1/24 and other VMs may use it, so rmachine leaves it alone; change it with `VBoxManage dhcpserver modify --netname HostInterfaceNetworking-vboxnet3` or choose another --virtualbox-hostonly-cidr"
    );
    s.runner.assert_done();
}

#[tokio::test]
async fn a_network_overlapping_an_interfaces_with_another_host_address_is_refused() {
    let s = setup();
    s.ok(
        &["list", "hostonlyifs"],
        "Name:            vboxnet0\nIPAddress:       192.168.56.1\nNetworkMask:     255.255.255.0\n\n",
    );
    let net = HostOnlyNet::parse("192.168.56.2/24").expect("parses");
    let err = s
        .driver(options())
        .hostonly_adapter(&s.dir, &net, &mut Made::default())
        .await
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "machine \"dev\": VBoxManage: --virtualbox-hostonly-cidr 192.168.56.2/24: host-only interface vboxnet0 has 192.168.56.1 (mask 255.255.255.0) on an overlapping network; give its address (192.168.56.1) or a network outside it"
    );
    s.runner.assert_done();
}

/// VirtualBox's address policy (E_ACCESSDENIED from `hostonlyif ipconfig`) fails at once with
/// one line naming the machine and /etc/vbox/networks.conf, and the create's undo removes the
/// interface it made along with the VM.
#[tokio::test]
async fn a_host_only_address_virtualbox_forbids_fails_at_once_and_is_undone() {
    let s = setup();
    let calls = create_calls(&s);
    let nat = calls
        .iter()
        .position(|(argv, _)| argv.iter().any(|a| a == "--natpf1"))
        .expect("create sets up NAT");
    for (argv, reply) in calls.into_iter().take(nat + 1) {
        s.runner.expect(argv, reply);
    }
    s.ok(&["list", "hostonlyifs"], "");
    s.ok(
        &["hostonlyif", "create"],
        "Interface 'vboxnet1' was successfully created\n",
    );
    s.fail(
        &[
            "hostonlyif",
            "ipconfig",
            "vboxnet1",
            "--ip",
            "192.168.99.1",
            "--netmask",
            "255.255.255.0",
        ],
        "VBoxManage: error: Code E_ACCESSDENIED (0x80070005) - Access denied (extended info not available)\nVBoxManage: error: Context: \"EnableStaticIPConfig(Bstr(pszIp).raw(), Bstr(pszNetmask).raw())\" at line 242 of file VBoxManageHostonly.cpp\n",
    );
    s.ok(&["unregistervm", VM, "--delete"], "");
    s.ok(&["hostonlyif", "remove", "vboxnet1"], "");
    let err = s
        .driver(VirtualBoxOptions {
            hostonly_cidr: Some("192.168.99.1/24".into()),
            ..options()
        })
        .create(&s.dir, &s.spec)
        .await
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "machine \"dev\": VBoxManage: VirtualBox refused the host-only address 192.168.99.1/24 (E_ACCESSDENIED): since 6.1.28 it allows only 192.168.56.0/21 unless /etc/vbox/networks.conf lists the range (e.g. \"* 192.168.99.0/24\")"
    );
    s.runner.assert_done();
}

/// A DHCP server this create added goes with the undo when a later step fails.
#[tokio::test]
async fn a_failure_after_the_host_only_setup_removes_what_it_added() {
    let s = setup();
    let calls = create_calls(&s);
    let nat = calls
        .iter()
        .position(|(argv, _)| argv.iter().any(|a| a == "--natpf1"))
        .expect("create sets up NAT");
    for (argv, reply) in calls.into_iter().take(nat + 1) {
        s.runner.expect(argv, reply);
    }
    s.ok(
        &["list", "hostonlyifs"],
        "Name:            vboxnet0\nIPAddress:       192.168.59.1\nNetworkMask:     255.255.255.0\n\n",
    );
    s.ok(&["list", "dhcpservers"], "");
    s.ok(
        &[
            "dhcpserver",
            "add",
            "--netname",
            "HostInterfaceNetworking-vboxnet0",
            "--ip",
            "192.168.59.2",
            "--netmask",
            "255.255.255.0",
            "--lowerip",
            "192.168.59.100",
            "--upperip",
            "192.168.59.254",
            "--enable",
        ],
        "",
    );
    s.fail(
        &[
            "modifyvm",
            VM,
            "--nic2",
            "hostonly",
            "--nictype2",
            "virtio",
            "--nicpromisc2",
            "deny",
            "--hostonlyadapter2",
            "vboxnet0",
            "--cableconnected2",
            "on",
        ],
        "VBoxManage: error: Nonexistent host networking interface, name 'vboxnet0'\n",
    );
    s.ok(&["unregistervm", VM, "--delete"], "");
    s.ok(
        &[
            "dhcpserver",
            "remove",
            "--netname",
            "HostInterfaceNetworking-vboxnet0",
        ],
        "",
    );
    s.driver(VirtualBoxOptions {
        hostonly_cidr: Some("192.168.59.1/24".into()),
        ..options()
    })
    .create(&s.dir, &s.spec)
    .await
    .expect_err("fails");
    // The interface existed before: it stays.
    s.runner.assert_done();
}

#[test]
fn no_share_turns_the_sftp_shares_off() {
    let sharing = VirtualBoxDriver::new(options());
    assert!(sharing.info().capabilities.sftp_shares);
    let none = VirtualBoxDriver::new(VirtualBoxOptions {
        no_share: true,
        ..options()
    });
    assert!(!none.info().capabilities.sftp_shares);
}

#[test]
fn share_folder_is_split_as_docker_machine_did() {
    assert_eq!(
        parse_share_folder("/home/me/code:code"),
        Ok(("/home/me/code".into(), Some("/code".to_owned())))
    );
    // No NAME: mounted at the folder's own path, as `--share DIR` (docker-machine's share was
    // named DIR without its leading /, mounted at /DIR).
    assert_eq!(
        parse_share_folder("/home/me/code:"),
        Ok(("/home/me/code".into(), None))
    );
    // The last colon splits: a drive letter stays in the folder; a name may have parts.
    assert_eq!(
        parse_share_folder("C:\\Users\\me:c/Users/me"),
        Ok(("C:\\Users\\me".into(), Some("/c/Users/me".to_owned())))
    );
    assert_eq!(
        parse_share_folder("/srv:/data"),
        Ok(("/srv".into(), Some("/data".to_owned())))
    );
    for (bad, why) in [
        ("/home/me", "expected DIR:NAME"),
        (":code", "the host folder (DIR of DIR:NAME) is empty"),
        ("/home/me:a/../etc", "must be a relative guest path"),
        ("/home/me:a\\b", "must be a relative guest path"),
    ] {
        let err = parse_share_folder(bad).expect_err(bad);
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[tokio::test]
async fn share_folder_replaces_the_home_share_and_refuses_no_share() {
    let s = setup();
    let driver = s.driver(VirtualBoxOptions {
        share_folder: Some("/home/me/code:code".into()),
        ..options()
    });
    assert_eq!(
        driver.driver_share().expect("a good share"),
        Some(DriverShare {
            flag: "--virtualbox-share-folder /home/me/code:code".into(),
            host_path: "/home/me/code".into(),
            guest_path: Some("/code".into()),
        })
    );
    assert!(driver.info().capabilities.sftp_shares);
    assert_eq!(s.driver(options()).driver_share().expect("no share"), None);
    // A malformed one is an option problem, never a silent fallback to the home folder.
    let bad = s.driver(VirtualBoxOptions {
        share_folder: Some("code".into()),
        ..options()
    });
    assert_eq!(
        bad.driver_share().expect_err("malformed").to_string(),
        "invalid virtualbox options: --virtualbox-share-folder code: expected DIR:NAME (the \
         host folder, then the name the machine mounts it under, at /NAME)"
    );

    let both = s.driver(VirtualBoxOptions {
        share_folder: Some("/home/me/code:code".into()),
        no_share: true,
        ..options()
    });
    // Worded as the host's refusal beside --no-share.
    let words = "--virtualbox-no-share and --virtualbox-share-folder /home/me/code:code cannot \
                 be used together";
    let err = both.driver_share().expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!("invalid virtualbox options: {words}")
    );
    let err = both.precheck(&s.spec).await.expect_err("refused");
    assert!(err.to_string().contains(words), "{err}");
}
