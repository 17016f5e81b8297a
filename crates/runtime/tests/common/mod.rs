//! What a runtime test does when this machine cannot run it: under `tests/run.sh` (and so CI),
//! which exports `RMACHINE_TESTS_REQUIRED=1`, it fails with the reason; elsewhere it skips and
//! says so on stderr, past the test harness's output capture so that the runner shows it.

use std::io::Write;

/// Fails the test (`RMACHINE_TESTS_REQUIRED=1`) or reports the skip; the caller returns.
pub fn cannot_run(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var("RMACHINE_TESTS_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run here: {reason} (RMACHINE_TESTS_REQUIRED=1 makes this a failure)");
    }
    // Straight to the process's stderr: eprintln! would be captured and hidden on success.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
