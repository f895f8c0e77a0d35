//! Virtio devices on the virtio-mmio transport.

pub mod fs;
pub mod mmio;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Device type ids (virtio spec 5).
pub mod device_type {
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// Errors when a device is activated by the driver.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up queues that do not fit guest memory or are not ready.
    #[error("queue {0} is not valid")]
    InvalidQueue(usize),
    /// The vhost-user backend refused the configuration.
    #[error("vhost-user backend: {0}")]
    Vhost(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The interrupt line of one virtio-mmio device: a status register and an irqfd.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    /// When set, the VRING bit always reads as set. Used for vhost-user devices whose
    /// backend signals the irqfd directly, without going through the VMM.
    sticky_vring: bool,
}

impl Interrupt {
    /// Wraps the irqfd `evt`.
    pub fn new(evt: EventFd, sticky_vring: bool) -> Self {
        Self {
            status: AtomicU32::new(0),
            evt,
            sticky_vring,
        }
    }

    /// Sets `bits` in the status register and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("raising virtio interrupt: {e}");
        }
    }

    /// Reports a used-ring update.
    pub fn signal_used_queue(&self) {
        self.trigger(VIRTIO_MMIO_INT_VRING);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        let s = self.status.load(Ordering::SeqCst);
        if self.sticky_vring {
            s | VIRTIO_MMIO_INT_VRING
        } else {
            s
        }
    }

    /// The InterruptACK register.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A virtio device behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// Virtio device id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Records the feature bits the driver accepted (a subset of the offered ones).
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space; out-of-range reads leave `data` unchanged.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The eventfds that the transport registers as ioeventfds on QueueNotify, one per queue.
    fn queue_events(&self) -> &[EventFd];
    /// Whether the interrupt status must always show the VRING bit (vhost-user).
    fn sticky_vring_interrupt(&self) -> bool {
        false
    }
    /// Starts the device once the driver sets DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops the device after the driver wrote 0 to Status.
    fn reset(&mut self) {}
}

/// Copies `src[offset..]` into `data` when in range; used by `read_config` implementations.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if let Some(end) = off.checked_add(data.len()) {
        if end <= src.len() {
            data.copy_from_slice(&src[off..end]);
        }
    }
}
