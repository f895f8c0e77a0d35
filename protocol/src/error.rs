//! Typed errors of the agent API and their mapping to ttrpc (gRPC) status codes.

use ttrpc::Code;

/// What went wrong, as both sides agree on it (carried as the gRPC status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown container or process.
    NotFound,
    /// A container or exec id that is already in use.
    AlreadyExists,
    /// A malformed request: bad spec, missing process, rootfs outside the share.
    InvalidArgument,
    /// The object is in the wrong state for the call (e.g. a second start).
    FailedPrecondition,
    /// The guest lacks what the call needs (e.g. a cgroup controller).
    Unavailable,
    /// The call did not finish in time.
    Timeout,
    /// Anything else inside the agent.
    Internal,
}

impl ErrorKind {
    /// The gRPC code this kind travels as.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::NotFound => Code::NOT_FOUND,
            ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
            ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
            ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
            ErrorKind::Unavailable => Code::UNAVAILABLE,
            ErrorKind::Timeout => Code::DEADLINE_EXCEEDED,
            ErrorKind::Internal => Code::INTERNAL,
        }
    }

    /// The kind a gRPC code stands for (unknown codes are `Internal`).
    pub fn from_code(code: Code) -> Self {
        match code {
            Code::NOT_FOUND => ErrorKind::NotFound,
            Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            Code::INVALID_ARGUMENT => ErrorKind::InvalidArgument,
            Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
            Code::UNAVAILABLE => ErrorKind::Unavailable,
            Code::DEADLINE_EXCEEDED => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        }
    }

    /// A ttrpc error carrying this kind and a message (what the agent returns).
    pub fn to_ttrpc(self, message: impl ToString) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), message))
    }
}

/// An error seen by a client of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status.
    #[error("agent: {kind:?}: {message}")]
    Status {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
    /// The call did not get an answer within its timeout.
    #[error("agent call {call} timed out")]
    Timeout {
        /// The RPC name.
        call: &'static str,
    },
    /// The connection failed (closed, reset, bad frame).
    #[error("agent call {call}: transport: {source}")]
    Transport {
        /// The RPC name.
        call: &'static str,
        /// The ttrpc error.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent speaks another protocol version.
    #[error("agent protocol version {agent} is not {expected}")]
    Version {
        /// What the agent reported.
        agent: u32,
        /// What this client speaks.
        expected: u32,
    },
    /// Connecting to the agent failed.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
}

impl AgentError {
    /// The error kind, where the agent returned one (timeouts count as [`ErrorKind::Timeout`]).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            AgentError::Status { kind, .. } => Some(*kind),
            AgentError::Timeout { .. } => Some(ErrorKind::Timeout),
            _ => None,
        }
    }

    pub(crate) fn from_ttrpc(call: &'static str, err: ttrpc::Error) -> Self {
        match err {
            ttrpc::Error::RpcStatus(status) => AgentError::Status {
                kind: ErrorKind::from_code(status.code()),
                message: status.message,
            },
            ttrpc::Error::Others(ref m) if m.contains("timeout") || m.contains("Timeout") => {
                AgentError::Timeout { call }
            }
            other => AgentError::Transport {
                call,
                source: other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_codes() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidArgument,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
    }

    #[test]
    fn status_becomes_typed_error() {
        let err = AgentError::from_ttrpc("Start", ErrorKind::NotFound.to_ttrpc("no container x"));
        assert_eq!(err.kind(), Some(ErrorKind::NotFound));
        assert!(err.to_string().contains("no container x"));
    }
}
