//! The terminal of a container process, allocated in the container's own devpts (as runc
//! does), so the process sees itself on `/dev/pts/N` of its own `/dev/pts` and `tty`
//! names it. The setup process opens the pair, makes the slave its fds 0-2 and reports
//! the master's descriptor number; the agent takes the master with `pidfd_getfd(2)`
//! before it sends the start byte.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;

use super::{Result, SetupError};

/// Opens a pseudo terminal in the devpts instance mounted at `devpts` and makes its
/// slave this process's stdin, stdout and stderr. Returns the master (close-on-exec), or
/// `None` when no devpts is mounted there (the agent's own terminal is kept then).
pub fn attach(devpts: &Path) -> Result<Option<OwnedFd>> {
    let ptmx = devpts.join("ptmx");
    if !ptmx.exists() {
        return Ok(None);
    }
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)
        .map_err(|e| SetupError::Io(format!("open {ptmx:?}"), e))?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call; fd is the master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } < 0 {
        return Err(SetupError::Sys("unlock pty".into(), Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if slave < 0 {
        return Err(SetupError::Sys("open pty slave".into(), Errno::last()));
    }
    // SAFETY: slave is a new descriptor nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(SetupError::Sys("dup2 pty slave".into(), Errno::last()));
        }
    }
    Ok(Some(OwnedFd::from(master)))
}
