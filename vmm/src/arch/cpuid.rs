//! Per-vCPU normalization of the CPUID table from `KVM_GET_SUPPORTED_CPUID`.
//!
//! The host's table describes the host; each vCPU must see its own APIC id, the VM's
//! topology (one thread per core, all cores in one package) and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
/// KVM emulates the TSC-deadline LAPIC timer but does not report it in the supported table.
const ECX_TSC_DEADLINE_BIT: u32 = 1 << 24;
const EDX_HTT_BIT: u32 = 1 << 28;
/// Level types of leaf 0xB.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits needed to number `count` items (ceil(log2(count))).
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjusts `entries` (a copy of the supported CPUID) for vCPU `cpu_index` of `cpu_count`.
/// `tsc_deadline` says whether KVM has `KVM_CAP_TSC_DEADLINE_TIMER`.
pub fn normalize(
    entries: &mut [kvm_cpuid_entry2],
    cpu_index: u8,
    cpu_count: u8,
    tsc_deadline: bool,
) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(cpu_count.max(1));
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH
                // line size in 8-byte units.
                e.ebx = (apic_id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR_BIT;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE_BIT;
                }
                if count > 1 {
                    e.edx |= EDX_HTT_BIT;
                } else {
                    e.edx &= !EDX_HTT_BIT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            LEAF_PMU => {
                // No virtual PMU: avoids perf MSR accesses the VMM does not model.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                e.ecx = e.index & 0xff;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx |= LEVEL_TYPE_SMT << 8;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx |= LEVEL_TYPE_CORE << 8;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12]: APIC id size, [7:0]: number of cores - 1.
                e.ecx = (bits_for(count) << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                // One thread per compute unit; core id = APIC id.
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0x0000_0001,
            edx: 0x0000_0001,
            ..Default::default()
        }
    }

    fn table() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0),
            entry(1, 0),
            entry(4, 0),
            entry(0xa, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ]
    }

    fn find(t: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *t.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_id_and_count_per_vcpu() {
        for (idx, count) in [(0u8, 1u8), (1, 2), (3, 4), (31, 32)] {
            let mut t = table();
            normalize(&mut t, idx, count, true);
            let l1 = find(&t, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_ne!(l1.ecx & ECX_HYPERVISOR_BIT, 0);
            assert_ne!(l1.ecx & ECX_TSC_DEADLINE_BIT, 0);
            assert_eq!(l1.edx & EDX_HTT_BIT != 0, count > 1);
            assert_eq!(find(&t, 0xb, 0).edx, u32::from(idx));
            assert_eq!(find(&t, 0xb, 1).ebx, u32::from(count));
            assert_eq!(find(&t, 0x8000_001e, 0).eax, u32::from(idx));
            assert_eq!(find(&t, 0x8000_0008, 0).ecx & 0xff, u32::from(count) - 1);
        }
    }

    #[test]
    fn topology_levels() {
        let mut t = table();
        t[1].ecx = 0;
        normalize(&mut t, 2, 4, false);
        assert_eq!(find(&t, 1, 0).ecx & ECX_TSC_DEADLINE_BIT, 0);
        let smt = find(&t, 0xb, 0);
        assert_eq!(
            (smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff),
            (0, 1, LEVEL_TYPE_SMT)
        );
        let core = find(&t, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (2, 4, LEVEL_TYPE_CORE)
        );
        let inv = find(&t, 0xb, 2);
        assert_eq!((inv.eax, inv.ebx, (inv.ecx >> 8) & 0xff), (0, 0, 0));
        assert_eq!(find(&t, 0xa, 0).eax, 0);
        assert_eq!(find(&t, 4, 0).eax >> 26, 3);
        // Untouched leaves stay as they were.
        assert_eq!(find(&t, 0, 0).eax, 0xffff_ffff);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(32), 5);
    }
}
