//! Framing of the control API: one JSON object per line, each line at most [`MAX_LINE`]
//! bytes with its newline, so that neither side buffers without bound what the other sends.

use std::io::{BufRead, Read};

/// Longest line either side accepts, newline included.
pub const MAX_LINE: usize = 4096;

/// Why no line was read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before a line started.
    #[error("connection closed")]
    Closed,
    /// The line is longer than [`MAX_LINE`] or ends without a newline.
    #[error("line too long or not terminated (max {MAX_LINE} bytes)")]
    TooLong,
    /// Reading failed (including a read timeout).
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one line, without its newline.
pub fn read_line(r: &mut impl BufRead) -> Result<String, FrameError> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if buf.pop() != Some(b'\n') {
        return Err(FrameError::TooLong);
    }
    // Invalid UTF-8 becomes U+FFFD and then fails JSON parsing with a clear message.
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_eof_and_overlong() {
        let mut r = std::io::Cursor::new(b"a\nbc\n".to_vec());
        assert_eq!(read_line(&mut r).unwrap(), "a");
        assert_eq!(read_line(&mut r).unwrap(), "bc");
        assert!(matches!(read_line(&mut r), Err(FrameError::Closed)));
        let mut long = vec![b'x'; MAX_LINE];
        long.push(b'\n');
        assert!(matches!(
            read_line(&mut std::io::Cursor::new(long)),
            Err(FrameError::TooLong)
        ));
        let mut fits = vec![b'x'; MAX_LINE - 1];
        fits.push(b'\n');
        assert_eq!(
            read_line(&mut std::io::Cursor::new(fits)).unwrap().len(),
            MAX_LINE - 1
        );
        assert!(matches!(
            read_line(&mut std::io::Cursor::new(b"no newline".to_vec())),
            Err(FrameError::TooLong)
        ));
    }
}
