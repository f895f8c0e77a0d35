//! Guest memory whose bytes come from the fuzz input: descriptor tables, rings and buffers
//! are then whatever the fuzzer wrote, as they are whatever a hostile guest writes.

use std::sync::OnceLock;

use husk_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};

/// Size of the fuzzed guest memory: room for three small queues and their buffers, small
/// enough to rewrite on every run.
pub const GUEST_MEM_SIZE: u64 = 64 << 10;

/// The guest memory, created once per process (a memfd and a mapping per run would
/// dominate the run time) and rewritten by [`fill`].
pub fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| create_guest_memory(GUEST_MEM_SIZE).expect("fuzz guest memory"))
}

/// Copies `bytes` to the start of guest memory and zeroes the rest, so that no run sees
/// what an earlier one left behind.
pub fn fill(mem: &GuestMemoryMmap, bytes: &[u8]) {
    let n = bytes.len().min(GUEST_MEM_SIZE as usize);
    mem.write_slice(&bytes[..n], GuestAddress(0))
        .expect("write fuzz bytes");
    let zeros = vec![0u8; GUEST_MEM_SIZE as usize - n];
    mem.write_slice(&zeros, GuestAddress(n as u64))
        .expect("zero the rest");
}
