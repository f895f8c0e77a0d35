//! Address-range dispatch of vCPU I/O and MMIO exits to devices.

use husk_lock::MutexExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through port I/O or MMIO.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when inserting a device.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps an existing one or is empty.
    #[error("bus range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping `[base, base+len)` ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base+len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let overlaps = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; returns false if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a panicked device thread must not take
/// the vCPUs down with it).
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.locked()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(Vec<(u64, u8)>);
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Rec(vec![])));
        bus.insert(d.clone(), 0x100, 0x10).unwrap();
        for (base, len) in [(0x108, 0x10), (0xf8, 0x10), (0x200, 0)] {
            let r = bus.insert(d.clone(), base, len);
            assert!(
                matches!(r, Err(BusError::Overlap { base: b, len: l }) if (b, l) == (base, len)),
                "{base:#x}+{len:#x}: {r:?}"
            );
        }
        bus.insert(d.clone(), 0x110, 0x10).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x10f, &[7]));
    }
}
