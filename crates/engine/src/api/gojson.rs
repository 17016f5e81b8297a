//! Request bodies decoded as Go's `encoding/json` decodes them into moby's structs, since that
//! is what clients are written against:
//!
//! - a key matches a struct field case-insensitively, an exact match first (docker-py sends
//!   `detachKeys`, old clients `hostConfig`);
//! - `null` leaves a field at its zero value, whatever its type;
//! - a value of the wrong type is refused with Go's text, naming the field
//!   (`json: cannot unmarshal string into Go struct field HostConfig.HostConfig.Memory of type
//!   int64`).
//!
//! The body is parsed into a `serde_json::Value` first; [`GoValue`] then serves it to the
//! target type's `Deserialize`, renaming keys to the field names serde asks for. Structs that
//! `#[serde(flatten)]` a catch-all map are decoded through `deserialize_map`, which does not
//! list their fields: [`flattened_fields`] names them, found by the struct's name.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Value};

use crate::state::{ContainerConfig, HostConfig};

/// Prefix of the errors already in Go's words, so outer fields leave them alone.
const GO_TYPE_ERROR: &str = "json: cannot unmarshal ";

/// A body that could not be decoded; the text is what dockerd answers (with its `invalid
/// JSON: ` prefix).
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON: {message}")]
pub struct GoJsonError {
    message: String,
}

impl GoJsonError {
    fn new(err: impl std::fmt::Display) -> GoJsonError {
        GoJsonError {
            message: err.to_string(),
        }
    }
}

/// Parses a request body into a JSON object (an empty body is an empty object).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, GoJsonError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes).map_err(GoJsonError::new)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(GoJsonError::new(format!(
            "{GO_TYPE_ERROR}{} into Go value of type map[string]interface {{}}",
            go_kind(&other)
        ))),
    }
}

/// Decodes a request body; an empty body decodes as `{}`. `go_struct` is the name of the Go
/// struct dockerd decodes it into, for error texts.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], go_struct: &str) -> Result<T, GoJsonError> {
    from_object(&parse_object(bytes)?, go_struct, &[])
}

/// Decodes one part of a parsed body. `path` holds the Go field names leading to it from the
/// request's struct `go_struct`, for error texts.
pub fn from_object<T: DeserializeOwned>(
    object: &Map<String, Value>,
    go_struct: &str,
    path: &[&str],
) -> Result<T, GoJsonError> {
    let value = Value::Object(object.clone());
    T::deserialize(GoValue {
        value: &value,
        go_struct,
        path: path.iter().map(|p| (*p).to_string()).collect(),
    })
    .map_err(GoJsonError::new)
}

/// Decodes a struct-valued field taken out of a body with [`take_field`]; `None` when absent
/// or null. `go_type` is its Go type, for the error a non-object gets.
pub fn from_field<T: DeserializeOwned>(
    value: Option<Value>,
    field: &str,
    go_type: &str,
) -> Result<Option<T>, GoJsonError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => from_object(&object, field, &[field]).map(Some),
        Some(other) => Err(GoJsonError::new(format!(
            "{GO_TYPE_ERROR}{} into Go struct field CreateRequest.{field} of type {go_type}",
            match other {
                Value::Number(_) => "number".to_string(),
                other => go_kind(&other),
            }
        ))),
    }
}

/// Removes and returns the value under `key` matched as Go matches field names.
pub fn take_field(object: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(value) = object.remove(key) {
        return Some(value);
    }
    let found = object.keys().find(|k| k.eq_ignore_ascii_case(key))?.clone();
    object.remove(&found)
}

/// The fields of the structs that flatten a catch-all map, by the name serde gives them.
fn flattened_fields(expecting: &str) -> Option<&'static [&'static str]> {
    match expecting {
        "struct HostConfig" => Some(HostConfig::FIELDS),
        "struct ContainerConfig" => Some(ContainerConfig::FIELDS),
        _ => None,
    }
}

/// The Go struct names of the Rust structs whose names differ.
fn go_struct_name(rust: &str) -> &str {
    match rust {
        "ContainerConfig" => "Config",
        "ExecCreateBody" => "ExecOptions",
        "ExecStartBody" => "ExecStartOptions",
        other => other,
    }
}

/// Go's name of a JSON value's kind in type errors.
fn go_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Go's name of the type serde expected (`expected i64` → `int64`).
fn go_type(expected: &str) -> String {
    let simple = match expected {
        "i64" => "int64",
        "i32" => "int",
        "u16" => "uint16",
        "u32" => "uint32",
        "u64" => "uint64",
        "a boolean" => "bool",
        "a string" | "a borrowed string" => "string",
        "a sequence" | "a string or a sequence of strings" => "[]string",
        "a map" => "map[string]string",
        "an array of length 2" => "[2]uint",
        _ => "",
    };
    if !simple.is_empty() {
        return simple.into();
    }
    match expected.strip_prefix("struct ") {
        Some(name) => format!("container.{}", go_struct_name(name)),
        None => expected.to_string(),
    }
}

/// Rewrites serde's type errors for one field in Go's words.
fn go_type_error(err: serde_json::Error, go_struct: &str, path: &[String]) -> serde_json::Error {
    let text = err.to_string();
    if text.starts_with(GO_TYPE_ERROR) {
        return err;
    }
    let (wrong_value, rest) = if let Some(rest) = text.strip_prefix("invalid type: ") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("invalid value: ") {
        (true, rest)
    } else {
        return err;
    };
    let Some((unexpected, expected)) = rest.split_once(", expected ") else {
        return err;
    };
    // serde's `Unexpected` texts (`integer `-5``, `string "x"`) as Go's kinds; Go names the
    // number only when it does not fit the type.
    let kind = match unexpected.split_once(' ').map_or(unexpected, |(k, _)| k) {
        "integer" | "floating" if wrong_value => format!(
            "number {}",
            unexpected.split('`').nth(1).unwrap_or_default()
        ),
        "integer" | "floating" => "number".into(),
        "boolean" => "bool".into(),
        "sequence" => "array".into(),
        "map" => "object".into(),
        "string" => "string".into(),
        other => other.to_string(),
    };
    de::Error::custom(format!(
        "{GO_TYPE_ERROR}{kind} into Go struct field {go_struct}.{} of type {}",
        path.join("."),
        go_type(expected)
    ))
}

/// A JSON value served as Go would decode it.
struct GoValue<'a> {
    value: &'a Value,
    /// The Go struct the innermost field belongs to.
    go_struct: &'a str,
    /// Field names from the request's root.
    path: Vec<String>,
}

impl<'a> GoValue<'a> {
    fn map<'de, V: Visitor<'de>>(
        self,
        visitor: V,
        fields: Option<&'static [&'static str]>,
        go_struct: &'a str,
    ) -> Result<V::Value, serde_json::Error>
    where
        'a: 'de,
    {
        let Value::Object(map) = self.value else {
            return self.value.deserialize_any(visitor);
        };
        let mut entries: Vec<(String, &Value)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            // Go leaves a field at its zero value on null, whatever its type: as if absent.
            if value.is_null() && fields.is_some() {
                continue;
            }
            let name = field_name(fields, key);
            // Go lets the later of two keys naming one field win; the parsed object keeps no
            // order, so the key spelt exactly as the field wins instead.
            match entries.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) if *key == name => entry.1 = value,
                Some(_) => {}
                None => entries.push((name, value)),
            }
        }
        visitor.visit_map(GoMap {
            entries: entries.into_iter(),
            pending: None,
            is_struct: fields.is_some(),
            go_struct,
            path: self.path,
        })
    }
}

macro_rules! delegate {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.value.$method(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for GoValue<'de> {
    type Error = serde_json::Error;

    delegate! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(_) => self.deserialize_map(visitor),
            Value::Array(_) => self.deserialize_seq(visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let Value::Array(items) = self.value else {
            return self.value.deserialize_seq(visitor);
        };
        visitor.visit_seq(GoSeq {
            items: items.iter(),
            go_struct: self.go_struct,
            path: self.path,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let expecting = Expecting(&visitor).to_string();
        let fields = flattened_fields(&expecting);
        // At the root, the caller names the Go struct (`CreateRequest` embeds `Config`).
        let go_struct = match expecting.strip_prefix("struct ") {
            Some(name) if fields.is_some() && !self.path.is_empty() => go_struct_name(name),
            _ => self.go_struct,
        };
        // A map's keys are data, not field names: only a flattened struct's are matched.
        let go_struct = if go_struct == self.go_struct {
            self.go_struct
        } else {
            static_name(go_struct)
        };
        self.map(visitor, fields, go_struct)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.map(visitor, Some(fields), go_struct_name(name))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
}

/// The few struct names `deserialize_map` learns at run time, as `'static` strings.
fn static_name(name: &str) -> &'static str {
    ["HostConfig", "Config", "CreateRequest"]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("")
}

/// Formats a visitor's `expecting` text (`struct HostConfig`).
struct Expecting<'v, V>(&'v V);

impl<'de, V: Visitor<'de>> std::fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
}

struct GoSeq<'a> {
    items: std::slice::Iter<'a, Value>,
    go_struct: &'a str,
    path: Vec<String>,
}

impl<'de> SeqAccess<'de> for GoSeq<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let Some(value) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(GoValue {
            value,
            go_struct: self.go_struct,
            path: self.path.clone(),
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct GoMap<'a> {
    /// Keys already renamed to field names.
    entries: std::vec::IntoIter<(String, &'a Value)>,
    pending: Option<(String, &'a Value)>,
    /// A struct's fields, not a map's entries.
    is_struct: bool,
    go_struct: &'a str,
    path: Vec<String>,
}

/// Go's field matching: the exact name, else the first that equals it ignoring case; the keys
/// of a map (`fields` is `None`) are data and kept as sent.
fn field_name(fields: Option<&'static [&'static str]>, key: &str) -> String {
    let Some(fields) = fields else {
        return key.to_string();
    };
    if fields.contains(&key) {
        return key.to_string();
    }
    fields
        .iter()
        .find(|f| f.eq_ignore_ascii_case(key))
        .map_or_else(|| key.to_string(), |f| (*f).to_string())
}

impl<'de> MapAccess<'de> for GoMap<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key_de: de::value::StringDeserializer<serde_json::Error> =
            name.clone().into_deserializer();
        self.pending = Some((name, value));
        seed.deserialize(key_de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((name, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        if !self.is_struct {
            // A map's values: Go names the map field, not the key, in its errors.
            return seed.deserialize(GoValue {
                value,
                go_struct: self.go_struct,
                path: self.path.clone(),
            });
        }
        let mut path = self.path.clone();
        path.push(name);
        seed.deserialize(GoValue {
            value,
            go_struct: self.go_struct,
            path: path.clone(),
        })
        .map_err(|err| go_type_error(err, self.go_struct, &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::HostConfig;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", default)]
    struct Exec {
        detach_keys: String,
        tty: bool,
        cmd: Vec<String>,
    }

    #[test]
    fn keys_match_fields_ignoring_case_exact_first() {
        let exec: Exec =
            from_slice(br#"{"detachKeys":"ctrl-x","TTY":true,"cmd":["a"]}"#, "Exec").unwrap();
        assert_eq!(
            exec,
            Exec {
                detach_keys: "ctrl-x".into(),
                tty: true,
                cmd: vec!["a".into()]
            }
        );
        // Both keys name the field: the exact spelling wins, whatever the order.
        let exec: Exec = from_slice(br#"{"tty":false,"Tty":true}"#, "Exec").unwrap();
        assert!(exec.tty);
        let exec: Exec = from_slice(br#"{"Tty":true,"tty":false}"#, "Exec").unwrap();
        assert!(exec.tty);
    }

    #[test]
    fn flattened_structs_and_nested_structs_match_too() {
        let host: HostConfig = from_slice(
            br#"{"memory":67108864,"restartPolicy":{"name":"always"},
                "logconfig":{"type":"none"},"Future":1,"tmpfs":{"/Run":"size=1m"}}"#,
            "HostConfig",
        )
        .unwrap();
        assert_eq!(host.memory, 67108864);
        assert_eq!(host.restart_policy.name, "always");
        assert_eq!(host.log_config.kind, "none");
        // Unknown fields are kept as sent; a map's keys are data, left alone.
        assert_eq!(host.extra["Future"], 1);
        assert!(host.tmpfs.unwrap().contains_key("/Run"));
    }

    #[test]
    fn docker_string_or_list_fields_decode_both_ways() {
        let config: crate::state::ContainerConfig = from_slice(
            br#"{"cmd":"echo hi","Entrypoint":["sh","-c"],"env":null,"Labels":{"A":"1"}}"#,
            "CreateRequest",
        )
        .unwrap();
        assert_eq!(config.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(config.entrypoint, Some(vec!["sh".into(), "-c".into()]));
        assert!(config.env.is_empty());
        // Label names are data: kept as sent.
        assert_eq!(config.labels["A"], "1");
    }

    #[test]
    fn null_leaves_the_zero_value() {
        let host: HostConfig = from_slice(
            br#"{"Memory":null,"RestartPolicy":null,"Privileged":null}"#,
            "HostConfig",
        )
        .unwrap();
        assert_eq!(host.memory, 0);
        assert!(!host.privileged);
    }

    #[test]
    fn type_errors_read_as_gos() {
        let err = from_object::<HostConfig>(
            &parse_object(br#"{"Memory":"lots"}"#).unwrap(),
            "HostConfig",
            &["HostConfig"],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON: json: cannot unmarshal string into Go struct field \
             HostConfig.HostConfig.Memory of type int64"
        );
        let err = from_slice::<HostConfig>(br#"{"BlkioWeight":-5}"#, "HostConfig").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON: json: cannot unmarshal number -5 into Go struct field \
             HostConfig.BlkioWeight of type uint16"
        );
        let err =
            from_slice::<HostConfig>(br#"{"RestartPolicy":{"Name":3}}"#, "HostConfig").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON: json: cannot unmarshal number into Go struct field \
             RestartPolicy.RestartPolicy.Name of type string"
        );
        assert!(from_slice::<HostConfig>(b"[1]", "HostConfig").is_err());
        assert!(from_slice::<HostConfig>(b"{", "HostConfig")
            .unwrap_err()
            .to_string()
            .starts_with("invalid JSON: "));
    }
}
