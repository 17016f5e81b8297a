//! The networking parts of container JSON: `NetworkSettings` of inspect and the `Ports` and
//! `NetworkSettings` of `docker ps`, as dockerd fills them.

use serde_json::{json, Value};

use crate::core::networks::Mode;
use crate::network::{ports_map, Endpoint};
use crate::state::ContainerRecord;

/// One entry of `NetworkSettings.Networks`.
fn endpoint_settings(network_id: &str, endpoint: Option<&Endpoint>) -> Value {
    let e = endpoint;
    json!({
        "IPAMConfig": null, "Links": null, "Aliases": null,
        "MacAddress": e.map_or(String::new(), |e| e.mac.clone()),
        "DriverOpts": null, "GwPriority": 0,
        "NetworkID": network_id,
        "EndpointID": e.map_or(String::new(), |e| e.endpoint_id.clone()),
        "Gateway": e.map_or(String::new(), |e| e.gateway.to_string()),
        "IPAddress": e.map_or(String::new(), |e| e.ip.to_string()),
        "IPPrefixLen": e.map_or(0, |e| e.prefix),
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "DNSNames": null,
    })
}

fn networks(record: &ContainerRecord, endpoint: Option<&Endpoint>, bridge_id: &str) -> Value {
    let mut map = serde_json::Map::new();
    if let Ok(mode) = Mode::of(&record.host_config) {
        if let Some(name) = mode.network_name() {
            let id = if mode == Mode::Bridge {
                bridge_id
            } else {
                name
            };
            map.insert(name.to_string(), endpoint_settings(id, endpoint));
        }
    }
    Value::Object(map)
}

/// Fills `NetworkSettings` of an inspect document: the endpoint's address while the container
/// runs on the bridge, its published ports, every exposed port.
pub fn show_network(
    inspect: &mut Value,
    record: &ContainerRecord,
    endpoint: Option<&Endpoint>,
    bridge_id: &str,
) {
    let published = endpoint.map_or(&[][..], |e| e.ports.as_slice());
    let running = endpoint.is_some();
    let ports = if running {
        Value::Object(ports_map(
            &record.config.exposed_ports,
            record.host_config.port_bindings.keys().cloned(),
            published,
        ))
    } else {
        json!({})
    };
    let settings = &mut inspect["NetworkSettings"];
    settings["Ports"] = ports;
    settings["Networks"] = networks(record, endpoint, bridge_id);
    if let Some(e) = endpoint {
        settings["SandboxID"] = json!(e.endpoint_id);
        settings["SandboxKey"] = json!(e.netns.to_string_lossy());
        settings["EndpointID"] = json!(e.endpoint_id);
        settings["Gateway"] = json!(e.gateway.to_string());
        settings["IPAddress"] = json!(e.ip.to_string());
        settings["IPPrefixLen"] = json!(e.prefix);
        settings["MacAddress"] = json!(e.mac);
    }
}

/// Fills `Ports`, `HostConfig.NetworkMode` and `NetworkSettings` of a `docker ps` entry.
pub fn show_network_summary(
    summary: &mut Value,
    record: &ContainerRecord,
    endpoint: Option<&Endpoint>,
    bridge_id: &str,
) {
    let mut ports = Vec::new();
    if let Some(e) = endpoint {
        let map = ports_map(
            &record.config.exposed_ports,
            record.host_config.port_bindings.keys().cloned(),
            &e.ports,
        );
        for (key, value) in map {
            let Ok((port, proto)) = crate::network::ports::parse_key(&key) else {
                continue;
            };
            match value.as_array() {
                Some(list) => {
                    for b in list {
                        let public: u16 = b["HostPort"]
                            .as_str()
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(0);
                        ports.push(json!({
                            "IP": b["HostIp"], "PrivatePort": port,
                            "PublicPort": public, "Type": proto.as_str(),
                        }));
                    }
                }
                None => ports.push(json!({"PrivatePort": port, "Type": proto.as_str()})),
            }
        }
    }
    summary["Ports"] = Value::Array(ports);
    if let Ok(mode) = Mode::of(&record.host_config) {
        if let Some(name) = mode.network_name() {
            summary["HostConfig"]["NetworkMode"] = json!(name);
        }
    }
    summary["NetworkSettings"]["Networks"] = networks(record, endpoint, bridge_id);
}
