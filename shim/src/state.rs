//! The life of a task process as the shim tracks it, as a small state machine.
//!
//! ```text
//!  Created --start--> Running --pause--> Paused
//!     |                 |  ^----resume----'  |
//!     '------exit-------+------exit----------'--> Stopped
//! ```

use std::time::SystemTime;

/// A wrong-state request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a process that is {state}")]
pub struct StateError {
    /// What was asked.
    pub action: &'static str,
    /// The state it was in.
    pub state: &'static str,
}

/// State of one process (a container's init or an exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Created, not started.
    Created,
    /// Started and not known to have exited.
    Running,
    /// Frozen (init processes only).
    Paused,
    /// Exited.
    Stopped {
        /// Exit code, or 128 + signal.
        exit_status: u32,
        /// When the shim learnt of the exit.
        exited_at: SystemTime,
    },
}

impl ProcState {
    /// Lower-case name.
    pub fn name(&self) -> &'static str {
        match self {
            ProcState::Created => "created",
            ProcState::Running => "running",
            ProcState::Paused => "paused",
            ProcState::Stopped { .. } => "stopped",
        }
    }

    fn refuse(&self, action: &'static str) -> StateError {
        StateError {
            action,
            state: self.name(),
        }
    }

    /// Created -> Running.
    pub fn start(self) -> Result<ProcState, StateError> {
        match self {
            ProcState::Created => Ok(ProcState::Running),
            s => Err(s.refuse("start")),
        }
    }

    /// Running -> Paused.
    pub fn pause(self) -> Result<ProcState, StateError> {
        match self {
            ProcState::Running => Ok(ProcState::Paused),
            s => Err(s.refuse("pause")),
        }
    }

    /// Paused -> Running.
    pub fn resume(self) -> Result<ProcState, StateError> {
        match self {
            ProcState::Paused => Ok(ProcState::Running),
            s => Err(s.refuse("resume")),
        }
    }

    /// Any live state -> Stopped; a second exit keeps the first.
    pub fn exit(self, exit_status: u32, exited_at: SystemTime) -> ProcState {
        match self {
            ProcState::Stopped { .. } => self,
            _ => ProcState::Stopped {
                exit_status,
                exited_at,
            },
        }
    }

    /// Signals go to created, running and paused processes.
    pub fn check_kill(&self) -> Result<(), StateError> {
        match self {
            ProcState::Stopped { .. } => Err(self.refuse("signal")),
            _ => Ok(()),
        }
    }

    /// Only created or stopped processes may be deleted (containerd kills first).
    pub fn check_delete(&self) -> Result<(), StateError> {
        match self {
            ProcState::Created | ProcState::Stopped { .. } => Ok(()),
            s => Err(s.refuse("delete")),
        }
    }

    /// Whether the process has exited.
    pub fn is_stopped(&self) -> bool {
        matches!(self, ProcState::Stopped { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path() {
        let s = ProcState::Created.start().expect("start");
        let s = s.pause().expect("pause").resume().expect("resume");
        assert_eq!(s, ProcState::Running);
        let t = SystemTime::UNIX_EPOCH;
        let s = s.exit(7, t);
        assert!(s.is_stopped());
        assert!(s.check_delete().is_ok());
        // A later exit does not overwrite the first.
        assert_eq!(s.exit(9, SystemTime::now()), s);
    }

    #[test]
    fn wrong_transitions_are_refused() {
        let e = ProcState::Running.start().expect_err("double start");
        assert_eq!(e.to_string(), "cannot start a process that is running");
        assert!(ProcState::Created.pause().is_err());
        assert!(ProcState::Running.resume().is_err());
        assert!(ProcState::Running.check_delete().is_err());
        assert!(ProcState::Paused.check_delete().is_err());
        let stopped = ProcState::Created.exit(0, SystemTime::now());
        assert!(stopped.check_kill().is_err());
        assert!(stopped.start().is_err());
        assert!(ProcState::Created.check_kill().is_ok());
        assert!(ProcState::Created.check_delete().is_ok());
    }
}
