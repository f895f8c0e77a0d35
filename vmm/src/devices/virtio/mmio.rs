//! The virtio-mmio transport (virtio 1.x "modern" register layout).

use husk_lock::MutexExt;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMemoryMmap;

/// Offset of the QueueNotify register, where ioeventfds are registered.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits.
mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Locks a device, recovering from poisoning.
fn locked(dev: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.locked()
}

/// One virtio-mmio window: registers, queue setup and the device behind it.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    device_status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is the irqfd registered for this device's GSI.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq_evt: EventFd,
    ) -> Self {
        let (queues, sticky) = {
            let d = locked(&device);
            (Self::make_queues(&*d), d.sticky_vring_interrupt())
        };
        Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq_evt, sticky)),
            queues,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            device_status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    fn make_queues(d: &dyn VirtioDevice) -> Vec<Queue> {
        d.queue_max_sizes()
            .iter()
            .filter_map(|s| Queue::new(*s).ok())
            .collect()
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated {
            // Queue registers are read-only once the device runs.
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn selected_queue_ref(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            locked(&self.device).reset();
        }
        self.queues = Self::make_queues(&*locked(&self.device));
        self.activated = false;
        self.device_status = 0;
        self.acked_features = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, val: u32) {
        use status::*;
        if val == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, in order (spec 3.1.1); anything else fails the device.
        let added = val & !self.device_status;
        if val & self.device_status != self.device_status {
            crate::guest_debug!("virtio-mmio: driver cleared status bits; ignoring");
            return;
        }
        self.device_status = val;
        if added & FEATURES_OK != 0 {
            let mut d = locked(&self.device);
            if self.acked_features & !d.avail_features() != 0 {
                self.device_status &= !FEATURES_OK;
                return;
            }
            d.ack_features(self.acked_features);
        }
        if added & DRIVER_OK != 0 && val & FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                crate::guest_warn!("virtio-mmio: queue {i} is invalid");
                self.device_status |= status::DEVICE_NEEDS_RESET;
                return;
            }
            if self.acked_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
                != 0
            {
                q.set_event_idx(true);
            }
        }
        let queues = std::mem::take(&mut self.queues);
        let res = locked(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone());
        // Keep placeholders so that register reads stay in range.
        self.queues = Self::make_queues(&*locked(&self.device));
        match res {
            Ok(()) => self.activated = true,
            Err(e) => {
                crate::guest_log!(ERROR, "virtio device activation failed: {e}");
                self.device_status |= status::DEVICE_NEEDS_RESET;
                self.interrupt.trigger(super::VIRTIO_MMIO_INT_CONFIG);
            }
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let d = locked(&self.device);
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => d.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = d.avail_features() | VIRTIO_F_VERSION_1;
                match self.features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self
                .selected_queue_ref()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            0x44 => self
                .selected_queue_ref()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            0x60 => self.interrupt.status(),
            0x70 => self.device_status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.features_select = v,
            0x20 => {
                if self.device_status & status::FEATURES_OK == 0 {
                    match self.acked_features_select {
                        0 => {
                            self.acked_features =
                                (self.acked_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.acked_features =
                                (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            0x24 => self.acked_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            // Notifications normally hit the ioeventfd; a trapped one is forwarded to it.
            0x50 => {
                let d = locked(&self.device);
                if let Some(evt) = d.queue_events().get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self
                .selected_queue()
                .map_or((), |q| q.set_desc_table_address(Some(v), None)),
            0x84 => self
                .selected_queue()
                .map_or((), |q| q.set_desc_table_address(None, Some(v))),
            0x90 => self
                .selected_queue()
                .map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self
                .selected_queue()
                .map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self
                .selected_queue()
                .map_or((), |q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self
                .selected_queue()
                .map_or((), |q| q.set_used_ring_address(None, Some(v))),
            _ => crate::guest_debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn driver_can_configure(&self) -> bool {
        let s = self.device_status;
        s & status::FAILED == 0 && s & (status::ACKNOWLEDGE | status::DRIVER) != 0
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            locked(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.driver_can_configure() {
                locked(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            if offset.is_multiple_of(4) {
                self.write_reg(offset, u32::from_le_bytes(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous_memory;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Dummy {
        evts: Vec<EventFd>,
        acked: u64,
        activations: Arc<AtomicUsize>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn ack_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            _i: Arc<Interrupt>,
        ) -> Result<(), super::super::ActivateError> {
            assert_eq!(queues.len(), 2);
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup() -> (MmioTransport, Arc<AtomicUsize>) {
        let acts = Arc::new(AtomicUsize::new(0));
        let dev = Dummy {
            evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            acked: 0,
            activations: acts.clone(),
        };
        let mem = anonymous_memory(16 << 20);
        let t = MmioTransport::new(mem, Arc::new(Mutex::new(dev)), EventFd::new(0).unwrap());
        (t, acts)
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = setup();
        assert_eq!(rd(&mut t, 0), MMIO_MAGIC);
        assert_eq!(rd(&mut t, 4), 2);
        assert_eq!(rd(&mut t, 8), 42);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1); // VERSION_1 is bit 32
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 16);
        wr(&mut t, 0x30, 7);
        assert_eq!(rd(&mut t, 0x34), 0);
        let mut b = [0u8; 2];
        t.read(0x102, &mut b);
        assert_eq!(b, [3, 4]);
        // Odd sized or unaligned accesses are ignored.
        let mut b = [9u8; 2];
        t.read(0x4, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x71, &[1, 2, 3, 4]);
        assert_eq!(rd(&mut t, 0x70), 0);
    }

    fn init_queue(t: &mut MmioTransport, idx: u32, base: u64) {
        wr(t, 0x30, idx);
        wr(t, 0x38, 16);
        wr(t, 0x80, base as u32);
        wr(t, 0x84, 0);
        wr(t, 0x90, (base + 0x1000) as u32);
        wr(t, 0xa0, (base + 0x2000) as u32);
        wr(t, 0x44, 1);
    }

    #[test]
    fn driver_ok_activates_once_and_reset_restarts() {
        let (mut t, acts) = setup();
        wr(&mut t, 0x70, 1);
        wr(&mut t, 0x70, 3);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, 3 | 8);
        assert_eq!(rd(&mut t, 0x70) & 8, 8);
        init_queue(&mut t, 0, 0x10_0000);
        init_queue(&mut t, 1, 0x20_0000);
        wr(&mut t, 0x70, 3 | 8 | 4);
        assert_eq!(acts.load(Ordering::SeqCst), 1);
        // Queue registers are frozen while running.
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x44, 0);
        wr(&mut t, 0x70, 3 | 8 | 4);
        assert_eq!(acts.load(Ordering::SeqCst), 1);
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert_eq!(rd(&mut t, 0x44), 0);
    }

    #[test]
    fn unoffered_features_fail_features_ok() {
        let (mut t, acts) = setup();
        wr(&mut t, 0x70, 3);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 0x8000_0000);
        wr(&mut t, 0x70, 3 | 8);
        assert_eq!(rd(&mut t, 0x70) & 8, 0);
        wr(&mut t, 0x70, 3 | 8 | 4);
        assert_eq!(acts.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn invalid_queue_address_does_not_activate() {
        let (mut t, acts) = setup();
        wr(&mut t, 0x70, 3);
        wr(&mut t, 0x70, 3 | 8);
        init_queue(&mut t, 0, 0xffff_0000); // beyond guest memory
        init_queue(&mut t, 1, 0x20_0000);
        wr(&mut t, 0x70, 3 | 8 | 4);
        assert_eq!(acts.load(Ordering::SeqCst), 0);
        assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = setup();
        t.interrupt().signal_used_queue();
        assert_eq!(rd(&mut t, 0x60), 1);
        wr(&mut t, 0x64, 1);
        assert_eq!(rd(&mut t, 0x60), 0);
    }
}
