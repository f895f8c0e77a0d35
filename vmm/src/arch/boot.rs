//! Linux direct boot: ELF vmlinux, command line, initrd and the zero page.

use std::fs::File;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::*;
use super::{low_memory_end, memory_regions};
use crate::memory::GuestMemoryMmap;

/// Errors of the direct boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image could not be loaded.
    #[error("loading the kernel: {0}")]
    Kernel(linux_loader::loader::Error),
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initrd could not be read or does not fit.
    #[error("initrd: {0}")]
    Initrd(String),
    /// The zero page could not be written.
    #[error("writing the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// `type_of_loader` value for "undefined" loaders.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// "HdrS" magic of the setup header.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
const PAGE_SIZE: u64 = 4096;

/// Loads an ELF vmlinux (at its physical addresses, at or above 1 MiB) and returns the
/// 64-bit entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<u64, BootError> {
    let res =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(BootError::Kernel)?;
    Ok(res.kernel_load.raw_value())
}

/// Writes the command line at [`CMDLINE_START`]; returns its length without the NUL.
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let c = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(cmdline.len())
}

/// Where an initrd of `size` bytes goes: page aligned, as high as possible in low memory.
pub fn initrd_address(mem_size: u64, size: u64) -> Option<u64> {
    let end = low_memory_end(mem_size);
    let addr = end.checked_sub(size)? & !(PAGE_SIZE - 1);
    // It must not collide with the kernel area at the start of high memory.
    (addr >= HIMEM_START).then_some(addr)
}

/// Loads the initrd at the top of low memory; returns `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: &mut File,
) -> Result<(u64, u64), BootError> {
    let size = initrd
        .metadata()
        .map_err(|e| BootError::Initrd(e.to_string()))?
        .len();
    let addr = initrd_address(mem_size, size)
        .ok_or_else(|| BootError::Initrd(format!("{size} bytes do not fit in guest memory")))?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(|e| BootError::Initrd(e.to_string()))?;
    Ok((addr, size))
}

/// The e820 map for `mem_size` bytes of RAM: base memory below the EBDA, then RAM from
/// 1 MiB, skipping the MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for (addr, size) in memory_regions(mem_size) {
        let (start, end) = (addr.max(HIMEM_START), addr + size);
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Builds the zero page.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *e;
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    let bp = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(BootError::ZeroPage)
}

/// Checks that guest memory covers the boot structures (used before loading).
pub fn check_memory(mem: &GuestMemoryMmap) -> bool {
    mem.address_in_range(GuestAddress(HIMEM_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous_memory;

    #[test]
    fn e820_small_guest() {
        let m = e820_map(128 << 20);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].addr, m[0].size), (0, EBDA_START));
        assert_eq!(
            (m[1].addr, m[1].size),
            (HIMEM_START, (128 << 20) - HIMEM_START)
        );
        assert!(m.iter().all(|e| e.r#type == E820_RAM));
    }

    #[test]
    fn e820_large_guest_has_high_region() {
        let mem = 5u64 << 30;
        let m = e820_map(mem);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].addr + m[1].size, MMIO_GAP_START);
        assert_eq!({ m[2].addr }, MMIO_GAP_END);
        assert_eq!({ m[2].size }, mem - MMIO_GAP_START);
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        let mem = 256u64 << 20;
        let a = initrd_address(mem, 10_000).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 10_000 <= mem);
        assert!(mem - a < 10_000 + PAGE_SIZE);
        assert_eq!(initrd_address(4 << 30, 4096), Some(MMIO_GAP_START - 4096));
        assert_eq!(initrd_address(2 << 20, 4 << 20), None);
    }

    #[test]
    fn boot_params_fields() {
        let p = build_boot_params(256 << 20, 20, Some((0x0f00_0000, 1234)));
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 21);
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!(p.e820_entries, 2);
    }

    #[test]
    fn zero_page_and_cmdline_in_memory() {
        let mem = anonymous_memory(64 << 20);
        assert!(check_memory(&mem));
        let len = load_command_line(&mem, husk_vmm_api::BASE_CMDLINE).unwrap();
        let p = build_boot_params(64 << 20, len, None);
        write_boot_params(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ back.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(back.e820_entries, 2);
        let mut buf = vec![0u8; len + 1];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf[..len], husk_vmm_api::BASE_CMDLINE.as_bytes());
        assert_eq!(buf[len], 0);
        let r = load_command_line(&mem, &"x".repeat(CMDLINE_MAX_SIZE + 1));
        assert!(
            matches!(&r, Err(BootError::Cmdline(m))
                if *m == linux_loader::cmdline::Error::InvalidCapacity.to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let mem = anonymous_memory(64 << 20);
        let mut f = tempfile::tempfile().unwrap();
        use std::io::Write;
        f.write_all(b"not an elf file at all").unwrap();
        let r = load_kernel(&mem, &mut f);
        assert!(
            matches!(
                &r,
                Err(BootError::Kernel(linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::ReadElfHeader
                )))
            ),
            "too short for an ELF header: {r:?}"
        );
        // Long enough for a header, but without the ELF magic.
        f.write_all(&[b'x'; 128]).unwrap();
        let r = load_kernel(&mem, &mut f);
        assert!(
            matches!(
                &r,
                Err(BootError::Kernel(linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::InvalidElfMagicNumber
                )))
            ),
            "no ELF magic: {r:?}"
        );
    }
}
