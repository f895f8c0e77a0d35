//! Documented bounds of a husk VM that a configuration is checked against before husk-vmm
//! makes any KVM call. husk-vmm's x86_64 layout asserts at compile time that it agrees
//! with the values here.

/// Most vCPUs a VM may have: the MP table husk-vmm writes below 640 KiB describes at most
/// this many processors.
pub const MAX_VCPUS: u8 = 32;
/// Largest kernel command line in bytes, including its NUL (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Bytes of command line reserved per virtio-mmio device: husk-vmm appends one
/// `virtio_mmio.device=4K@0x...:N` parameter (about 40 bytes) for each.
pub const CMDLINE_BYTES_PER_DEVICE: usize = 48;
/// Most virtio-mmio devices: one GSI each, from 5 to 23 on the in-kernel IOAPIC (0-4 are
/// the legacy devices').
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Largest virtio-fs tag in bytes (the config space field is 36 bytes).
pub const FS_TAG_MAX: usize = 36;
/// Most request queues of one virtio-fs device.
pub const FS_MAX_REQUEST_QUEUES: u16 = 16;
/// Largest virtio-fs queue (a power of two).
pub const FS_MAX_QUEUE_SIZE: u16 = 1024;
/// Smallest guest memory accepted, MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory accepted, MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
pub const UNIX_PATH_MAX: usize = 107;
/// Longest suffix husk-vmm appends to the vsock socket path for a guest-initiated
/// connection (`_<port>`, port up to 4294967295).
pub const VSOCK_PORT_SUFFIX_MAX: usize = "_4294967295".len();
/// Smallest guest CID (0-2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;
