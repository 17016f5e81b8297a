//! What the docker CLI shows for the parts of the Docker API the engine does not serve: a 501
//! naming the missing command, dockerd's own 503 for swarm routes, and real 404s for unknown
//! paths and missing objects.

use rmachine_tests_engine::{require_root, Engine};

fn engine() -> anyhow::Result<Option<Engine>> {
    if !require_root() {
        return Ok(None);
    }
    Ok(Some(Engine::start()?))
}

#[test]
fn missing_capabilities_are_501s_that_name_the_docker_command() -> anyhow::Result<()> {
    let Some(engine) = engine()? else {
        return Ok(());
    };
    for (args, command) in [
        (&["plugin", "ls"][..], "docker plugin ls"),
        (&["plugin", "rm", "x"][..], "docker plugin rm"),
        (&["swarm", "init"][..], "docker swarm init"),
    ] {
        let run = engine.docker(args)?;
        assert_eq!(run.code, 1, "docker {args:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("rmachine-engine does not support {command} yet")),
            "docker {args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("page not found"), "{}", run.stderr);
    }
    let (status, body) = engine.request("POST", "/v1.45/session", "")?;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("BuildKit session API"), "{body}");
    assert!(body.contains("DOCKER_BUILDKIT=0"), "{body}");
    Ok(())
}

#[test]
fn swarm_routes_answer_as_dockerd_without_a_swarm() -> anyhow::Result<()> {
    let Some(engine) = engine()? else {
        return Ok(());
    };
    let not_manager = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
    for args in [
        &["node", "ls"][..],
        &["service", "ls"][..],
        &["secret", "ls"][..],
    ] {
        let run = engine.docker(args)?;
        assert_eq!(
            (run.code, run.stderr.trim()),
            (
                1,
                format!("Error response from daemon: {not_manager}").as_str()
            ),
            "docker {args:?}"
        );
    }
    let leave = engine.docker(&["swarm", "leave"])?;
    assert_eq!(
        (leave.code, leave.stderr.trim()),
        (
            1,
            "Error response from daemon: This node is not part of a swarm"
        )
    );
    let (status, body) = engine.request("GET", "/v1.45/swarm", "")?;
    assert_eq!(status, 503, "{body}");
    Ok(())
}

#[test]
fn unknown_paths_and_missing_objects_stay_404() -> anyhow::Result<()> {
    let Some(engine) = engine()? else {
        return Ok(());
    };
    let (status, body) = engine.request("GET", "/v1.45/no/such/route", "")?;
    assert_eq!(
        (status, body.trim()),
        (404, r#"{"message":"page not found"}"#)
    );
    let (status, body) = engine.request("GET", "/v1.45/containers/nope/json", "")?;
    assert_eq!(
        (status, body.trim()),
        (404, r#"{"message":"No such container: nope"}"#)
    );
    Ok(())
}

/// A client still writing its request body gets the 501, not a broken pipe: the engine reads
/// the body of a request it does not serve before it answers and closes.
#[test]
fn a_large_body_to_an_unserved_route_still_gets_its_answer() -> anyhow::Result<()> {
    let Some(engine) = engine()? else {
        return Ok(());
    };
    let body = format!(
        "{{\"Name\":\"data\",\"Labels\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(8 << 20)
    );
    let (status, answer) = engine.request("POST", "/v1.45/swarm/init", &body)?;
    assert_eq!(status, 501, "{answer}");
    assert!(
        answer.contains("rmachine-engine does not support docker swarm init yet"),
        "{answer}"
    );
    Ok(())
}
