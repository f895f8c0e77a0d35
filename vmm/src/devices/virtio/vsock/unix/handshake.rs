//! Parser of the host-side `CONNECT <port>\n` line.

/// Longest accepted handshake line, newline included.
pub const MAX_HANDSHAKE_LEN: usize = 32;

/// Why a handshake line was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// No newline within [`MAX_HANDSHAKE_LEN`] bytes.
    #[error("handshake line too long")]
    TooLong,
    /// The line is not `CONNECT <port>`.
    #[error("expected \"CONNECT <port>\", got {0:?}")]
    Malformed(String),
    /// The port is not a decimal u32.
    #[error("bad port {0:?}")]
    BadPort(String),
}

/// Parses the bytes received so far. Returns `Ok(None)` when the line is incomplete, or
/// `Ok(Some((port, consumed)))` with the number of bytes of the line including `\n`.
pub fn parse_connect(buf: &[u8]) -> Result<Option<(u32, usize)>, HandshakeError> {
    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_HANDSHAKE_LEN {
            Err(HandshakeError::TooLong)
        } else {
            Ok(None)
        };
    };
    if nl + 1 > MAX_HANDSHAKE_LEN {
        return Err(HandshakeError::TooLong);
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line)
        .map_err(|_| HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned()))?;
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| HandshakeError::Malformed(text.to_string()))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HandshakeError::BadPort(port.to_string()));
    }
    let port: u32 = port
        .parse()
        .map_err(|_| HandshakeError::BadPort(port.to_string()))?;
    Ok(Some((port, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Ok(Some((1024, 13))));
        assert_eq!(parse_connect(b"CONNECT 0\r\nrest"), Ok(Some((0, 11))));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295\n"),
            Ok(Some((u32::MAX, 19)))
        );
    }

    #[test]
    fn incomplete_lines_wait() {
        assert_eq!(parse_connect(b""), Ok(None));
        assert_eq!(parse_connect(b"CONN"), Ok(None));
        assert_eq!(parse_connect(b"CONNECT 10"), Ok(None));
    }

    #[test]
    fn bad_lines() {
        assert!(matches!(
            parse_connect(b"connect 1\n"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT\n"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_connect(b"\n"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT \n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT -1\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT +1\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT 1 2\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT 4294967296\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT \xff\n"),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(parse_connect(&[b'A'; 64]), Err(HandshakeError::TooLong));
        let mut long = b"CONNECT ".to_vec();
        long.extend([b'0'; 30]);
        long.push(b'\n');
        assert_eq!(parse_connect(&long), Err(HandshakeError::TooLong));
    }
}
