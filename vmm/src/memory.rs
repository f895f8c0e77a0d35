//! Guest RAM: one memfd, mapped `MAP_SHARED`, split around the MMIO hole.
//!
//! Sharing the memfd lets a vhost-user backend (virtiofsd) map the same pages.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::memory_regions;

/// Guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<()>;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("memfd_create: {0}")]
    Memfd(std::io::Error),
    /// ftruncate of the memfd failed.
    #[error("sizing the memfd to {0} bytes: {1}")]
    Truncate(u64, std::io::Error),
    /// Mapping the memory failed.
    #[error("mapping guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// Creates `size` bytes of guest RAM backed by a fresh memfd.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let name = CString::new("husk-guest-ram").expect("static name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size, e))?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let ranges: Vec<_> = memory_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let r = (
                GuestAddress(addr),
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len;
            r
        })
        .collect();
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges)?;
    for region in mem.iter() {
        // SAFETY: the range is exactly one mapping owned by `mem`; MADV_HUGEPAGE only changes
        // how the kernel backs it. Ignored (EINVAL) where shmem THP is unavailable.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    Ok(mem)
}

/// Test helper: guest memory of `size` bytes with the production layout.
#[cfg(test)]
pub fn anonymous_memory(size: u64) -> GuestMemoryMmap {
    create_guest_memory(size).expect("create test guest memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_file_backed_and_shared() {
        let mem = create_guest_memory(16 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert!(region.file_offset().is_some());
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        let v: u32 = mem.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0xdead_beef);
        // The write is visible through the memfd.
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 4];
        region
            .file_offset()
            .unwrap()
            .file()
            .read_exact_at(&mut buf, 0x1000)
            .unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        let _ = mem.check_address(GuestAddress(0x1000)).unwrap();
    }
}
