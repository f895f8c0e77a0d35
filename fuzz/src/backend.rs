//! A vsock backend that records what the device hands it and replays scripted packets, so
//! a target can drive the device's queue processing without sockets.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use husk_vmm::devices::virtio::vsock::{VsockBackend, VsockChannel, VsockPacket};
use vmm_sys_util::epoll::EventSet;

/// Scripted packets for the guest; packets from the guest are counted, not kept.
#[derive(Debug, Default)]
pub struct ScriptedBackend {
    /// What the device will deliver to the guest, in order.
    pub to_guest: VecDeque<VsockPacket>,
    /// Packets the device took from the guest's tx queue.
    pub sent: usize,
}

impl VsockChannel for ScriptedBackend {
    fn recv_pkt(&mut self, max_payload: usize) -> Option<VsockPacket> {
        let mut p = self.to_guest.pop_front()?;
        // The device promises room for `max_payload`; a backend honours it, as the muxer does.
        p.data.truncate(max_payload);
        p.hdr.len = p.data.len() as u32;
        Some(p)
    }

    fn send_pkt(&mut self, pkt: VsockPacket) {
        assert_eq!(pkt.hdr.len as usize, pkt.data.len(), "device broke hdr.len");
        self.sent += 1;
    }

    fn has_pending_rx(&self) -> bool {
        !self.to_guest.is_empty()
    }
}

impl AsRawFd for ScriptedBackend {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl VsockBackend for ScriptedBackend {
    fn notify(&mut self, _: EventSet) {}
}
