//! Process file descriptors (`pidfd_open(2)`): a handle on one process that a recycled pid
//! cannot fake. A signal sent through it reaches that process or fails with `ESRCH`, and
//! it becomes readable when the process exits, so a watcher can block on it in `poll(2)`
//! instead of polling `waitpid`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Errors opening or signalling through a pidfd.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    /// The pid does not fit `pid_t` or is not a real process (0, 1).
    #[error("pid {0} cannot be opened")]
    BadPid(u32),
    /// `pidfd_open` failed (`ESRCH`: the process is gone).
    #[error("pidfd_open({pid}): {source}")]
    Open {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `pidfd_send_signal` failed (`ESRCH`: the process has exited).
    #[error("pidfd_send_signal({pid}, {signal}): {source}")]
    Signal {
        /// The pid.
        pid: u32,
        /// The signal.
        signal: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open pidfd.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`. The process must still exist (a zombie counts): a child
    /// of this process that has not been reaped yet can always be opened.
    pub fn open(pid: u32) -> Result<PidFd, PidfdError> {
        let raw = libc::pid_t::try_from(pid).map_err(|_| PidfdError::BadPid(pid))?;
        if raw <= 1 {
            return Err(PidfdError::BadPid(pid));
        }
        // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor
        // or -1; no memory is passed.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if ret < 0 {
            return Err(PidfdError::Open {
                pid,
                source: io::Error::last_os_error(),
            });
        }
        let fd = i32::try_from(ret).map_err(|_| PidfdError::BadPid(pid))?;
        // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { fd, pid })
    }

    /// The pid it was opened for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to exactly this process.
    pub fn send_signal(&self, signal: i32) -> Result<(), PidfdError> {
        // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number, a null
        // siginfo (the kernel fills in the default) and flags 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            return Err(PidfdError::Signal {
                pid: self.pid,
                signal,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the process has exited (the pidfd is readable), without blocking.
    pub fn exited(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        n > 0 && fds[0].revents != 0
    }
}

impl From<PidFd> for OwnedFd {
    fn from(p: PidFd) -> OwnedFd {
        p.fd
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let fd = PidFd::open(child.id()).expect("pidfd");
        assert!(!fd.exited());
        fd.send_signal(libc::SIGKILL).expect("kill");
        crate::testing::wait_until("the pidfd to turn readable", || fd.exited());
        let _ = child.wait();
    }

    #[test]
    fn init_and_absurd_pids_are_refused() {
        assert!(matches!(PidFd::open(1), Err(PidfdError::BadPid(1))));
        assert!(matches!(PidFd::open(u32::MAX), Err(PidfdError::BadPid(_))));
    }
}
