//! The agent's error type and its mapping to the API's typed errors.

use husk_protocol::ErrorKind;

/// Errors of the agent's container operations, each with an API [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id.
    #[error("no container {0:?}")]
    ContainerNotFound(String),
    /// The pod's sandbox container a container should join does not exist.
    #[error("no pod sandbox container {0:?} in this guest (create it first)")]
    SandboxNotFound(String),
    /// No process with this exec id in the container.
    #[error("no process {exec_id:?} in container {container_id:?}")]
    ProcessNotFound {
        /// The container.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// The container or exec id is taken.
    #[error("{0:?} already exists")]
    AlreadyExists(String),
    /// A request field is malformed or not allowed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call does not fit the object's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The guest lacks a facility the call needs.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish in the time the caller gave.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Setting up a container process failed (message from the setup process).
    #[error("container setup: {0}")]
    Setup(String),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The API kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ContainerNotFound(_)
            | Error::SandboxNotFound(_)
            | Error::ProcessNotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Setup(_) | Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// Wraps an I/O error with a description.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps an errno from nix with a description.
    pub fn errno(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::io(what, std::io::Error::from(errno))
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        err.kind().to_ttrpc(err.to_string())
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, Error>;
