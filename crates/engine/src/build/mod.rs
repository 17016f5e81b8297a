//! The classic builder (`POST /build`, what `docker build` uses without BuildKit).
//!
//! Data flow: the context tar is unpacked into a private directory ([`context`]), the
//! Dockerfile is lexed ([`dockerfile`]) and turned into stages ([`instructions`]); the
//! executor ([`executor`]) then runs each instruction against the engine's image store and
//! containers, reusing earlier results from the build cache ([`cache`]), and reports Docker's
//! progress lines as it goes. Words are expanded as moby does ([`substitution`]).

pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod executor;
pub mod instructions;
pub mod remote;
pub mod substitution;

use std::path::PathBuf;

/// Errors of the builder. Texts the docker CLI prints are moby's own.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A Dockerfile that does not parse.
    #[error("dockerfile parse error on line {line}: {reason}")]
    Parse {
        /// First line of the instruction.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A word whose variables cannot be expanded.
    #[error("failed to process {reason:?}")]
    Substitution {
        /// What is wrong.
        reason: String,
    },
    /// A bad request: options, context, Dockerfile location, a missing source.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Something the classic builder here does not do, named.
    #[error("{what} is not supported by rmachine-engine's builder")]
    Unsupported {
        /// The option or form refused.
        what: String,
    },
    /// A RUN step exited non-zero (moby's text, shown as the build's error).
    #[error("The command '{command}' returned a non-zero code: {code}")]
    CommandFailed {
        /// The command, space-joined.
        command: String,
        /// Its exit code.
        code: i64,
    },
    /// A remote context or an `ADD` URL could not be fetched (moby's texts).
    #[error("{reason}")]
    Fetch {
        /// The URL or repository.
        url: String,
        /// What failed.
        reason: String,
        /// Whether the server answered 404 (dockerd's NotFound).
        missing: bool,
    },
    /// A `remote=` that is neither a git repository nor an http(s) URL (moby's plain
    /// error, so dockerd answers 500).
    #[error("remoteURL ({remote}) could not be recognized as URL")]
    UnrecognizedRemote {
        /// The value given.
        remote: String,
    },
    /// The client went away (Ctrl-C): the build stopped, its container removed.
    #[error("Build cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(crate::image::ImageError),
    /// The engine failed (creating or running a build container).
    #[error(transparent)]
    Engine(Box<crate::core::EngineError>),
}

/// `map_err` helper for I/O on `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}
