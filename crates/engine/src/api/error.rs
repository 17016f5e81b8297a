//! Errors as HTTP responses: the one place that chooses status codes.

use hyper::StatusCode;

use crate::container::archive::ArchiveError;
use crate::core::EngineError;
use crate::image::ImageError;
use crate::volume::VolumeError;

/// Errors of the API layer itself: a malformed request, or a failed engine operation.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be understood (bad JSON, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// No route matches.
    #[error("page not found")]
    NotFound,
    /// A route of the Docker API the engine does not serve yet; `what` names the docker
    /// command that needs it.
    #[error("rmachine-engine does not support {what} yet")]
    NotImplemented {
        /// The docker command or API that is missing (`docker network create`).
        what: String,
    },
    /// A missing object, with dockerd's text for it (`network web not found`).
    #[error("{0}")]
    NoSuchObject(String),
    /// Refused as dockerd refuses it while the service is off (swarm routes without a swarm);
    /// the text is dockerd's.
    #[error("{0}")]
    Unavailable(String),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A build failed before its output started.
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// An error with the words dockerd's route puts in front (`cannot kill container: x`),
    /// keeping the status of the cause, as Go's `errors.Wrapf` does.
    #[error("{context}")]
    Context {
        /// The words in front, without the `: `.
        context: String,
        /// The error the route wraps.
        #[source]
        source: Box<ApiError>,
    },
}

impl ApiError {
    /// Puts `context` in front of the error's message.
    pub fn context(self, context: impl Into<String>) -> ApiError {
        ApiError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(err: ImageError) -> Self {
        ApiError::Engine(EngineError::Image(err))
    }
}

/// The status code of an error, as dockerd chooses it.
pub fn status_of(err: &ApiError) -> StatusCode {
    match err {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
        ApiError::NoSuchObject(_) => StatusCode::NOT_FOUND,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Context { source, .. } => status_of(source),
        ApiError::Engine(err) => engine_status(err),
        ApiError::Build(err) => build_status(err),
    }
}

/// dockerd's statuses for build failures: the request's or the Dockerfile's fault is 400.
fn build_status(err: &crate::build::BuildError) -> StatusCode {
    use crate::build::BuildError;
    match err {
        BuildError::Parse { .. }
        | BuildError::Substitution { .. }
        | BuildError::Invalid { .. }
        | BuildError::CommandFailed { .. } => StatusCode::BAD_REQUEST,
        BuildError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
        BuildError::Fetch { missing: true, .. } => StatusCode::NOT_FOUND,
        // moby's `remotecontext.Detect` returns a plain error for an unknown remote: 500.
        BuildError::Fetch { .. }
        | BuildError::Cancelled
        | BuildError::UnrecognizedRemote { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        BuildError::Image(err) => image_status(err),
        BuildError::Engine(err) => engine_status(err),
        BuildError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn engine_status(err: &EngineError) -> StatusCode {
    match err {
        EngineError::NameAllocation { source } => engine_status(source),
        EngineError::NoSuchContainer { .. } | EngineError::NoSuchNetwork { .. } => {
            StatusCode::NOT_FOUND
        }
        EngineError::AmbiguousReference { .. } | EngineError::InvalidParameter { .. } => {
            StatusCode::BAD_REQUEST
        }
        EngineError::NameConflict { .. }
        | EngineError::NotRunning { .. }
        | EngineError::RemoveRunning { .. }
        | EngineError::RemoveRestarting { .. }
        | EngineError::RemovePaused { .. } => StatusCode::CONFLICT,
        EngineError::NotModified { .. } => StatusCode::NOT_MODIFIED,
        // dockerd: "not found" and "not executable" are the client's mistake.
        EngineError::StartFailed { exit_code, .. } if *exit_code == 126 || *exit_code == 127 => {
            StatusCode::BAD_REQUEST
        }
        EngineError::ImageUsedByRunning { .. } => StatusCode::CONFLICT,
        EngineError::Conflict { .. } => StatusCode::CONFLICT,
        EngineError::Forbidden { .. } => StatusCode::FORBIDDEN,
        EngineError::NoSuchExec { .. } => StatusCode::NOT_FOUND,
        EngineError::LogsNotSupported { .. } => StatusCode::NOT_IMPLEMENTED,
        EngineError::Archive(archive) => archive_status(archive),
        EngineError::Volume(volume) => volume_status(volume),
        EngineError::Image(image) => image_status(image),
        EngineError::Registry(registry) => super::registry::registry_status(registry),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// dockerd's statuses for volume failures.
fn volume_status(err: &VolumeError) -> StatusCode {
    match err {
        VolumeError::NotFound { .. } | VolumeError::NoSuchDriver { .. } => StatusCode::NOT_FOUND,
        VolumeError::InUse { .. } => StatusCode::CONFLICT,
        VolumeError::Invalid { .. } => StatusCode::BAD_REQUEST,
        VolumeError::Mount { .. } | VolumeError::StillMounted { .. } | VolumeError::Io { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// dockerd's statuses for image store failures.
fn image_status(err: &ImageError) -> StatusCode {
    match err {
        ImageError::NotFound { .. } => StatusCode::NOT_FOUND,
        ImageError::InUse { .. } | ImageError::Conflict { .. } | ImageError::HasChildren { .. } => {
            StatusCode::CONFLICT
        }
        ImageError::InvalidReference { .. }
        | ImageError::InvalidArchive { .. }
        | ImageError::InvalidLayer { .. }
        | ImageError::DiffIdMismatch { .. }
        | ImageError::DigestMismatch { .. } => StatusCode::BAD_REQUEST,
        ImageError::Io { .. } | ImageError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// dockerd's statuses for `docker cp` failures: a missing path is 404, a bad request 400, a
/// write to a read-only root file system 403.
fn archive_status(err: &ArchiveError) -> StatusCode {
    match err {
        ArchiveError::NotFound { .. } => StatusCode::NOT_FOUND,
        ArchiveError::NotADirectory { .. } | ArchiveError::Invalid { .. } => {
            StatusCode::BAD_REQUEST
        }
        ArchiveError::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS) => {
            StatusCode::FORBIDDEN
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The message clients see: the error and its causes, as Go's wrapped errors print.
pub fn message_of(err: &ApiError) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_dockerd() {
        let not_found = ApiError::from(EngineError::NoSuchContainer {
            reference: "x".into(),
        });
        assert_eq!(status_of(&not_found), StatusCode::NOT_FOUND);
        assert_eq!(message_of(&not_found), "No such container: x");
        let missing_image = ApiError::from(ImageError::NotFound {
            reference: "busybox:latest".into(),
        });
        assert_eq!(status_of(&missing_image), StatusCode::NOT_FOUND);
        assert_eq!(message_of(&missing_image), "No such image: busybox:latest");
        let not_executable = ApiError::from(EngineError::StartFailed {
            message: "exec: \"nope\": executable file not found in $PATH".into(),
            exit_code: 127,
        });
        assert_eq!(status_of(&not_executable), StatusCode::BAD_REQUEST);
        let running = ApiError::from(EngineError::RemoveRunning { name: "/x".into() });
        assert_eq!(status_of(&running), StatusCode::CONFLICT);
        let wrapped = ApiError::from(EngineError::NoSuchContainer {
            reference: "x".into(),
        })
        .context("cannot kill container: x");
        assert_eq!(status_of(&wrapped), StatusCode::NOT_FOUND);
        assert_eq!(
            message_of(&wrapped),
            "cannot kill container: x: No such container: x"
        );
        let taken = ApiError::from(EngineError::NameAllocation {
            source: Box::new(EngineError::NameConflict {
                name: "web".into(),
                id: "abc".into(),
            }),
        });
        assert_eq!(status_of(&taken), StatusCode::CONFLICT);
        assert!(message_of(&taken)
            .starts_with("Error when allocating new name: Conflict. The container name \"/web\""));
    }

    #[test]
    fn copy_failures_get_dockerds_statuses() {
        let missing = ApiError::from(EngineError::Archive(ArchiveError::NotFound {
            path: "/nope".into(),
            container: "web".into(),
        }));
        assert_eq!(status_of(&missing), StatusCode::NOT_FOUND);
        let read_only = ApiError::from(EngineError::Archive(ArchiveError::Io {
            path: "/etc".into(),
            source: std::io::Error::from_raw_os_error(libc::EROFS),
        }));
        assert_eq!(status_of(&read_only), StatusCode::FORBIDDEN);
        let other = ApiError::from(EngineError::Archive(ArchiveError::Io {
            path: "/etc".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }));
        assert_eq!(status_of(&other), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn image_failures_get_dockerds_statuses() {
        let bad = ApiError::from(ImageError::InvalidReference {
            reference: "BusyBox".into(),
            reason: "invalid reference format".into(),
        });
        assert_eq!(status_of(&bad), StatusCode::BAD_REQUEST);
        let tagged = ApiError::from(ImageError::Conflict {
            image: "sha256:0123456789ab".into(),
            reason: "image is referenced in multiple repositories".into(),
        });
        assert_eq!(status_of(&tagged), StatusCode::CONFLICT);
        let used = ApiError::from(ImageError::InUse {
            image: "sha256:0123456789ab".into(),
            container: "abc".into(),
            reference: None,
        });
        assert_eq!(status_of(&used), StatusCode::CONFLICT);
    }
}
