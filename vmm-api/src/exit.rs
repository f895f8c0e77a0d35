//! What husk-vmm's process exit status means. The shim reports it when a VM ends, and tests
//! tell a guest that reset itself from one that triple-faulted by it.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// husk-vmm's exit statuses.
///
/// husk-vmm can also end by a signal: a system call outside the seccomp filter of the
/// thread that made it kills the whole process with `SIGSYS`, which [`VmmExit::describe`]
/// reports as "husk-vmm was killed by signal 31".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum VmmExit {
    /// The guest reset itself through the i8042 (a reboot or poweroff with `reboot=k`), or
    /// the control API asked for shutdown.
    Clean = 0,
    /// husk-vmm failed (a KVM call, a device, a vCPU error).
    Error = 1,
    /// The configuration or command line was rejected before the VM was created.
    BadConfig = 2,
    /// A vCPU triple-faulted (KVM's shutdown exit) without the guest having asked for a
    /// reset first: the guest kernel crashed.
    TripleFault = 3,
}

impl VmmExit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The meaning of exit code `code`, if husk-vmm defines one.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::Clean),
            1 => Some(Self::Error),
            2 => Some(Self::BadConfig),
            3 => Some(Self::TripleFault),
            _ => None,
        }
    }

    /// The meaning of a process status; `None` when husk-vmm was killed by a signal or
    /// exited with a code it does not define.
    pub fn from_status(status: ExitStatus) -> Option<Self> {
        status.code().and_then(Self::from_code)
    }

    /// A sentence for logs and errors, e.g. "husk-vmm exited with status 3 (guest triple
    /// fault)" or "husk-vmm was killed by signal 9".
    pub fn describe(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(code), _) => match Self::from_code(code) {
                Some(e) => format!("husk-vmm exited with status {code} ({e})"),
                None => format!("husk-vmm exited with status {code}"),
            },
            (None, Some(sig)) => format!("husk-vmm was killed by signal {sig}"),
            (None, None) => format!("husk-vmm ended: {status}"),
        }
    }
}

impl fmt::Display for VmmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Clean => "guest reset or shutdown requested",
            Self::Error => "husk-vmm error",
            Self::BadConfig => "invalid configuration",
            Self::TripleFault => "guest triple fault",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_both_ways() {
        for e in [
            VmmExit::Clean,
            VmmExit::Error,
            VmmExit::BadConfig,
            VmmExit::TripleFault,
        ] {
            assert_eq!(VmmExit::from_code(e.code()), Some(e));
        }
        assert_eq!(VmmExit::TripleFault.code(), 3);
        assert_eq!(VmmExit::from_code(4), None);
        assert_eq!(VmmExit::from_code(-1), None);
    }

    #[test]
    fn statuses_are_described() {
        // Wait statuses as waitpid reports them: code << 8, or the signal number.
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(
            VmmExit::describe(exited(3)),
            "husk-vmm exited with status 3 (guest triple fault)"
        );
        assert_eq!(VmmExit::from_status(exited(0)), Some(VmmExit::Clean));
        assert_eq!(
            VmmExit::describe(exited(42)),
            "husk-vmm exited with status 42"
        );
        assert_eq!(
            VmmExit::describe(ExitStatus::from_raw(9)),
            "husk-vmm was killed by signal 9"
        );
        assert_eq!(VmmExit::from_status(ExitStatus::from_raw(9)), None);
    }
}
