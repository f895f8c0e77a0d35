//! `lo` up in every network namespace the agent creates.
//!
//! On a host, CNI's `loopback` plugin brings `lo` up in a pod's network namespace before
//! the runtime is called, and containers rely on it (two containers of a pod talk over
//! `localhost`). In the guest the pod's network namespace is a fresh one the agent makes
//! for the sandbox container, where `lo` starts down: the agent does what the loopback
//! plugin did.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::{Result, SetupError};

/// Sets `IFF_UP` on `lo` in the current network namespace.
pub fn bring_up() -> Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(SetupError::Sys("socket for lo".into(), Errno::last()));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (a name and a union of integers): all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into `req`,
    // which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(SetupError::Sys("SIOCGIFFLAGS lo".into(), Errno::last()));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(SetupError::Sys("SIOCSIFFLAGS lo".into(), Errno::last()));
    }
    Ok(())
}
