//! Running `VBoxManage`: one call at a time, retried on VirtualBox's transient errors, and
//! parsing of its `--machinereadable` output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmachine_driver::runner::{CommandOutput, CommandRunner, CommandSpec};
use rmachine_driver::DriverError;

/// What to install when `VBoxManage` is missing.
pub const INSTALL_HINT: &str =
    "install VirtualBox (https://www.virtualbox.org/wiki/Downloads) or pass --virtualbox-program";

/// Serialises every VBoxManage call of this process: concurrent calls on one VM fail with a
/// session lock error, and VBoxSVC copes badly with bursts.
static CALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Texts of errors VirtualBox reports while a VM or its session is busy; worth retrying.
const TRANSIENT: &[&str] = &[
    "object is not ready",
    "VBOX_E_INVALID_OBJECT_STATE",
    "is already locked for a session",
    "already locked by a session",
    "E_ACCESSDENIED",
];

/// The texts VBoxManage prints when no VM has the name or the UUID asked for.
const NOT_FOUND: &[&str] = &[
    "Could not find a registered machine named",
    "Could not find a registered machine with UUID",
];

/// How a VBoxManage call went, beyond success.
#[derive(Debug)]
pub enum Outcome {
    /// The call succeeded; its output.
    Ok(CommandOutput),
    /// VirtualBox knows no such VM.
    NoSuchVm,
}

/// A VBoxManage program and the runner it goes through.
#[derive(Clone)]
pub struct VBoxManage {
    /// The program (name on `PATH` or a path).
    pub program: String,
    /// Runs it.
    pub runner: Arc<dyn CommandRunner>,
    /// Attempts for a call failing with a transient error.
    pub attempts: u32,
    /// Wait between attempts.
    pub retry_delay: Duration,
}

impl VBoxManage {
    /// Runs `VBoxManage ARGS`; fails unless it succeeds (after retries).
    pub async fn run(&self, args: &[&str]) -> Result<CommandOutput, DriverError> {
        match self.call(args).await? {
            Outcome::Ok(out) => Ok(out),
            Outcome::NoSuchVm => Err(DriverError::CommandFailed {
                program: self.program.clone(),
                status: 1,
                stderr: format!("{} (VBoxManage {})", NOT_FOUND[0], args.join(" ")),
            }),
        }
    }

    /// Runs `VBoxManage ARGS` once, for a call whose "transient" error texts mean something
    /// else (`hostonlyif ipconfig`'s E_ACCESSDENIED is VirtualBox's address policy).
    pub async fn run_once(&self, args: &[&str]) -> Result<CommandOutput, DriverError> {
        let once = Self {
            attempts: 1,
            ..self.clone()
        };
        once.run(args).await
    }

    /// Runs `VBoxManage ARGS`, telling "no such VM" apart from other failures.
    pub async fn call(&self, args: &[&str]) -> Result<Outcome, DriverError> {
        let spec = CommandSpec::new(self.program.clone())
            .args(args.iter().copied())
            .install_hint(INSTALL_HINT)
            .timeout(Duration::from_secs(120));
        let mut attempt = 1;
        loop {
            let out = {
                let _one_at_a_time = CALLS.lock().await;
                self.runner.run(&spec).await?
            };
            let stderr = out.stderr_text();
            // VBoxManage sometimes exits 0 after a fatal error (e.g. "VBoxManage: error: VT-x
            // is not available"): an "error:" line is a failure whatever the status.
            if out.is_success() && !stderr.contains("error:") {
                return Ok(Outcome::Ok(out));
            }
            if NOT_FOUND.iter().any(|t| stderr.contains(t)) {
                return Ok(Outcome::NoSuchVm);
            }
            if attempt < self.attempts && TRANSIENT.iter().any(|t| stderr.contains(t)) {
                tracing::debug!(attempt, ?args, "VBoxManage busy; retrying");
                attempt += 1;
                tokio::time::sleep(self.retry_delay).await;
                continue;
            }
            let mut failed = out.failed(&self.program);
            if let DriverError::CommandFailed { status, .. } = &mut failed {
                if *status == 0 {
                    *status = 1;
                }
            }
            return Err(failed);
        }
    }
}

/// `showvminfo --machinereadable` output as key → value:
/// lines are `key="value"`, `"key"="value"` or `key=value`.
pub fn parse_machinereadable(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            let (key, value) = if let Some(rest) = line.strip_prefix('"') {
                let (key, rest) = rest.split_once("\"=")?;
                (key, rest)
            } else {
                line.split_once('=')?
            };
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `list hostonlyifs` / `list dhcpservers` output: blocks separated by blank lines, each of
/// `Key:   value` lines.
pub fn parse_blocks(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut blocks = Vec::new();
    let mut block = BTreeMap::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            block.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_blocks_parse() {
        let blocks = parse_blocks(
            "Name:            vboxnet0\nGUID:            786f6276-656e-4074-8000-0a0027000000\nDHCP:            Disabled\nIPAddress:       192.168.56.1\nNetworkMask:     255.255.255.0\n\nName:            vboxnet1\r\nIPAddress:       192.168.99.1\r\n",
        );
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["IPAddress"], "192.168.56.1");
        assert_eq!(blocks[1]["Name"], "vboxnet1");
    }

    #[test]
    fn machinereadable_lines_parse_with_and_without_quotes() {
        let info = parse_machinereadable(
            "name=\"default\"\nmemory=1024\n\"SATA-0-0\"=\"/c/rmachine.iso\"\r\nForwarding(0)=\"ssh,tcp,127.0.0.1,2222,,22\"\nVMState=\"running\"\nbroken line\n",
        );
        assert_eq!(info["name"], "default");
        assert_eq!(info["memory"], "1024");
        assert_eq!(info["SATA-0-0"], "/c/rmachine.iso");
        assert_eq!(info["Forwarding(0)"], "ssh,tcp,127.0.0.1,2222,,22");
        assert_eq!(info["VMState"], "running");
        assert_eq!(info.len(), 5);
    }
}
