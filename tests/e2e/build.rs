//! Turns `RMACHINE_E2E=1` into `--cfg rmachine_e2e` for this crate only, so enabling the VM tier
//! does not change the flags (and force a rebuild) of every other crate, as RUSTFLAGS would.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(rmachine_e2e)");
    println!("cargo::rerun-if-env-changed=RMACHINE_E2E");
    if std::env::var("RMACHINE_E2E").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=rmachine_e2e");
    } else {
        // Shown by cargo: without this the tier "passes" with zero tests.
        println!(
            "cargo::warning=rmachine-e2e: RMACHINE_E2E is not 1, the VM tests are compiled out (0 tests)"
        );
    }
}
