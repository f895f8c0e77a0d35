//! Flat GDT for 64-bit boot and its conversion into KVM segment registers.

use kvm_bindings::kvm_segment;

/// Encodes a GDT entry from its flags (the 12 bits 8..=15 and 20..=23 of the high dword,
/// packed as `0xF0FF`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32
}

fn bit(entry: u64, shift: u32, mask: u64) -> u8 {
    ((entry >> shift) & mask) as u8
}

/// Converts GDT entry `index` into the segment register KVM expects.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = bit(entry, 55, 1);
    let raw_limit = limit(entry);
    // With 4 KiB granularity the limit is in pages.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base: base(entry),
        limit,
        selector: u16::from(index) * 8,
        type_: bit(entry, 40, 0xf),
        present: bit(entry, 47, 1),
        dpl: bit(entry, 45, 0x3),
        db: bit(entry, 54, 1),
        s: bit(entry, 44, 1),
        l: bit(entry, 53, 1),
        g,
        avl: bit(entry, 52, 1),
        padding: 0,
        unusable: u8::from(bit(entry, 47, 1) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present() {
        let s = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(s.selector, 8);
        assert_eq!(s.l, 1);
        assert_eq!(s.db, 0);
        assert_eq!(s.present, 1);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.s, 1);
        assert_eq!(s.g, 1);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let d = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((d.selector, d.type_, d.db, d.l), (0x10, 3, 1, 0));
        let t = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((t.selector, t.type_, t.s), (0x18, 0xb, 0));
        let n = kvm_segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(n.unusable, 1);
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }
}
