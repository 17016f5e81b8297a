//! Network: loopback, the first NIC with the configuration drive's static address when the
//! driver knows it, else by DHCP (busybox `udhcpc`) with a static fallback for QEMU user
//! networking. Every further NIC (VirtualBox's host-only card) gets an address by DHCP in the
//! background, as a secondary: it never takes the default route or `/etc/resolv.conf`, which
//! stay the first NIC's.
//!
//! `udhcpc` calls a script for each event; we render it here (`rmachine-init udhcpc-script`,
//! which `guest/build.sh` writes to `/etc/udhcpc.script`) so that the program and the image
//! always agree. The fallback is the address QEMU's user network hands out anyway
//! (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), so a DHCP hiccup does not cost the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;

use futures_util::TryStreamExt;
use rmachine_guest_config::StaticNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use tokio::process::Command;

/// Where `guest/build.sh` installs [`udhcpc_script`].
pub const UDHCPC_SCRIPT: &str = "/etc/udhcpc.script";

/// Set in udhcpc's environment (and so its script's) for a secondary NIC.
pub const SECONDARY_ENV: &str = "RMACHINE_DHCP_SECONDARY";

/// Static configuration used when DHCP fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// Address with prefix length.
    pub address: &'static str,
    /// Default gateway.
    pub gateway: &'static str,
    /// DNS server.
    pub dns: &'static str,
}

/// QEMU user networking's defaults.
pub const QEMU_USER_NET: StaticConfig = StaticConfig {
    address: "10.0.2.15/24",
    gateway: "10.0.2.2",
    dns: "10.0.2.3",
};

/// The udhcpc event script: applies a lease with busybox `ip` and writes `/etc/resolv.conf`.
pub fn udhcpc_script() -> &'static str {
    r#"#!/bin/sh
# Rendered by rmachine-init (crates/init/src/net.rs); udhcpc runs it on each DHCP event.
[ -n "$1" ] || exit 1
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound|renew)
    if [ -n "$RMACHINE_DHCP_SECONDARY" ]; then
      # A secondary NIC keeps only its address: never the default route or resolv.conf. A
      # renewal of the address it has changes nothing, so open connections stay.
      if [ "$1" != renew ] || ! ip -4 addr show dev "$interface" | grep -qF "inet $ip/"; then
        ip -4 addr flush dev "$interface"
      fi
      ip addr replace "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
      ip link set dev "$interface" up ${mtu:+mtu "$mtu"}
      exit 0
    fi
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    ip link set dev "$interface" up ${mtu:+mtu "$mtu"}
    if [ -n "$router" ]; then
      while ip route del default dev "$interface" 2>/dev/null; do :; done
      for gw in $router; do
        ip route add default via "$gw" dev "$interface"
        break
      done
    fi
    : > /etc/resolv.conf.tmp
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf.tmp
    for ns in $dns; do echo "nameserver $ns" >> /etc/resolv.conf.tmp; done
    mv /etc/resolv.conf.tmp /etc/resolv.conf
    ;;
esac
exit 0
"#
}

/// `resolv.conf` for a single DNS server.
pub fn resolv_conf(dns: &str) -> String {
    format!("nameserver {dns}\n")
}

/// The `ip` commands that give `ifname` the `address` (with prefix length) and the default
/// route via `gateway`.
pub fn static_commands(ifname: &str, address: &str, gateway: &str) -> Vec<Vec<String>> {
    let cmd = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        cmd(&["addr", "flush", "dev", ifname]),
        cmd(&["addr", "add", address, "dev", ifname]),
        cmd(&["link", "set", "dev", ifname, "up"]),
        cmd(&["route", "add", "default", "via", gateway, "dev", ifname]),
    ]
}

/// Checks a configuration drive's static network: `a.b.c.d/len`, and two IPv4 addresses.
/// Returns what is wrong, for the console.
pub fn check_static(net: &StaticNetwork) -> Result<(), String> {
    parse_cidr(&net.address)?;
    for (what, value) in [("gateway", &net.gateway), ("dns", &net.dns)] {
        value
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{what} {value:?} is not IPv4"))?;
    }
    Ok(())
}

/// The udhcpc command line for an interface: quit once bound, give up after 5 tries.
pub fn udhcpc_args(ifname: &str) -> Vec<String> {
    [
        "-i",
        ifname,
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        UDHCPC_SCRIPT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The udhcpc command line for a secondary NIC: it stays in the foreground (a child the
/// supervisor reaps) and keeps its lease renewed, retrying forever when no server answers.
pub fn secondary_udhcpc_args(ifname: &str) -> Vec<String> {
    [
        "-i",
        ifname,
        "-f",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        UDHCPC_SCRIPT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Wait before starting a secondary NIC's udhcpc again after it ended.
const SECONDARY_RESTART: std::time::Duration = std::time::Duration::from_secs(5);

/// Picks the first physical NIC from `/sys/class/net` names (those with a `device` link).
pub fn first_nic(names: &[(String, bool)]) -> Option<String> {
    let mut nics: Vec<&String> = names
        .iter()
        .filter(|(name, physical)| *physical && name != "lo")
        .map(|(name, _)| name)
        .collect();
    nics.sort_by_key(|n| (n.len(), n.to_string()));
    nics.first().map(|n| n.to_string())
}

/// The physical NICs after the first, in the same order.
pub fn other_nics(names: &[(String, bool)]) -> Vec<String> {
    let mut nics: Vec<&String> = names
        .iter()
        .filter(|(name, physical)| *physical && name != "lo")
        .map(|(name, _)| name)
        .collect();
    nics.sort_by_key(|n| (n.len(), n.to_string()));
    nics.into_iter().skip(1).cloned().collect()
}

/// Brings up a secondary NIC by DHCP (its address only; see [`SECONDARY_ENV`]) and keeps its
/// lease: udhcpc runs for the machine's life, renewing it, and is started again if it ends.
async fn setup_secondary(ifname: String) {
    if let Err(err) = ip(&["link".into(), "set".into(), ifname.clone(), "up".into()]).await {
        tracing::warn!("network: {err}");
        return;
    }
    loop {
        let child = Command::new("/sbin/udhcpc")
            .args(secondary_udhcpc_args(&ifname))
            .env(SECONDARY_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(err) => {
                tracing::warn!("network: cannot run udhcpc for {ifname} (secondary): {err}");
                return;
            }
        };
        tracing::info!("network: {ifname} (secondary) by dhcp, lease kept by udhcpc");
        // tokio reaps it (the supervisor's children are not PID 1's to reap).
        match child.wait().await {
            Ok(status) => {
                tracing::warn!("network: udhcpc for {ifname} (secondary) ended ({status})")
            }
            Err(err) => tracing::warn!("network: udhcpc for {ifname} (secondary): {err}"),
        }
        tokio::time::sleep(SECONDARY_RESTART).await;
    }
}

fn list_interfaces(class_net: &Path) -> Vec<(String, bool)> {
    std::fs::read_dir(class_net)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let physical = e.path().join("device").exists();
                    (name, physical)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn ip(args: &[String]) -> Result<(), String> {
    let output = Command::new("/sbin/ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

async fn ipv4_summary(ifname: &str) -> String {
    let out = Command::new("/sbin/ip")
        .args(["-4", "-o", "addr", "show", "dev", ifname])
        .output()
        .await;
    let addr = out
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "no address".into());
    let route = Command::new("/sbin/ip")
        .args(["route", "show", "default"])
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("default"))
                .unwrap_or("no default route")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    let dns = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect::<Vec<_>>()
        .join(",");
    format!("{addr}, {route}, dns {dns}")
}

/// A netlink connection in init's network namespace (its task runs on the current runtime).
fn netlink() -> Result<Handle, String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|err| format!("netlink: {err}"))?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, String> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(format!("no link {name}")),
        Err(err) => Err(format!("find link {name}: {err}")),
    }
}

async fn link_up(handle: &Handle, name: &str) -> Result<u32, String> {
    let index = link_index(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|err| format!("bring {name} up: {err}"))?;
    Ok(index)
}

/// `a.b.c.d/len` as an address and a prefix length.
pub fn parse_cidr(address: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = address
        .split_once('/')
        .ok_or_else(|| format!("address {address:?} has no prefix length"))?;
    let addr = addr
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("address {address:?} is not IPv4"))?;
    match len.parse::<u8>() {
        Ok(len) if len <= 32 => Ok((addr, len)),
        _ => Err(format!("prefix length in {address:?} is invalid")),
    }
}

/// [`static_commands`] over netlink: the same steps (flush the link's IPv4 addresses, add
/// `address`, bring the link up, default route via `gateway`) without an `ip` process per
/// step, each of which costs tens of milliseconds of the vCPU under TCG at boot, when the
/// container modules and the data disk's format want it too.
async fn apply_static_netlink(
    handle: &Handle,
    ifname: &str,
    address: &str,
    gateway: &str,
) -> Result<(), String> {
    let (addr, prefix) = parse_cidr(address)?;
    let gateway = gateway
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("gateway {gateway:?} is not IPv4"))?;
    let index = link_index(handle, ifname).await?;
    let mut old = Vec::new();
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|err| format!("list the addresses of {ifname}: {err}"))?
    {
        if msg.header.family == AddressFamily::Inet {
            old.push(msg);
        }
    }
    for msg in old {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|err| format!("flush the addresses of {ifname}: {err}"))?;
    }
    handle
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .map_err(|err| format!("address {address} on {ifname}: {err}"))?;
    link_up(handle, ifname).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(|err| format!("default route via {gateway} dev {ifname}: {err}"))
}

/// Brings up `lo` and the first NIC: with `fixed` (the configuration drive's static address)
/// at once, else by DHCP with QEMU user networking's plan as the fallback; logs the result.
pub async fn setup(fixed: Option<StaticNetwork>) {
    let handle = match netlink() {
        Ok(handle) => Some(handle),
        Err(err) => {
            tracing::warn!("network: {err}");
            None
        }
    };
    let lo_up = match &handle {
        Some(handle) => link_up(handle, "lo").await.map(drop),
        None => ip(&["link".into(), "set".into(), "lo".into(), "up".into()]).await,
    };
    if let Err(err) = lo_up {
        tracing::warn!("loopback: {err}");
    }
    let interfaces = list_interfaces(Path::new("/sys/class/net"));
    let Some(ifname) = first_nic(&interfaces) else {
        tracing::warn!("network: no network interface found");
        return;
    };
    // Secondary NICs do not hold up the boot: the machine is reached through the first.
    for other in other_nics(&interfaces) {
        tokio::spawn(setup_secondary(other));
    }
    let fixed = fixed.filter(|net| match check_static(net) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!("network: configuration drive: {err}; using dhcp");
            false
        }
    });
    if let Some(net) = fixed {
        // The address the driver knows: set over netlink, and logged as set (asking `ip` what
        // it now is would cost two more processes).
        let applied = match &handle {
            Some(handle) => apply_static_netlink(handle, &ifname, &net.address, &net.gateway).await,
            None => Err("no netlink connection".to_owned()),
        };
        match applied {
            Ok(()) => {
                write_resolv_conf(&net.dns);
                tracing::info!(
                    "network: {ifname} static (configuration drive): {}, default via {} dev {ifname}, dns {}",
                    net.address,
                    net.gateway,
                    net.dns
                );
            }
            Err(err) => {
                tracing::warn!("network: {err}; trying with ip");
                apply_static(&ifname, &net.address, &net.gateway, &net.dns).await;
                tracing::info!(
                    "network: {ifname} static (configuration drive): {}",
                    ipv4_summary(&ifname).await
                );
            }
        }
        return;
    }
    if let Err(err) = ip(&["link".into(), "set".into(), ifname.clone(), "up".into()]).await {
        tracing::warn!("network: {err}");
    }
    let dhcp = Command::new("/sbin/udhcpc")
        .args(udhcpc_args(&ifname))
        .stdin(Stdio::null())
        .output()
        .await;
    match dhcp {
        Ok(out) if out.status.success() => {
            tracing::info!("network: {ifname} by dhcp: {}", ipv4_summary(&ifname).await);
            return;
        }
        Ok(out) => tracing::warn!(
            "network: dhcp on {ifname} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => tracing::warn!("network: cannot run udhcpc: {err}"),
    }
    apply_static(
        &ifname,
        QEMU_USER_NET.address,
        QEMU_USER_NET.gateway,
        QEMU_USER_NET.dns,
    )
    .await;
    tracing::info!(
        "network: {ifname} static fallback: {}",
        ipv4_summary(&ifname).await
    );
}

async fn apply_static(ifname: &str, address: &str, gateway: &str, dns: &str) {
    for args in static_commands(ifname, address, gateway) {
        if let Err(err) = ip(&args).await {
            tracing::warn!("network: {err}");
        }
    }
    write_resolv_conf(dns);
}

fn write_resolv_conf(dns: &str) {
    if let Err(err) = crate::config::write_file(
        Path::new("/etc/resolv.conf"),
        resolv_conf(dns).as_bytes(),
        0o644,
    ) {
        tracing::warn!("network: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration drive's address over netlink, in a network namespace of the test's
    /// own (root, as the workspace's tests run): an address the link had is flushed, the new
    /// one set, the link up, the default route via the gateway.
    #[test]
    fn a_static_address_is_applied_over_netlink() {
        let outcome = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root)");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let handle = netlink().expect("netlink");
                handle
                    .link()
                    .add(rtnetlink::LinkVeth::new("rmt0", "rmt1").build())
                    .execute()
                    .await
                    .expect("veth pair");
                let index = link_index(&handle, "rmt0").await.expect("rmt0");
                handle
                    .address()
                    .add(index, IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1)), 24)
                    .execute()
                    .await
                    .expect("old address");
                apply_static_netlink(&handle, "rmt0", "10.9.8.7/24", "10.9.8.1")
                    .await
                    .expect("apply");
                assert!(
                    apply_static_netlink(&handle, "nope0", "10.9.8.7/24", "10.9.8.1")
                        .await
                        .is_err_and(|err| err.contains("nope0"))
                );

                let mut addresses = Vec::new();
                let mut addrs = handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute();
                while let Some(msg) = addrs.try_next().await.expect("addresses") {
                    for attr in &msg.attributes {
                        // IPv4 only: the link, once up, may get an IPv6 link-local address.
                        if let rtnetlink::packet_route::address::AddressAttribute::Address(
                            ip @ IpAddr::V4(_),
                        ) = attr
                        {
                            addresses.push(format!("{ip}/{}", msg.header.prefix_len));
                        }
                    }
                }
                let mut links = handle.link().get().match_name("rmt0".into()).execute();
                let link = links.try_next().await.expect("link").expect("rmt0");
                let up = link
                    .header
                    .flags
                    .contains(rtnetlink::packet_route::link::LinkFlags::Up);
                let mut gateways = Vec::new();
                let mut routes = handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute();
                while let Some(route) = routes.try_next().await.expect("routes") {
                    if route.header.destination_prefix_length != 0 {
                        continue;
                    }
                    for attr in &route.attributes {
                        if let rtnetlink::packet_route::route::RouteAttribute::Gateway(gw) = attr {
                            gateways.push(format!("{gw:?}"));
                        }
                    }
                }
                (addresses, up, gateways)
            })
        })
        .join()
        .expect("test thread");
        let (addresses, up, gateways) = outcome;
        assert_eq!(addresses, ["10.9.8.7/24"]);
        assert!(up, "rmt0 is up");
        assert_eq!(gateways.len(), 1, "{gateways:?}");
        assert!(gateways[0].contains("10.9.8.1"), "{gateways:?}");
    }

    #[test]
    fn script_handles_bound_and_writes_resolv_conf() {
        let script = udhcpc_script();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("bound|renew)"));
        assert!(script.contains("ip route add default via \"$gw\""));
        assert!(script.contains("mv /etc/resolv.conf.tmp /etc/resolv.conf"));
    }

    /// The script run for a secondary NIC's lease: its address, no default route.
    #[cfg(unix)]
    #[test]
    fn a_secondary_lease_sets_the_address_and_leaves_the_route() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("ip.log");
        let fake_ip = tmp.path().join("ip");
        std::fs::write(
            &fake_ip,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display()),
        )
        .expect("fake ip");
        std::fs::set_permissions(&fake_ip, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = tmp.path().join("udhcpc.script");
        std::fs::write(&script, udhcpc_script()).expect("script");
        let status = std::process::Command::new("sh")
            .arg(&script)
            .arg("bound")
            .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
            .env("interface", "eth1")
            .env("ip", "192.168.99.100")
            .env("mask", "24")
            .env("router", "192.168.99.1")
            .env("dns", "192.168.99.1")
            .env(SECONDARY_ENV, "1")
            .status()
            .expect("sh");
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(&log).expect("log"),
            "-4 addr flush dev eth1\naddr replace 192.168.99.100/24 dev eth1\nlink set dev eth1 up\n"
        );
    }

    /// A secondary's renewal of the address it holds keeps it (no flush) and touches neither
    /// the route nor resolv.conf.
    #[cfg(unix)]
    #[test]
    fn a_secondary_renewal_keeps_the_address_and_leaves_the_route() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("ip.log");
        let fake_ip = tmp.path().join("ip");
        std::fs::write(
            &fake_ip,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$3\" = show ] && echo '3: eth1    inet 192.168.99.100/24 brd 192.168.99.255 scope global eth1'\nexit 0\n",
                log.display()
            ),
        )
        .expect("fake ip");
        std::fs::set_permissions(&fake_ip, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = tmp.path().join("udhcpc.script");
        std::fs::write(&script, udhcpc_script()).expect("script");
        let status = std::process::Command::new("sh")
            .arg(&script)
            .arg("renew")
            .current_dir(tmp.path())
            .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
            .env("interface", "eth1")
            .env("ip", "192.168.99.100")
            .env("mask", "24")
            .env("router", "192.168.99.1")
            .env("dns", "192.168.99.1")
            .env(SECONDARY_ENV, "1")
            .status()
            .expect("sh");
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(&log).expect("log"),
            "-4 addr show dev eth1\naddr replace 192.168.99.100/24 dev eth1\nlink set dev eth1 up\n"
        );
        assert!(!tmp.path().join("resolv.conf.tmp").exists());
    }

    /// A secondary's udhcpc stays and renews: neither `-q` (quit once bound) nor `-n` (quit
    /// when no lease); the first NIC's quits, as its lease is taken once at boot.
    #[test]
    fn a_secondarys_udhcpc_keeps_running_to_renew_its_lease() {
        let secondary = secondary_udhcpc_args("eth1");
        assert_eq!(
            secondary.join(" "),
            "-i eth1 -f -t 5 -T 1 -s /etc/udhcpc.script"
        );
        assert!(udhcpc_args("eth0").contains(&"-q".to_string()));
    }

    #[test]
    fn the_nics_after_the_first_are_secondaries() {
        let names = [
            ("lo".to_string(), false),
            ("eth1".to_string(), true),
            ("docker0".to_string(), false),
            ("eth0".to_string(), true),
        ];
        assert_eq!(other_nics(&names), ["eth1"]);
        assert!(other_nics(&names[..2]).is_empty());
    }

    #[test]
    fn static_fallback_is_qemu_user_net() {
        let cmds = static_commands("eth0", QEMU_USER_NET.address, QEMU_USER_NET.gateway);
        assert!(cmds.contains(&vec![
            "addr".to_string(),
            "add".into(),
            "10.0.2.15/24".into(),
            "dev".into(),
            "eth0".into()
        ]));
        assert_eq!(
            cmds.last().map(|c| c.join(" ")),
            Some("route add default via 10.0.2.2 dev eth0".into())
        );
        assert_eq!(resolv_conf("10.0.2.3"), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn a_static_network_from_the_drive_is_checked() {
        let good = StaticNetwork {
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            dns: "10.0.2.3".into(),
        };
        assert_eq!(check_static(&good), Ok(()));
        for (address, gateway) in [
            ("10.0.2.15", "10.0.2.2"),
            ("10.0.2.15/33", "10.0.2.2"),
            ("fe80::1/64", "10.0.2.2"),
            ("10.0.2.15/24", "gw"),
        ] {
            let bad = StaticNetwork {
                address: address.into(),
                gateway: gateway.into(),
                ..good.clone()
            };
            assert!(check_static(&bad).is_err(), "{address} {gateway}");
        }
    }

    #[test]
    fn udhcpc_quits_after_lease_and_uses_our_script() {
        let args = udhcpc_args("eth0").join(" ");
        assert!(args.contains("-i eth0"));
        assert!(args.contains("-q -n -t 5"));
        assert!(args.ends_with("-s /etc/udhcpc.script"));
    }

    #[test]
    fn first_physical_nic_wins() {
        let names = vec![
            ("lo".to_string(), false),
            ("eth1".to_string(), true),
            ("docker0".to_string(), false),
            ("eth0".to_string(), true),
        ];
        assert_eq!(first_nic(&names), Some("eth0".into()));
        assert_eq!(first_nic(&[("lo".to_string(), false)]), None);
    }
}
