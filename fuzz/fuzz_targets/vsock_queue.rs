//! The vsock device's queue processing on guest memory the fuzzer wrote: descriptor
//! tables, avail rings and buffers are arbitrary, as a hostile guest makes them. Every chain
//! must be consumed or refused without a panic.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use husk_fuzz::backend::ScriptedBackend;
use husk_fuzz::guest::{fill, memory};
use husk_vmm::devices::virtio::vsock::{VsockDevice, VsockHeader, VsockPacket};
use husk_vmm::devices::virtio::{Interrupt, VirtioDevice};
use husk_vmm::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// Where queue `i` starts: 1 KiB apart, room for 16 entries; buffers may lie anywhere.
fn queue_addr(i: usize) -> GuestAddress {
    GuestAddress(i as u64 * 0x400)
}

/// How the run is set up; the rest of the input is guest memory.
#[derive(Arbitrary, Debug)]
struct Setup {
    /// log2 of each queue's size (1..=16 entries).
    size_log2: [u8; 3],
    event_idx: bool,
    /// Packets the backend has for the guest: header and payload length.
    to_guest: Vec<(u64, u32, u16)>,
    /// How many rounds of kicks the guest makes.
    rounds: u8,
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u)?;
    let mem = memory();
    let mut backend = ScriptedBackend::default();
    for (cid, port, len) in setup.to_guest.iter().take(32) {
        let data = vec![0x5a; usize::from(*len)];
        let hdr = VsockHeader {
            dst_cid: *cid,
            dst_port: *port,
            len: data.len() as u32,
            ..Default::default()
        };
        backend.to_guest.push_back(VsockPacket { hdr, data });
    }
    let mocks: Vec<_> = (0..3)
        .map(|i| MockSplitQueue::create(mem, queue_addr(i), 1 << (setup.size_log2[i] % 5)))
        .collect();
    // The queues as the driver configured them; then the memory as the guest wrote it.
    let queues: Vec<Queue> = mocks
        .iter()
        .map(|m| {
            let mut q: Queue = m.create_queue().expect("mock queue");
            q.set_event_idx(setup.event_idx);
            q
        })
        .collect();
    fill(mem, u.take_rest());

    let mut dev = VsockDevice::new(3, backend, Arc::new(Metrics::default())).expect("device");
    let irq = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        false,
    ));
    dev.activate(mem.clone(), queues, irq).expect("activate");
    for _ in 0..=setup.rounds % 4 {
        dev.process_tx();
        dev.process_rx();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
