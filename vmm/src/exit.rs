//! How the VM ends: the first reported reason wins and wakes the main loop.
//!
//! First-reason-wins matters for resets: with `reboot=k` the guest resets through the
//! i8042, and Linux may still triple-fault afterwards while it retries other reset methods
//! before husk-vmm has stopped the vCPUs. That VM ended cleanly, because the i8042 reset was
//! recorded first; a triple fault with nothing before it is a crashed guest.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use husk_vmm_api::VmmExit;
use vmm_sys_util::eventfd::EventFd;

/// Why the VMM stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    /// Not stopping.
    None = 0,
    /// The guest asked for a reset (the i8042 reset line with `reboot=k`, or a KVM reset or
    /// shutdown system event): a clean exit.
    GuestReset = 1,
    /// The control API asked for shutdown.
    Shutdown = 2,
    /// A vCPU failed.
    VcpuError = 3,
    /// A vCPU triple-faulted (KVM's shutdown exit): the guest crashed.
    TripleFault = 4,
}

impl ExitReason {
    /// How husk-vmm's process ends for this reason.
    pub fn vmm_exit(self) -> VmmExit {
        match self {
            ExitReason::None | ExitReason::GuestReset | ExitReason::Shutdown => VmmExit::Clean,
            ExitReason::VcpuError => VmmExit::Error,
            ExitReason::TripleFault => VmmExit::TripleFault,
        }
    }

    /// Process exit status for this reason.
    pub fn exit_code(self) -> i32 {
        self.vmm_exit().code()
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::GuestReset,
            2 => Self::Shutdown,
            3 => Self::VcpuError,
            4 => Self::TripleFault,
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

    #[test]
    fn triple_fault_after_an_i8042_reset_is_a_clean_reset() {
        let s = ExitSignal::new().unwrap();
        // `reboot=k`: the i8042 reset line, then Linux retrying and triple-faulting.
        vm_superio::Trigger::trigger(&s).unwrap();
        s.request(ExitReason::TripleFault);
        assert_eq!(s.reason(), ExitReason::GuestReset);
        assert_eq!(s.reason().vmm_exit(), VmmExit::Clean);
    }

    #[test]
    fn triple_fault_first_is_its_own_exit_status() {
        let s = ExitSignal::new().unwrap();
        s.request(ExitReason::TripleFault);
        vm_superio::Trigger::trigger(&s).unwrap();
        s.request(ExitReason::Shutdown);
        assert_eq!(s.reason(), ExitReason::TripleFault);
        assert_eq!(s.reason().vmm_exit(), VmmExit::TripleFault);
        assert_eq!(s.reason().exit_code(), 3);
    }

    #[test]
    fn every_reason_maps_to_a_vmm_exit() {
        for (r, e) in [
            (ExitReason::None, VmmExit::Clean),
            (ExitReason::GuestReset, VmmExit::Clean),
            (ExitReason::Shutdown, VmmExit::Clean),
            (ExitReason::VcpuError, VmmExit::Error),
            (ExitReason::TripleFault, VmmExit::TripleFault),
        ] {
            assert_eq!(r.vmm_exit(), e, "{r:?}");
            assert_eq!(ExitReason::from_u8(r as u8), r);
        }
    }
}
