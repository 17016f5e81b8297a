//! Finding the container's executable in its `PATH`, the way runc (Go's `exec.LookPath`) does,
//! so failures carry the messages and exit codes Docker users know.

use std::path::{Path, PathBuf};

use crate::syscall::{Errno, FileKind, SysError, Syscall};

/// The `PATH` a container gets when its environment has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the executable could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No directory of `PATH` holds an executable of that name.
    #[error("exec: {name:?}: executable file not found in $PATH")]
    NotFound {
        /// The command as given.
        name: String,
    },
    /// A path was given (it has a slash) but it cannot be executed.
    #[error("exec: {name:?}: stat {name}")]
    Stat {
        /// The command as given.
        name: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// A path was given and exists, but is a directory or has no execute bit.
    #[error("exec: {name:?}")]
    NotExecutable {
        /// The command as given.
        name: String,
        /// `EACCES` or `EISDIR`.
        #[source]
        source: SysError,
    },
}

impl LookupError {
    /// Docker's exit code for this failure: 127 when nothing is there, 126 when it is not
    /// executable.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } | Self::Stat { .. } => 127,
            Self::NotExecutable { .. } => 126,
        }
    }
}

/// The value of `PATH` in a `KEY=value` environment (the last one wins, as in `getenv` of a
/// process built from it by Docker), else [`DEFAULT_PATH`].
pub fn path_from_env(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Resolves `name` to the file to `execve`.
///
/// A name with a slash is used as is (relative to the working directory); otherwise each `PATH`
/// entry is tried in order, an empty entry meaning the working directory. Checks use the mode
/// bits only; the kernel has the last word at `execve` time.
pub fn look_path(sys: &dyn Syscall, name: &str, path: &str) -> Result<PathBuf, LookupError> {
    if name.contains('/') {
        return match check_executable(sys, Path::new(name)) {
            Ok(()) => Ok(PathBuf::from(name)),
            Err(errno @ (Errno::EACCES | Errno::EISDIR)) => Err(LookupError::NotExecutable {
                name: name.to_string(),
                source: errno.into(),
            }),
            Err(errno) => Err(LookupError::Stat {
                name: name.to_string(),
                source: errno.into(),
            }),
        };
    }
    if !name.is_empty() {
        for dir in path.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = Path::new(dir).join(name);
            if check_executable(sys, &candidate).is_ok() {
                return Ok(candidate);
            }
        }
    }
    Err(LookupError::NotFound {
        name: name.to_string(),
    })
}

/// `Ok` for a non-directory with some execute bit, as Go's `findExecutable`.
fn check_executable(sys: &dyn Syscall, path: &Path) -> Result<(), Errno> {
    let info = sys.stat(path)?;
    if info.kind == FileKind::Dir {
        return Err(Errno::EISDIR);
    }
    if info.mode & 0o111 == 0 {
        return Err(Errno::EACCES);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    fn fs() -> RecordingSyscall {
        RecordingSyscall::new()
            .with_file("/usr/bin/tool", FileKind::File, 0o755)
            .with_file("/bin/tool", FileKind::File, 0o755)
            .with_file("/sbin/data", FileKind::File, 0o644)
            .with_file("/bin/data", FileKind::File, 0o700)
            .with_file("/usr/bin/dir", FileKind::Dir, 0o755)
            .with_file("./local", FileKind::File, 0o755)
            .with_symlink("/bin/sh", "busybox")
            .with_file("/bin/busybox", FileKind::File, 0o755)
            .with_file("/etc/passwd", FileKind::File, 0o644)
    }

    #[test]
    fn path_entries_are_tried_in_order() {
        let sys = fs();
        assert_eq!(
            look_path(&sys, "tool", "/usr/bin:/bin"),
            Ok("/usr/bin/tool".into())
        );
        assert_eq!(
            look_path(&sys, "tool", "/bin:/usr/bin"),
            Ok("/bin/tool".into())
        );
        // Entries without an execute bit or that are directories are skipped.
        assert_eq!(
            look_path(&sys, "data", "/sbin:/bin"),
            Ok("/bin/data".into())
        );
        assert!(look_path(&sys, "dir", "/usr/bin").is_err());
        // Symlinks are followed; an empty entry is the working directory.
        assert_eq!(look_path(&sys, "sh", DEFAULT_PATH), Ok("/bin/sh".into()));
        assert_eq!(look_path(&sys, "local", "/bin::"), Ok("./local".into()));
    }

    #[test]
    fn not_found_is_127_with_dockers_message() {
        let err = look_path(&fs(), "nope", DEFAULT_PATH).expect_err("not found");
        assert_eq!(
            err.to_string(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(err.exit_code(), 127);
        let empty = look_path(&fs(), "", DEFAULT_PATH).expect_err("empty name");
        assert_eq!(empty.exit_code(), 127);
    }

    #[test]
    fn paths_with_a_slash_are_checked_not_searched() {
        let sys = fs();
        assert_eq!(look_path(&sys, "/bin/tool", ""), Ok("/bin/tool".into()));
        let denied = look_path(&sys, "/etc/passwd", DEFAULT_PATH).expect_err("not executable");
        assert_eq!(
            format!(
                "{}: {}",
                denied,
                std::error::Error::source(&denied).expect("cause")
            ),
            "exec: \"/etc/passwd\": permission denied"
        );
        assert_eq!(denied.exit_code(), 126);
        let dir = look_path(&sys, "/usr/bin/dir", DEFAULT_PATH).expect_err("a directory");
        assert_eq!(dir.exit_code(), 126);
        let missing = look_path(&sys, "./nope", DEFAULT_PATH).expect_err("missing");
        assert_eq!(
            format!(
                "{}: {}",
                missing,
                std::error::Error::source(&missing).expect("cause")
            ),
            "exec: \"./nope\": stat ./nope: no such file or directory"
        );
        assert_eq!(missing.exit_code(), 127);
    }

    #[test]
    fn path_comes_from_the_environment_last_one_winning() {
        assert_eq!(path_from_env(&[]), DEFAULT_PATH);
        assert_eq!(path_from_env(&["HOME=/root".into()]), DEFAULT_PATH);
        assert_eq!(
            path_from_env(&["PATH=/a".into(), "X=1".into(), "PATH=/b".into()]),
            "/b"
        );
        assert_eq!(path_from_env(&["XPATH=/x".into()]), DEFAULT_PATH);
    }
}
