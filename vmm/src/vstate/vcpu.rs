//! vCPU setup for the Linux 64-bit boot protocol and the per-vCPU run loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::{CpuId, Msrs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::control::{set_thread_kvm_run, VcpuControl};
use super::vm::Vm;
use crate::arch::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};
use crate::metrics::Metrics;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {0}: {1}: {2}")]
    Ioctl(u8, &'static str, kvm_ioctls::Error),
    /// Not every boot MSR was accepted.
    #[error("vCPU {0}: KVM accepted {1} of {2} MSRs")]
    Msrs(u8, usize, usize),
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and sets its boot state.
    pub fn new(
        vm: &Vm,
        id: u8,
        count: u8,
        entry: u64,
        base_cpuid: &CpuId,
    ) -> Result<Self, VcpuError> {
        let tsc_deadline = vm.fd().check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let err = |what, e| VcpuError::Ioctl(id, what, e);
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|e| err("KVM_CREATE_VCPU", e))?;

        let mut cpuid = base_cpuid.clone();
        cpuid::normalize(cpuid.as_mut_slice(), id, count, tsc_deadline);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| err("KVM_SET_CPUID2", e))?;

        let entries = regs::boot_msrs();
        let msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs(id, 0, entries.len()))?;
        let n = fd.set_msrs(&msrs).map_err(|e| err("KVM_SET_MSRS", e))?;
        if n != entries.len() {
            return Err(VcpuError::Msrs(id, n, entries.len()));
        }

        fd.set_regs(&regs::boot_regs(entry))
            .map_err(|e| err("KVM_SET_REGS", e))?;
        let mut sregs = fd.get_sregs().map_err(|e| err("KVM_GET_SREGS", e))?;
        regs::configure_sregs(&mut sregs);
        fd.set_sregs(&sregs).map_err(|e| err("KVM_SET_SREGS", e))?;
        fd.set_fpu(&regs::boot_fpu())
            .map_err(|e| err("KVM_SET_FPU", e))?;
        let mut lapic = fd.get_lapic().map_err(|e| err("KVM_GET_LAPIC", e))?;
        regs::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(|e| err("KVM_SET_LAPIC", e))?;
        Ok(Self { id, fd })
    }

    /// Runs until the guest resets or the VMM asks the vCPUs to exit.
    pub fn run(
        mut self,
        pio: Bus,
        mmio: Bus,
        control: Arc<VcpuControl>,
        exit: ExitSignal,
        metrics: Arc<Metrics>,
    ) {
        control.register_current_thread();
        set_thread_kvm_run(self.fd.get_kvm_run());
        while control.checkpoint() {
            let reason = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    metrics.exits_io.fetch_add(1, Ordering::Relaxed);
                    if !pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    metrics.exits_io.fetch_add(1, Ordering::Relaxed);
                    pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    metrics.exits_mmio.fetch_add(1, Ordering::Relaxed);
                    if !mmio.read(addr, data) {
                        data.fill(0);
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    metrics.exits_mmio.fetch_add(1, Ordering::Relaxed);
                    mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Hlt) => {
                    metrics.exits_hlt.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Ok(VcpuExit::Shutdown) => {
                    // A triple fault. After an i8042 reset (`reboot=k`) Linux may still
                    // triple-fault while retrying; the reset was recorded first and stays
                    // the VM's exit reason (see `crate::exit`).
                    tracing::warn!("vCPU {}: shutdown (triple fault)", self.id);
                    Some(ExitReason::TripleFault)
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_SHUTDOWN => {
                        Some(ExitReason::GuestReset)
                    }
                    other => {
                        tracing::warn!("vCPU {}: system event {other}", self.id);
                        None
                    }
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    tracing::error!(
                        "vCPU {}: entry failed: reason {reason:#x} on cpu {cpu}",
                        self.id
                    );
                    Some(ExitReason::VcpuError)
                }
                Ok(VcpuExit::InternalError) => {
                    tracing::error!("vCPU {}: KVM internal error", self.id);
                    Some(ExitReason::VcpuError)
                }
                Ok(other) => {
                    metrics.exits_other.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("vCPU {}: unhandled exit {other:?}", self.id);
                    None
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    metrics.exits_intr.fetch_add(1, Ordering::Relaxed);
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => {
                    tracing::error!("vCPU {}: KVM_RUN: {e}", self.id);
                    Some(ExitReason::VcpuError)
                }
            };
            if let Some(r) = reason {
                exit.request(r);
                break;
            }
        }
        set_thread_kvm_run(std::ptr::null_mut());
        control.unregister_current_thread();
    }
}
