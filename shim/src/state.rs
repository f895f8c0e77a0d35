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

/// Why a signal is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KillRefused {
    /// The process has exited (containerd takes this as "not found": nothing to kill).
    #[error("the process already finished")]
    Finished,
    /// The exec was added but not started: no guest process yet.
    #[error("the exec is not started")]
    NotStarted,
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

    /// Whether a signal may be sent to this process (`exec`: an exec rather than a
    /// container's init; `all`: to every process of the container).
    ///
    /// A container's init exists in the guest from create on, so it takes signals while
    /// created. An exec has no guest process until it is started. A finished process has
    /// none any more, but `all` still reaches whatever else of the container is left.
    pub fn check_kill(&self, exec: bool, all: bool) -> Result<(), KillRefused> {
        match self {
            ProcState::Stopped { .. } if !all => Err(KillRefused::Finished),
            ProcState::Created if exec => Err(KillRefused::NotStarted),
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
        let refused = |action, state| Err(StateError { action, state });
        assert_eq!(ProcState::Created.pause(), refused("pause", "created"));
        assert_eq!(ProcState::Running.resume(), refused("resume", "running"));
        assert_eq!(
            ProcState::Running.check_delete(),
            Err(StateError {
                action: "delete",
                state: "running"
            })
        );
        assert_eq!(
            ProcState::Paused.check_delete(),
            Err(StateError {
                action: "delete",
                state: "paused"
            })
        );
        let stopped = ProcState::Created.exit(0, SystemTime::now());
        assert_eq!(stopped.start(), refused("start", "stopped"));
        assert!(ProcState::Created.check_delete().is_ok());
    }

    #[test]
    fn signals_reach_only_processes_that_exist_in_the_guest() {
        let stopped = ProcState::Running.exit(0, SystemTime::now());
        for exec in [false, true] {
            assert_eq!(stopped.check_kill(exec, false), Err(KillRefused::Finished));
            assert_eq!(stopped.check_kill(exec, true), Ok(()), "all: the rest");
            assert_eq!(ProcState::Running.check_kill(exec, false), Ok(()));
            assert_eq!(ProcState::Paused.check_kill(exec, false), Ok(()));
        }
        assert_eq!(ProcState::Created.check_kill(false, false), Ok(()), "init");
        assert_eq!(
            ProcState::Created.check_kill(true, false),
            Err(KillRefused::NotStarted)
        );
    }
}
