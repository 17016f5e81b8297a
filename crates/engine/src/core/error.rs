//! Errors of engine operations, and the helper that names the path of an I/O failure.

use std::path::{Path, PathBuf};

use crate::container::launch::LaunchError;
use crate::image::ImageError;
use crate::state::StateError;

/// Errors of engine operations. Each maps to one HTTP status in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// No container has this id, id prefix or name.
    #[error("No such container: {reference}")]
    NoSuchContainer {
        /// What the client asked for.
        reference: String,
    },
    /// An id prefix matches several containers.
    #[error("multiple IDs found with provided prefix: {prefix}")]
    AmbiguousReference {
        /// The prefix.
        prefix: String,
    },
    /// The name is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameConflict {
        /// The requested name.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// `rename` could not take the new name (moby's wrapper text, daemon/rename.go).
    #[error("Error when allocating new name")]
    NameAllocation {
        /// Why: an invalid name or a conflict.
        #[source]
        source: Box<EngineError>,
    },
    /// A file of the engine's that does not parse.
    #[error("{} is corrupt", path.display())]
    CorruptFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// `--network NAME` of a network that does not exist (dockerd's text).
    #[error("network {name} not found")]
    NoSuchNetwork {
        /// The name asked for.
        name: String,
    },
    /// A request dockerd forbids (an overlapping subnet, removing a network in use).
    #[error("{reason}")]
    Forbidden {
        /// Docker's message.
        reason: String,
    },
    /// Publishing a port failed (dockerd's text, with the endpoint and the cause).
    #[error("failed to set up container networking: {reason}")]
    NetworkSetup {
        /// What went wrong.
        reason: String,
    },
    /// A request parameter is invalid.
    #[error("{reason}")]
    InvalidParameter {
        /// Docker's message.
        reason: String,
    },
    /// The container must run for this operation (moby's text since v25).
    #[error("container {id} is not running")]
    NotRunning {
        /// The container id.
        id: String,
    },
    /// Start of a running container or stop of a stopped one: nothing to do.
    #[error("container {id} is already {state}")]
    NotModified {
        /// The container id.
        id: String,
        /// `started` or `stopped`.
        state: &'static str,
    },
    /// Removal of a running container without force (moby v28.2's text, naming the container
    /// as the client did).
    #[error("cannot remove container \"{name}\": container is running: stop the container before removing or force remove")]
    RemoveRunning {
        /// The reference the client used.
        name: String,
    },
    /// Removal without force of a container waiting for its restart by policy.
    #[error("cannot remove container \"{name}\": container is restarting: stop the container before removing or force remove")]
    RemoveRestarting {
        /// The reference the client used.
        name: String,
    },
    /// Removal without force of a paused container.
    #[error("cannot remove container \"{name}\": container is paused and must be unpaused first")]
    RemovePaused {
        /// The reference the client used.
        name: String,
    },
    /// The runtime could not start the container's process.
    #[error("failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: {message}: unknown")]
    StartFailed {
        /// The runtime's message.
        message: String,
        /// The exit code recorded (127 not found, 126 not executable, else 1).
        exit_code: i64,
    },
    /// The working directory exists in the container as a file (dockerd's
    /// `SetupWorkingDirectory`).
    #[error("Cannot mkdir: {path} is not a directory")]
    WorkingDirNotDir {
        /// The working directory as configured.
        path: String,
    },
    /// Starting the runtime itself failed.
    #[error("cannot start container {id}")]
    Launch {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: LaunchError,
    },
    /// An image a running container uses cannot be removed, even with force.
    #[error("conflict: unable to delete {} (cannot be forced) - image is being used by running container {}", crate::image::short_id(image), &container[..container.len().min(12)])]
    ImageUsedByRunning {
        /// The image id.
        image: String,
        /// The running container.
        container: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A registry operation (pull, login) failed.
    #[error(transparent)]
    Registry(#[from] crate::image::registry::RegistryError),
    /// Container records could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A file or directory of the engine could not be accessed.
    #[error("cannot access {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's state forbids the operation (Docker's text).
    #[error("{reason}")]
    Conflict {
        /// Docker's message.
        reason: String,
    },
    /// No exec instance has this id.
    #[error("No such exec instance: {id}")]
    NoSuchExec {
        /// The exec id.
        id: String,
    },
    /// The container's cgroup could not be read or changed.
    #[error("cannot use the cgroup of container {id}")]
    Cgroup {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: rmachine_runtime::cgroup::CgroupError,
    },
    /// `docker top` could not render the processes (`ps`'s own words, as dockerd passes them).
    #[error("{reason}")]
    Top {
        /// The container id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A background task failed to run.
    #[error("internal task failed: {reason}")]
    Task {
        /// What happened.
        reason: String,
    },
    /// `docker logs` of a container whose log driver keeps nothing (`--log-driver none`).
    #[error("configured logging driver does not support reading")]
    LogsNotSupported {
        /// The container id.
        id: String,
    },
    /// The exec root is another engine's (or its lock cannot be taken).
    #[error(transparent)]
    ExecRootLock(#[from] crate::daemon::lock::LockError),
    /// Copying files to or from a container failed.
    #[error(transparent)]
    Archive(#[from] crate::container::archive::ArchiveError),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}
