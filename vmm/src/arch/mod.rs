//! x86_64 architecture support: layout, boot parameters, vCPU registers, CPUID, MP table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

use layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Splits `mem_size` bytes of guest RAM into regions that avoid the MMIO hole below 4 GiB.
///
/// Returns `(guest_address, size)` pairs in ascending order. Memory above
/// [`MMIO_GAP_START`] is relocated above 4 GiB.
pub fn memory_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO hole.
pub fn low_memory_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::layout::*;
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(memory_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_memory_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let mem = 4u64 << 30;
        let r = memory_regions(mem);
        assert_eq!(
            r,
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem - MMIO_GAP_START)]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), mem);
        assert_eq!(low_memory_end(mem), MMIO_GAP_START);
    }

    #[test]
    fn fixed_addresses_do_not_overlap() {
        // Boot structures live below the EBDA and do not overlap each other.
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_MAX_SIZE),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        // Devices and interrupt controllers are inside the hole.
        for a in [MMIO_DEVICES_START, IOAPIC_ADDR, APIC_ADDR, KVM_TSS_ADDRESS] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&a));
        }
    }
}
