//! `.dockerignore` with moby's `patternmatcher` rules: patterns cleaned and made relative, `*`
//! and `?` within one path element, `**` across any number of them, `[...]` classes, `\`
//! escapes, `!` exceptions; the last pattern that matches a path or one of its parents wins.

use regex::Regex;

use super::BuildError;

/// One pattern of a `.dockerignore`.
#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    exclusion: bool,
}

/// The patterns of a `.dockerignore`, in order.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Reads the file's text: one pattern a line, `#` comments, blank lines skipped.
    pub fn parse(text: &str) -> Result<Matcher, BuildError> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, raw) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(raw);
            if cleaned.is_empty() {
                continue;
            }
            let regex = Regex::new(&to_regex(&cleaned)).map_err(|e| BuildError::Invalid {
                reason: format!("syntax error in pattern {raw:?} of .dockerignore: {e}"),
            })?;
            patterns.push(Pattern { regex, exclusion });
        }
        Ok(Matcher { patterns })
    }

    /// Whether a context path (`a/b/c`, no leading slash) is excluded: the last pattern that
    /// matches it or one of its parent directories decides (moby's `MatchesOrParentMatches`).
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            let mut hit = p.regex.is_match(path);
            if !hit {
                for i in 1..parts.len() {
                    if p.regex.is_match(&parts[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether there are `!` patterns (an excluded directory may then keep some children).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

/// Go's `filepath.Clean` without the leading `/` (patterns are relative to the context).
fn clean(pattern: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// The anchored regular expression of one glob (Go's `filepath.Match` for a path element).
pub(crate) fn glob_regex(pattern: &str) -> String {
    to_regex(pattern)
}

/// moby's pattern compilation to an anchored regular expression.
fn to_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                // A class runs to its `]`; `!` negates as in Go's filepath.Match.
                let mut class = String::from("[");
                if chars.get(i) == Some(&'!') || chars.get(i) == Some(&'^') {
                    class.push('^');
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        class.push_str(&regex::escape(&chars[i + 1].to_string()));
                        i += 2;
                        continue;
                    }
                    class.push(chars[i]);
                    i += 1;
                }
                i += 1;
                class.push(']');
                re.push_str(&class);
            }
            '\\' if i < chars.len() => {
                re.push_str(&regex::escape(&chars[i].to_string()));
                i += 1;
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moby_rules() {
        let m = Matcher::parse(
            "# comment\n*.md\n!README.md\nbuild/\n**/*.tmp\n/secret\ndocs/**\n!docs/keep\nfile?.txt\n[ab].c\n",
        )
        .expect("parses");
        let cases = [
            ("notes.md", true),
            ("README.md", false),
            ("sub/notes.md", false),
            ("build", true),
            ("build/out/x", true),
            ("a.tmp", true),
            ("x/y/z.tmp", true),
            ("secret", true),
            ("secret/inner", true),
            ("docs/a", true),
            ("docs/keep", false),
            ("file1.txt", true),
            ("file10.txt", false),
            ("a.c", true),
            ("c.c", false),
            ("src/main.rs", false),
        ];
        for (path, excluded) in cases {
            assert_eq!(m.excludes(path), excluded, "{path}");
        }
        assert!(m.has_exceptions());
    }

    #[test]
    fn double_star_alone_excludes_everything() {
        let m = Matcher::parse("**\n!Dockerfile\n").expect("parses");
        assert!(m.excludes("a/b"));
        assert!(!m.excludes("Dockerfile"));
    }
}
