//! Intel MultiProcessor Specification 1.4 table, so a kernel without ACPI finds all vCPUs
//! and the IOAPIC.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, MAX_VCPUS, MPTABLE_MAX_SIZE, MPTABLE_START};
use crate::memory::GuestMemoryMmap;

/// Errors while building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table can describe.
    #[error("{0} vCPUs do not fit in the MP table (max {MAX_VCPUS})")]
    TooManyCpus(u8),
    /// Writing into guest memory failed.
    #[error("writing the MP table: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const MPC_APIC_USABLE: u8 = 1;
const IOAPIC_PINS: u8 = 24;
/// Size of the MP floating pointer structure.
const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
const MPC_HEADER_SIZE: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Builds the floating pointer followed by the configuration table, for a table placed at
/// `base`. Pure so that it can be checked byte by byte.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION]);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    // Every IOAPIC pin is an ordinary ISA interrupt, identity mapped (the timer included:
    // the kernel then routes IRQ0 through the IOAPIC).
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT on the BSP, LINT1 = NMI on all local APICs (0xff).
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + MPF_SIZE as u64;
    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC);
    table.push(0); // checksum, patched below
    table.extend_from_slice(b"HUSK    "); // OEM id, 8 bytes
    table.extend_from_slice(b"HUSK-VMM    "); // product id, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(table.len(), MPC_HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[7] = 0u8.wrapping_sub(checksum(&table));

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MPC_SPEC);
    mpf.push(0); // checksum
    mpf.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = configuration table present
    mpf[10] = 0u8.wrapping_sub(checksum(&mpf));

    mpf.extend_from_slice(&table);
    if mpf.len() as u64 > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    Ok(mpf)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(MPTABLE_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_zero_and_signatures_present() {
        for n in [1u8, 2, 4, MAX_VCPUS] {
            let t = build(MPTABLE_START, n).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(checksum(&t[..MPF_SIZE]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + MPF_SIZE as u64);
            let table = &t[MPF_SIZE..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(checksum(table), 0);
            let entries = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(entries, u16::from(n) + 1 + 1 + 24 + 2);
            assert!(t.len() as u64 <= MPTABLE_MAX_SIZE);
        }
    }

    #[test]
    fn processors_listed_with_bsp_first() {
        let t = build(MPTABLE_START, 3).unwrap();
        let e = &t[MPF_SIZE + MPC_HEADER_SIZE..];
        for cpu in 0..3usize {
            let p = &e[cpu * 20..cpu * 20 + 20];
            assert_eq!(p[0], MP_PROCESSOR);
            assert_eq!(p[1] as usize, cpu);
            assert_eq!(p[3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
            assert_ne!(p[3] & CPU_ENABLED, 0);
        }
        let ioapic = &e[60 + 8..60 + 16];
        assert_eq!(ioapic[0], MP_IOAPIC);
        assert_eq!(ioapic[1], 4);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        for n in [0, MAX_VCPUS + 1] {
            let r = build(MPTABLE_START, n);
            assert!(
                matches!(r, Err(MptableError::TooManyCpus(c)) if c == n),
                "{n} vCPUs: {r:?}"
            );
        }
    }
}
