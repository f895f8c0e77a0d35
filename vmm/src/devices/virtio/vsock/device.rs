//! The virtio-vsock device: moves packets between its three queues and a backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{read_from_chain, rx_capacity, write_to_chain};
use super::{VsockBackend, EVQ, QUEUE_SIZE, RXQ, TXQ};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use crate::metrics::Metrics;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A vsock device generic over its backend, so tests can plug in another one.
pub struct VsockDevice<B: VsockBackend> {
    cid: u64,
    backend: B,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    acked_features: u64,
    active: Option<Active>,
    metrics: Arc<Metrics>,
}

impl<B: VsockBackend> VsockDevice<B> {
    /// A device for guest `cid` using `backend`.
    pub fn new(cid: u64, backend: B, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK);
        Ok(Self {
            cid,
            backend,
            queue_evts: vec![evt()?, evt()?, evt()?],
            activate_evt: evt()?,
            acked_features: 0,
            active: None,
            metrics,
        })
    }

    /// Written once when the driver activates the device.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Drains the guest's tx queue into the backend. Returns true if used entries were added.
    pub fn process_tx(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = a.queues[TXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let pkt = read_from_chain(&a.mem, chain);
            if let Err(e) = a.queues[TXQ].add_used(&a.mem, head, 0) {
                crate::guest_warn!("vsock: tx add_used: {e}");
            }
            used = true;
            match pkt {
                Ok(p) => self.backend.send_pkt(p),
                Err(e) => {
                    crate::guest_warn!("vsock: dropping a malformed tx packet: {e}");
                    self.metrics.guest_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        used
    }

    /// Fills the guest's rx queue from the backend. Returns true if used entries were added.
    pub fn process_rx(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while self.backend.has_pending_rx() {
            let Some(chain) = a.queues[RXQ].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match rx_capacity(&a.mem, chain.clone()) {
                Ok(cap) => match self.backend.recv_pkt(cap) {
                    Some(pkt) => match write_to_chain(&a.mem, chain, &pkt) {
                        Ok(n) => n,
                        Err(e) => {
                            crate::guest_warn!("vsock: lost rx packet: {e}");
                            0
                        }
                    },
                    None => {
                        a.queues[RXQ].go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    crate::guest_warn!("vsock: bad rx buffer: {e}");
                    self.metrics.guest_errors.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if let Err(e) = a.queues[RXQ].add_used(&a.mem, head, len) {
                crate::guest_warn!("vsock: rx add_used: {e}");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        used
    }

    /// Guest kicked the rx queue (new buffers).
    pub fn handle_rxq_event(&mut self) {
        let _ = self.queue_evts[RXQ].read();
        self.process_rx();
    }

    /// Guest kicked the tx queue.
    pub fn handle_txq_event(&mut self) {
        let _ = self.queue_evts[TXQ].read();
        self.process_tx();
        self.process_rx();
    }

    /// Guest kicked the event queue (buffers we never use).
    pub fn handle_evq_event(&mut self) {
        let _ = self.queue_evts[EVQ].read();
    }

    /// The backend's fd is readable.
    pub fn handle_backend_event(&mut self, ev: vmm_sys_util::epoll::EventSet) {
        self.backend.notify(ev);
        self.process_rx();
    }

    /// The device was activated: deliver what the backend queued meanwhile.
    pub fn handle_activate_event(&mut self) {
        let _ = self.activate_evt.read();
        self.process_tx();
        self.process_rx();
    }
}

impl<B: VsockBackend> VirtioDevice for VsockDevice<B> {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::Other(format!(
                "{} queues, want 3",
                queues.len()
            )));
        }
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::InvalidQueue(i));
            }
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        let _ = self.activate_evt.write(1);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket, HDR_SIZE};
    use crate::devices::virtio::vsock::{op, VsockChannel, VSOCK_HOST_CID};
    use crate::memory::anonymous_memory;
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, RawFd};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// Records what the device sends and replays scripted packets.
    #[derive(Default)]
    struct TestBackend {
        sent: Vec<VsockPacket>,
        to_guest: VecDeque<VsockPacket>,
        evt: Option<EventFd>,
    }
    impl VsockChannel for TestBackend {
        fn recv_pkt(&mut self, max: usize) -> Option<VsockPacket> {
            let mut p = self.to_guest.pop_front()?;
            p.data.truncate(max);
            p.hdr.len = p.data.len() as u32;
            Some(p)
        }
        fn send_pkt(&mut self, pkt: VsockPacket) {
            self.sent.push(pkt);
        }
        fn has_pending_rx(&self) -> bool {
            !self.to_guest.is_empty()
        }
    }
    impl AsRawFd for TestBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.evt.as_ref().map_or(-1, |e| e.as_raw_fd())
        }
    }
    impl VsockBackend for TestBackend {
        fn notify(&mut self, _: vmm_sys_util::epoll::EventSet) {}
    }

    fn hdr(op: u16, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: VSOCK_HOST_CID,
            src_port: 1,
            dst_port: 2,
            len,
            type_: 1,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    /// Builds a device whose three queues are mock queues in `mem`.
    fn device<'a>(
        mem: &'a GuestMemoryMmap,
    ) -> (
        VsockDevice<TestBackend>,
        Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
        Arc<Interrupt>,
    ) {
        let mut dev =
            VsockDevice::new(3, TestBackend::default(), Arc::new(Metrics::default())).unwrap();
        let mocks: Vec<_> = (0..3u64)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x10000), 16))
            .collect();
        let queues = mocks
            .iter()
            .map(|m| m.create_queue::<Queue>().unwrap())
            .collect();
        let irq = Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            false,
        ));
        dev.activate(mem.clone(), queues, irq.clone()).unwrap();
        (dev, mocks, irq)
    }

    #[test]
    fn tx_packets_reach_backend() {
        let mem = anonymous_memory(16 << 20);
        let (mut dev, mocks, irq) = device(&mem);
        // Header and payload split over two descriptors.
        mem.write_slice(&hdr(op::RW, 5).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x20_0000)).unwrap();
        mocks[TXQ]
            .build_desc_chain(&[desc(0x10_0000, HDR_SIZE as u32, 0), desc(0x20_0000, 5, 0)])
            .unwrap();
        assert!(dev.process_tx());
        assert_eq!(dev.backend.sent.len(), 1);
        assert_eq!(dev.backend.sent[0].data, b"hello");
        assert_eq!(dev.backend.sent[0].hdr.op, op::RW);
        assert_eq!(irq.status(), 1);
        assert_eq!(mocks[TXQ].used().idx().load(), 1);
    }

    #[test]
    fn malformed_tx_chains_are_consumed_not_fatal() {
        let mem = anonymous_memory(16 << 20);
        let (mut dev, mocks, _) = device(&mem);
        // Too short for a header.
        mocks[TXQ]
            .build_desc_chain(&[desc(0x10_0000, 10, 0)])
            .unwrap();
        assert!(dev.process_tx());
        // Length larger than the buffer.
        mem.write_slice(&hdr(op::RW, 4000).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mocks[TXQ]
            .add_desc_chains(&[desc(0x10_0000, HDR_SIZE as u32 + 10, 0)], 1)
            .unwrap();
        assert!(dev.process_tx());
        // Address outside guest memory.
        mocks[TXQ]
            .add_desc_chains(&[desc(0xffff_ff00_0000, 64, 0)], 2)
            .unwrap();
        dev.process_tx();
        assert!(dev.backend.sent.is_empty());
        assert_eq!(mocks[TXQ].used().idx().load(), 3);
        assert_eq!(dev.metrics.guest_errors.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn rx_packets_fill_guest_buffers_and_wait_for_more() {
        let mem = anonymous_memory(16 << 20);
        let (mut dev, mocks, irq) = device(&mem);
        let mut p = VsockPacket {
            hdr: hdr(op::RW, 3),
            data: b"abc".to_vec(),
        };
        p.hdr.src_cid = VSOCK_HOST_CID;
        dev.backend.to_guest.push_back(p.clone());
        dev.backend.to_guest.push_back(p);
        // No rx buffers yet: nothing happens, the packet waits.
        assert!(!dev.process_rx());
        assert_eq!(dev.backend.to_guest.len(), 2);
        mocks[RXQ]
            .build_desc_chain(&[desc(0x30_0000, 4096, VRING_DESC_F_WRITE)])
            .unwrap();
        assert!(dev.process_rx());
        assert_eq!(dev.backend.to_guest.len(), 1);
        let mut h = [0u8; HDR_SIZE];
        mem.read_slice(&mut h, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(VsockHeader::from_bytes(&h).op, op::RW);
        let mut d = [0u8; 3];
        mem.read_slice(&mut d, GuestAddress(0x30_0000 + HDR_SIZE as u64))
            .unwrap();
        assert_eq!(&d, b"abc");
        let used = mocks[RXQ].used();
        assert_eq!(used.idx().load(), 1);
        assert_eq!(irq.status(), 1);
    }

    #[test]
    fn read_only_rx_buffer_is_rejected() {
        let mem = anonymous_memory(16 << 20);
        let (mut dev, mocks, _) = device(&mem);
        dev.backend.to_guest.push_back(VsockPacket {
            hdr: hdr(op::RST, 0),
            data: vec![],
        });
        mocks[RXQ]
            .build_desc_chain(&[desc(0x30_0000, 4096, 0)])
            .unwrap();
        assert!(dev.process_rx());
        // The packet was not consumed; the bad buffer was returned with length 0.
        assert_eq!(dev.backend.to_guest.len(), 1);
        assert_eq!(dev.metrics.guest_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn config_space_is_the_cid() {
        let dev =
            VsockDevice::new(0x1234, TestBackend::default(), Arc::new(Metrics::default())).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1234);
        let mut b = [0xaau8; 4];
        dev.read_config(6, &mut b); // crosses the end: ignored
        assert_eq!(b, [0xaa; 4]);
        assert_eq!(dev.device_type(), 19);
        assert!(!dev.is_active());
    }
}
