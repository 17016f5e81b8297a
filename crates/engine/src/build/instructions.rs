//! Typed instructions and stages from the lexer's nodes (moby's `instructions.Parse`): each
//! keyword's argument forms, its allowed flags, the stages `FROM` opens and the `ARG`s before
//! the first `FROM`. Variables are not expanded here: that happens while building, with the
//! environment of the moment.

use super::dockerfile::{parse_error, split_words, Dockerfile, Heredoc, Node};
use super::BuildError;

/// A command in exec (JSON) or shell form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// `["executable", "arg"]`.
    Exec(Vec<String>),
    /// `command arg`: run through the stage's `SHELL`.
    Shell(String),
}

/// `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySpec {
    /// Sources, unexpanded.
    pub sources: Vec<String>,
    /// Destination, unexpanded.
    pub dest: String,
    /// `--from=`.
    pub from: Option<String>,
    /// `--chown=`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// Heredoc sources.
    pub heredocs: Vec<Heredoc>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSpec {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", "…"]`.
    pub test: Vec<String>,
    /// `--interval`, in nanoseconds (0: default).
    pub interval: i64,
    /// `--timeout`.
    pub timeout: i64,
    /// `--start-period`.
    pub start_period: i64,
    /// `--start-interval`.
    pub start_interval: i64,
    /// `--retries`.
    pub retries: i64,
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `RUN`.
    Run {
        /// The command.
        command: CommandLine,
        /// Heredocs (refused when building: the classic builder does not run them).
        heredocs: Vec<Heredoc>,
    },
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `SHELL` (always JSON).
    Shell(Vec<String>),
    /// `ENV` pairs, unexpanded.
    Env(Vec<(String, String)>),
    /// `LABEL` pairs, unexpanded.
    Label(Vec<(String, String)>),
    /// `ARG` names with their optional defaults.
    Arg(Vec<(String, Option<String>)>),
    /// `MAINTAINER`.
    Maintainer(String),
    /// `EXPOSE` ports.
    Expose(Vec<String>),
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `VOLUME` paths.
    Volume(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(HealthSpec),
    /// `ONBUILD` and its trigger, as written.
    Onbuild(String),
    /// `COPY`.
    Copy(CopySpec),
    /// `ADD`.
    Add(CopySpec),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// First line in the Dockerfile.
    pub line: usize,
    /// As written, continuations joined: `Step N/M : <original>`.
    pub original: String,
    /// What it does.
    pub instruction: Instruction,
}

/// A `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base image reference, unexpanded.
    pub base: String,
    /// `--platform=`.
    pub platform: Option<String>,
    /// The `FROM` line as written.
    pub original: String,
    /// Line of the `FROM`.
    pub line: usize,
    /// The instructions.
    pub commands: Vec<Command>,
}

/// A whole Dockerfile: the `ARG`s before the first `FROM` and the stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The escape character.
    pub escape: char,
    /// Parser warnings.
    pub warnings: Vec<String>,
    /// `ARG`s before the first `FROM`.
    pub meta_args: Vec<Command>,
    /// The stages.
    pub stages: Vec<Stage>,
}

const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Flags the classic builder does not implement: refused with moby's "requires BuildKit" text.
const BUILDKIT_FLAGS: &[&str] = &[
    "mount",
    "network",
    "security",
    "link",
    "parents",
    "exclude",
    "keep-git-dir",
    "checksum",
];

/// Turns a lexed Dockerfile into stages.
pub fn build_program(dockerfile: &Dockerfile) -> Result<Program, BuildError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &dockerfile.nodes {
        if !KEYWORDS.contains(&node.keyword.as_str()) {
            let mut reason = format!("unknown instruction: {}", node.keyword_as_written);
            if let Some(suggestion) = suggest(&node.keyword) {
                reason.push_str(&format!(" (did you mean {suggestion}?)"));
            }
            return Err(parse_error(node.line, reason));
        }
        if node.keyword == "FROM" {
            stages.push(parse_from(node)?);
            continue;
        }
        let instruction = parse_instruction(node, dockerfile.escape)?;
        let command = Command {
            line: node.line,
            original: node.original.clone(),
            instruction,
        };
        match stages.last_mut() {
            Some(stage) => stage.commands.push(command),
            None if matches!(command.instruction, Instruction::Arg(_)) => meta_args.push(command),
            None => {
                return Err(parse_error(
                    node.line,
                    "no build stage in current context".to_string(),
                ))
            }
        }
    }
    Ok(Program {
        escape: dockerfile.escape,
        warnings: dockerfile.warnings.clone(),
        meta_args,
        stages,
    })
}

/// BuildKit's suggestion for a mistyped keyword (Levenshtein distance, case-insensitive).
fn suggest(word: &str) -> Option<&'static str> {
    let allowed = if word.chars().count() <= 3 { 1 } else { 2 };
    KEYWORDS
        .iter()
        .map(|k| (levenshtein(word, k), *k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The node's flags checked against those its keyword accepts; returns `(name, value)` pairs.
fn flags<'a>(node: &'a Node, allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>, BuildError> {
    let mut out = Vec::new();
    for flag in &node.flags {
        let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
        if BUILDKIT_FLAGS.contains(&name) && !allowed.contains(&name) {
            return Err(parse_error(
                node.line,
                format!(
                    "the --{name} option requires BuildKit. Refer to \
                     https://docs.docker.com/go/buildkit/ to learn how to build images with \
                     BuildKit enabled"
                ),
            ));
        }
        if !allowed.contains(&name) {
            return Err(parse_error(node.line, format!("unknown flag: {name}")));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(parse_error(
                node.line,
                format!("Duplicate flag specified: {name}"),
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn flag<'a>(flags: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    flags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn parse_from(node: &Node) -> Result<Stage, BuildError> {
    let flags = flags(node, &["platform"])?;
    let words: Vec<&str> = node.rest.split_whitespace().collect();
    let (base, name) = match words.as_slice() {
        [base] => (*base, None),
        [base, kw, name] if kw.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            if !valid_stage_name(&name) {
                return Err(parse_error(
                    node.line,
                    format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols"),
                ));
            }
            (*base, Some(name))
        }
        [] => {
            return Err(parse_error(
                node.line,
                "FROM requires either one or three arguments".to_string(),
            ))
        }
        _ => {
            return Err(parse_error(
                node.line,
                "FROM requires either one or three arguments".to_string(),
            ))
        }
    };
    Ok(Stage {
        name,
        base: base.to_string(),
        platform: flag(&flags, "platform").map(str::to_string),
        original: node.original.clone(),
        line: node.line,
        commands: Vec::new(),
    })
}

/// moby's `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// moby's "`KEYWORD` requires …" for an instruction written without arguments.
fn require_args(node: &Node, what: &str) -> Result<(), BuildError> {
    if node.rest.is_empty() {
        return Err(parse_error(
            node.line,
            format!("{} requires {what}", node.keyword),
        ));
    }
    Ok(())
}

fn command_line(node: &Node) -> CommandLine {
    match node.json_args() {
        Some(args) => CommandLine::Exec(args),
        None => CommandLine::Shell(node.rest.clone()),
    }
}

/// `ENV`/`LABEL` pairs (moby's `parseNameVal`): `k=v …`, or the legacy `k v` form.
fn name_values(node: &Node, escape: char) -> Result<Vec<(String, String)>, BuildError> {
    let words = split_words(&node.rest, escape);
    let Some(first) = words.first() else {
        return Err(parse_error(
            node.line,
            format!("{} requires at least one argument", node.keyword),
        ));
    };
    if !first.contains('=') {
        let mut parts = node.rest.splitn(2, char::is_whitespace);
        let key = parts.next().unwrap_or_default().to_string();
        let value = parts.next().map(str::trim).unwrap_or_default();
        if value.is_empty() {
            return Err(parse_error(
                node.line,
                format!("{} must have two arguments", node.keyword),
            ));
        }
        return Ok(vec![(key, value.to_string())]);
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(parse_error(
                node.line,
                format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
            )),
        })
        .collect()
}

fn parse_instruction(node: &Node, escape: char) -> Result<Instruction, BuildError> {
    let kw = node.keyword.as_str();
    let allowed: &[&str] = match kw {
        "COPY" => &["from", "chown", "chmod"],
        "ADD" => &["chown", "chmod"],
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    };
    let flags = flags(node, allowed)?;
    let one = |what: &str| -> Result<String, BuildError> {
        require_args(node, what)?;
        Ok(node.rest.clone())
    };
    Ok(match kw {
        "RUN" => {
            if node.heredocs.is_empty() {
                require_args(node, "at least one argument")?;
            }
            Instruction::Run {
                command: command_line(node),
                heredocs: node.heredocs.clone(),
            }
        }
        "CMD" => Instruction::Cmd(command_line(node)),
        "ENTRYPOINT" => Instruction::Entrypoint(command_line(node)),
        "SHELL" => match node.json_args() {
            Some(args) if !args.is_empty() => Instruction::Shell(args),
            _ => {
                return Err(parse_error(
                    node.line,
                    "SHELL requires the arguments to be in JSON form".to_string(),
                ))
            }
        },
        "ENV" => Instruction::Env(name_values(node, escape)?),
        "LABEL" => Instruction::Label(name_values(node, escape)?),
        "ARG" => {
            let words = split_words(&node.rest, escape);
            if words.is_empty() {
                return Err(parse_error(
                    node.line,
                    "ARG requires at least one argument".to_string(),
                ));
            }
            Instruction::Arg(
                words
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        "MAINTAINER" => Instruction::Maintainer(one("exactly one argument")?),
        "EXPOSE" => {
            require_args(node, "at least one argument")?;
            Instruction::Expose(node.rest.split_whitespace().map(str::to_string).collect())
        }
        "WORKDIR" => Instruction::Workdir(one("exactly one argument")?),
        "USER" => Instruction::User(one("exactly one argument")?),
        "STOPSIGNAL" => Instruction::StopSignal(one("exactly one argument")?),
        "VOLUME" => {
            require_args(node, "at least one argument")?;
            let paths = node
                .json_args()
                .unwrap_or_else(|| node.rest.split_whitespace().map(str::to_string).collect());
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(parse_error(
                    node.line,
                    "VOLUME specified can not be an empty string".to_string(),
                ));
            }
            Instruction::Volume(paths)
        }
        "ONBUILD" => {
            require_args(node, "at least one argument")?;
            let trigger = node
                .rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(parse_error(
                        node.line,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string(),
                    ))
                }
                "FROM" | "MAINTAINER" => {
                    return Err(parse_error(
                        node.line,
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    ))
                }
                _ => Instruction::Onbuild(node.rest.clone()),
            }
        }
        "HEALTHCHECK" => Instruction::Healthcheck(parse_health(node, &flags)?),
        "COPY" | "ADD" => {
            let mut words = node
                .json_args()
                .unwrap_or_else(|| node.rest.split_whitespace().map(str::to_string).collect());
            let heredoc_words = node.heredocs.len();
            if words.len() < 2 {
                return Err(parse_error(
                    node.line,
                    format!("{kw} requires at least two arguments, but only one was provided. Destination could not be determined"),
                ));
            }
            let dest = words.pop().unwrap_or_default();
            // Heredoc markers stand for their bodies, not for files of the context.
            let sources: Vec<String> = if heredoc_words > 0 {
                words
                    .into_iter()
                    .filter(|w| {
                        !w.trim_start_matches(|c: char| c.is_ascii_digit())
                            .starts_with("<<")
                    })
                    .collect()
            } else {
                words
            };
            let spec = CopySpec {
                sources,
                dest,
                from: flag(&flags, "from").map(str::to_string),
                chown: flag(&flags, "chown").map(str::to_string),
                chmod: flag(&flags, "chmod").map(str::to_string),
                heredocs: node.heredocs.clone(),
            };
            if kw == "COPY" {
                Instruction::Copy(spec)
            } else {
                Instruction::Add(spec)
            }
        }
        _ => {
            return Err(parse_error(
                node.line,
                format!("unknown instruction: {}", node.keyword_as_written),
            ))
        }
    })
}

/// Go's `time.ParseDuration` for the forms HEALTHCHECK takes (`30s`, `1m30s`, `500ms`), in
/// nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Some(total as i64)
}

fn parse_health(node: &Node, flags: &[(&str, &str)]) -> Result<HealthSpec, BuildError> {
    let mut words = node.rest.splitn(2, char::is_whitespace);
    let kind = words.next().unwrap_or_default().to_ascii_uppercase();
    let rest = words.next().map(str::trim).unwrap_or_default();
    let mut spec = HealthSpec::default();
    match kind.as_str() {
        "NONE" => {
            if !rest.is_empty() {
                return Err(parse_error(
                    node.line,
                    "HEALTHCHECK NONE takes no arguments".to_string(),
                ));
            }
            spec.test = vec!["NONE".into()];
            return Ok(spec);
        }
        "CMD" => {
            if rest.is_empty() {
                return Err(parse_error(
                    node.line,
                    "Missing command after HEALTHCHECK CMD".to_string(),
                ));
            }
            let json = (rest.starts_with('[') && rest.ends_with(']'))
                .then(|| serde_json::from_str::<Vec<String>>(rest).ok())
                .flatten();
            spec.test = match json {
                Some(args) => std::iter::once("CMD".to_string()).chain(args).collect(),
                None => vec!["CMD-SHELL".into(), rest.to_string()],
            };
        }
        _ => {
            return Err(parse_error(
                node.line,
                format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)"),
            ))
        }
    }
    let duration = |name: &str| -> Result<i64, BuildError> {
        match flag(flags, name) {
            None | Some("") => Ok(0),
            Some(v) => match parse_duration(v) {
                Some(d) if d == 0 || d >= 1_000_000 => Ok(d),
                Some(_) => Err(parse_error(
                    node.line,
                    format!("Interval {:?} cannot be less than 1ms", name),
                )),
                None => Err(parse_error(
                    node.line,
                    format!("time: invalid duration {v:?}"),
                )),
            },
        }
    };
    spec.interval = duration("interval")?;
    spec.timeout = duration("timeout")?;
    spec.start_period = duration("start-period")?;
    spec.start_interval = duration("start-interval")?;
    if let Some(r) = flag(flags, "retries").filter(|r| !r.is_empty()) {
        let retries: i64 = r.parse().map_err(|_| {
            parse_error(
                node.line,
                format!("strconv.ParseInt: parsing {r:?}: invalid syntax"),
            )
        })?;
        if retries < 0 {
            return Err(parse_error(
                node.line,
                format!("--retries cannot be negative ({retries})"),
            ));
        }
        spec.retries = retries;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::super::dockerfile::parse;
    use super::*;

    fn program(text: &str) -> Program {
        build_program(&parse(text).expect("lexes")).expect("parses")
    }

    fn err(text: &str) -> String {
        match parse(text).and_then(|d| build_program(&d)) {
            Ok(p) => panic!("{text:?} parsed: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn instr(line: &str) -> Instruction {
        let p = program(&format!("FROM x\n{line}\n"));
        p.stages[0].commands[0].instruction.clone()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_instruction_form() {
        use Instruction as I;
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let table: Vec<(&str, Instruction)> = vec![
            (
                "RUN echo hi",
                I::Run {
                    command: CommandLine::Shell("echo hi".into()),
                    heredocs: vec![],
                },
            ),
            (
                r#"RUN ["echo", "hi"]"#,
                I::Run {
                    command: CommandLine::Exec(s(&["echo", "hi"])),
                    heredocs: vec![],
                },
            ),
            ("CMD [\"sh\"]", I::Cmd(CommandLine::Exec(s(&["sh"])))),
            ("CMD sh -c x", I::Cmd(CommandLine::Shell("sh -c x".into()))),
            (
                "ENTRYPOINT [\"a\",\"b\"]",
                I::Entrypoint(CommandLine::Exec(s(&["a", "b"]))),
            ),
            (
                "SHELL [\"/bin/bash\", \"-c\"]",
                I::Shell(s(&["/bin/bash", "-c"])),
            ),
            (
                "ENV A=1 B=\"x y\"",
                I::Env(vec![pair("A", "1"), pair("B", "\"x y\"")]),
            ),
            ("ENV A hello world", I::Env(vec![pair("A", "hello world")])),
            (
                "LABEL a=b \"c d\"=e",
                I::Label(vec![pair("a", "b"), pair("\"c d\"", "e")]),
            ),
            (
                "ARG A B=2",
                I::Arg(vec![("A".into(), None), ("B".into(), Some("2".into()))]),
            ),
            ("MAINTAINER Me <me@x>", I::Maintainer("Me <me@x>".into())),
            ("EXPOSE 80 443/tcp", I::Expose(s(&["80", "443/tcp"]))),
            ("WORKDIR /a b", I::Workdir("/a b".into())),
            ("USER 1:2", I::User("1:2".into())),
            ("VOLUME /a /b", I::Volume(s(&["/a", "/b"]))),
            ("VOLUME [\"/a\"]", I::Volume(s(&["/a"]))),
            ("STOPSIGNAL SIGKILL", I::StopSignal("SIGKILL".into())),
            ("ONBUILD RUN x", I::Onbuild("RUN x".into())),
            (
                "HEALTHCHECK --interval=5s --retries=2 CMD curl -f x",
                I::Healthcheck(HealthSpec {
                    test: s(&["CMD-SHELL", "curl -f x"]),
                    interval: 5_000_000_000,
                    retries: 2,
                    ..Default::default()
                }),
            ),
            (
                "HEALTHCHECK CMD [\"true\"]",
                I::Healthcheck(HealthSpec {
                    test: s(&["CMD", "true"]),
                    ..Default::default()
                }),
            ),
            (
                "HEALTHCHECK NONE",
                I::Healthcheck(HealthSpec {
                    test: s(&["NONE"]),
                    ..Default::default()
                }),
            ),
            (
                "COPY --from=b --chown=1:1 --chmod=600 a b /dst/",
                I::Copy(CopySpec {
                    sources: s(&["a", "b"]),
                    dest: "/dst/".into(),
                    from: Some("b".into()),
                    chown: Some("1:1".into()),
                    chmod: Some("600".into()),
                    heredocs: vec![],
                }),
            ),
            (
                "ADD [\"a b\", \"/c\"]",
                I::Add(CopySpec {
                    sources: s(&["a b"]),
                    dest: "/c".into(),
                    ..Default::default()
                }),
            ),
        ];
        for (line, expected) in table {
            assert_eq!(instr(line), expected, "{line}");
        }
    }

    #[test]
    fn stages_and_meta_args() {
        let p = program("ARG V=1\nFROM busybox:${V} AS Build\nRUN a\nFROM --platform=linux/amd64 scratch\nCOPY --from=build /a /a\n");
        assert_eq!(p.meta_args.len(), 1);
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].name.as_deref(), Some("build"));
        assert_eq!(p.stages[0].base, "busybox:${V}");
        assert_eq!(p.stages[1].platform.as_deref(), Some("linux/amd64"));
        assert_eq!(p.stages[1].commands.len(), 1);
    }

    #[test]
    fn errors_as_moby_words_them() {
        assert_eq!(
            err("FROM x\nFOO bar\n"),
            "dockerfile parse error on line 2: unknown instruction: FOO"
        );
        assert_eq!(
            err("FROM x\n\nADDD . .\n"),
            "dockerfile parse error on line 3: unknown instruction: ADDD (did you mean ADD?)"
        );
        assert_eq!(
            err("FORM x\n"),
            "dockerfile parse error on line 1: unknown instruction: FORM (did you mean FROM?)"
        );
        assert_eq!(
            err("RUN x\n"),
            "dockerfile parse error on line 1: no build stage in current context"
        );
        assert!(err("FROM x\nCOPY a\n").contains("COPY requires at least two arguments"));
        assert!(
            err("FROM x\nRUN --mount=type=cache x\n").contains("--mount option requires BuildKit")
        );
        assert!(err("FROM x\nCOPY --bogus=1 a b\n").contains("unknown flag: bogus"));
        assert!(err("FROM x\nENV\n").contains("ENV requires at least one argument"));
        assert!(err("FROM x\nENV A\n").contains("ENV must have two arguments"));
        assert!(err("FROM x\nENV A=1 B\n").contains("can't find = in \"B\""));
        assert!(
            err("FROM x\nSHELL sh\n").contains("SHELL requires the arguments to be in JSON form")
        );
        assert!(err("FROM x\nONBUILD ONBUILD RUN x\n").contains("Chaining ONBUILD"));
        assert!(
            err("FROM x\nONBUILD FROM y\n").contains("FROM isn't allowed as an ONBUILD trigger")
        );
        assert!(err("FROM x\nHEALTHCHECK FOO\n").contains("Unknown type"));
        assert!(err("FROM x y\n").contains("FROM requires either one or three arguments"));
        assert!(err("FROM x AS 1a\n").contains("invalid name for build stage"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("x"), None);
    }
}
