//! The error a Task call returns, and how it travels to containerd (a ttrpc status whose
//! code containerd turns back into its error kinds: not found, already exists, ...).

use containerd_shim_protos::ttrpc;
use husk_protocol::{AgentError, ErrorKind};

use crate::annotations::AnnotationError;
use crate::convert::ConvertError;
use crate::mounts::MountError;
use crate::sandbox::SandboxError;
use crate::spec::SpecError;
use crate::state::StateError;

/// A failed Task call.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad input.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown container or exec.
    #[error("{0}")]
    NotFound(String),
    /// Duplicate id.
    #[error("{0}")]
    AlreadyExists(String),
    /// Wrong state for the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not something husk does.
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
    /// The guest agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl ShimError {
    fn code(&self) -> ttrpc::Code {
        match self {
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            ShimError::Internal(_) => ttrpc::Code::INTERNAL,
            ShimError::Agent(e) => match e.kind() {
                Some(ErrorKind::NotFound) => ttrpc::Code::NOT_FOUND,
                Some(ErrorKind::AlreadyExists) => ttrpc::Code::ALREADY_EXISTS,
                Some(ErrorKind::InvalidArgument) => ttrpc::Code::INVALID_ARGUMENT,
                Some(ErrorKind::FailedPrecondition) => ttrpc::Code::FAILED_PRECONDITION,
                Some(ErrorKind::Unavailable) => ttrpc::Code::UNAVAILABLE,
                Some(ErrorKind::Timeout) => ttrpc::Code::DEADLINE_EXCEEDED,
                Some(ErrorKind::Internal) | None => ttrpc::Code::INTERNAL,
            },
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        let code = e.code();
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("husk: {e}")))
    }
}

impl From<ConvertError> for ShimError {
    fn from(e: ConvertError) -> Self {
        match e {
            ConvertError::Invalid { .. } => ShimError::InvalidArgument(e.to_string()),
            ConvertError::Unsupported(_) => ShimError::Unimplemented(e.to_string()),
        }
    }
}

impl From<StateError> for ShimError {
    fn from(e: StateError) -> Self {
        ShimError::FailedPrecondition(e.to_string())
    }
}

impl From<AnnotationError> for ShimError {
    fn from(e: AnnotationError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}

impl From<SpecError> for ShimError {
    fn from(e: SpecError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}

impl From<MountError> for ShimError {
    fn from(e: MountError) -> Self {
        match e {
            MountError::MissingRootfs(_)
            | MountError::TooManyMounts(_)
            | MountError::RelativeSource(_) => ShimError::InvalidArgument(e.to_string()),
            _ => ShimError::Internal(e.to_string()),
        }
    }
}

impl From<SandboxError> for ShimError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Missing { .. }
            | SandboxError::HelperMissing(_)
            | SandboxError::SocketPathTooLong(_) => ShimError::InvalidArgument(e.to_string()),
            SandboxError::Agent(a) => ShimError::Agent(a),
            _ => ShimError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (ttrpc::Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn errors_keep_their_kind_for_containerd() {
        let (code, msg) = status(ShimError::NotFound("container c1 not found".into()));
        assert_eq!(code, ttrpc::Code::NOT_FOUND);
        assert_eq!(msg, "husk: container c1 not found");
        let e: ShimError = ConvertError::Unsupported("checkpoint").into();
        assert_eq!(status(e).0, ttrpc::Code::UNIMPLEMENTED);
        let e: ShimError = StateError {
            action: "start",
            state: "running",
        }
        .into();
        assert_eq!(status(e).0, ttrpc::Code::FAILED_PRECONDITION);
        let e = ShimError::Agent(AgentError::Status {
            kind: ErrorKind::NotFound,
            message: "no such process".into(),
        });
        assert_eq!(status(e).0, ttrpc::Code::NOT_FOUND);
    }
}
