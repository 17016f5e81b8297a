//! The driver against a recording PowerShell: exact scripts for create/start/stop/kill/rm,
//! failures midway, state parsing. Answers are shaped like the Hyper-V cmdlets' output.

use super::*;
use rmachine_driver::runner::{CannedReply, CommandOutput, RecordingRunner};
use rmachine_driver::BootImage;

const PS: &str = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe";

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
    Setup {
        spec: VmSpec {
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
        },
        dir: MachineDir::new("dev", machine),
        runner: Arc::new(RecordingRunner::default()),
        _tmp: tmp,
    }
}

fn options() -> HyperVOptions {
    HyperVOptions {
        program: Some(PS.to_owned()),
        ..HyperVOptions::default()
    }
}

impl Setup {
    fn driver(&self, options: HyperVOptions) -> HyperVDriver {
        HyperVDriver::with_runner(options, self.runner.clone())
            .with_address_wait(Duration::ZERO, Duration::from_millis(50))
    }

    fn q(&self, name: &str) -> String {
        path_q(&self.dir.file(name))
    }

    fn ok(&self, script: &str, stdout: &str) {
        self.runner.expect(
            self.driver(options()).argv(script),
            CannedReply::Output(CommandOutput::success(stdout)),
        );
    }

    /// Expects the scripts of a create, New-VM answering the VM's Id.
    fn expect_create(&self, scripts: &[String]) {
        self.ok(NAME_CHECK, "0\r\n");
        for script in scripts {
            let answer = if script.contains("New-VM") { ID } else { "" };
            self.ok(script, answer);
        }
    }

    fn fail(&self, script: &str, stderr: &str) {
        self.runner.expect(
            self.driver(options()).argv(script),
            CannedReply::Output(CommandOutput::failure(1, stderr)),
        );
    }
}

/// The VM's Id, as New-VM answers it in these tests.
const ID: &str = "5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07";
const STATE: &str = "$vm = @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue); if ($vm.Count -gt 1) { throw 'more than one VM matches' } elseif ($vm.Count -eq 1) { $vm[0].State } else { 'NotFound' }";
const NAME_CHECK: &str = "@(Hyper-V\\Get-VM -Name 'dev' -ErrorAction SilentlyContinue).Count";
const NEIGHBOUR: &str = "$mac = (Hyper-V\\Get-VMNetworkAdapter -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) | Select-Object -First 1).MacAddress; $dashed = $mac -replace '(..)(?!$)', '$1-'; Get-NetNeighbor -AddressFamily IPv4 -LinkLayerAddress $dashed -ErrorAction SilentlyContinue | Where-Object { $_.State -ne 'Unreachable' } | ForEach-Object { $_.IPAddress }";

/// The VM of the machine's name whose files lie in the machine folder (no Id known).
fn by_name(s: &Setup) -> String {
    let folder = format!("{}{}", s.dir.path().display(), std::path::MAIN_SEPARATOR);
    format!(
        "@(Hyper-V\\Get-VM -Name 'dev' -ErrorAction SilentlyContinue | Where-Object {{ ([IO.Path]::GetFullPath($_.Path).TrimEnd([IO.Path]::DirectorySeparatorChar) + [IO.Path]::DirectorySeparatorChar).StartsWith([IO.Path]::GetFullPath({}), [StringComparison]::OrdinalIgnoreCase) }})",
        quote(&folder)
    )
}

fn create_scripts(s: &Setup, dynamic: bool) -> Vec<String> {
    let iso = path_q(s.spec.boot.iso.as_deref().expect("iso"));
    vec![
        format!(
            "Hyper-V\\New-VHD -Path {} -SizeBytes 20000MB -Dynamic | Out-Null",
            s.q("disk.vhdx")
        ),
        format!(
            "(Hyper-V\\New-VM -Name 'dev' -Path {} -Generation 2 -MemoryStartupBytes 2048MB -SwitchName 'Default Switch' -WarningAction SilentlyContinue).Id.Guid",
            path_q(s.dir.path())
        ),
        "Hyper-V\\Set-VMProcessor -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Count 2".to_owned(),
        format!("Hyper-V\\Set-VMMemory -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -DynamicMemoryEnabled ${dynamic}"),
        format!("Hyper-V\\Add-VMDvdDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Path {iso}"),
        format!(
            "Hyper-V\\Add-VMHardDiskDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Path {}",
            s.q("disk.vhdx")
        ),
        format!(
            "Hyper-V\\Add-VMHardDiskDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Path {}",
            s.q("config.vhd")
        ),
        "Hyper-V\\Set-VMFirmware -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -EnableSecureBoot Off -FirstBootDevice (Hyper-V\\Get-VMDvdDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue))".to_owned(),
    ]
}

#[test]
fn every_call_is_a_noninteractive_powershell_command_that_stops_on_errors() {
    let s = setup();
    assert_eq!(
        s.driver(options()).argv("Hyper-V\\Start-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue)"),
        [
            PS,
            "-NoProfile",
            "-NonInteractive",
            "-Command",
            "$ErrorActionPreference = 'Stop'; Hyper-V\\Start-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue)"
        ]
    );
    assert_eq!(quote("it's"), "'it''s'");
    // PowerShell ends a literal at a typographic quote too.
    assert_eq!(quote("O\u{2019}Brien"), "'O\u{2019}\u{2019}Brien'");
}

#[tokio::test]
async fn create_defines_a_generation_2_vm_then_does_nothing_the_second_time() {
    let s = setup();
    s.expect_create(&create_scripts(&s, true));
    let driver = s.driver(options());
    driver.create(&s.dir, &s.spec).await.expect("create");
    s.runner.assert_done();
    let vhd = std::fs::read(s.dir.file("config.vhd")).expect("config.vhd");
    assert_eq!(&vhd[..1024], &[5u8; 1024][..]);

    s.ok(STATE, "Off\r\n");
    driver.create(&s.dir, &s.spec).await.expect("again");
    s.runner.assert_done();
}

#[tokio::test]
async fn options_reach_the_scripts() {
    let s = setup();
    let iso = path_q(s.spec.boot.iso.as_deref().expect("iso"));
    let scripts = [
        format!("Hyper-V\\New-VHD -Path {} -SizeBytes 5000MB -Dynamic | Out-Null", s.q("disk.vhdx")),
        format!(
            "(Hyper-V\\New-VM -Name 'dev' -Path {} -Generation 2 -MemoryStartupBytes 4096MB -SwitchName 'External' -WarningAction SilentlyContinue).Id.Guid",
            path_q(s.dir.path())
        ),
        "Hyper-V\\Set-VMProcessor -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Count 4".to_owned(),
        "Hyper-V\\Set-VMMemory -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -DynamicMemoryEnabled $false".to_owned(),
        format!("Hyper-V\\Add-VMDvdDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Path {iso}"),
    ];
    s.expect_create(&scripts);
    s.fail(
        &format!(
            "Hyper-V\\Add-VMHardDiskDrive -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Path {}",
            s.q("disk.vhdx")
        ),
        "Add-VMHardDiskDrive : Failed to add device 'Virtual Hard Disk'.",
    );
    s.ok("@(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) | Hyper-V\\Remove-VM -Force", "");
    let err = s
        .driver(HyperVOptions {
            virtual_switch: Some("External".into()),
            cpu_count: Some(4),
            memory: Some(4096),
            disk_size: Some(5000),
            disable_dynamic_memory: true,
            ..options()
        })
        .create(&s.dir, &s.spec)
        .await
        .expect_err("attach fails");
    assert!(err.to_string().contains("Failed to add device"), "{err}");
    s.runner.assert_done();
    // Nothing half-made stays: the VM went with Remove-VM, the files with the driver.
    for name in ["hyperv.json", "config.vhd", "disk.vhdx"] {
        assert!(!s.dir.file(name).exists(), "{name}");
    }
    assert!(s.dir.file("config.img").exists());
}

#[tokio::test]
async fn a_failure_before_the_vm_exists_removes_only_files() {
    let s = setup();
    let scripts = create_scripts(&s, true);
    s.ok(NAME_CHECK, "0\r\n");
    s.ok(&scripts[0], "");
    std::fs::write(s.dir.file("disk.vhdx"), b"vhdx").expect("disk");
    s.fail(
        &scripts[1],
        "Hyper-V\\New-VM : Hyper-V was unable to find a virtual switch with name \"Default Switch\".",
    );
    // New-VM failed without an Id: a VM it may have made is found by name and folder.
    s.ok(&format!("{} | Hyper-V\\Remove-VM -Force", by_name(&s)), "");
    s.driver(options())
        .create(&s.dir, &s.spec)
        .await
        .expect_err("fails");
    s.runner.assert_done();
    assert!(!s.dir.file("disk.vhdx").exists());
}

fn created(s: &Setup) {
    save(
        &s.dir,
        &HyperVState {
            vm_name: "dev".into(),
            vm_id: Some(ID.into()),
            iso: s.spec.boot.iso.clone(),
            config_disk_id: [1; 16],
            guest_ports: GuestPorts::default(),
            address: None,
        },
    )
    .expect("save");
}

#[tokio::test]
async fn start_boots_and_finds_the_address_by_mac_in_the_neighbour_table() {
    let s = setup();
    created(&s);
    s.ok(STATE, "Off\r\n");
    s.ok("Hyper-V\\Start-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue)", "");
    s.ok(NEIGHBOUR, "");
    s.ok(NEIGHBOUR, "fe80::1\r\n172.27.200.31\r\n");
    std::fs::write(&s.spec.config_drive, vec![8u8; 512]).expect("config.img");
    let driver = s.driver(options());
    driver.start(&s.dir, &s.spec).await.expect("start");
    s.runner.assert_done();
    let endpoints = driver.endpoints(&s.dir).await.expect("endpoints");
    assert_eq!(endpoints.ssh.to_string(), "172.27.200.31:22");
    assert_eq!(endpoints.engine.to_string(), "172.27.200.31:2376");
    let vhd = std::fs::read(s.dir.file("config.vhd")).expect("vhd");
    assert_eq!(&vhd[..512], &[8u8; 512][..]);
}

#[tokio::test]
async fn start_times_out_without_an_address() {
    let s = setup();
    created(&s);
    s.ok(STATE, "Running\r\n");
    for _ in 0..20 {
        s.ok(NEIGHBOUR, "");
    }
    let err = s
        .driver(options())
        .with_address_wait(Duration::from_millis(20), Duration::from_millis(50))
        .start(&s.dir, &s.spec)
        .await
        .expect_err("no address");
    assert!(err.to_string().contains("neighbour table"), "{err}");
}

#[tokio::test]
async fn states_map_and_a_vm_removed_outside_is_named() {
    for (hv, want) in [
        ("Running", VmState::Running),
        ("Off", VmState::Stopped),
        ("Saved", VmState::Saved),
        ("Paused", VmState::Paused),
        ("Starting", VmState::Starting),
        ("Stopping", VmState::Stopping),
        ("OffCritical", VmState::Error),
    ] {
        let s = setup();
        created(&s);
        s.ok(STATE, &format!("{hv}\r\n"));
        assert_eq!(
            s.driver(options()).state(&s.dir).await.expect("state"),
            want
        );
    }
    let s = setup();
    created(&s);
    s.ok(STATE, "NotFound\r\n");
    let err = s.driver(options()).state(&s.dir).await.expect_err("gone");
    assert_eq!(
        err.to_string(),
        format!("machine \"dev\": Hyper-V: Hyper-V has no VM \"dev\" (Id {ID}) (removed outside rmachine?); `rmachine rm` removes the machine")
    );
    // rm of a VM already gone deletes the driver's files and succeeds.
    s.ok(STATE, "NotFound\r\n");
    std::fs::write(s.dir.file("disk.vhdx"), b"x").expect("disk");
    s.driver(options()).remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
    assert!(!s.dir.file("disk.vhdx").exists());
    assert!(!s.dir.file("hyperv.json").exists());
}

#[tokio::test]
async fn stop_kill_and_rm_run_the_cmdlets() {
    let s = setup();
    created(&s);
    s.ok(STATE, "Running\r\n");
    s.ok("Hyper-V\\Stop-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Force", "");
    s.ok(STATE, "Running\r\n");
    s.ok("Hyper-V\\Stop-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -TurnOff -Force", "");
    s.ok(STATE, "Off\r\n");
    s.ok(STATE, "Running\r\n");
    s.ok("Hyper-V\\Stop-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -TurnOff -Force", "");
    s.ok("Hyper-V\\Remove-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Force", "");
    let driver = s.driver(options());
    driver
        .stop(
            &s.dir,
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .await
        .expect("stop");
    driver.stop(&s.dir, StopMode::Kill).await.expect("kill");
    driver
        .stop(&s.dir, StopMode::Kill)
        .await
        .expect("kill of a stopped VM");
    std::fs::create_dir_all(s.dir.file("dev").join("Virtual Machines")).expect("vm folder");
    driver.remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
    assert!(!s.dir.file("dev").exists());
}

#[tokio::test]
async fn a_graceful_stop_that_outlasts_its_timeout_is_a_timeout() {
    let s = setup();
    created(&s);
    s.ok(STATE, "Running\r\n");
    s.runner.expect(
        s.driver(options())
            .argv("Hyper-V\\Stop-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue) -Force"),
        CannedReply::Output(CommandOutput::timeout("")),
    );
    let err = s
        .driver(options())
        .stop(
            &s.dir,
            StopMode::Graceful {
                timeout: Duration::from_secs(1),
            },
        )
        .await
        .expect_err("timeout");
    assert!(matches!(err, DriverError::Timeout { .. }), "{err}");
}

const MODULE: &str = "@(Get-Module -ListAvailable hyper-v).Name | Get-Unique";
const ADMIN: &str = "$p = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent(); $p.IsInRole([Security.Principal.SecurityIdentifier]::new('S-1-5-32-578')) -or $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)";
const HYPERVISOR: &str = "(Get-CimInstance -ClassName Win32_ComputerSystem).HypervisorPresent";
const SWITCHES: &str = "Hyper-V\\Get-VMSwitch | ForEach-Object { $_.Name }";

#[tokio::test]
async fn precheck_names_each_missing_piece() {
    let s = setup();
    let check = || async { s.driver(options()).precheck(&s.spec).await };

    s.runner
        .expect(s.driver(options()).argv(MODULE), CannedReply::Missing);
    assert_eq!(
        check().await.expect_err("no powershell").to_string(),
        format!("{PS} not found: {INSTALL_HINT}")
    );

    s.ok(MODULE, "");
    assert!(check()
        .await
        .expect_err("no module")
        .to_string()
        .contains("Hyper-V PowerShell module is not available"));

    s.ok(MODULE, "Hyper-V\r\n");
    s.ok(ADMIN, "False\r\n");
    assert!(check()
        .await
        .expect_err("not admin")
        .to_string()
        .contains("Hyper-V Administrators"));

    s.ok(MODULE, "Hyper-V\r\n");
    s.ok(ADMIN, "True\r\n");
    s.ok(HYPERVISOR, "False\r\n");
    assert!(check()
        .await
        .expect_err("no hypervisor")
        .to_string()
        .contains("virtualization disabled"));

    s.ok(MODULE, "Hyper-V\r\n");
    s.ok(ADMIN, "True\r\n");
    s.ok(HYPERVISOR, "True\r\n");
    s.ok(SWITCHES, "Default Switch\r\nExternal\r\n");
    check().await.expect("all good");

    s.ok(MODULE, "Hyper-V\r\n");
    s.ok(ADMIN, "True\r\n");
    s.ok(HYPERVISOR, "True\r\n");
    s.ok(SWITCHES, "Default Switch\r\n");
    let err = s
        .driver(HyperVOptions {
            virtual_switch: Some("Bridge".into()),
            ..options()
        })
        .precheck(&s.spec)
        .await
        .expect_err("no such switch");
    assert_eq!(
        err.to_string(),
        "invalid hyperv options: no virtual switch named \"Bridge\" (Hyper-V has: Default Switch); choose one with --hyperv-virtual-switch"
    );
    s.runner.assert_done();
}

#[tokio::test]
async fn create_refuses_a_name_hyperv_already_has_and_rm_leaves_that_vm_alone() {
    let s = setup();
    s.ok(NAME_CHECK, "1\r\n");
    let driver = s.driver(options());
    let err = driver.create(&s.dir, &s.spec).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "machine \"dev\": Hyper-V: Hyper-V already has a VM named \"dev\" that this machine did not create; remove or rename that VM, or choose another machine name"
    );
    assert!(!s.dir.file("hyperv.json").exists());
    // The host's clean-up after the failed create runs no cmdlet at all.
    driver.remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
}

#[tokio::test]
async fn without_an_id_the_vm_is_the_one_of_that_name_in_the_machine_directory() {
    let s = setup();
    // A record made before Ids (or by a create interrupted right after New-VM).
    std::fs::write(
        s.dir.file("hyperv.json"),
        r#"{"vmName":"dev","configDiskId":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"guestPorts":{"ssh":22,"engine":2376}}"#,
    )
    .expect("old record");
    let sel = by_name(&s);
    let state = format!("$vm = {sel}; if ($vm.Count -gt 1) {{ throw 'more than one VM matches' }} elseif ($vm.Count -eq 1) {{ $vm[0].State }} else {{ 'NotFound' }}");
    s.ok(&state, "Running\r\n");
    s.ok(&format!("Hyper-V\\Stop-VM -VM {sel} -TurnOff -Force"), "");
    s.ok(&format!("Hyper-V\\Remove-VM -VM {sel} -Force"), "");
    s.driver(options()).remove(&s.dir).await.expect("rm");
    s.runner.assert_done();
}

#[tokio::test]
async fn start_after_upgrade_puts_the_new_iso_in_the_dvd_drive() {
    let s = setup();
    created(&s);
    let mut spec = s.spec.clone();
    let new_iso = s.dir.path().join("rmachine-2.iso");
    std::fs::write(&new_iso, b"iso 2").expect("iso");
    spec.boot.iso = Some(new_iso.clone());
    s.ok(STATE, "Off\r\n");
    s.ok(
        &format!(
            "Hyper-V\\Get-VMDvdDrive -VM {} | Hyper-V\\Set-VMDvdDrive -Path {}",
            "@(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue)",
            path_q(&new_iso)
        ),
        "",
    );
    s.ok("Hyper-V\\Start-VM -VM @(Hyper-V\\Get-VM -Id '5b9f3e0c-2a7d-4e1b-9c3f-8d6a4b2e1f07' -ErrorAction SilentlyContinue)", "");
    s.ok(NEIGHBOUR, "172.27.200.31\r\n");
    let driver = s.driver(options());
    driver.start(&s.dir, &spec).await.expect("start");
    s.runner.assert_done();
    let saved = load_required(&s.dir).expect("record");
    assert_eq!(saved.iso, Some(new_iso));
}

#[tokio::test]
async fn a_warning_before_new_vms_id_is_not_a_failure() {
    let s = setup();
    let mut scripts = create_scripts(&s, true);
    s.ok(NAME_CHECK, "0\r\n");
    s.ok(&scripts[0], "");
    s.ok(
        &scripts.remove(1),
        &format!("WARNING: The switch is not connected to a network.\r\n{ID}\r\n"),
    );
    for script in &scripts[1..] {
        s.ok(script, "");
    }
    s.driver(options())
        .create(&s.dir, &s.spec)
        .await
        .expect("create");
    s.runner.assert_done();
    assert_eq!(
        load_required(&s.dir).expect("record").vm_id.as_deref(),
        Some(ID)
    );
}

#[tokio::test]
async fn a_new_vm_without_a_readable_id_is_removed_by_name_and_folder() {
    let s = setup();
    let scripts = create_scripts(&s, true);
    s.ok(NAME_CHECK, "0\r\n");
    s.ok(&scripts[0], "");
    s.ok(&scripts[1], "something odd\r\n");
    s.ok(&format!("{} | Hyper-V\\Remove-VM -Force", by_name(&s)), "");
    let err = s
        .driver(options())
        .create(&s.dir, &s.spec)
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("not the new VM's Id"), "{err}");
    s.runner.assert_done();
    assert!(!s.dir.file("hyperv.json").exists());
}
