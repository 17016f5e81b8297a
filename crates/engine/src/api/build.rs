//! `POST /build` (the classic builder) and `POST /build/prune`.
//!
//! The context tar is spooled to `<data-root>/tmp/`, unpacked and its Dockerfile parsed
//! before any answer, so those errors are HTTP errors as with dockerd; then the build's
//! progress streams as JSON lines (`{"stream": …}`, `{"aux": {"ID": …}}`, and a final
//! `{"errorDetail": …, "error": …}` when a step fails). With `q=1` the step output is held
//! back and shown only if the build fails, as dockerd does.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tracing::warn;

use super::error::{message_of, ApiError};
use super::query::{decode, Query};
use super::stream::{progress_error, ChannelBody};
use super::{json, spool, streaming, Api, ApiResult};
use crate::build::executor::{BuildOptions, Progress};
use crate::core::BuildRequest;

/// Every value of a repeated query parameter (`t=a&t=b`).
fn all_values(raw: Option<&str>, key: &str) -> Vec<String> {
    raw.unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
        .filter(|v| !v.is_empty())
        .collect()
}

fn json_map<T: serde::de::DeserializeOwned>(
    query: &Query,
    key: &str,
) -> Result<BTreeMap<String, T>, ApiError> {
    match query.get(key) {
        None | Some("") | Some("null") => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_str(v)
            .map_err(|e| ApiError::BadRequest(format!("invalid {key} value: {e}"))),
    }
}

fn refused(option: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "rmachine-engine's builder does not support {option} yet"
    ))
}

/// The options of the request; options the builder lacks are refused by name.
fn parse_request(raw: Option<&str>, query: &Query) -> Result<BuildRequest, ApiError> {
    if query.get("version") == Some("2") {
        return Err(refused("BuildKit (version=2); set DOCKER_BUILDKIT=0"));
    }
    let set = |k: &str| {
        query
            .get(k)
            .is_some_and(|v| !v.is_empty() && v != "0" && v != "[]" && v != "null" && v != "{}")
    };
    for (key, option) in [
        ("squash", "--squash"),
        ("ulimits", "--ulimit"),
        ("securityopt", "--security-opt"),
        ("outputs", "--output"),
        ("cgroupparent", "--cgroup-parent"),
        ("isolation", "--isolation"),
    ] {
        if set(key) && !(key == "isolation" && query.get(key) == Some("default")) {
            return Err(refused(option));
        }
    }
    // Options that become the RUN containers' HostConfig, checked there as for `docker run`.
    let mut host_config = serde_json::Map::new();
    for (key, field) in [
        ("memory", "Memory"),
        ("memswap", "MemorySwap"),
        ("cpushares", "CpuShares"),
        ("cpuperiod", "CpuPeriod"),
        ("cpuquota", "CpuQuota"),
        ("shmsize", "ShmSize"),
    ] {
        if let Some(v) = query
            .int(key)
            .map_err(ApiError::BadRequest)?
            .filter(|v| *v != 0)
        {
            host_config.insert(field.into(), json!(v));
        }
    }
    for (key, field) in [("cpusetcpus", "CpusetCpus"), ("cpusetmems", "CpusetMems")] {
        if let Some(v) = query.get(key).filter(|v| !v.is_empty()) {
            host_config.insert(field.into(), json!(v));
        }
    }
    if let Some(n) = query.get("networkmode").filter(|n| !n.is_empty()) {
        host_config.insert("NetworkMode".into(), json!(n));
    }
    if let Some(h) = query
        .get("extrahosts")
        .filter(|h| !h.is_empty() && *h != "[]")
    {
        // The CLI sends a JSON list; older clients a comma-separated one.
        let hosts: Vec<String> =
            serde_json::from_str(h).unwrap_or_else(|_| h.split(',').map(str::to_string).collect());
        host_config.insert("ExtraHosts".into(), json!(hosts));
    }
    if let Some(p) = query.get("platform").filter(|p| !p.is_empty()) {
        let host = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        if p != format!("linux/{host}") && p != "linux" {
            return Err(refused(&format!("--platform {p}")));
        }
    }
    Ok(BuildRequest {
        tags: all_values(raw, "t"),
        dockerfile: query.get("dockerfile").unwrap_or_default().to_string(),
        remote: query
            .get("remote")
            .filter(|r| !r.is_empty())
            .map(str::to_string),
        options: BuildOptions {
            build_args: json_map(query, "buildargs")?,
            labels: json_map(query, "labels")?,
            no_cache: query.bool("nocache"),
            remove: query.bool_or("rm", true),
            force_remove: query.bool("forcerm"),
            target: query
                .get("target")
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            host_config,
            pull: query.bool("pull"),
            registry_auth: BTreeMap::new(),
            cache_from: match query
                .get("cachefrom")
                .filter(|c| !c.is_empty() && *c != "null")
            {
                None => Vec::new(),
                Some(list) => serde_json::from_str(list)
                    .map_err(|e| ApiError::BadRequest(format!("invalid cachefrom value: {e}")))?,
            },
        },
    })
}

/// `X-Registry-Config`: base64url JSON of credentials by registry (the CLI sends every login
/// it has, for the builder's pulls); absent or empty means anonymous pulls.
fn registry_config(
    header: Option<&str>,
) -> Result<BTreeMap<String, crate::image::registry::auth::AuthConfig>, ApiError> {
    use base64::Engine as _;
    let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(header))
        .map_err(|_| ApiError::BadRequest("invalid X-Registry-Config header: not base64".into()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes == b"null" {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid X-Registry-Config header: {e}")))
}

fn line(value: serde_json::Value) -> Bytes {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

/// moby's `formatProgress` of an `ADD` URL's download (`jsonmessage.JSONMessage` with
/// `omitempty` fields; an unknown length is Go's -1).
fn download_line(current: u64, total: Option<u64>) -> Vec<u8> {
    let mut detail = serde_json::Map::new();
    if current > 0 {
        detail.insert("current".into(), json!(current));
    }
    match total {
        Some(0) => {}
        Some(t) => {
            detail.insert("total".into(), json!(t));
        }
        None => {
            detail.insert("total".into(), json!(-1));
        }
    }
    let total = total.unwrap_or(0);
    let mut message = serde_json::Map::new();
    message.insert("status".into(), json!("Downloading"));
    message.insert("progressDetail".into(), serde_json::Value::Object(detail));
    if current > 0 || total > 0 {
        message.insert(
            "progress".into(),
            json!(crate::image::registry::progress_bar(current, total)),
        );
    }
    line(serde_json::Value::Object(message)).to_vec()
}

impl Api {
    pub(super) async fn build(&self, req: Request<Incoming>) -> ApiResult {
        let raw = req.uri().query().map(str::to_string);
        let query = Query::parse(raw.as_deref());
        let mut request = parse_request(raw.as_deref(), &query)?;
        request.options.registry_auth = registry_config(
            req.headers()
                .get("X-Registry-Config")
                .and_then(|v| v.to_str().ok()),
        )?;
        let quiet = query.bool("q");
        let tmp_dir = self.engine.config().data_root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|source| {
                ApiError::Engine(crate::core::EngineError::Io {
                    path: tmp_dir.clone(),
                    source,
                })
            })?;
        let path = tmp_dir.join(format!(
            "build-{}.tar",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        if let Err(err) = spool(req.into_body(), &path).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(err);
        }
        let prepared = self.engine.prepare_build(path.clone(), request).await;
        let _ = tokio::fs::remove_file(&path).await;
        let prepared = prepared?;

        let (tx, body) = ChannelBody::new();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
            let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
            let build = engine.build(prepared, progress_tx, cancel_rx);
            tokio::pin!(build);
            let mut held = String::new();
            let send = |p: Progress, held: &mut String| -> Option<Bytes> {
                match p {
                    Progress::Stream(text) if quiet => {
                        held.push_str(&text);
                        None
                    }
                    Progress::Stream(text) => Some(line(json!({ "stream": text }))),
                    Progress::Aux(id) => Some(line(json!({ "aux": { "ID": id } }))),
                    // dockerd's quiet build keeps progress with the held output; a bar
                    // replayed after a failure tells nothing, so it is left out.
                    Progress::Download { .. } if quiet => None,
                    Progress::Download {
                        current,
                        total,
                        done,
                    } => {
                        let mut out = download_line(current, total);
                        // moby's JSON progress output ends a finished bar with an empty
                        // status, which the CLI shows as a line break.
                        if done {
                            out.extend_from_slice(&line(json!({})));
                        }
                        Some(Bytes::from(out))
                    }
                }
            };
            let result = loop {
                tokio::select! {
                    Some(p) = progress_rx.recv() => {
                        if let Some(b) = send(p, &mut held) {
                            let _ = tx.send(b).await;
                        }
                    }
                    result = &mut build => break result,
                    // The client went away (Ctrl-C): the build stops and cleans up.
                    () = tx.closed(), if !*cancel_tx.borrow() => {
                        warn!("build client went away; cancelling the build");
                        let _ = cancel_tx.send(true);
                    }
                }
            };
            while let Ok(p) = progress_rx.try_recv() {
                if let Some(b) = send(p, &mut held) {
                    let _ = tx.send(b).await;
                }
            }
            let result = match result {
                // dockerd's quiet build answers the image id as the output (the CLI prints
                // and writes to --iidfile what it reads there).
                Ok(id) if quiet => {
                    let _ = tx.send(line(json!({ "stream": format!("{id}\n") }))).await;
                    Ok(id)
                }
                other => other,
            };
            if let Err(err) = result {
                if quiet && !held.is_empty() {
                    let _ = tx.send(line(json!({ "stream": held }))).await;
                }
                let message = message_of(&ApiError::Build(err));
                warn!(error = %message, "build failed");
                let mut payload =
                    serde_json::from_slice::<serde_json::Value>(&progress_error(&message))
                        .unwrap_or_else(|_| json!({}));
                if let Some(code) = message
                    .strip_prefix("The command '")
                    .and_then(|m| m.rsplit_once("returned a non-zero code: "))
                    .and_then(|(_, c)| c.trim().parse::<i64>().ok())
                {
                    payload["errorDetail"]["code"] = json!(code);
                }
                let _ = tx.send(line(payload)).await;
            }
        });
        Ok(streaming("application/json", body))
    }

    /// `POST /build/prune`: the classic builder's step cache is forgotten, the entries the
    /// filters select (their layers belong to the images, so no space is reclaimed);
    /// BuildKit's size limits are refused by name.
    pub(super) async fn build_prune(&self, query: &Query) -> ApiResult {
        let filters = super::parse_filters(query.get("filters"))?;
        // BuildKit weighs its records by size; ours have none (a step's layer is its
        // image's), so these limits are refused by name rather than given a meaning here.
        // The CLI sends them only when set (`docker system prune` never does).
        for (key, option) in [
            ("keep-storage", "--keep-storage"),
            ("reserved-space", "--reserved-space"),
            ("max-used-space", "--max-used-space"),
            ("min-free-space", "--min-free-space"),
        ] {
            if query.get(key).is_some_and(|v| !v.is_empty() && v != "0") {
                return Err(refused(&format!("builder prune {option}")));
            }
        }
        let deleted = self.engine.prune_build_cache(&filters).await?;
        json(
            StatusCode::OK,
            &json!({ "CachesDeleted": deleted, "SpaceReclaimed": 0 }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_repeat_and_options_are_refused_by_name() {
        let raw = "t=a%2Fb%3A1&t=c&buildargs=%7B%22A%22%3A%221%22%2C%22B%22%3Anull%7D&rm=0";
        let q = Query::parse(Some(raw));
        let r = parse_request(Some(raw), &q).expect("parses");
        assert_eq!(r.tags, vec!["a/b:1", "c"]);
        assert_eq!(r.options.build_args.get("A"), Some(&Some("1".to_string())));
        assert_eq!(r.options.build_args.get("B"), Some(&None));
        assert!(!r.options.remove);
        for (raw, option) in [
            ("squash=1", "--squash"),
            ("ulimits=%5B%7B%22Name%22%3A%22nofile%22%7D%5D", "--ulimit"),
        ] {
            let q = Query::parse(Some(raw));
            let err = parse_request(Some(raw), &q).unwrap_err().to_string();
            assert!(err.contains(option), "{raw}: {err}");
        }
        let raw = "cachefrom=%5B%22a%22%2C%22b%3A1%22%5D";
        let r = parse_request(Some(raw), &Query::parse(Some(raw))).expect("parses");
        assert_eq!(r.options.cache_from, vec!["a", "b:1"]);
        let raw = "memory=1000&cachefrom=%5B%5D&networkmode=none&extrahosts=%5B%22a%3A1.2.3.4%22%5D&cpusetcpus=0";
        let r = parse_request(Some(raw), &Query::parse(Some(raw))).expect("parses");
        assert_eq!(
            serde_json::Value::Object(r.options.host_config),
            json!({"Memory": 1000, "NetworkMode": "none", "ExtraHosts": ["a:1.2.3.4"], "CpusetCpus": "0"})
        );
    }
}
