//! The networking parts of container JSON: `NetworkSettings` of inspect and the `Ports` and
//! `NetworkSettings` of `docker ps`, as dockerd fills them.

use serde_json::{json, Value};

use crate::core::networks::{Attachment, Mode};
use crate::network::{ports_map, Endpoint};
use crate::state::ContainerRecord;

/// One entry of `NetworkSettings.Networks`: the endpoint while the container runs, the
/// settings asked for (`IPAMConfig`, aliases, MAC address) always, as dockerd.
fn endpoint_settings(a: &Attachment) -> Value {
    let e = a.endpoint.as_ref();
    let ipam = a.ip.map(|ip| json!({"IPv4Address": ip.to_string()}));
    let mac = e
        .map(|e| e.mac.clone())
        .or_else(|| a.mac.clone())
        .unwrap_or_default();
    json!({
        "IPAMConfig": ipam, "Links": null,
        "Aliases": (!a.aliases.is_empty()).then_some(&a.aliases),
        "MacAddress": mac,
        "DriverOpts": null, "GwPriority": 0,
        "NetworkID": a.network_id,
        "EndpointID": e.map_or(String::new(), |e| e.endpoint_id.clone()),
        "Gateway": e.map_or(String::new(), |e| e.gateway.to_string()),
        "IPAddress": e.map_or(String::new(), |e| e.ip.to_string()),
        "IPPrefixLen": e.map_or(0, |e| e.prefix),
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "DNSNames": a.dns_names,
    })
}

fn networks(attachments: &[Attachment]) -> Value {
    let map: serde_json::Map<String, Value> = attachments
        .iter()
        .map(|a| (a.name.clone(), endpoint_settings(a)))
        .collect();
    Value::Object(map)
}

/// Fills `NetworkSettings` of an inspect document: the endpoint's address while the container
/// runs on the bridge, its published ports, every exposed port.
pub fn show_network(
    inspect: &mut Value,
    record: &ContainerRecord,
    endpoint: Option<&Endpoint>,
    attachments: &[Attachment],
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
    settings["Networks"] = networks(attachments);
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
    attachments: &[Attachment],
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
    summary["NetworkSettings"]["Networks"] = networks(attachments);
}

/// The JSON of a network, as dockerd's `GET /networks/{id}` (`members` only in inspect).
pub fn network_json(
    def: &crate::network::NetworkDef,
    members: Option<&[(String, String, Endpoint)]>,
) -> Value {
    let mut config = Vec::new();
    if let Some(pool) = def.subnet {
        config.push(json!({
            "Subnet": pool.to_string(),
            "Gateway": def.gateway.unwrap_or_else(|| pool.gateway()).to_string(),
        }));
    }
    let options = if def.name == "bridge" {
        json!({
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            "com.docker.network.bridge.name": crate::network::BRIDGE,
            "com.docker.network.driver.mtu": "1500",
        })
    } else {
        json!(def.options)
    };
    let containers: serde_json::Map<String, Value> = members
        .unwrap_or_default()
        .iter()
        .map(|(id, name, e)| {
            (
                id.clone(),
                json!({
                    "Name": name, "EndpointID": e.endpoint_id, "MacAddress": e.mac,
                    "IPv4Address": format!("{}/{}", e.ip, e.prefix), "IPv6Address": "",
                }),
            )
        })
        .collect();
    json!({
        "Name": def.name, "Id": def.id,
        "Created": def.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "Scope": "local", "Driver": "bridge", "EnableIPv4": true, "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": def.internal, "Attachable": def.attachable, "Ingress": false,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
        "Containers": containers, "Options": options, "Labels": def.labels,
    })
}

/// `host` and `none`, which dockerd lists with drivers of the same names (`null` for none).
pub fn predefined_json(name: &str) -> Value {
    let digest = sha2::Sha256::digest(format!("predefined:{name}"));
    json!({
        "Name": name, "Id": hex::encode(digest),
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local", "Driver": if name == "none" { "null" } else { name },
        "EnableIPv4": true, "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": []},
        "Internal": false, "Attachable": false, "Ingress": false,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
        "Containers": {}, "Options": {}, "Labels": {},
    })
}

use sha2::Digest;

/// Whether a network's JSON passes `docker network ls`/`prune` filters (name, id, driver,
/// type, label); an unknown filter is refused.
pub fn network_matches(
    network: &Value,
    filters: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<bool, String> {
    for (key, values) in filters {
        let field = |k: &str| network[k].as_str().unwrap_or("").to_string();
        let builtin = matches!(field("Name").as_str(), "bridge" | "host" | "none");
        let ok = match key.as_str() {
            "name" => values.iter().any(|v| field("Name").contains(v.as_str())),
            "id" => values.iter().any(|v| field("Id").starts_with(v.as_str())),
            "driver" => values.iter().any(|v| field("Driver") == *v),
            "type" => values.iter().any(|v| match v.as_str() {
                "builtin" => builtin,
                "custom" => !builtin,
                _ => false,
            }),
            "label" => values.iter().any(|v| {
                let (k, want) = v
                    .split_once('=')
                    .map_or((v.as_str(), None), |(k, w)| (k, Some(w)));
                match network["Labels"].get(k) {
                    Some(Value::String(have)) => want.is_none_or(|w| w == have),
                    _ => false,
                }
            }),
            other => return Err(format!("invalid filter '{other}'")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `POST /networks/{id}/connect` and `disconnect` bodies.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectBody {
    container: String,
    endpoint_config: Option<crate::state::EndpointSettings>,
    force: bool,
}

/// `POST /networks/create` body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateNetworkBody {
    name: String,
    driver: String,
    internal: bool,
    attachable: bool,
    ingress: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "IPAM")]
    ipam: Option<IpamBody>,
    options: Option<std::collections::BTreeMap<String, String>>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    config_only: bool,
    config_from: Option<Value>,
    scope: String,
    check_duplicate: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IpamBody {
    driver: String,
    config: Option<Vec<IpamConfigBody>>,
    options: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfigBody {
    subnet: String,
    #[serde(rename = "IPRange")]
    ip_range: String,
    gateway: String,
    aux_address: Option<std::collections::BTreeMap<String, String>>,
}

impl super::Api {
    /// Routes of `/networks…`; any other network route gets [`super::unsupported::answer`].
    pub(super) async fn network_route(
        &self,
        method: &hyper::Method,
        segments: &[&str],
        query: &super::query::Query,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> super::ApiResult {
        use hyper::{Method, StatusCode};
        match (method, segments) {
            (&Method::GET, ["networks"]) => self.list_networks(query).await,
            (&Method::POST, ["networks", "create"]) => self.create_network(req).await,
            (&Method::POST, ["networks", "prune"]) => {
                let filters = super::parse_filters(query.get("filters"))?;
                let filters = crate::core::PruneFilters::parse(&filters)?;
                let removed = self.engine.prune_networks(&filters).await;
                super::json(
                    StatusCode::OK,
                    &json!({"NetworksDeleted": (!removed.is_empty()).then_some(removed)}),
                )
            }
            (&Method::GET, ["networks", id]) => self.inspect_network(id),
            (&Method::POST, ["networks", id, action @ ("connect" | "disconnect")]) => {
                use http_body_util::BodyExt;
                let bad = super::ApiError::BadRequest;
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| bad(format!("cannot read request body: {e}")))?
                    .to_bytes();
                let body: ConnectBody =
                    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                if *action == "connect" {
                    self.engine
                        .connect_network(
                            id,
                            &body.container,
                            &body.endpoint_config.unwrap_or_default(),
                        )
                        .await?;
                } else {
                    self.engine
                        .disconnect_network(id, &body.container, body.force)
                        .await?;
                }
                super::empty(StatusCode::OK)
            }
            (&Method::DELETE, ["networks", id]) => match self.engine.remove_network(id).await {
                Ok(()) => super::empty(StatusCode::NO_CONTENT),
                Err(e) => Err(e.into()),
            },
            _ => {
                // connect/disconnect send a body: read it, or the CLI may see a broken pipe
                // instead of the 501.
                super::archive::drain(req.into_body(), super::archive::DRAIN_LIMIT).await;
                Err(super::unsupported::answer(method, segments, query))
            }
        }
    }

    async fn list_networks(&self, query: &super::query::Query) -> super::ApiResult {
        let filters = super::parse_filters(query.get("filters"))?;
        let mut all = Vec::new();
        for def in self.engine.list_networks().await {
            all.push(network_json(&def, None));
        }
        for name in crate::core::networks::PREDEFINED {
            all.push(predefined_json(name));
        }
        let mut out = Vec::new();
        for network in all {
            if network_matches(&network, &filters).map_err(super::ApiError::BadRequest)? {
                out.push(network);
            }
        }
        super::json(hyper::StatusCode::OK, &out)
    }

    fn inspect_network(&self, reference: &str) -> super::ApiResult {
        if crate::core::networks::PREDEFINED.contains(&reference) {
            return super::json(hyper::StatusCode::OK, &predefined_json(reference));
        }
        let def = self.engine.find_network(reference).ok_or_else(|| {
            crate::core::EngineError::NoSuchNetwork {
                name: reference.to_string(),
            }
        })?;
        let members = self.engine.network_members(&def.id);
        let mut def = def;
        if def.subnet.is_none() {
            // The default bridge before its first use: the pool it will take.
            def.subnet = members.first().map(|(_, _, e)| crate::network::ipam::Pool {
                network: std::net::Ipv4Addr::from(
                    u32::from(e.ip) & (u32::MAX << (32 - u32::from(e.prefix))),
                ),
                prefix: e.prefix,
            });
        }
        super::json(hyper::StatusCode::OK, &network_json(&def, Some(&members)))
    }

    async fn create_network(&self, req: hyper::Request<hyper::body::Incoming>) -> super::ApiResult {
        use http_body_util::BodyExt;
        let bad = super::ApiError::BadRequest;
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| bad(format!("cannot read request body: {e}")))?
            .to_bytes();
        let body: CreateNetworkBody =
            serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let refuse = |what: &str| {
            Err(bad(format!(
                "rmachine-engine does not support {what} for networks yet"
            )))
        };
        let config_from = body
            .config_from
            .as_ref()
            .and_then(|c| c["Network"].as_str())
            .is_some_and(|n| !n.is_empty());
        // `Attachable` only matters to swarm services; dockerd keeps and shows it for a local
        // network (docker-compose 1.x asks for it).
        if body.ingress || body.config_only || config_from {
            return refuse("--ingress and --config-only/--config-from");
        }
        if body.enable_ipv6 == Some(true) {
            return refuse("IPv6 (--ipv6)");
        }
        // Every network here has IPv4: one without (IPv6-only) cannot be made.
        if body.enable_ipv4 == Some(false) {
            return refuse("a network without IPv4 (--ipv4=false)");
        }
        if !matches!(body.scope.as_str(), "" | "local") {
            return refuse("--scope");
        }
        let _ = body.check_duplicate;
        let ipam = body.ipam.unwrap_or_default();
        if !matches!(ipam.driver.as_str(), "" | "default")
            || ipam.options.is_some_and(|o| !o.is_empty())
        {
            return refuse("IPAM drivers and options (--ipam-driver/--ipam-opt)");
        }
        let configs = ipam.config.unwrap_or_default();
        if configs.len() > 1 {
            return refuse("several subnets");
        }
        let config = configs.into_iter().next().unwrap_or_default();
        if !config.ip_range.is_empty() || config.aux_address.is_some_and(|a| !a.is_empty()) {
            return refuse("--ip-range and --aux-address");
        }
        if body.name.is_empty() {
            return Err(bad("network name must not be empty".into()));
        }
        let def = self
            .engine
            .create_network(crate::core::networks::NetworkCreate {
                name: body.name,
                driver: body.driver,
                subnet: (!config.subnet.is_empty()).then_some(config.subnet),
                gateway: (!config.gateway.is_empty()).then_some(config.gateway),
                internal: body.internal,
                attachable: body.attachable,
                labels: body.labels.unwrap_or_default(),
                options: body.options.unwrap_or_default(),
            })
            .await?;
        super::json(
            hyper::StatusCode::CREATED,
            &json!({"Id": def.id, "Warning": ""}),
        )
    }
}
