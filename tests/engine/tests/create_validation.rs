//! Request bodies decoded as dockerd decodes them: values of the wrong type and invalid limits
//! are refused at create with dockerd's texts (issue 13 part 4) and leave no container; field
//! names match case-insensitively, as docker-py relies on (issue 14).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rmachine_tests_engine::Engine;

/// Sends one raw JSON request over the engine's socket; returns the status line and body.
fn request(engine: &Engine, head: &str, body: &str) -> anyhow::Result<(String, String)> {
    let mut stream = UnixStream::connect(&engine.socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let request = format!(
        "{head} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The `message` of an error answer (the body may be chunked: the JSON object is found).
fn message(body: &str) -> String {
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str::<serde_json::Value>(&body[start..end])
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

#[test]
fn invalid_values_are_refused_at_create_as_dockerd_does() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let cases = [
        (
            r#"{"Image":"busybox","HostConfig":{"Memory":"lots"}}"#,
            "invalid JSON: json: cannot unmarshal string into Go struct field \
             HostConfig.HostConfig.Memory of type int64",
        ),
        (
            r#"{"Image":"busybox","HostConfig":{"Memory":-5}}"#,
            "Minimum memory limit allowed is 6MB",
        ),
        (
            r#"{"Image":"busybox","Tty":"yes"}"#,
            "invalid JSON: json: cannot unmarshal string into Go struct field \
             CreateRequest.Tty of type bool",
        ),
        (
            r#"{"Image":"busybox","HostConfig":{"BlkioWeight":70000}}"#,
            "invalid JSON: json: cannot unmarshal number 70000 into Go struct field \
             HostConfig.HostConfig.BlkioWeight of type uint16",
        ),
        (
            r#"{"Image":"busybox","HostConfig":{"CpuPeriod":10}}"#,
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = request(&engine, "POST /v1.45/containers/create", body)?;
        assert!(status.contains(" 400 "), "{body}: {status} {answer}");
        assert_eq!(message(&answer), expected, "{body}");
    }
    assert_eq!(engine.docker(&["ps", "-a", "-q"])?.ok()?.stdout.trim(), "");
    // The engine keeps working: nothing invalid was stored to break a later inspect or list.
    engine.docker(&["ps", "-a"])?.ok()?;
    Ok(())
}

#[test]
fn docker_py_lowercase_keys_are_honoured() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let (status, body) = request(
        &engine,
        "POST /v1.45/containers/create?name=lower",
        r#"{"image":"busybox","cmd":["sleep","100"],"labels":{"k":"v"},
            "hostConfig":{"memory":67108864,"restartPolicy":{"name":"on-failure",
            "maximumRetryCount":2},"networkMode":"none"}}"#,
    )?;
    assert!(status.contains(" 201 "), "{status} {body}");
    assert_eq!(
        engine.inspect(
            "lower",
            "{{.Config.Image}} {{json .Config.Cmd}} {{.Config.Labels.k}} {{.HostConfig.Memory}} \
             {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}"
        )?,
        r#"busybox ["sleep","100"] v 67108864 on-failure 2"#
    );
    engine.docker(&["start", "lower"])?.ok()?;
    // An exec with docker-py's camelCase keys: the command is found.
    let (status, body) = request(
        &engine,
        "POST /v1.45/containers/lower/exec",
        r#"{"cmd":["echo","hi"],"attachStdout":true,"detachKeys":"ctrl-x"}"#,
    )?;
    assert!(status.contains(" 201 "), "{status} {body}");
    // `detachKeys` is read, not dropped: keys that cannot be parsed are refused at create, with
    // dockerd's text (ContainerExecCreate).
    let (status, body) = request(
        &engine,
        "POST /v1.45/containers/lower/exec",
        r#"{"cmd":["true"],"detachKeys":"not-a-key"}"#,
    )?;
    assert!(status.contains(" 400 "), "{status} {body}");
    assert_eq!(
        message(&body),
        "Invalid escape keys (not-a-key) provided",
        "{body}"
    );
    // Lowercase keys in an update.
    let (status, body) = request(
        &engine,
        "POST /v1.45/containers/lower/update",
        r#"{"memory":100000000,"memorySwap":200000000}"#,
    )?;
    assert!(status.contains(" 200 "), "{status} {body}");
    assert_eq!(
        engine.inspect("lower", "{{.HostConfig.Memory}}")?,
        "100000000"
    );
    engine.docker(&["rm", "-f", "lower"])?.ok()?;
    Ok(())
}
