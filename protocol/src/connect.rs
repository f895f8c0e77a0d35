//! Connecting to the agent: a plain unix socket, or the VMM's hybrid vsock socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Errors while establishing a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Socket I/O failed.
    #[error("connect {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hybrid vsock handshake got something other than `OK <port>`.
    #[error("hybrid vsock handshake on {path}: unexpected reply {reply:?}")]
    Handshake {
        /// The socket path.
        path: String,
        /// What came back.
        reply: String,
    },
    /// ttrpc could not take over the stream.
    #[error("ttrpc client: {0}")]
    Ttrpc(#[source] ttrpc::Error),
}

/// Longest handshake reply accepted ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 32;

/// Connects to guest vsock `port` through the VMM's hybrid vsock unix socket `uds`:
/// writes `CONNECT <port>\n`, expects `OK <host_port>\n`, and returns the stream, which is
/// from then on the guest port. The reply is read byte by byte so no payload is consumed.
pub fn hybrid_vsock_connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let io = |source| ConnectError::Io {
        path: uds.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(uds).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).map_err(io)?;
        if n == 0 || reply.len() >= MAX_REPLY {
            return Err(ConnectError::Handshake {
                path: uds.display().to_string(),
                reply: String::from_utf8_lossy(&reply).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let ok = text
        .strip_prefix("OK ")
        .is_some_and(|p| p.trim().parse::<u32>().is_ok());
    if !ok {
        return Err(ConnectError::Handshake {
            path: uds.display().to_string(),
            reply: text,
        });
    }
    stream.set_read_timeout(None).map_err(io)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut line = [0u8; 13];
                let _ = s.read_exact(&mut line);
                assert_eq!(&line, b"CONNECT 1024\n");
                let _ = s.write_all(reply);
                let _ = s.write_all(b"payload");
            }
        });
        (dir, path)
    }

    #[test]
    fn handshake_ok_leaves_payload_unread() {
        let (_dir, path) = serve_once(b"OK 1073741824\n");
        let mut s = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).expect("connect");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).expect("payload");
        assert_eq!(&buf, b"payload");
    }

    #[test]
    fn handshake_refused_is_typed() {
        let (_dir, path) = serve_once(b"NO\n");
        let err = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
    }
}
