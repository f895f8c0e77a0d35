//! The virtio-mmio transport as a hostile driver uses it: any register written or read in
//! any order, queues placed anywhere, status bits set out of order, then notifications that
//! make the device walk the rings the driver pointed it at (in memory the fuzzer wrote).
//! Covers the vsock device and a device shaped like virtio-fs (two queues, sticky
//! interrupt, queue validation at activation).
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use husk_fuzz::backend::ScriptedBackend;
use husk_fuzz::fs_like::FsLike;
use husk_fuzz::guest::{fill, memory};
use husk_vmm::devices::bus::BusDevice;
use husk_vmm::devices::virtio::mmio::MmioTransport;
use husk_vmm::devices::virtio::vsock::{VsockDevice, VsockPacket};
use husk_vmm::devices::virtio::VirtioDevice;
use husk_vmm::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

/// One access by the driver.
#[derive(Arbitrary, Debug)]
enum Access {
    /// A 4-byte write to register n (offset 4 * n in the window).
    Write(u8, u32),
    /// A write of any length anywhere in the window, config space included.
    WriteBytes(u16, Vec<u8>),
    /// A read of `len` bytes.
    Read(u16, u8),
    /// The device handles its queue notifications (what the event loop does on a kick).
    Kick,
}

#[derive(Arbitrary, Debug)]
struct Run {
    fs_shaped: bool,
    accesses: Vec<Access>,
    /// Packets the vsock backend has for the guest (payload lengths).
    to_guest: Vec<u16>,
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let run = Run::arbitrary(&mut u)?;
    let mem = memory();
    fill(mem, u.take_rest());
    let irq = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");

    let mut backend = ScriptedBackend::default();
    for len in run.to_guest.iter().take(16) {
        backend.to_guest.push_back(VsockPacket {
            data: vec![1; usize::from(*len)],
            ..Default::default()
        });
    }
    let vsock = Arc::new(Mutex::new(
        VsockDevice::new(3, backend, Arc::new(Metrics::default())).expect("vsock"),
    ));
    let device: Arc<Mutex<dyn VirtioDevice>> = if run.fs_shaped {
        Arc::new(Mutex::new(FsLike::new()))
    } else {
        vsock.clone()
    };
    let mut transport = MmioTransport::new(mem.clone(), device, irq());

    for access in run.accesses.into_iter().take(256) {
        match access {
            Access::Write(reg, v) => transport.write(u64::from(reg) * 4 % 0x200, &v.to_le_bytes()),
            Access::WriteBytes(off, b) => transport.write(u64::from(off % 0x200), &b),
            Access::Read(off, len) => {
                let mut b = vec![0u8; usize::from(len % 16)];
                transport.read(u64::from(off % 0x200), &mut b);
            }
            Access::Kick if !run.fs_shaped => {
                let mut d = vsock.lock().expect("vsock lock");
                d.handle_activate_event();
                d.handle_txq_event();
                d.handle_rxq_event();
                d.handle_evq_event();
            }
            Access::Kick => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
