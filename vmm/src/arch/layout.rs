//! Guest physical memory layout of a husk micro-VM (x86_64).
//!
//! Only documented constants live here; everything that computes a layout from the
//! configured memory size is in [`crate::arch::memory_regions`].

/// Address of the flat GDT written before the first vCPU runs.
pub const BOOT_GDT_START: u64 = 0x500;
/// Address of the (empty) boot IDT, right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Address of the Linux zero page (`struct boot_params`); passed to the kernel in `rsi`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages = first GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line (NUL terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the x86 kernel accepts (`COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; conventional RAM ends here. The MP table lives in the last KiB of
/// base memory, which the kernel scans for the `_MP_` signature.
pub const EBDA_START: u64 = 0x9fc00;
/// Address of the MP floating pointer structure and the MP configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// Bytes available to the MP table (up to the 640 KiB boundary).
pub const MPTABLE_MAX_SIZE: u64 = 0xa0000 - MPTABLE_START;
/// The kernel is loaded at 1 MiB ("high memory" in boot protocol terms).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB: guest RAM never overlaps `[MMIO_GAP_START, 4 GiB)`.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole (first address past 32 bits).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device gets [`MMIO_DEVICE_SIZE`] bytes.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window (4 KiB).
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Address of the IOAPIC (inside the MMIO hole).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Address of the local APICs (inside the MMIO hole).
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS region (three pages, inside the MMIO hole, below the IOAPIC).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// First GSI handed to virtio-mmio devices (0-4 are legacy: PIT, keyboard, cascade, COM2, COM1).
pub const IRQ_BASE: u32 = 5;
/// Last GSI usable on the in-kernel IOAPIC (24 pins).
pub const IRQ_MAX: u32 = 23;
/// GSI of the first serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// I/O port of COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// I/O port range of the i8042 controller (data port 0x60 .. command port 0x64).
pub const I8042_PORT: u16 = 0x60;
/// Number of vCPUs the MP table can describe in [`MPTABLE_MAX_SIZE`].
pub const MAX_VCPUS: u8 = 32;

// Compile-time layout checks: the MP table stays below 1 MiB and the device windows
// (one per usable GSI) end before the IOAPIC.
const _: () = assert!(MPTABLE_START + MPTABLE_MAX_SIZE <= HIMEM_START);
const _: () = assert!(MMIO_DEVICES_START + 64 * MMIO_DEVICE_SIZE <= IOAPIC_ADDR);
const _: () = assert!(MMIO_GAP_START < MMIO_DEVICES_START);

// The limits a configuration is validated against (before any KVM call) are the ones this
// layout can hold.
const _: () = assert!(husk_vmm_api::limits::MAX_VCPUS == MAX_VCPUS);
const _: () = assert!(husk_vmm_api::limits::CMDLINE_MAX_SIZE == CMDLINE_MAX_SIZE);
const _: () =
    assert!(husk_vmm_api::limits::MAX_VIRTIO_DEVICES == (IRQ_MAX - IRQ_BASE + 1) as usize);
