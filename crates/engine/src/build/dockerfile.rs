//! The Dockerfile lexer: parser directives, comments, line continuations, flags, JSON and shell
//! forms and heredocs, turned into one [`Node`] per instruction, as moby's (BuildKit's)
//! `frontend/dockerfile/parser` does. What each instruction's arguments mean is
//! `instructions`' job.
//!
//! Rules kept from moby's parser:
//! - directives (`# escape=`, `# syntax=`, `# check=`) are read only before anything else: a
//!   blank line, another comment or an instruction ends them;
//! - a line ending with the escape character (trailing blanks allowed) continues on the next;
//!   comment lines inside a continuation are dropped, empty ones too (with a warning);
//! - the first line of an instruction loses its leading blanks, continuation lines keep theirs;
//! - `RUN`, `COPY` and `ADD` may carry heredocs (`<<EOF`, `<<-EOF`, `<<"EOF"`), whose bodies
//!   follow the instruction's line.

use super::BuildError;

/// A parsed Dockerfile: its escape character, parser warnings and instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `\` or the `# escape=` directive's character.
    pub escape: char,
    /// Warnings for the build output (`# syntax=` ignored, empty continuation lines).
    pub warnings: Vec<String>,
    /// The instructions, in order.
    pub nodes: Vec<Node>,
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// First line (1-based).
    pub line: usize,
    /// The keyword, upper-cased (`RUN`).
    pub keyword: String,
    /// The keyword as written (for error texts).
    pub keyword_as_written: String,
    /// The instruction with its continuations joined: what `Step N/M :` shows.
    pub original: String,
    /// Leading `--name=value` flags, without the dashes (`from=build`).
    pub flags: Vec<String>,
    /// The arguments after the flags, trimmed.
    pub rest: String,
    /// Heredocs, in the order they appear on the line.
    pub heredocs: Vec<Heredoc>,
}

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// Its delimiter word, unquoted.
    pub name: String,
    /// The body, each line with its `\n`.
    pub content: String,
    /// `<<-`: leading tabs were stripped.
    pub chomp: bool,
    /// The delimiter was unquoted: variables in the body are expanded.
    pub expand: bool,
}

impl Node {
    /// The arguments as a JSON string array, when written in JSON form (`["a", "b"]`).
    pub fn json_args(&self) -> Option<Vec<String>> {
        let rest = self.rest.trim();
        if !rest.starts_with('[') || !rest.ends_with(']') {
            return None;
        }
        serde_json::from_str::<Vec<String>>(rest).ok()
    }
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, BuildError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut escape = '\\';
    let mut warnings = Vec::new();
    let mut nodes = Vec::new();
    let mut seen_directives: Vec<String> = Vec::new();
    let mut directives_done = false;
    let mut i = 0;
    while i < lines.len() {
        let raw = trim_newline(lines[i]);
        i += 1;
        let start_line = i;
        if !directives_done {
            match directive(raw) {
                Some((name, value)) if is_known_directive(&name) => {
                    if seen_directives.contains(&name) {
                        return Err(parse_error(
                            start_line,
                            format!("only one {name} parser directive can be used"),
                        ));
                    }
                    seen_directives.push(name.clone());
                    match name.as_str() {
                        "escape" => {
                            escape = match value.as_str() {
                                "\\" => '\\',
                                "`" => '`',
                                _ => {
                                    return Err(parse_error(
                                        start_line,
                                        format!(
                                            "invalid escape token '{value}' does not match ` or \\"
                                        ),
                                    ))
                                }
                            }
                        }
                        "syntax" => warnings.push(format!(
                            "the classic builder ignores the syntax={value} parser directive"
                        )),
                        _ => {}
                    }
                    continue;
                }
                _ => directives_done = true,
            }
        }
        if is_comment(raw) {
            continue;
        }
        let first = raw.trim_start();
        let (mut line, mut ended) = trim_continuation(first, escape);
        if ended && line.trim().is_empty() {
            continue;
        }
        let mut empty_continuation = false;
        while !ended && i < lines.len() {
            let next = trim_newline(lines[i]);
            i += 1;
            if is_comment(next) {
                continue;
            }
            if next.trim().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, end) = trim_continuation(next, escape);
            line.push_str(&part);
            ended = end;
        }
        if empty_continuation {
            warnings.push(format!("Empty continuation line found in: {line}"));
        }
        let mut node = node_from_line(&line, start_line)?;
        if matches!(node.keyword.as_str(), "RUN" | "COPY" | "ADD") && line.contains("<<") {
            for (name, chomp, expand) in heredoc_names(&node.rest, escape) {
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let body_line = trim_newline(lines[i]);
                    i += 1;
                    let candidate = if chomp {
                        body_line.trim_start_matches('\t')
                    } else {
                        body_line
                    };
                    if candidate == name {
                        terminated = true;
                        break;
                    }
                    let kept = if chomp {
                        body_line.trim_start_matches('\t')
                    } else {
                        body_line
                    };
                    content.push_str(kept);
                    content.push('\n');
                }
                if !terminated {
                    return Err(parse_error(start_line, "unterminated heredoc".to_string()));
                }
                node.heredocs.push(Heredoc {
                    name,
                    content,
                    chomp,
                    expand,
                });
            }
        }
        nodes.push(node);
    }
    Ok(Dockerfile {
        escape,
        warnings,
        nodes,
    })
}

/// moby's `dockerfile parse error on line N: …` wrapper.
pub fn parse_error(line: usize, reason: String) -> BuildError {
    BuildError::Parse { line, reason }
}

fn trim_newline(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_known_directive(name: &str) -> bool {
    matches!(name, "escape" | "syntax" | "check")
}

/// `# name=value` (moby's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`), name lower-cased.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.strip_prefix('#')?.trim_start();
    let name_len = body
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = body[name_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

/// Removes a trailing escape character (and the blanks after it); says whether the
/// instruction ends on this line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) => (before.to_string(), false),
        None => (line.to_string(), true),
    }
}

fn node_from_line(line: &str, start_line: usize) -> Result<Node, BuildError> {
    let trimmed = line.trim();
    let (keyword, args) = match trimmed.find(char::is_whitespace) {
        Some(pos) => (&trimmed[..pos], trimmed[pos..].trim_start()),
        None => (trimmed, ""),
    };
    let (flags, rest) = extract_flags(args);
    Ok(Node {
        line: start_line,
        keyword: keyword.to_ascii_uppercase(),
        keyword_as_written: keyword.to_string(),
        original: trimmed.to_string(),
        flags,
        rest: rest.trim().to_string(),
        heredocs: Vec::new(),
    })
}

/// Splits the leading `--flag[=value]` words off the arguments (moby's
/// `extractBuilderFlags`); `--` alone ends the flags.
fn extract_flags(args: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = args;
    loop {
        let trimmed = rest.trim_start();
        if !trimmed.starts_with("--") {
            return (flags, trimmed);
        }
        let end = word_end(trimmed);
        let word = &trimmed[..end];
        rest = &trimmed[end..];
        if word == "--" {
            return (flags, rest.trim_start());
        }
        flags.push(unquote_flag(&word[2..]));
    }
}

/// End of a whitespace-delimited word that may hold quoted blanks.
fn word_end(s: &str) -> usize {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => return i,
            None => {}
        }
    }
    s.len()
}

fn unquote_flag(flag: &str) -> String {
    flag.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

/// The heredoc delimiters of an instruction's arguments: name, `<<-`, and whether the body
/// is expanded (an unquoted delimiter).
fn heredoc_names(rest: &str, escape: char) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        s = s.trim_start();
        let end = word_end(s);
        let word = &s[..end];
        s = &s[end..];
        // moby: `^(\d*)<<(-?)([^<]*)$`.
        let digits = word.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(after) = digits.strip_prefix("<<") else {
            continue;
        };
        let (chomp, raw_name) = match after.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, after),
        };
        if raw_name.is_empty() || raw_name.contains('<') {
            continue;
        }
        let quoted = raw_name.contains(['"', '\'']) || raw_name.contains(escape);
        let name: String = raw_name
            .chars()
            .filter(|c| *c != '"' && *c != '\'' && *c != escape)
            .collect();
        if !name.is_empty() {
            out.push((name, chomp, !quoted));
        }
    }
    out
}

/// Splits on whitespace, keeping quotes and escapes in the words (moby's `parseWords`), for
/// `ENV`, `LABEL` and `ARG`, whose words are then expanded one by one.
pub fn split_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let chars: Vec<char> = rest.chars().collect();
    let mut pos = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        if !in_word {
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            in_word = true;
        }
        if quote.is_none() && ch.is_whitespace() {
            words.push(std::mem::take(&mut word));
            in_word = false;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                pos += 1;
                continue;
            }
            word.push(ch);
            pos += 1;
            word.push(chars[pos]);
            pos += 1;
            continue;
        }
        match quote {
            Some(q) if ch == q => quote = None,
            None if ch == '"' || ch == '\'' => quote = Some(ch),
            _ => {}
        }
        word.push(ch);
        pos += 1;
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let df = parse(text).expect("parses");
        assert_eq!(df.nodes.len(), 1, "{text:?} → {:?}", df.nodes);
        df.nodes.into_iter().next().expect("one node")
    }

    #[test]
    fn lines_comments_and_continuations() {
        let df = parse(
            "# a comment\n\nFROM busybox\n  RUN echo a \\\n# dropped\n\n    b\nCMD [\"sh\"]\r\n",
        )
        .expect("parses");
        let got: Vec<(usize, &str, &str)> = df
            .nodes
            .iter()
            .map(|n| (n.line, n.keyword.as_str(), n.original.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, "FROM", "FROM busybox"),
                (4, "RUN", "RUN echo a     b"),
                (8, "CMD", "CMD [\"sh\"]"),
            ]
        );
        assert_eq!(
            df.warnings,
            vec!["Empty continuation line found in: RUN echo a     b"]
        );
    }

    #[test]
    fn directives() {
        let df = parse("# escape=`\n# syntax=docker/dockerfile:1\nFROM x\nRUN a `\n b\n")
            .expect("parses");
        assert_eq!(df.escape, '`');
        assert_eq!(df.nodes[1].original, "RUN a  b");
        assert_eq!(df.warnings.len(), 1);
        assert!(df.warnings[0].contains("syntax=docker/dockerfile:1"));
        // After a blank line or another comment, a directive is a comment.
        assert_eq!(
            parse("\n# escape=`\nFROM x\n").expect("parses").escape,
            '\\'
        );
        assert_eq!(
            parse("# hi\n# escape=`\nFROM x\n").expect("parses").escape,
            '\\'
        );
        assert_eq!(parse("#ESCAPE = `\nFROM x").expect("parses").escape, '`');
        let err = parse("# escape=x\nFROM x").unwrap_err().to_string();
        assert_eq!(
            err,
            "dockerfile parse error on line 1: invalid escape token 'x' does not match ` or \\"
        );
        assert!(parse("# escape=`\n# escape=\\\nFROM x").is_err());
    }

    #[test]
    fn flags_and_json() {
        let n = one("COPY --from=build --chown=1:2 [\"a b\", \"c\"]");
        assert_eq!(n.flags, vec!["from=build", "chown=1:2"]);
        assert_eq!(
            n.json_args(),
            Some(vec!["a b".to_string(), "c".to_string()])
        );
        let n = one("RUN [\"echo\", oops]");
        assert_eq!(n.json_args(), None);
        assert_eq!(n.rest, "[\"echo\", oops]");
        let n = one("HEALTHCHECK --interval=5s --retries=3 CMD true");
        assert_eq!(n.flags, vec!["interval=5s", "retries=3"]);
        assert_eq!(n.rest, "CMD true");
        let n = one("RUN -- --not-a-flag");
        assert!(n.flags.is_empty());
        assert_eq!(n.rest, "--not-a-flag");
        let n = one("from   busybox   AS   base");
        assert_eq!(n.keyword, "FROM");
        assert_eq!(n.keyword_as_written, "from");
    }

    #[test]
    fn heredocs() {
        let df = parse(
            "FROM x\nRUN <<EOF\necho $A\nEOF\nCOPY <<-\"A\" <<B /dst/\n\tone\n\tA\ntwo\nB\nCMD x\n",
        )
        .expect("parses");
        assert_eq!(df.nodes.len(), 4);
        let run = &df.nodes[1];
        assert_eq!(
            run.heredocs,
            vec![Heredoc {
                name: "EOF".into(),
                content: "echo $A\n".into(),
                chomp: false,
                expand: true
            }]
        );
        let copy = &df.nodes[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].content, "one\n");
        assert!(copy.heredocs[0].chomp && !copy.heredocs[0].expand);
        assert_eq!(copy.heredocs[1].content, "two\n");
        assert_eq!(df.nodes[3].line, 10);
        assert!(parse("FROM x\nRUN <<EOF\necho").is_err());
        // Not every instruction takes heredocs.
        assert!(one("CMD echo <<EOF").heredocs.is_empty());
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"A="x y" B=c\ d 'e f'"#, '\\'),
            vec![r#"A="x y""#, r"B=c\ d", "'e f'"]
        );
        assert_eq!(split_words("  a   b  ", '\\'), vec!["a", "b"]);
        assert_eq!(split_words("a\\", '\\'), vec!["a"]);
    }
}
