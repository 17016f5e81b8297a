//! `--change` instructions of `docker commit` and `docker import`, and the config merge of
//! `docker commit`: moby's `dockerfile.BuildFromConfig` and `daemon/commit.go` `merge`, on
//! Docker-shaped container configs held as JSON objects.

use serde_json::{json, Map, Value};

/// Why a `--change` line was refused; the messages are dockerd's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// An instruction that is not one of the config instructions.
    #[error("{instruction} is not a valid change command")]
    NotAllowed {
        /// The instruction, lowercased as dockerd prints it.
        instruction: String,
    },
    /// An instruction whose arguments do not parse.
    #[error("{instruction}: {reason}")]
    Invalid {
        /// The instruction, upper case.
        instruction: String,
        /// What is wrong.
        reason: String,
    },
    /// An instruction without the arguments it needs.
    #[error("{instruction} requires {what}")]
    Arguments {
        /// The instruction, upper case.
        instruction: String,
        /// What is missing.
        what: &'static str,
    },
}

/// Applies each `--change` line (`CMD ["x"]`, `ENV A=b`...) to `config`, a container config
/// object (`Cmd`, `Env`, ...), in order.
pub fn apply_changes(
    config: &mut Map<String, Value>,
    changes: &[String],
) -> Result<(), ChangeError> {
    // ENTRYPOINT clears a CMD not set by an earlier change, as in a Dockerfile.
    let mut cmd_set = false;
    for line in changes.iter().flat_map(|c| c.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((line, ""));
        let instruction = word.to_ascii_lowercase();
        // Dockerfile word expansion ($VAR, ${VAR}, ${VAR:-x}, ${VAR:+x}) against the
        // environment as it is before this instruction.
        let env: Vec<(String, String)> = config
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|e| {
                        let (k, v) = e.split_once('=').unwrap_or((e, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let words = |text: &str| split_words(text, &env);
        let one = |text: &str| split_words(text, &env).join(" ");
        let args_err = |what| ChangeError::Arguments {
            instruction: word.to_ascii_uppercase(),
            what,
        };
        match instruction.as_str() {
            "cmd" => {
                config.insert("Cmd".into(), json!(command(rest)));
                cmd_set = true;
            }
            "entrypoint" => {
                config.insert("Entrypoint".into(), json!(command(rest)));
                if !cmd_set {
                    config.insert("Cmd".into(), Value::Null);
                }
            }
            "env" => {
                let pairs = key_values(rest, true, &env);
                if pairs.is_empty() {
                    return Err(args_err("at least one argument"));
                }
                let env = array_mut(config, "Env");
                for (k, v) in pairs {
                    let entry = format!("{k}={v}");
                    let prefix = format!("{k}=");
                    match env
                        .iter_mut()
                        .find(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix) || s == k))
                    {
                        Some(existing) => *existing = Value::String(entry),
                        None => env.push(Value::String(entry)),
                    }
                }
            }
            "label" => {
                let pairs = key_values(rest, false, &env);
                if pairs.is_empty() {
                    return Err(args_err("at least one argument"));
                }
                let labels = object_mut(config, "Labels");
                for (k, v) in pairs {
                    labels.insert(k, Value::String(v));
                }
            }
            "expose" => {
                let ports = words(rest);
                if ports.is_empty() {
                    return Err(args_err("at least one argument"));
                }
                let exposed = object_mut(config, "ExposedPorts");
                for port in ports {
                    let port = if port.contains('/') {
                        port
                    } else {
                        format!("{port}/tcp")
                    };
                    exposed.insert(port, json!({}));
                }
            }
            "user" => {
                if rest.is_empty() {
                    return Err(args_err("exactly one argument"));
                }
                config.insert("User".into(), json!(one(rest)));
            }
            "workdir" => {
                if rest.is_empty() {
                    return Err(args_err("exactly one argument"));
                }
                let dir = one(rest);
                let current = config
                    .get("WorkingDir")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string();
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", current.trim_end_matches('/'))
                };
                config.insert("WorkingDir".into(), json!(joined));
            }
            "volume" => {
                let paths = match serde_json::from_str::<Vec<String>>(rest) {
                    Ok(list) => list,
                    Err(_) => words(rest),
                };
                if paths.is_empty() {
                    return Err(args_err("at least one argument"));
                }
                let volumes = object_mut(config, "Volumes");
                for p in paths {
                    volumes.insert(p, json!({}));
                }
            }
            "stopsignal" => {
                if rest.is_empty() {
                    return Err(args_err("exactly one argument"));
                }
                config.insert("StopSignal".into(), json!(one(rest)));
            }
            "onbuild" => {
                let (inner, inner_rest) =
                    rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let inner_upper = inner.to_ascii_uppercase();
                if inner_upper.is_empty() {
                    return Err(args_err("at least one argument"));
                }
                if matches!(inner_upper.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(ChangeError::NotAllowed {
                        instruction: format!("onbuild {}", inner.to_ascii_lowercase()),
                    });
                }
                let trigger = format!("{inner_upper} {}", inner_rest.trim());
                array_mut(config, "OnBuild").push(Value::String(trigger.trim_end().to_string()));
            }
            "healthcheck" => {
                let health = healthcheck(rest)?;
                config.insert("Healthcheck".into(), health);
            }
            _ => return Err(ChangeError::NotAllowed { instruction }),
        }
    }
    Ok(())
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=D] [--timeout=D] [--start-period=D]
/// [--start-interval=D] [--retries=N] CMD command` as a config `Healthcheck` (durations in
/// nanoseconds, as dockerd stores them).
fn healthcheck(rest: &str) -> Result<Value, ChangeError> {
    let bad = |what: String| ChangeError::Invalid {
        instruction: "HEALTHCHECK".into(),
        reason: what,
    };
    let mut rest = rest.trim();
    let mut health = Map::new();
    while let Some(flag) = rest.strip_prefix("--") {
        let (word, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        let (name, value) = word
            .split_once('=')
            .ok_or_else(|| bad(format!("flag --{word} needs a value")))?;
        let key = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => "Retries",
            _ => return Err(bad(format!("Unknown flag: {name}"))),
        };
        let number = if key == "Retries" {
            value
                .parse::<i64>()
                .map_err(|_| bad(format!("invalid --retries value {value}")))?
        } else {
            go_duration_nanos(value).ok_or_else(|| bad(format!("invalid --{name} {value}")))?
        };
        health.insert(key.into(), json!(number));
        rest = tail.trim_start();
    }
    let (kind, command_text) = rest
        .split_once(char::is_whitespace)
        .map(|(k, c)| (k, c.trim()))
        .unwrap_or((rest, ""));
    let test = match kind.to_ascii_uppercase().as_str() {
        "NONE" if command_text.is_empty() && health.is_empty() => json!(["NONE"]),
        "NONE" => return Err(bad("NONE takes no arguments".into())),
        "CMD" if !command_text.is_empty() => {
            match serde_json::from_str::<Vec<String>>(command_text) {
                Ok(list) => {
                    let mut test = vec!["CMD".to_string()];
                    test.extend(list);
                    json!(test)
                }
                Err(_) => json!(["CMD-SHELL", command_text]),
            }
        }
        _ => return Err(bad("expects NONE or CMD followed by a command".into())),
    };
    health.insert("Test".into(), test);
    Ok(Value::Object(health))
}

/// Go's `time.ParseDuration` (`30s`, `1m30s`, `1.5h`, `500ms`) in nanoseconds.
fn go_duration_nanos(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Some(total as i64)
}

/// The exec form (a JSON array of strings) as is, else the shell form under `/bin/sh -c`.
fn command(rest: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(list) => list,
        Err(_) => vec!["/bin/sh".into(), "-c".into(), rest.to_string()],
    }
}

/// `K=V K2="V 2"` pairs; with `legacy`, the old `ENV K some value` form too.
fn key_values(rest: &str, legacy: bool, env: &[(String, String)]) -> Vec<(String, String)> {
    let words = split_words(rest, env);
    if legacy && !words.first().is_some_and(|w| w.contains('=')) {
        return match rest.split_once(char::is_whitespace) {
            Some((k, v)) => vec![(k.to_string(), split_words(v, env).join(" "))],
            None => Vec::new(),
        };
    }
    words
        .into_iter()
        .filter_map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The value of `name` in `env` (the last definition wins), empty when unset.
fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Expands one `$…` reference whose `$` was just consumed; appends the result to `out`.
fn expand_var(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &[(String, String)],
    out: &mut String,
) {
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut body = String::new();
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
            body.push(c);
        }
        let (name, modifier) = match body.find(':') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body.as_str(), None),
        };
        let value = lookup(env, name).filter(|v| !v.is_empty());
        match modifier {
            Some(m) if m.starts_with('-') => out.push_str(value.unwrap_or(&m[1..])),
            Some(m) if m.starts_with('+') => {
                if value.is_some() {
                    out.push_str(&m[1..]);
                }
            }
            _ => out.push_str(lookup(env, name).unwrap_or("")),
        }
        return;
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if name.is_empty() {
        out.push('$');
    } else {
        out.push_str(lookup(env, &name).unwrap_or(""));
    }
}

/// Splits on unquoted whitespace as the Dockerfile word processor does: quotes dropped, a
/// backslash escapes, `$VAR` expanded from `env` except inside single quotes.
fn split_words(s: &str, env: &[(String, String)]) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', q) if q != Some('\'') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            ('$', q) if q != Some('\'') => {
                expand_var(&mut chars, env, &mut cur);
                in_word = true;
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                in_word = true;
            }
            (c, Some(q)) if c == q => quote = None,
            (c, None) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (c, _) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn array_mut<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = config.entry(key.to_string()).or_insert(Value::Null);
    if !slot.is_array() {
        *slot = json!([]);
    }
    match slot {
        Value::Array(a) => a,
        // Made an array just above.
        _ => unreachable!("slot was just made an array"),
    }
}

fn object_mut<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = config.entry(key.to_string()).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(o) => o,
        _ => unreachable!("slot was just made an object"),
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// moby's `merge(userConf, imageConf)` of `docker commit`: what the user's config (the
/// request body with the changes applied) leaves unset comes from the container's config.
pub fn merge_commit_config(user: &mut Map<String, Value>, container: &Map<String, Value>) {
    let get = |k: &str| container.get(k).cloned().unwrap_or(Value::Null);
    if is_empty(user.get("User")) {
        user.insert("User".into(), get("User"));
    }
    if is_empty(user.get("ExposedPorts")) {
        user.insert("ExposedPorts".into(), get("ExposedPorts"));
    } else if let Some(Value::Object(ports)) = container.get("ExposedPorts") {
        let mine = object_mut(user, "ExposedPorts");
        for (k, v) in ports {
            mine.entry(k.clone()).or_insert(v.clone());
        }
    }
    if is_empty(user.get("Env")) {
        user.insert("Env".into(), get("Env"));
    } else if let Some(Value::Array(env)) = container.get("Env") {
        let mine = array_mut(user, "Env");
        for e in env {
            let Some(s) = e.as_str() else { continue };
            let key = s.split_once('=').map_or(s, |(k, _)| k);
            let found = mine.iter().any(|m| {
                m.as_str()
                    .is_some_and(|m| m.split_once('=').map_or(m, |(k, _)| k) == key)
            });
            if !found {
                mine.push(e.clone());
            }
        }
    }
    {
        let labels = object_mut(user, "Labels");
        if let Some(Value::Object(theirs)) = container.get("Labels") {
            for (k, v) in theirs {
                labels.entry(k.clone()).or_insert(v.clone());
            }
        }
    }
    if is_empty(user.get("Entrypoint")) {
        if is_empty(user.get("Cmd")) {
            user.insert("Cmd".into(), get("Cmd"));
            if let Some(v) = container.get("ArgsEscaped") {
                user.insert("ArgsEscaped".into(), v.clone());
            }
        }
        if user.get("Entrypoint").is_none_or(Value::is_null) {
            user.insert("Entrypoint".into(), get("Entrypoint"));
        }
    }
    if user.get("Healthcheck").is_none_or(Value::is_null) {
        if let Some(h) = container.get("Healthcheck") {
            user.insert("Healthcheck".into(), h.clone());
        }
    }
    if is_empty(user.get("WorkingDir")) {
        user.insert("WorkingDir".into(), get("WorkingDir"));
    }
    if is_empty(user.get("Volumes")) {
        user.insert("Volumes".into(), get("Volumes"));
    } else if let Some(Value::Object(vols)) = container.get("Volumes") {
        let mine = object_mut(user, "Volumes");
        for (k, v) in vols {
            mine.insert(k.clone(), v.clone());
        }
    }
    if is_empty(user.get("StopSignal")) {
        if let Some(s) = container.get("StopSignal") {
            user.insert("StopSignal".into(), s.clone());
        }
    }
    // The rest of the container's config (Hostname, Image, Tty...) is kept as dockerd keeps
    // the whole merged config.
    for (k, v) in container {
        user.entry(k.clone()).or_insert(v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Map<String, Value> {
        let mut c = Map::new();
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut c, &changes).unwrap();
        c
    }

    #[test]
    fn config_instructions_set_their_fields() {
        let c = applied(&[
            r#"CMD ["x", "y"]"#,
            "ENV A=1 B=\"two words\"",
            "env C 3 4",
            "EXPOSE 80 53/udp",
            "LABEL a=b",
            "USER nobody",
            "WORKDIR /srv",
            "WORKDIR data",
            "VOLUME /v1 /v2",
            "STOPSIGNAL SIGINT",
            "ONBUILD run echo hi",
        ]);
        assert_eq!(c["Cmd"], json!(["x", "y"]));
        assert_eq!(c["Env"], json!(["A=1", "B=two words", "C=3 4"]));
        assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(c["Labels"], json!({"a": "b"}));
        assert_eq!(c["User"], "nobody");
        assert_eq!(c["WorkingDir"], "/srv/data");
        assert_eq!(c["Volumes"], json!({"/v1": {}, "/v2": {}}));
        assert_eq!(c["StopSignal"], "SIGINT");
        assert_eq!(c["OnBuild"], json!(["RUN echo hi"]));
        let shell = applied(&["ENTRYPOINT top -b"]);
        assert_eq!(shell["Entrypoint"], json!(["/bin/sh", "-c", "top -b"]));
        assert_eq!(shell["Cmd"], Value::Null);
    }

    #[test]
    fn variables_expand_from_the_environment_before_the_instruction() {
        let c = applied(&[
            "ENV BASE=/opt HOME=/root",
            "ENV PATH=$BASE/bin:${MISSING:-/bin} QUOTED='$BASE'",
            "WORKDIR ${BASE}/app",
            "LABEL where=\"in $HOME\"",
        ]);
        assert_eq!(
            c["Env"],
            json!([
                "BASE=/opt",
                "HOME=/root",
                "PATH=/opt/bin:/bin",
                "QUOTED=$BASE"
            ])
        );
        assert_eq!(c["WorkingDir"], "/opt/app");
        assert_eq!(c["Labels"], json!({"where": "in /root"}));
    }

    #[test]
    fn healthcheck_sets_test_and_durations() {
        let c = applied(&["HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://x/"]);
        assert_eq!(
            c["Healthcheck"],
            json!({"Interval": 90_000_000_000i64, "Retries": 3, "Test": ["CMD-SHELL", "curl -f http://x/"]})
        );
        let exec = applied(&[r#"HEALTHCHECK --timeout=500ms CMD ["true"]"#]);
        assert_eq!(
            exec["Healthcheck"],
            json!({"Timeout": 500_000_000, "Test": ["CMD", "true"]})
        );
        assert_eq!(
            applied(&["HEALTHCHECK NONE"])["Healthcheck"],
            json!({"Test": ["NONE"]})
        );
        let mut c = Map::new();
        let err = apply_changes(&mut c, &["HEALTHCHECK --bogus=1 CMD x".to_string()]).unwrap_err();
        assert_eq!(err.to_string(), "HEALTHCHECK: Unknown flag: bogus");
    }

    #[test]
    fn other_instructions_are_refused_with_dockerd_text() {
        let mut c = Map::new();
        let err = apply_changes(&mut c, &["RUN rm -rf /".to_string()]).unwrap_err();
        assert_eq!(err.to_string(), "run is not a valid change command");
    }

    #[test]
    fn merge_keeps_user_values_and_fills_the_rest() {
        let mut user = applied(&["ENV A=user"]);
        let container = json!({
            "Env": ["A=container", "PATH=/bin"],
            "Cmd": ["sh"],
            "Hostname": "abc",
            "Labels": {"l": "1"}
        });
        merge_commit_config(&mut user, container.as_object().unwrap());
        assert_eq!(user["Env"], json!(["A=user", "PATH=/bin"]));
        assert_eq!(user["Cmd"], json!(["sh"]));
        assert_eq!(user["Hostname"], "abc");
        assert_eq!(user["Labels"], json!({"l": "1"}));
    }
}
