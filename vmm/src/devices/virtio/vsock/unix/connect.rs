//! Non-blocking connects to the host-side unix sockets `<vsock socket>_<port>`.
//!
//! The muxer connects when the guest asks for a connection, on the event loop: a blocking
//! connect to a listener whose backlog is full would stall every device until the host
//! program accepted, and the guest decides when to ask. A non-blocking unix-socket connect
//! either completes at once or fails at once (`EAGAIN` for a full backlog), so there is no
//! pending state to track: every failure is a refusal, answered with an RST.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A `sockaddr_un` for `path` and its length.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path empty, too long or with a NUL",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects a new non-blocking stream socket to `path`, without ever waiting: a listener
/// with a full backlog gives `WouldBlock`, a missing one `NotFound` or `ConnectionRefused`.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: socket takes integer arguments only.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = UnixStream::from(fd);
    // SAFETY: `addr` is a valid sockaddr_un of length `len`, alive across the call.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            std::ptr::addr_of!(addr).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn connects_and_the_stream_is_non_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_5000");
        let listener = UnixListener::bind(&path).unwrap();
        let mut c = connect_nonblocking(&path).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        let err = c.read(&mut b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    }

    #[test]
    fn missing_listener_and_bad_paths_fail() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_nonblocking(&dir.path().join("none")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let long = dir.path().join("x".repeat(200));
        let err = connect_nonblocking(&long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn full_backlog_fails_at_once_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_5001");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen on our own socket; a backlog of 0 admits one pending connection.
        assert_eq!(
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) },
            0
        );
        // Connect on another thread, so that a blocking connect fails the test instead of
        // hanging it. Nothing ever accepts.
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for _ in 0..8 {
                match connect_nonblocking(&p) {
                    Ok(s) => kept.push(s),
                    Err(e) => {
                        let _ = tx.send((kept.len(), e.kind()));
                        return;
                    }
                }
            }
        });
        let (connected, kind) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("connect waited for the full backlog");
        assert!(connected >= 1, "the backlog took no connection");
        assert_eq!(kind, io::ErrorKind::WouldBlock);
        drop(listener);
    }
}
