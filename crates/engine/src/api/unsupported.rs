//! The routes of the pinned Docker API (v1.45) that the engine does not serve, and how each is
//! answered: 501 naming the docker command it backs (so `docker network create` says what is
//! missing instead of "page not found"), or 503 with dockerd's own words for the swarm routes,
//! which dockerd itself refuses when the node is in no swarm. Anything else stays a 404.
//!
//! This table is the one place that lists missing capabilities: a capability that lands
//! deletes its lines here and adds its route in [`super`].

use hyper::Method;

use super::error::ApiError;
use super::query::Query;

/// dockerd's `errNoManager` text for a node that never joined a swarm
/// (daemon/cluster/helpers.go, the `swarmNode == nil` branch).
pub const NOT_SWARM_MANAGER: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

/// dockerd's `errNoSwarm` (daemon/cluster/errors.go): leaving a swarm that was never joined.
pub const NOT_IN_SWARM: &str = "This node is not part of a swarm";

/// How an unserved route is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 501: the engine lacks what this docker command needs.
    NotYet(&'static str),
    /// 503 with dockerd's text, as dockerd answers without a swarm.
    NoSwarm(&'static str),
    /// 404 with dockerd's text for a missing object of an area that has no objects here:
    /// true, and what `docker inspect NAME` needs to go on to the next kind of object (the CLI
    /// skips "not found", not a 501).
    NoSuch(Area),
}

/// An area whose objects the engine does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Plugin,
}

impl Area {
    /// dockerd's not-found text (plugin `errNotFound`).
    fn not_found(self, name: &str) -> String {
        match self {
            Area::Plugin => format!("plugin {name:?} not found"),
        }
    }
}

/// Which methods a line applies to.
#[derive(Debug, Clone, Copy)]
enum On {
    Get,
    Post,
    Put,
    Delete,
    Any,
}

impl On {
    fn matches(self, method: &Method) -> bool {
        match self {
            On::Get => method == Method::GET || method == Method::HEAD,
            On::Post => method == Method::POST,
            On::Put => method == Method::PUT,
            On::Delete => method == Method::DELETE,
            On::Any => true,
        }
    }
}

/// `(method, path pattern, answer)`. In patterns `*` is one path segment and `**` one or more
/// (image and plugin names may contain `/`). The first matching line wins.
const UNSERVED: &[(On, &str, Answer)] = &[
    // Images and registries.
    (
        On::Get,
        "distribution/**/json",
        Answer::NotYet("registry lookups (GET /distribution)"),
    ),
    // BuildKit's session and gRPC APIs that buildx dials (the classic builder is served).
    (
        On::Any,
        "session",
        Answer::NotYet(
            "the BuildKit session API (docker buildx build; docker build works with DOCKER_BUILDKIT=0)",
        ),
    ),
    (
        On::Any,
        "grpc",
        Answer::NotYet(
            "the BuildKit gRPC API (docker buildx build; docker build works with DOCKER_BUILDKIT=0)",
        ),
    ),
    // Containers.
    (
        On::Get,
        "containers/*/attach/ws",
        Answer::NotYet("attaching over a websocket"),
    ),
    // Volumes.
    (On::Put, "volumes/*", Answer::NotYet("docker volume update")),
    // Networks.
    // Plugins.
    (On::Get, "plugins", Answer::NotYet("docker plugin ls")),
    (
        On::Get,
        "plugins/privileges",
        Answer::NotYet("docker plugin install"),
    ),
    (
        On::Post,
        "plugins/pull",
        Answer::NotYet("docker plugin install"),
    ),
    (
        On::Post,
        "plugins/create",
        Answer::NotYet("docker plugin create"),
    ),
    (On::Get, "plugins/**/json", Answer::NoSuch(Area::Plugin)),
    (
        On::Post,
        "plugins/**/enable",
        Answer::NotYet("docker plugin enable"),
    ),
    (
        On::Post,
        "plugins/**/disable",
        Answer::NotYet("docker plugin disable"),
    ),
    (
        On::Post,
        "plugins/**/upgrade",
        Answer::NotYet("docker plugin upgrade"),
    ),
    (
        On::Post,
        "plugins/**/push",
        Answer::NotYet("docker plugin push"),
    ),
    (
        On::Post,
        "plugins/**/set",
        Answer::NotYet("docker plugin set"),
    ),
    (On::Delete, "plugins/**", Answer::NotYet("docker plugin rm")),
    // Swarm: dockerd without a swarm refuses these itself; `init` and `join` it would do.
    (On::Post, "swarm/init", Answer::NotYet("docker swarm init")),
    (On::Post, "swarm/join", Answer::NotYet("docker swarm join")),
    (On::Post, "swarm/leave", Answer::NoSwarm(NOT_IN_SWARM)),
    (On::Any, "swarm", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "swarm/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "services", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "services/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "nodes", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "nodes/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "tasks", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "tasks/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "secrets", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "secrets/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "configs", Answer::NoSwarm(NOT_SWARM_MANAGER)),
    (On::Any, "configs/**", Answer::NoSwarm(NOT_SWARM_MANAGER)),
];

/// Whether `segments` (the path without its version prefix) fit `pattern`.
fn fits(pattern: &str, segments: &[&str]) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    fits_from(&pattern, segments)
}

fn fits_from(pattern: &[&str], segments: &[&str]) -> bool {
    match (pattern.split_first(), segments.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), Some(_)) => {
            // One or more segments: try every split, shortest first.
            (1..=segments.len()).any(|n| fits_from(rest, &segments[n..]))
        }
        (Some((&"*", rest)), Some((segment, tail))) => !segment.is_empty() && fits_from(rest, tail),
        (Some((want, rest)), Some((segment, tail))) => want == segment && fits_from(rest, tail),
        _ => false,
    }
}

/// The answer to a request no route served: 501 or 503 for a route of the API the engine
/// lacks, else `NotFound`.
pub fn answer(method: &Method, segments: &[&str], _query: &Query) -> ApiError {
    let found = UNSERVED
        .iter()
        .find(|(on, pattern, _)| on.matches(method) && fits(pattern, segments));
    match found {
        Some((_, _, Answer::NotYet(what))) => ApiError::NotImplemented {
            what: (*what).into(),
        },
        Some((_, _, Answer::NoSwarm(text))) => ApiError::Unavailable((*text).into()),
        Some((_, _, Answer::NoSuch(area))) => {
            // `plugins/NAME.../json`.
            let end = segments.len().saturating_sub(1).max(1);
            ApiError::NoSuchObject(area.not_found(&segments[1..end].join("/")))
        }
        None => ApiError::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::{message_of, status_of};
    use hyper::StatusCode;

    fn ask(method: Method, path: &str) -> (StatusCode, String) {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let err = answer(&method, &segments, &Query::parse(None));
        (status_of(&err), message_of(&err))
    }

    #[test]
    fn missing_capabilities_name_the_docker_command() {
        assert_eq!(
            ask(Method::GET, "/plugins"),
            (
                StatusCode::NOT_IMPLEMENTED,
                "rmachine-engine does not support docker plugin ls yet".into()
            )
        );
        assert_eq!(
            ask(Method::DELETE, "/plugins/vieux/sshfs:latest").1,
            "rmachine-engine does not support docker plugin rm yet"
        );
        assert!(ask(Method::POST, "/session")
            .1
            .contains("BuildKit session API"));
        assert!(ask(Method::POST, "/grpc").1.contains("BuildKit gRPC API"));
    }

    #[test]
    fn swarm_routes_answer_as_dockerd_without_a_swarm() {
        for path in [
            "/swarm",
            "/services",
            "/nodes/x",
            "/tasks",
            "/secrets/create",
            "/configs",
        ] {
            assert_eq!(
                ask(Method::GET, path),
                (StatusCode::SERVICE_UNAVAILABLE, NOT_SWARM_MANAGER.into()),
                "{path}"
            );
        }
        assert_eq!(
            ask(Method::POST, "/swarm/leave"),
            (StatusCode::SERVICE_UNAVAILABLE, NOT_IN_SWARM.into())
        );
    }

    #[test]
    fn single_objects_of_empty_areas_are_not_found_as_dockerd_says() {
        assert_eq!(
            ask(Method::GET, "/plugins/vieux/sshfs:latest/json").1,
            "plugin \"vieux/sshfs:latest\" not found"
        );
    }

    #[test]
    fn unknown_paths_and_methods_stay_404() {
        assert_eq!(ask(Method::GET, "/nothing/here").0, StatusCode::NOT_FOUND);
        assert_eq!(
            ask(Method::GET, "/networks/create/x").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(ask(Method::PATCH, "/volumes").0, StatusCode::NOT_FOUND);
        assert_eq!(ask(Method::GET, "/images/").0, StatusCode::NOT_FOUND);
    }

    /// Every path of the pinned swagger is either routed by the engine or in the table: the
    /// paths below are the ones the engine serves today.
    #[test]
    fn every_swagger_route_is_served_or_listed() {
        let served = [
            "get /containers/json",
            "post /containers/create",
            "get /containers/{id}/json",
            "get /containers/{id}/top",
            "get /containers/{id}/logs",
            "get /containers/{id}/changes",
            "get /containers/{id}/export",
            "get /containers/{id}/stats",
            "post /containers/{id}/resize",
            "post /containers/{id}/start",
            "post /containers/{id}/stop",
            "post /containers/{id}/restart",
            "post /containers/{id}/kill",
            "post /containers/{id}/update",
            "post /containers/{id}/rename",
            "post /containers/{id}/pause",
            "post /containers/{id}/unpause",
            "post /containers/{id}/attach",
            "post /containers/{id}/wait",
            "delete /containers/{id}",
            "head /containers/{id}/archive",
            "get /containers/{id}/archive",
            "put /containers/{id}/archive",
            "post /containers/prune",
            "get /images/json",
            "get /images/{name}/json",
            "delete /images/{name}",
            "get /info",
            "get /version",
            "get /_ping",
            "head /_ping",
            "get /events",
            "post /images/load",
            "post /images/{name}/tag",
            "get /images/{name}/history",
            "get /images/get",
            "get /images/{name}/get",
            "post /images/prune",
            "post /commit",
            "get /system/df",
            "post /images/create",
            "post /images/{name}/push",
            "get /images/search",
            "post /auth",
            "post /build",
            "post /build/prune",
            "post /containers/{id}/exec",
            "post /exec/{id}/start",
            "post /exec/{id}/resize",
            "get /exec/{id}/json",
            "get /volumes",
            "post /volumes/create",
            "post /volumes/prune",
            "get /volumes/{name}",
            "delete /volumes/{name}",
            "get /networks",
            "get /networks/{id}",
            "delete /networks/{id}",
            "post /networks/create",
            "post /networks/prune",
            "post /networks/{id}/connect",
            "post /networks/{id}/disconnect",
        ];
        let swagger = include_str!("swagger/v1.45.yaml");
        let mut path = "";
        let mut checked = 0;
        for line in swagger.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = p;
                continue;
            }
            let Some(method) = ["get", "post", "put", "delete", "head"]
                .into_iter()
                .find(|m| line == format!("    {m}:"))
            else {
                continue;
            };
            checked += 1;
            if served.contains(&format!("{method} /{path}").as_str()) {
                continue;
            }
            // Image and plugin names may hold `/`; volume names may not.
            let name = if path.starts_with("volumes") {
                "data"
            } else {
                "team/app:1"
            };
            let concrete = path.replace("{id}", "abc").replace("{name}", name);
            let segments: Vec<&str> = concrete.split('/').collect();
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = answer(&method, &segments, &Query::parse(None));
            assert!(
                !matches!(answer, ApiError::NotFound),
                "{method} /{path} is neither served nor listed"
            );
        }
        assert!(
            checked > 100,
            "read only {checked} operations from the swagger"
        );
    }
}
