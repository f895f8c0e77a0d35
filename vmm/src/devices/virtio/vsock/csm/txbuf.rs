//! Bounded buffer for guest data the host socket could not take yet.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};

/// A FIFO of bytes with a hard capacity.
#[derive(Debug)]
pub struct TxBuf {
    buf: VecDeque<u8>,
    cap: usize,
}

impl TxBuf {
    /// An empty buffer holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            cap,
        }
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `data`; false (and nothing appended) if it does not fit.
    pub fn push(&mut self, data: &[u8]) -> bool {
        if self.buf.len() + data.len() > self.cap {
            return false;
        }
        self.buf.extend(data);
        true
    }

    /// Writes as much as `w` accepts without blocking; returns the bytes written.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.buf.is_empty() {
            let (front, _) = self.buf.as_slices();
            match w.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.buf.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Limited(Vec<u8>, usize);
    impl Write for Limited {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.1 == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.1);
            self.1 -= n;
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_and_partial_flush() {
        let mut t = TxBuf::new(8);
        assert!(t.push(b"hello"));
        assert!(!t.push(b"world"));
        assert!(t.push(b"abc"));
        let mut w = Limited(vec![], 4);
        assert_eq!(t.flush_to(&mut w).unwrap(), 4);
        assert_eq!(t.len(), 4);
        w.1 = 100;
        assert_eq!(t.flush_to(&mut w).unwrap(), 4);
        assert!(t.is_empty());
        assert_eq!(w.0, b"helloabc");
    }
}
