//! Detach keys (`detachKeys=ctrl-p,ctrl-q`): the input sequence that ends an attach or exec
//! session while the container keeps running, as moby's escape proxy does.

/// Docker's default sequence, ctrl-p ctrl-q.
pub const DEFAULT: &[u8] = &[0x10, 0x11];

/// Parses Docker's notation: comma-separated single characters or `ctrl-X` (X a letter or one
/// of `@[\]^_`).
pub fn parse(keys: &str) -> Result<Vec<u8>, String> {
    let invalid = || format!("Invalid detach keys ({keys}) provided");
    let mut out = Vec::new();
    for key in keys.split(',') {
        let key = key.trim();
        if let Some(rest) = key.strip_prefix("ctrl-") {
            let [c] = rest.as_bytes() else {
                return Err(invalid());
            };
            let c = c.to_ascii_lowercase();
            match c {
                b'a'..=b'z' => out.push(c - b'a' + 1),
                b'@' => out.push(0),
                b'[' | b'\\' | b']' | b'^' | b'_' => out.push(c - b'@'),
                _ => return Err(invalid()),
            }
        } else if key.len() == 1 {
            out.push(key.as_bytes()[0]);
        } else {
            return Err(invalid());
        }
    }
    if out.is_empty() {
        return Err(invalid());
    }
    Ok(out)
}

/// The sequence a request asks for: `DEFAULT` when absent or empty.
pub fn keys(requested: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    match requested.filter(|k| !k.is_empty()) {
        Some(keys) => parse(keys).map(Some),
        None => Ok(Some(DEFAULT.to_vec())),
    }
}

/// Scans input for the sequence; bytes of a partial match are held back until it completes
/// (detach: dropped) or breaks (forwarded).
#[derive(Debug)]
pub struct Filter {
    keys: Vec<u8>,
    matched: usize,
}

impl Filter {
    /// A filter for `keys`.
    pub fn new(keys: Vec<u8>) -> Filter {
        Filter { keys, matched: 0 }
    }

    /// The bytes to forward from `input`, and whether the sequence completed.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_notation_parses() {
        assert_eq!(parse("ctrl-p,ctrl-q").unwrap(), DEFAULT);
        assert_eq!(parse("a,ctrl-@,ctrl-_").unwrap(), vec![b'a', 0, 31]);
        assert_eq!(
            parse("ctrl-pp").unwrap_err(),
            "Invalid detach keys (ctrl-pp) provided"
        );
    }

    #[test]
    fn the_sequence_detaches_even_across_reads_and_broken_prefixes_pass_through() {
        let mut f = Filter::new(DEFAULT.to_vec());
        assert_eq!(f.feed(b"ls\n\x10"), (b"ls\n".to_vec(), false));
        assert_eq!(f.feed(b"x"), (b"\x10x".to_vec(), false));
        assert_eq!(f.feed(b"\x10"), (Vec::new(), false));
        assert_eq!(f.feed(b"\x11rest"), (Vec::new(), true));
    }
}
