//! `rmachine env`: the shell lines that point a docker client at a machine.
//!
//! The output matches docker-machine's byte for byte for every shell it knows (bash/zsh/sh,
//! fish, powershell, cmd, tcsh, emacs), including the closing usage hint, because users paste
//! it into scripts and editors.

/// The variables `env` sets, in docker-machine's order (without the proxy variable).
pub const ENV_NAMES: [&str; 4] = [
    "DOCKER_TLS_VERIFY",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "DOCKER_MACHINE_NAME",
];

/// The variable `env` sets after docker-machine's lines: the engine serves the classic
/// builder (`POST /build`) and not BuildKit's API, which the docker CLI uses by default when
/// the buildx plugin is installed. It comes after docker-machine's variables because scripts
/// read those by position.
pub const BUILDER_VAR: (&str, &str) = ("DOCKER_BUILDKIT", "0");

/// The comment `env` prints with [`BUILDER_VAR`]. It goes after the variables, just before the
/// usage hint: `eval $(…)` joins the lines, so a comment earlier would swallow the rest.
const BUILDER_REASON: &str =
    "DOCKER_BUILDKIT=0: docker build uses the classic builder, the engine has no BuildKit API";

/// What can go wrong choosing a shell.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `$SHELL` is empty and no `--shell` was given.
    #[error("Error: Unknown shell")]
    UnknownShell,
}

/// A shell dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// bash, zsh, sh and any shell not listed below: `export K="V"`.
    Posix,
    /// fish: `set -gx K "V";`.
    Fish,
    /// PowerShell: `$Env:K = "V"`.
    PowerShell,
    /// cmd.exe: `SET K=V`.
    Cmd,
    /// tcsh/csh: `setenv K "V";`.
    Tcsh,
    /// Emacs lisp: `(setenv "K" "V")`.
    Emacs,
}

impl Shell {
    /// The dialect for a shell name or path (`/usr/bin/fish` → fish); unknown names are POSIX.
    pub fn from_name(name: &str) -> Self {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let base = base.strip_suffix(".exe").unwrap_or(base);
        match base {
            "fish" => Shell::Fish,
            "powershell" | "pwsh" => Shell::PowerShell,
            "cmd" => Shell::Cmd,
            "tcsh" | "csh" => Shell::Tcsh,
            "emacs" => Shell::Emacs,
            _ => Shell::Posix,
        }
    }

    /// The user's shell from `$SHELL` (docker-machine's rule: its basename).
    ///
    /// TODO(windows): with `$SHELL` unset, docker-machine looks at the parent process name to
    /// choose between powershell and cmd; here we fall back to cmd on Windows.
    pub fn detect(shell_var: Option<&str>) -> Result<Self, EnvError> {
        match shell_var {
            Some(s) if !s.is_empty() => Ok(Self::from_name(s)),
            _ if cfg!(windows) => Ok(Shell::Cmd),
            _ => Err(EnvError::UnknownShell),
        }
    }

    fn set_line(self, name: &str, value: &str) -> String {
        match self {
            Shell::Posix => format!("export {name}=\"{value}\"\n"),
            Shell::Fish => format!("set -gx {name} \"{value}\";\n"),
            Shell::PowerShell => format!("$Env:{name} = \"{value}\"\n"),
            Shell::Cmd => format!("SET {name}={value}\n"),
            Shell::Tcsh => format!("setenv {name} \"{value}\";\n"),
            Shell::Emacs => format!("(setenv \"{name}\" \"{value}\")\n"),
        }
    }

    fn unset_line(self, name: &str) -> String {
        match self {
            Shell::Posix => format!("unset {name}\n"),
            Shell::Fish => format!("set -e {name};\n"),
            Shell::PowerShell => format!("Remove-Item Env:\\\\{name}\n"),
            Shell::Cmd => format!("SET {name}=\n"),
            Shell::Tcsh => format!("unsetenv {name};\n"),
            Shell::Emacs => format!("(setenv \"{name}\" nil)\n"),
        }
    }

    /// The line-comment marker docker-machine uses for the shell.
    fn comment(self) -> &'static str {
        match self {
            Shell::Posix | Shell::Fish | Shell::PowerShell => "#",
            Shell::Cmd => "REM",
            Shell::Tcsh => ":",
            Shell::Emacs => ";;",
        }
    }

    /// The closing comment telling how to apply the output; `argv` is the command line that
    /// produced it.
    pub fn usage_hint(self, argv: &[String]) -> String {
        let mut args: Vec<String> = argv.to_vec();
        if let Some(first) = args.first_mut() {
            if first.contains(' ') || first.contains('\\') {
                *first = format!("\"{first}\"");
            }
        }
        let command = args.join(" ");
        let comment = self.comment();
        let usage = match self {
            Shell::Posix => format!("eval $({command})"),
            Shell::Fish => format!("eval ({command})"),
            Shell::PowerShell => format!("& {command} | Invoke-Expression"),
            Shell::Cmd => format!("\t@FOR /f \"tokens=*\" %i IN ('{command}') DO @%i"),
            Shell::Tcsh => format!("eval `{command}`"),
            Shell::Emacs => format!(
                "(with-temp-buffer (shell-command \"{command}\" (current-buffer)) (eval-buffer))"
            ),
        };
        format!("{comment} Run this command to configure your shell: \n{comment} {usage}\n")
    }

    /// Lines setting each variable, then the usage hint.
    pub fn render_set(self, vars: &[(String, String)], argv: &[String]) -> String {
        let mut out: String = vars.iter().map(|(k, v)| self.set_line(k, v)).collect();
        out.push_str(&self.usage_hint(argv));
        out
    }

    /// `env`'s output: docker-machine's lines, then [`BUILDER_VAR`] and why, then the hint.
    pub fn render_env(self, vars: &[(String, String)], argv: &[String]) -> String {
        let mut out: String = vars.iter().map(|(k, v)| self.set_line(k, v)).collect();
        out.push_str(&self.set_line(BUILDER_VAR.0, BUILDER_VAR.1));
        out.push_str(&format!("{} {BUILDER_REASON}\n", self.comment()));
        out.push_str(&self.usage_hint(argv));
        out
    }

    /// Lines unsetting each variable, then the usage hint.
    pub fn render_unset(self, names: &[String], argv: &[String]) -> String {
        let mut out: String = names.iter().map(|k| self.unset_line(k)).collect();
        out.push_str(&self.usage_hint(argv));
        out
    }
}

/// The proxy exclusion `--no-proxy` sets: `no_proxy` if the user has it, else `NO_PROXY`,
/// with `ip` appended unless already listed. `lookup` reads the environment.
pub fn no_proxy(ip: &str, lookup: impl Fn(&str) -> Option<String>) -> (String, String) {
    let (name, current) = match lookup("no_proxy") {
        Some(v) => ("no_proxy".to_string(), v),
        None => (
            "NO_PROXY".to_string(),
            lookup("NO_PROXY").unwrap_or_default(),
        ),
    };
    let value = if current.is_empty() {
        ip.to_string()
    } else if current.split(',').any(|entry| entry.trim() == ip) {
        current
    } else {
        format!("{current},{ip}")
    };
    (name, value)
}

/// Names `env -u` unsets, in order: the docker variables, Windows' compose variable, then the
/// proxy variable when `--no-proxy` is given.
pub fn unset_names(no_proxy_flag: bool, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut names: Vec<String> = ENV_NAMES.iter().map(|s| s.to_string()).collect();
    if cfg!(windows) {
        names.push("COMPOSE_CONVERT_WINDOWS_PATHS".into());
    }
    if no_proxy_flag {
        let name = if lookup("no_proxy").is_some() {
            "no_proxy"
        } else {
            "NO_PROXY"
        };
        names.push(name.into());
    }
    names.push(BUILDER_VAR.0.into());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_HOST", "tcp://127.0.0.1:42376"),
            ("DOCKER_CERT_PATH", "/s/machines/intro"),
            ("DOCKER_MACHINE_NAME", "intro"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn argv() -> Vec<String> {
        vec!["rmachine".into(), "env".into(), "intro".into()]
    }

    #[test]
    fn posix() {
        assert_eq!(
            Shell::from_name("/bin/bash").render_set(&vars(), &argv()),
            "export DOCKER_TLS_VERIFY=\"1\"\n\
             export DOCKER_HOST=\"tcp://127.0.0.1:42376\"\n\
             export DOCKER_CERT_PATH=\"/s/machines/intro\"\n\
             export DOCKER_MACHINE_NAME=\"intro\"\n\
             # Run this command to configure your shell: \n\
             # eval $(rmachine env intro)\n"
        );
        assert_eq!(Shell::from_name("zsh"), Shell::Posix);
        assert_eq!(Shell::from_name("something"), Shell::Posix);
    }

    #[test]
    fn fish() {
        assert_eq!(
            Shell::from_name("/usr/bin/fish").render_set(&vars()[..1], &argv()),
            "set -gx DOCKER_TLS_VERIFY \"1\";\n\
             # Run this command to configure your shell: \n\
             # eval (rmachine env intro)\n"
        );
        assert_eq!(
            Shell::Fish.render_unset(&["DOCKER_HOST".into()], &argv()),
            "set -e DOCKER_HOST;\n# Run this command to configure your shell: \n# eval (rmachine env intro)\n"
        );
    }

    #[test]
    fn powershell() {
        assert_eq!(
            Shell::from_name("powershell").render_set(&vars()[1..2], &argv()),
            "$Env:DOCKER_HOST = \"tcp://127.0.0.1:42376\"\n\
             # Run this command to configure your shell: \n\
             # & rmachine env intro | Invoke-Expression\n"
        );
        assert_eq!(
            Shell::PowerShell.render_unset(&["DOCKER_HOST".into()], &argv()),
            "Remove-Item Env:\\\\DOCKER_HOST\n# Run this command to configure your shell: \n# & rmachine env intro | Invoke-Expression\n"
        );
    }

    #[test]
    fn cmd() {
        let argv = vec![
            "C:\\Program Files\\rmachine.exe".to_string(),
            "env".into(),
            "intro".into(),
        ];
        assert_eq!(
            Shell::from_name("cmd").render_set(&vars()[3..], &argv),
            "SET DOCKER_MACHINE_NAME=intro\n\
             REM Run this command to configure your shell: \n\
             REM \t@FOR /f \"tokens=*\" %i IN ('\"C:\\Program Files\\rmachine.exe\" env intro') DO @%i\n"
        );
        assert_eq!(
            Shell::Cmd
                .render_unset(&["DOCKER_HOST".into()], &argv)
                .lines()
                .next(),
            Some("SET DOCKER_HOST=")
        );
    }

    #[test]
    fn tcsh() {
        assert_eq!(
            Shell::from_name("tcsh").render_set(&vars()[..1], &argv()),
            "setenv DOCKER_TLS_VERIFY \"1\";\n\
             : Run this command to configure your shell: \n\
             : eval `rmachine env intro`\n"
        );
        assert_eq!(
            Shell::Tcsh
                .render_unset(&["DOCKER_HOST".into()], &argv())
                .lines()
                .next(),
            Some("unsetenv DOCKER_HOST;")
        );
    }

    #[test]
    fn emacs() {
        assert_eq!(
            Shell::from_name("emacs").render_set(&vars()[..1], &argv()),
            "(setenv \"DOCKER_TLS_VERIFY\" \"1\")\n\
             ;; Run this command to configure your shell: \n\
             ;; (with-temp-buffer (shell-command \"rmachine env intro\" (current-buffer)) (eval-buffer))\n"
        );
        assert_eq!(
            Shell::Emacs
                .render_unset(&["DOCKER_HOST".into()], &argv())
                .lines()
                .next(),
            Some("(setenv \"DOCKER_HOST\" nil)")
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn posix_unset() {
        let names = unset_names(true, |_| None);
        assert_eq!(
            Shell::Posix.render_unset(&names, &["rmachine".into(), "env".into(), "-u".into()]),
            "unset DOCKER_TLS_VERIFY\nunset DOCKER_HOST\nunset DOCKER_CERT_PATH\n\
             unset DOCKER_MACHINE_NAME\nunset NO_PROXY\nunset DOCKER_BUILDKIT\n# Run this command to configure your shell: \n\
             # eval $(rmachine env -u)\n"
        );
    }

    #[test]
    fn env_sets_the_classic_builder_after_docker_machines_lines() {
        let posix = Shell::Posix.render_env(&vars(), &argv());
        let lines: Vec<&str> = posix.lines().collect();
        assert_eq!(lines[3], "export DOCKER_MACHINE_NAME=\"intro\"");
        assert_eq!(lines[4], "export DOCKER_BUILDKIT=\"0\"");
        assert!(lines[5].starts_with("# DOCKER_BUILDKIT=0: docker build uses the classic builder"));
        assert_eq!(lines[6], "# Run this command to configure your shell: ");
        // Each shell: its set line, its comment marker, no character its eval would take.
        for (shell, set, comment) in [
            (Shell::Fish, "set -gx DOCKER_BUILDKIT \"0\";", "# "),
            (Shell::PowerShell, "$Env:DOCKER_BUILDKIT = \"0\"", "# "),
            (Shell::Cmd, "SET DOCKER_BUILDKIT=0", "REM "),
            (Shell::Tcsh, "setenv DOCKER_BUILDKIT \"0\";", ": "),
            (Shell::Emacs, "(setenv \"DOCKER_BUILDKIT\" \"0\")", ";; "),
        ] {
            let out = shell.render_env(&vars(), &argv());
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[4], set, "{shell:?}");
            assert!(lines[5].starts_with(comment), "{shell:?}: {}", lines[5]);
            assert!(
                !lines[5].contains(['!', '"', '\'', '`', '(', '$']),
                "{shell:?}"
            );
        }
        let unset = Shell::Fish.render_unset(&unset_names(false, |_| None), &argv());
        assert!(
            unset.contains("set -e DOCKER_MACHINE_NAME;\nset -e DOCKER_BUILDKIT;\n"),
            "{unset}"
        );
    }

    #[test]
    fn no_proxy_appends_once() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            no_proxy("127.0.0.1", env(&[])),
            ("NO_PROXY".into(), "127.0.0.1".into())
        );
        assert_eq!(
            no_proxy("127.0.0.1", env(&[("NO_PROXY", "localhost")])),
            ("NO_PROXY".into(), "localhost,127.0.0.1".into())
        );
        assert_eq!(
            no_proxy(
                "127.0.0.1",
                env(&[("no_proxy", "a,127.0.0.1"), ("NO_PROXY", "x")])
            ),
            ("no_proxy".into(), "a,127.0.0.1".into())
        );
    }

    #[test]
    fn empty_shell_is_unknown_on_unix() {
        if !cfg!(windows) {
            assert_eq!(
                Shell::detect(Some("")).unwrap_err().to_string(),
                "Error: Unknown shell"
            );
        }
        assert_eq!(Shell::detect(Some("/usr/bin/fish")).unwrap(), Shell::Fish);
    }
}
