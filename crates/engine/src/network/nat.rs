//! NAT for egress: the engine's own nftables table (`ip rmachine-engine`), so that its rules
//! never touch anyone else's; the `nft` program (Debian's `nftables`) loads it atomically.

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::ipam::Pool;
use super::NetworkError;

/// The engine's nftables table (family `ip`).
pub const TABLE: &str = "rmachine-engine";

async fn nft(script: &str) -> Result<(), NetworkError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::Nft {
            reason: format!("cannot run nft: {source}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| NetworkError::Nft {
                reason: format!("cannot write to nft: {source}"),
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| NetworkError::Nft {
            reason: format!("nft did not finish: {source}"),
        })?;
    if !out.status.success() {
        return Err(NetworkError::Nft {
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// One live bridge network as the rules see it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The bridge device.
    pub bridge: String,
    /// Its subnet.
    pub pool: Pool,
    /// `--internal`: nothing forwarded in or out, no masquerade.
    pub internal: bool,
}

/// The table's text: masquerade what leaves each non-internal subnet through another
/// interface, and (as dockerd's isolation chains) drop what is forwarded between two of the
/// engine's bridges, or into or out of an internal one.
pub fn ruleset(rules: &[Rule]) -> String {
    // "table …; delete table …" first: the load replaces any table left by an earlier engine
    // in the same transaction.
    let mut nat = String::new();
    let mut forward = String::new();
    for rule in rules {
        let (bridge, pool) = (&rule.bridge, rule.pool);
        if rule.internal {
            forward.push_str(&format!(
                "\t\tiifname \"{bridge}\" oifname != \"{bridge}\" drop\n\
                 \t\toifname \"{bridge}\" iifname != \"{bridge}\" drop\n"
            ));
        } else {
            nat.push_str(&format!(
                "\t\tip saddr {pool} oifname != \"{bridge}\" masquerade\n"
            ));
        }
        for other in rules.iter().filter(|o| o.bridge != *bridge) {
            forward.push_str(&format!(
                "\t\tiifname \"{bridge}\" oifname \"{}\" drop\n",
                other.bridge
            ));
        }
    }
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\t}}\n}}\n"
    )
}

/// Loads the engine's table for the live networks.
pub async fn install(rules: &[Rule]) -> Result<(), NetworkError> {
    nft(&ruleset(rules)).await
}

/// Removes the engine's table if it exists.
pub async fn remove() -> Result<(), NetworkError> {
    nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_the_subnet_leaving_by_another_interface() {
        let pool = |b| Pool {
            network: std::net::Ipv4Addr::new(172, b, 0, 0),
            prefix: 16,
        };
        let rule = |bridge: &str, b, internal| Rule {
            bridge: bridge.into(),
            pool: pool(b),
            internal,
        };
        let text = ruleset(&[
            rule("docker0", 17, false),
            rule("br-0123", 18, false),
            rule("br-4567", 19, true),
        ]);
        assert!(text.starts_with("table ip rmachine-engine\ndelete table ip rmachine-engine\n"));
        assert!(text.contains("ip saddr 172.17.0.0/16 oifname != \"docker0\" masquerade"));
        assert!(text.contains("ip saddr 172.18.0.0/16 oifname != \"br-0123\" masquerade"));
        assert!(!text.contains("172.19.0.0/16"), "{text}");
        assert!(text.contains("iifname \"docker0\" oifname \"br-0123\" drop"));
        assert!(text.contains("iifname \"br-0123\" oifname \"docker0\" drop"));
        assert!(text.contains("iifname \"br-4567\" oifname != \"br-4567\" drop"));
    }
}
