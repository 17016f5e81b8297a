//! Query strings and Docker's parameter conventions.

use std::collections::HashMap;

/// Decoded query parameters (the last value wins, as Go's `FormValue` returns the first but
/// clients never repeat these).
#[derive(Debug, Default, Clone)]
pub struct Query {
    values: HashMap<String, String>,
    /// Every pair in order, for parameters given several times (`names`, `changes`).
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=x%20y`.
    pub fn parse(query: Option<&str>) -> Query {
        let mut values = HashMap::new();
        let mut pairs = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            values.insert(decode(k), decode(v));
            pairs.push((decode(k), decode(v)));
        }
        Query { values, pairs }
    }

    /// The raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every value of a parameter given several times, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Docker's `BoolValue`: absent, empty, `0`, `no`, `false` and `none` are false.
    pub fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            ),
        }
    }

    /// Docker's `BoolValueOrDefault`.
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None | Some("") => default,
            Some(_) => self.bool(key),
        }
    }

    /// An integer parameter; `None` when absent or empty.
    pub fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value for {key}: {v}")),
        }
    }
}

/// Percent-decoding with `+` as space (form encoding, as Go's `url.ParseQuery`).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_booleans_and_encodings() {
        let q = Query::parse(Some(
            "a=1&b=false&c=&name=x%2Fy+z&f=%7B%22status%22%3A%5B%5D%7D&t=%",
        ));
        assert!(q.bool("a"));
        assert!(!q.bool("b"));
        assert!(!q.bool("c"));
        assert!(!q.bool("missing"));
        assert!(q.bool_or("missing", true));
        assert_eq!(q.get("name"), Some("x/y z"));
        assert_eq!(q.get("f"), Some(r#"{"status":[]}"#));
        assert_eq!(q.get("t"), Some("%"));
    }
}
