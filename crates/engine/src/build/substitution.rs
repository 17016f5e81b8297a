//! Variable substitution in Dockerfile words, as moby's `frontend/dockerfile/shell` lexer does
//! it for the classic builder: `$V`, `${V}`, `${V:-x}`, `${V-x}`, `${V:+x}`, `${V+x}`,
//! `${V:?msg}`, `${V?msg}`, single and double quotes, and the escape character.
//!
//! Each word of an instruction that allows it (ENV, LABEL, COPY, WORKDIR...) goes through
//! [`process_word`] on its own: quotes are removed, escapes resolved, variables replaced, and
//! no word splitting happens. An unset variable becomes the empty string.

use std::collections::BTreeMap;

use super::BuildError;

/// Variables visible to a substitution: the stage's `ENV` and its build args, as `NAME`→value.
pub type Env = BTreeMap<String, String>;

/// Expands one word as moby's `ShellLex.ProcessWord` does.
pub fn process_word(word: &str, env: &Env, escape: char) -> Result<String, BuildError> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        env,
        escape,
        keep_quotes: false,
    };
    lexer.process_stop_on(None)
}

/// Expands a heredoc body: variables and escapes as [`process_word`], quotes kept as
/// written (BuildKit's `SkipProcessQuotes` for heredocs).
pub fn process_heredoc(body: &str, env: &Env, escape: char) -> Result<String, BuildError> {
    let mut lexer = Lexer {
        chars: body.chars().collect(),
        pos: 0,
        env,
        escape,
        keep_quotes: true,
    };
    lexer.process_stop_on(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a Env,
    escape: char,
    /// Quotes are ordinary characters (heredoc bodies).
    keep_quotes: bool,
}

fn bad(reason: impl Into<String>) -> BuildError {
    BuildError::Substitution {
        reason: reason.into(),
    }
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Reads up to `stop` (consumed) or the end of the word.
    fn process_stop_on(&mut self, stop: Option<char>) -> Result<String, BuildError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok(out);
            }
            match ch {
                '\'' | '"' if self.keep_quotes => {
                    self.next();
                    out.push(ch);
                }
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.next();
                    if ch == self.escape {
                        // An escape at the very end of the word is dropped.
                        match self.next() {
                            Some(escaped) => out.push(escaped),
                            None => break,
                        }
                    } else {
                        out.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(bad(format!(
                "unexpected end of statement while looking for matching {stop}"
            )));
        }
        Ok(out)
    }

    fn single_quote(&mut self) -> Result<String, BuildError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(bad(
                        "unexpected end of statement while looking for matching single-quote",
                    ))
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, BuildError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(bad(
                        "unexpected end of statement while looking for matching double-quote",
                    ))
                }
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.next();
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            // Only these lose their escape inside double quotes.
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.next();
                                out.push(n);
                            }
                            Some(_) => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    fn dollar(&mut self) -> Result<String, BuildError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default().to_string());
        }
        self.next();
        let name = self.name();
        if name.is_empty() {
            return Err(bad("bad substitution"));
        }
        let value = self.lookup(&name).map(str::to_string);
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let modifier = self.next();
                let word = self.process_stop_on(Some('}'))?;
                let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
                match modifier {
                    Some('-') => Ok(if set_nonempty {
                        value.unwrap_or_default()
                    } else {
                        word
                    }),
                    Some('+') => Ok(if set_nonempty { word } else { String::new() }),
                    Some('?') if set_nonempty => Ok(value.unwrap_or_default()),
                    Some('?') if word.is_empty() => {
                        Err(bad(format!("{name}: is not allowed to be unset or empty")))
                    }
                    Some('?') => Err(bad(format!("{name}: {word}"))),
                    Some(m) => Err(bad(format!("unsupported modifier ({m}) in substitution"))),
                    None => Err(bad("bad substitution")),
                }
            }
            Some(m @ ('-' | '+' | '?')) => {
                let word = self.process_stop_on(Some('}'))?;
                match m {
                    '-' => Ok(value.unwrap_or(word)),
                    '+' => Ok(if value.is_some() { word } else { String::new() }),
                    _ => match value {
                        Some(v) => Ok(v),
                        None if word.is_empty() => {
                            Err(bad(format!("{name}: is not allowed to be unset")))
                        }
                        None => Err(bad(format!("{name}: {word}"))),
                    },
                }
            }
            Some(m) => Err(bad(format!("unsupported modifier ({m}) in substitution"))),
            None => Err(bad("missing '}'")),
        }
    }

    /// A variable name after `$`: letters, digits and `_`; a run of digits; or one special
    /// parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && "@*#?-$!0".contains(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        [
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("EMPTY", ""),
            ("X", "x y"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Cases in the spirit of moby's `shell/envVarTest`: input, expected output (`None`: error).
    #[test]
    fn the_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("hello", Some("hello")),
            ("he'll'o", Some("hello")),
            ("he\"ll\"o", Some("hello")),
            ("he\\'llo", Some("he'llo")),
            ("he\\\\llo", Some("he\\llo")),
            ("'$PWD'", Some("$PWD")),
            ("\"$PWD\"", Some("/home")),
            ("$PWD", Some("/home")),
            ("${PWD}", Some("/home")),
            ("${PWD}x", Some("/homex")),
            ("$PWDx", Some("")),
            ("\\$PWD", Some("$PWD")),
            ("\"\\$PWD\"", Some("$PWD")),
            ("\"a\\b\"", Some("a\\b")),
            ("\"a\\\"b\"", Some("a\"b")),
            ("$", Some("$")),
            ("a$", Some("a$")),
            ("$ x", Some("$ x")),
            ("$UNSET", Some("")),
            ("${UNSET:-def}", Some("def")),
            ("${EMPTY:-def}", Some("def")),
            ("${EMPTY-def}", Some("")),
            ("${UNSET-def}", Some("def")),
            ("${PWD:-def}", Some("/home")),
            ("${PWD:+alt}", Some("alt")),
            ("${EMPTY:+alt}", Some("")),
            ("${EMPTY+alt}", Some("alt")),
            ("${UNSET+alt}", Some("")),
            ("${UNSET:-$PWD}", Some("/home")),
            ("${UNSET:-${SHELL}x}", Some("bashx")),
            ("${UNSET:-'a b'}", Some("a b")),
            ("$X", Some("x y")),
            ("${PWD:?oops}", Some("/home")),
            ("${UNSET:?oops}", None),
            ("${UNSET?}", None),
            ("${EMPTY?}", Some("")),
            ("${PWD", None),
            ("${PWD:=x}", None),
            ("${}", None),
            ("'unterminated", None),
            ("\"unterminated", None),
            ("trailing\\", Some("trailing")),
            ("$1x", Some("x")),
        ];
        for (input, expected) in cases {
            let got = process_word(input, &env(), '\\').ok();
            assert_eq!(got.as_deref(), *expected, "input {input:?}");
        }
    }

    #[test]
    fn heredoc_bodies_keep_their_quotes() {
        let got = process_heredoc("echo \"$PWD\" '$SHELL'\n", &env(), '\\').ok();
        assert_eq!(got.as_deref(), Some("echo \"/home\" 'bash'\n"));
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(
            process_word("a`$PWD", &env(), '`').ok().as_deref(),
            Some("a$PWD")
        );
        assert_eq!(
            process_word("c:\\dir", &env(), '`').ok().as_deref(),
            Some("c:\\dir")
        );
    }

    #[test]
    fn error_texts() {
        let err = |w: &str| process_word(w, &env(), '\\').unwrap_err().to_string();
        assert!(err("${UNSET:?must be set}").contains("UNSET: must be set"));
        assert!(err("${PWD:=x}").contains("unsupported modifier (=) in substitution"));
    }
}
