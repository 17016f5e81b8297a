//! A subset of Go's text/template, enough for `inspect --format` and `ls --format`.
//!
//! Actions: `{{.}}`, `{{.Field.Sub}}`, `{{json X}}`, `{{prettyjson X}}`, `{{index X KEY…}}`
//! (a map key in quotes or a list position), `{{len X}}`, `{{range X}}…{{else}}…{{end}}` (over
//! a list's items or a map's values, sorted by key, with `.` bound to each) and
//! `{{if X}}…{{else}}…{{end}}` (Go's truth: false, 0, nil and empty values are false), with
//! optional spaces inside the braces. Everything else between actions is copied. Values print as
//! Go's `fmt` prints them: lists as `[a b]`, maps as `map[k:v]`. A missing field prints
//! `<no value>`, as Go's templates do on maps.

use serde_json::Value;

/// What can go wrong parsing or running a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("template: unclosed action in {template:?}")]
    Unclosed {
        /// The template.
        template: String,
    },
    /// An action this subset does not implement.
    #[error(
        "template: unsupported action {{{{{action}}}}} (supported: .Field.Sub, json, prettyjson, index, len, range, if)"
    )]
    Unsupported {
        /// The action's text.
        action: String,
    },
    /// `range`/`if` without `end`, or `end`/`else` without them.
    #[error("template: unbalanced {action} in {template:?}")]
    Unbalanced {
        /// The action.
        action: String,
        /// The template.
        template: String,
    },
    /// `index` on something that has no such key or position.
    #[error("template: error calling index: {detail}")]
    Index {
        /// What was wrong.
        detail: String,
    },
}

enum Node {
    Text(String),
    Expr(String),
    Range {
        expr: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    If {
        expr: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Splits the template into text and actions.
fn tokens(template: &str) -> Result<Vec<(bool, String)>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push((false, rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
            template: template.to_string(),
        })?;
        out.push((true, after[..end].trim().to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push((false, rest.to_string()));
    }
    Ok(out)
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    Else,
    End,
}

fn parse(
    tokens: &mut std::vec::IntoIter<(bool, String)>,
    template: &str,
) -> Result<(Vec<Node>, Stop), TemplateError> {
    let mut nodes = Vec::new();
    while let Some((is_action, text)) = tokens.next() {
        if !is_action {
            nodes.push(Node::Text(text));
            continue;
        }
        let (keyword, rest) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        match keyword {
            "end" => return Ok((nodes, Stop::End)),
            "else" => return Ok((nodes, Stop::Else)),
            "range" | "if" => {
                let expr = rest.trim().to_string();
                let (body, stop) = parse(tokens, template)?;
                let otherwise = match stop {
                    Stop::End => Vec::new(),
                    Stop::Else => match parse(tokens, template)? {
                        (nodes, Stop::End) => nodes,
                        _ => return Err(unbalanced(keyword, template)),
                    },
                    Stop::Eof => return Err(unbalanced(keyword, template)),
                };
                nodes.push(if keyword == "range" {
                    Node::Range {
                        expr,
                        body,
                        otherwise,
                    }
                } else {
                    Node::If {
                        expr,
                        body,
                        otherwise,
                    }
                });
            }
            _ => nodes.push(Node::Expr(text)),
        }
    }
    Ok((nodes, Stop::Eof))
}

fn unbalanced(action: &str, template: &str) -> TemplateError {
    TemplateError::Unbalanced {
        action: action.to_string(),
        template: template.to_string(),
    }
}

/// Renders `template` against `data`.
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    let mut tokens = tokens(template)?.into_iter();
    let nodes = match parse(&mut tokens, template)? {
        (nodes, Stop::Eof) => nodes,
        (_, Stop::End) => return Err(unbalanced("end", template)),
        (_, Stop::Else) => return Err(unbalanced("else", template)),
    };
    let mut out = String::new();
    run(&nodes, data, &mut out)?;
    Ok(out)
}

fn run(nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Expr(expr) => out.push_str(&match eval(expr, dot)? {
                Some(value) => plain(&value),
                None => "<no value>".to_string(),
            }),
            Node::Range {
                expr,
                body,
                otherwise,
            } => {
                let items: Vec<Value> = match eval(expr, dot)? {
                    Some(Value::Array(items)) => items,
                    Some(Value::Object(map)) => {
                        let mut keys: Vec<&String> = map.keys().collect();
                        keys.sort();
                        keys.into_iter().map(|k| map[k].clone()).collect()
                    }
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(TemplateError::Unsupported {
                            action: format!("range {expr}"),
                        })
                    }
                };
                if items.is_empty() {
                    run(otherwise, dot, out)?;
                }
                for item in &items {
                    run(body, item, out)?;
                }
            }
            Node::If {
                expr,
                body,
                otherwise,
            } => {
                if eval(expr, dot)?.as_ref().is_some_and(truth) {
                    run(body, dot, out)?;
                } else {
                    run(otherwise, dot, out)?;
                }
            }
        }
    }
    Ok(())
}

fn truth(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Splits an action into words, keeping quoted strings whole (quotes kept).
fn words(action: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            word.push(c);
            chars.next();
            loop {
                let c = chars.next()?;
                word.push(c);
                if c == '"' {
                    break;
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Some(words)
}

/// An argument: a field path, or a string or integer literal.
fn argument(word: &str, dot: &Value) -> Option<Option<Value>> {
    if let Some(text) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return Some(Some(Value::String(text.to_string())));
    }
    if let Ok(n) = word.parse::<i64>() {
        return Some(Some(Value::from(n)));
    }
    lookup(word, dot).map(|v| v.cloned())
}

/// Evaluates one action; `Ok(None)` is a missing field.
fn eval(action: &str, dot: &Value) -> Result<Option<Value>, TemplateError> {
    let unsupported = || TemplateError::Unsupported {
        action: action.to_string(),
    };
    let words = words(action).ok_or_else(unsupported)?;
    let arg = |i: usize| -> Result<Option<Value>, TemplateError> {
        let word = words.get(i).ok_or_else(unsupported)?;
        argument(word, dot).ok_or_else(unsupported)
    };
    let first = words.first().ok_or_else(unsupported)?;
    match first.as_str() {
        "json" | "prettyjson" | "len" if words.len() == 2 => {
            let value = arg(1)?.unwrap_or(Value::Null);
            Ok(Some(Value::String(match first.as_str() {
                "json" => serde_json::to_string(&value).unwrap_or_default(),
                "prettyjson" => pretty(&value),
                _ => match &value {
                    Value::Array(a) => a.len().to_string(),
                    Value::Object(o) => o.len().to_string(),
                    Value::String(s) => s.len().to_string(),
                    other => {
                        return Err(TemplateError::Index {
                            detail: format!("len of {}", plain(other)),
                        })
                    }
                },
            })))
        }
        "index" if words.len() >= 3 => {
            let mut value = arg(1)?.unwrap_or(Value::Null);
            for i in 2..words.len() {
                let key = arg(i)?.unwrap_or(Value::Null);
                value = match (&value, &key) {
                    // Go: a missing map key gives the zero value.
                    (Value::Object(map), Value::String(k)) => {
                        map.get(k).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Array(items), Value::Number(n)) => n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .and_then(|n| items.get(n))
                        .cloned()
                        .ok_or_else(|| TemplateError::Index {
                            detail: format!("index out of range: {n}"),
                        })?,
                    _ => {
                        return Err(TemplateError::Index {
                            detail: format!("cannot index {} with {}", plain(&value), plain(&key)),
                        })
                    }
                };
            }
            Ok(Some(value))
        }
        _ if words.len() == 1 => lookup(first, dot)
            .map(|v| v.cloned())
            .ok_or_else(unsupported),
        _ => Err(unsupported()),
    }
}

/// `Some(None)` = a valid path to a missing field; `None` = not a field path at all.
fn lookup<'a>(path: &str, data: &'a Value) -> Option<Option<&'a Value>> {
    if path == "." {
        return Some(Some(data));
    }
    let fields = path.strip_prefix('.')?;
    let mut value = Some(data);
    for field in fields.split('.') {
        if field.is_empty() || !field.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        value = value.and_then(|v| v.get(field));
    }
    Some(value)
}

/// A value as Go's `fmt` prints it in a template: `[a b]`, `map[k:v]`, `<nil>`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(plain).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", plain(&map[k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
        other => other.to_string(),
    }
}

/// JSON indented with 4 spaces, as docker-machine's `inspect` prints it.
pub fn pretty(value: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_functions_and_text() {
        let data = json!({"Driver": {"IPAddress": "127.0.0.1", "SSHPort": 40022}, "Name": "intro", "Labels": ["a=b"]});
        assert_eq!(render("{{.Driver.IPAddress}}", &data).unwrap(), "127.0.0.1");
        assert_eq!(
            render("{{ .Name }}:{{.Driver.SSHPort}}\\n", &data).unwrap(),
            "intro:40022\\n"
        );
        assert_eq!(render("{{json .Labels}}", &data).unwrap(), "[\"a=b\"]");
        assert_eq!(
            render("{{prettyjson .Driver}}", &data).unwrap(),
            "{\n    \"IPAddress\": \"127.0.0.1\",\n    \"SSHPort\": 40022\n}"
        );
        assert_eq!(render("{{.Nope.Deeper}}", &data).unwrap(), "<no value>");
        assert_eq!(render("plain", &data).unwrap(), "plain");
    }

    #[test]
    fn errors_are_reported() {
        let data = json!({});
        assert!(matches!(
            render("{{.Name", &data),
            Err(TemplateError::Unclosed { .. })
        ));
        let err = render("{{range .X}}", &data).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template: unbalanced range in \"{{range .X}}\""
        );
        let err = render("{{printf .X}}", &data).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template: unsupported action {{printf .X}} (supported: .Field.Sub, json, prettyjson, index, len, range, if)"
        );
        assert!(matches!(
            render("{{end}}", &data),
            Err(TemplateError::Unbalanced { .. })
        ));
        let err = render("{{index .L 5}}", &json!({"L": [1]})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template: error calling index: index out of range: 5"
        );
    }

    #[test]
    fn range_index_if_and_gos_rendering_of_lists_and_maps() {
        let data = json!({
            "Labels": ["provider=qemu", "team=a"],
            "Empty": [],
            "Env": {"B": "2", "A": "1"},
            "Driver": {"SSHPort": 40022, "Ok": true}
        });
        assert_eq!(
            render("{{.Labels}}", &data).unwrap(),
            "[provider=qemu team=a]"
        );
        assert_eq!(render("{{.Env}}", &data).unwrap(), "map[A:1 B:2]");
        assert_eq!(
            render("{{range .Labels}}<{{.}}>{{end}}", &data).unwrap(),
            "<provider=qemu><team=a>"
        );
        assert_eq!(
            render("{{range .Empty}}x{{else}}none{{end}}", &data).unwrap(),
            "none"
        );
        assert_eq!(
            render("{{range .Env}}{{.}},{{end}}", &data).unwrap(),
            "1,2,"
        );
        assert_eq!(render("{{index .Labels 1}}", &data).unwrap(), "team=a");
        assert_eq!(render("{{index .Env \"B\"}}", &data).unwrap(), "2");
        assert_eq!(render("{{len .Labels}}", &data).unwrap(), "2");
        assert_eq!(
            render(
                "{{if .Driver.Ok}}yes{{else}}no{{end}} {{if .Empty}}yes{{else}}no{{end}}",
                &data
            )
            .unwrap(),
            "yes no"
        );
        assert_eq!(
            render("{{range .Labels}}{{json .}} {{end}}", &data).unwrap(),
            "\"provider=qemu\" \"team=a\" "
        );
    }
}
