//! A device with virtio-fs's guest-visible shape, for the transport target: a request
//! queue plus the hiprio queue, a 40-byte config space, a sticky VRING interrupt, and an
//! `activate` that refuses invalid queues, as `FsDevice` does before handing them to
//! virtiofsd. (The fs data path itself runs in virtiofsd, not in husk-vmm.)

use std::sync::Arc;

use husk_vmm::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use husk_vmm::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// virtio-fs's device id.
const FS_DEVICE_ID: u32 = 26;

/// The stand-in device.
pub struct FsLike {
    evts: Vec<EventFd>,
    config: [u8; 40],
    /// Queues handed over by the last activation.
    pub activated: Option<Vec<Queue>>,
}

impl FsLike {
    /// Two queues of up to 1024 entries, like the shim's default virtio-fs device.
    pub fn new() -> Self {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut config = [0u8; 40];
        config[..4].copy_from_slice(b"fuzz");
        config[36..].copy_from_slice(&1u32.to_le_bytes());
        Self {
            evts: vec![evt(), evt()],
            config,
            activated: None,
        }
    }
}

impl Default for FsLike {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for FsLike {
    fn device_type(&self) -> u32 {
        FS_DEVICE_ID
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[1024, 1024]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 28 | 1 << 29
    }
    fn ack_features(&mut self, _: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn sticky_vring_interrupt(&self) -> bool {
        true
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if let Some(i) = queues.iter().position(|q| !q.ready() || !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.activated = Some(queues);
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
    }
}
