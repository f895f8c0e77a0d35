//! How the VM ends: the first reported reason wins and wakes the main loop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Why the VMM stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    /// Not stopping.
    None = 0,
    /// The guest reset itself (i8042 reset, triple fault, `reboot=k`): a clean exit.
    GuestReset = 1,
    /// The control API asked for shutdown.
    Shutdown = 2,
    /// A vCPU failed.
    VcpuError = 3,
}

impl ExitReason {
    /// Process exit status for this reason.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitReason::None | ExitReason::GuestReset | ExitReason::Shutdown => 0,
            ExitReason::VcpuError => 1,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::GuestReset,
            2 => Self::Shutdown,
            3 => Self::VcpuError,
            _ => Self::None,
        }
    }
}

/// A cloneable handle to request the VMM's exit.
#[derive(Clone)]
pub struct ExitSignal {
    reason: Arc<AtomicU8>,
    evt: Arc<EventFd>,
}

impl ExitSignal {
    /// A new signal with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(AtomicU8::new(0)),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Records `r` (if no reason is recorded yet) and wakes the main loop.
    pub fn request(&self, r: ExitReason) {
        let _ = self
            .reason
            .compare_exchange(0, r as u8, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// The recorded reason.
    pub fn reason(&self) -> ExitReason {
        ExitReason::from_u8(self.reason.load(Ordering::SeqCst))
    }

    /// The eventfd written on each request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl vm_superio::Trigger for ExitSignal {
    type E = std::convert::Infallible;
    /// The i8042 reset line: the guest reset itself.
    fn trigger(&self) -> Result<(), Self::E> {
        self.request(ExitReason::GuestReset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), ExitReason::None);
        s.clone().request(ExitReason::GuestReset);
        s.request(ExitReason::VcpuError);
        assert_eq!(s.reason(), ExitReason::GuestReset);
        assert_eq!(s.reason().exit_code(), 0);
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(ExitReason::VcpuError.exit_code(), 1);
    }
}
