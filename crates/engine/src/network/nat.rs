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

/// A published port forwarded in the kernel: traffic for `host_port` on one of the engine
/// namespace's own non-loopback addresses goes to the container, its source kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `tcp` or `udp`.
    pub proto: super::Proto,
    /// The host address asked for; `None` for every address (`0.0.0.0`).
    pub host_ip: Option<std::net::Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
    /// The container's address.
    pub container_ip: std::net::Ipv4Addr,
    /// The container's port.
    pub container_port: u16,
}

/// The table's text: masquerade what leaves each non-internal subnet through another
/// interface, and (as dockerd's isolation chains) drop what is forwarded between two of the
/// engine's bridges, or into or out of an internal one.
///
/// Published ports are DNAT rules (dockerd's fast path): in prerouting for what comes from
/// other namespaces and containers, in output for the engine namespace's own connections to
/// its non-loopback addresses; loopback (127.0.0.0/8) is left to the userland proxy, as
/// dockerd does without `route_localnet`. What a container sends to a published port of its
/// own network is masqueraded (hairpin): its peer then answers through the engine.
pub fn ruleset(rules: &[Rule], forwards: &[Forward]) -> String {
    // "table …; delete table …" first: the load replaces any table left by an earlier engine
    // in the same transaction.
    let mut nat = String::new();
    let mut forward = String::new();
    for rule in rules {
        let (bridge, pool) = (&rule.bridge, rule.pool);
        if !forwards.is_empty() {
            nat.push_str(&format!(
                "\t\tip saddr {pool} oifname \"{bridge}\" ct status dnat masquerade\n"
            ));
        }
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
    let mut dnat = String::new();
    for f in forwards {
        let daddr = match f.host_ip {
            Some(ip) => format!("ip daddr {ip} "),
            None => String::new(),
        };
        dnat.push_str(&format!(
            "\t\t{daddr}fib daddr type local {proto} dport {} dnat to {}:{}\n",
            f.host_port,
            f.container_ip,
            f.container_port,
            proto = f.proto.as_str(),
        ));
    }
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr 127.0.0.0/8 return\n\
         {dnat}\t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\t}}\n}}\n"
    )
}

/// Loads the engine's table for the live networks.
pub async fn install(rules: &[Rule], forwards: &[Forward]) -> Result<(), NetworkError> {
    nft(&ruleset(rules, forwards)).await
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
        let text = ruleset(
            &[
                rule("docker0", 17, false),
                rule("br-0123", 18, false),
                rule("br-4567", 19, true),
            ],
            &[],
        );
        assert!(text.starts_with("table ip rmachine-engine\ndelete table ip rmachine-engine\n"));
        assert!(text.contains("ip saddr 172.17.0.0/16 oifname != \"docker0\" masquerade"));
        assert!(text.contains("ip saddr 172.18.0.0/16 oifname != \"br-0123\" masquerade"));
        assert!(!text.contains("172.19.0.0/16"), "{text}");
        assert!(text.contains("iifname \"docker0\" oifname \"br-0123\" drop"));
        assert!(text.contains("iifname \"br-0123\" oifname \"docker0\" drop"));
        assert!(text.contains("iifname \"br-4567\" oifname != \"br-4567\" drop"));
    }

    #[test]
    fn published_ports_are_dnat_rules_off_loopback() {
        let rule = Rule {
            bridge: "docker0".into(),
            pool: Pool {
                network: std::net::Ipv4Addr::new(172, 17, 0, 0),
                prefix: 16,
            },
            internal: false,
        };
        let forward = |host_ip, proto| Forward {
            proto,
            host_ip,
            host_port: 8080,
            container_ip: std::net::Ipv4Addr::new(172, 17, 0, 2),
            container_port: 80,
        };
        let text = ruleset(
            &[rule],
            &[
                forward(None, super::super::Proto::Tcp),
                forward(
                    Some(std::net::Ipv4Addr::new(10, 0, 0, 5)),
                    super::super::Proto::Udp,
                ),
            ],
        );
        let any = "fib daddr type local tcp dport 8080 dnat to 172.17.0.2:80";
        let one = "ip daddr 10.0.0.5 fib daddr type local udp dport 8080 dnat to 172.17.0.2:80";
        assert_eq!(text.matches(any).count(), 2, "{text}");
        assert_eq!(text.matches(one).count(), 2, "{text}");
        assert!(text.contains("ip daddr 127.0.0.0/8 return"), "{text}");
        assert!(
            text.contains("ip saddr 172.17.0.0/16 oifname \"docker0\" ct status dnat masquerade")
        );
    }
}
