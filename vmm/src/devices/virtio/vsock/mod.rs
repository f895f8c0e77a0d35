//! virtio-vsock with a host-side backend.
//!
//! Layout follows Firecracker: `packet` (wire format), `device` (queues, generic over its
//! backend), `event_handler` (epoll glue), `unix/` (the hybrid-vsock backend, a multiplexer
//! of unix sockets) and `csm/` (the per-connection state machine).

pub mod csm;
pub mod device;
pub mod event_handler;
pub mod packet;
#[cfg(test)]
mod packet_props;
pub mod unix;

use std::os::fd::AsRawFd;

pub use device::VsockDevice;
pub use packet::{VsockHeader, VsockPacket};
use vmm_sys_util::epoll::EventSet;

/// CID of the host.
pub const VSOCK_HOST_CID: u64 = 2;
/// Queue indices.
pub const RXQ: usize = 0;
/// Guest -> host queue.
pub const TXQ: usize = 1;
/// Event queue (unused: no transport resets).
pub const EVQ: usize = 2;
/// Queue size of all three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload accepted in one packet from the guest.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// Operations (virtio spec 5.10.6).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// Half or full shutdown.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Ask the peer for credit information.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `type` field: stream sockets only.
pub const VSOCK_TYPE_STREAM: u16 = 1;
/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The data path between the device and a backend.
pub trait VsockChannel {
    /// Produces the next packet for the guest, with at most `max_payload` data bytes, or
    /// `None` when nothing is pending.
    fn recv_pkt(&mut self, max_payload: usize) -> Option<VsockPacket>;
    /// Consumes one packet sent by the guest.
    fn send_pkt(&mut self, pkt: VsockPacket);
    /// Whether `recv_pkt` has something to deliver.
    fn has_pending_rx(&self) -> bool;
}

/// A vsock backend: a channel plus an epoll fd the VMM's event loop watches.
pub trait VsockBackend: VsockChannel + AsRawFd + Send {
    /// Called when the backend's fd is readable: handle host-side events.
    fn notify(&mut self, evset: EventSet);
}
