//! Time limits on host-initiated streams that have not finished opening: a
//! client that never sends its `CONNECT` line, or a guest that never answers
//! the connection request (nothing listening and no RST either, or a guest
//! that hangs). Without them such streams would hold their slot, and keep
//! their client waiting, for the life of the VM.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Instant;

/// A stream on its way to being connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opening {
    /// Accepted; its `CONNECT <port>` line has not arrived yet.
    Handshake(RawFd),
    /// REQUEST sent to the guest for (host port, guest port); no answer yet.
    Connect(u32, u32),
}

/// When each opening stream must be done by.
#[derive(Debug, Default)]
pub struct Deadlines {
    due: HashMap<Opening, Instant>,
}

impl Deadlines {
    /// `what` must be done opening by `due`.
    pub fn start(&mut self, what: Opening, due: Instant) {
        self.due.insert(what, due);
    }

    /// `what` is no longer opening (done, or gone).
    pub fn finish(&mut self, what: Opening) {
        self.due.remove(&what);
    }

    /// Removes and returns everything due at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Opening> {
        let expired: Vec<Opening> = self
            .due
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(what, _)| *what)
            .collect();
        for what in &expired {
            self.due.remove(what);
        }
        expired
    }

    /// The earliest deadline, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_only_what_is_due_and_not_finished() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.start(Opening::Handshake(7), t0 + Duration::from_secs(1));
        d.start(Opening::Connect(1 << 30, 1024), t0 + Duration::from_secs(3));
        d.start(Opening::Connect(1 << 30, 1025), t0 + Duration::from_secs(2));
        assert_eq!(d.next_due(), Some(t0 + Duration::from_secs(1)));

        d.finish(Opening::Connect(1 << 30, 1025));
        assert!(d.take_expired(t0).is_empty());
        assert_eq!(
            d.take_expired(t0 + Duration::from_secs(2)),
            [Opening::Handshake(7)]
        );
        assert_eq!(d.next_due(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(
            d.take_expired(t0 + Duration::from_secs(10)),
            [Opening::Connect(1 << 30, 1024)]
        );
        assert_eq!(d.next_due(), None);
    }
}
