//! The muxer's bounded queue of what waits for guest rx buffers.
//!
//! The guest decides how fast rx buffers come back, and it can make the muxer answer (an RST
//! for every packet to an unknown port or connection) faster than it takes the answers. An
//! unbounded queue would let a hostile guest grow host memory without limit (design §9), so
//! this one has a fixed size, as Firecracker's muxer rx queue has:
//!
//! - a control packet (an RST) that does not fit is dropped and counted. Only the guest loses:
//!   its own socket is not told of a reset, which its connect timeout or the connection's
//!   next packet (answered by another RST) settles;
//! - a connection that has something to send and does not fit is not lost: the queue notes
//!   that it is out of sync, and once it has drained the muxer rescans its connections
//!   for pending rx (a connection is queued at most once, see `Connection::in_rxq`).

use std::collections::VecDeque;

use crate::devices::virtio::vsock::packet::VsockHeader;
use crate::devices::virtio::vsock::QUEUE_SIZE;

/// Items the queue holds at most. One virtio rx queue's worth: the guest cannot take more
/// packets than it has rx descriptors before it must come back, so holding more buys
/// nothing but memory. At about 48 bytes an item this is 12 KiB, allocated once.
pub const MUXER_RXQ_SIZE: usize = QUEUE_SIZE as usize;

/// (host port, guest port).
pub type ConnKey = (u32, u32);

/// One thing waiting for a guest rx buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxItem {
    /// A control packet not tied to a live connection (an RST).
    Raw(VsockHeader),
    /// A connection with something to send.
    Conn(ConnKey),
}

/// A FIFO of at most [`MUXER_RXQ_SIZE`] items.
#[derive(Debug)]
pub struct RxQueue {
    items: VecDeque<RxItem>,
    /// False once a connection did not fit: the muxer must rescan its connections.
    synced: bool,
    dropped: u64,
}

impl Default for RxQueue {
    fn default() -> Self {
        Self {
            items: VecDeque::with_capacity(MUXER_RXQ_SIZE),
            synced: true,
            dropped: 0,
        }
    }
}

impl RxQueue {
    /// Queues control packet `hdr`; false if the queue is full and it was dropped.
    pub fn push_raw(&mut self, hdr: VsockHeader) -> bool {
        if self.items.len() >= MUXER_RXQ_SIZE {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.items.push_back(RxItem::Raw(hdr));
        true
    }

    /// Queues connection `key`; false if the queue is full, in which case the queue is out
    /// of sync until [`mark_synced`](Self::mark_synced).
    pub fn push_conn(&mut self, key: ConnKey) -> bool {
        if self.items.len() >= MUXER_RXQ_SIZE {
            self.synced = false;
            return false;
        }
        self.items.push_back(RxItem::Conn(key));
        true
    }

    /// The oldest item.
    pub fn pop(&mut self) -> Option<RxItem> {
        self.items.pop_front()
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a connection was turned away since the last rescan.
    pub fn needs_rescan(&self) -> bool {
        !self.synced
    }

    /// Called when a rescan starts: connections turned away from now on mark it again.
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    /// Items the queue has room for without reallocating (tests check it never grows).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Control packets dropped because the queue was full, since it was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 2,
            dst_cid: 3,
            src_port: port,
            dst_port: port,
            len: 0,
            type_: 1,
            op: 3,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn full_queue_drops_control_packets_and_defers_connections() {
        let mut q = RxQueue::default();
        for i in 0..MUXER_RXQ_SIZE as u32 {
            assert!(q.push_raw(hdr(i)));
        }
        assert!(!q.push_raw(hdr(9999)));
        assert!(!q.push_raw(hdr(9999)));
        assert_eq!(q.dropped(), 2);
        assert!(!q.needs_rescan());
        assert!(!q.push_conn((1, 2)));
        assert!(q.needs_rescan());
        assert_eq!(q.len(), MUXER_RXQ_SIZE);
        // FIFO: the first queued comes out first; the dropped ones never do.
        assert_eq!(q.pop(), Some(RxItem::Raw(hdr(0))));
        assert!(q.push_conn((1, 2)));
        q.mark_synced();
        assert!(!q.needs_rescan());
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest.len(), MUXER_RXQ_SIZE);
        assert_eq!(rest.last(), Some(&RxItem::Conn((1, 2))));
        assert!(!rest.contains(&RxItem::Raw(hdr(9999))));
        assert!(q.is_empty());
    }
}
