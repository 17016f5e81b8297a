//! A small subset of Go's text/template, enough for `inspect --format` and `ls --format`.
//!
//! Supported actions: `{{.}}`, `{{.Field.Sub}}`, `{{json .Field}}`, `{{prettyjson .Field}}`,
//! with optional spaces inside the braces. Everything else between actions is copied. A missing
//! field prints `<no value>`, as Go's templates do on maps.

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
        "template: unsupported action {{{{{action}}}}} (supported: .Field.Sub, json, prettyjson)"
    )]
    Unsupported {
        /// The action's text.
        action: String,
    },
}

/// Renders `template` against `data`.
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
            template: template.to_string(),
        })?;
        let action = after[..end].trim();
        out.push_str(&eval(action, data)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval(action: &str, data: &Value) -> Result<String, TemplateError> {
    let unsupported = || TemplateError::Unsupported {
        action: action.to_string(),
    };
    let mut words = action.split_whitespace();
    let first = words.next().ok_or_else(unsupported)?;
    let (func, path) = match first {
        "json" | "prettyjson" => (Some(first), words.next().ok_or_else(unsupported)?),
        _ => (None, first),
    };
    if words.next().is_some() {
        return Err(unsupported());
    }
    let value = lookup(path, data).ok_or_else(unsupported)?;
    Ok(match (func, value) {
        (Some("json"), v) => serde_json::to_string(&v.unwrap_or(&Value::Null)).unwrap_or_default(),
        (Some(_), v) => pretty(v.unwrap_or(&Value::Null)),
        (None, None) => "<no value>".to_string(),
        (None, Some(v)) => plain(v),
    })
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

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".to_string(),
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
            "template: unsupported action {{range .X}} (supported: .Field.Sub, json, prettyjson)"
        );
    }
}
