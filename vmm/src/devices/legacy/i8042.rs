//! i8042 keyboard controller, modelled only far enough for `reboot=k`: the CPU reset
//! command (0xFE on port 0x64) signals the VMM to end the VM.

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

/// The i8042 at ports 0x60..=0x64.
pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` is triggered when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                tracing::warn!("i8042 reset signal failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_fires_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0x20]); // read command byte: no reset
        assert!(evt.read().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0xffu8; 2];
        dev.read(4, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
