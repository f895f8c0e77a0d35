//! The test host's own kernel: Debian's cloud kernel (`linux-image-cloud-amd64`)
//! and the three modules that give it `/dev/kvm` (irqbypass, kvm, kvm-amd).
//!
//! The `.deb` is downloaded with `apt-get download` and unpacked with
//! `dpkg-deb`; the ELF `vmlinux` is recovered from the bzImage's LZ4 payload
//! because QEMU's microvm machine boots an ELF directly. Everything is cached
//! under `<cache>/testhost/<package>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use husk_rootfs::lz4_legacy;

/// The meta package naming the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules to load, in order, relative to `lib/modules/<release>/kernel/`.
pub const KVM_MODULES: &[&str] = &[
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
];

/// Errors of preparing the host kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// What went wrong.
        detail: String,
    },
    /// The package does not have the expected layout.
    #[error("unexpected {META_PACKAGE} layout: {0}")]
    Layout(String),
    /// The bzImage payload could not be decoded.
    #[error("cannot extract vmlinux from {path}: {reason}")]
    Extract {
        /// The vmlinuz.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A prepared host kernel.
#[derive(Debug, Clone)]
pub struct HostKernel {
    /// The ELF vmlinux QEMU boots.
    pub vmlinux: PathBuf,
    /// The KVM modules, in load order.
    pub modules: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds the concrete image package the meta package depends on,
/// e.g. `linux-image-6.1.0-56-cloud-amd64`, in apt suite `suite` (e.g.
/// `bookworm-backports`) or else the default candidate.
pub fn current_package(suite: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("apt-cache");
    if let Some(suite) = suite {
        cmd.args(["-t", suite]);
    }
    let text = run(cmd.args(["depends", META_PACKAGE]))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Layout(format!(
                "no image package in `apt-cache depends {META_PACKAGE}`"
            ))
        })
}

/// Magic of a zstd frame (Debian's 6.12 kernels), little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decodes a bzImage payload: LZ4 legacy frames (Debian's 6.1 kernels) or a
/// zstd frame (6.12). Both carry a trailing size word after the frame.
fn decompress_payload(payload: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if payload.starts_with(&ZSTD_MAGIC) {
        let mut out = Vec::new();
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| format!("zstd: {e}"))?;
        std::io::Read::read_to_end(&mut decoder, &mut out).map_err(|e| format!("zstd: {e}"))?;
        return Ok(out);
    }
    lz4_legacy::decompress(payload).map_err(|e| e.to_string())
}

/// Extracts the ELF kernel from a bzImage whose payload is LZ4- or zstd-compressed.
pub fn extract_vmlinux(bzimage: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let u32_at = |at: usize| -> Option<u32> {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS signature)".into());
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let offset = u32_at(0x248).ok_or("truncated header")? as usize;
    let length = u32_at(0x24c).ok_or("truncated header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = bzimage
        .get(start..start + length)
        .ok_or("payload out of range")?;
    let elf = decompress_payload(payload)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err("payload is not an ELF image".into());
    }
    Ok(elf)
}

/// Prepares (or finds cached) the host kernel of apt suite `suite` (the
/// default candidate when `None`) under `cache_root`.
pub fn prepare(cache_root: &Path, suite: Option<&str>) -> Result<HostKernel> {
    let package = current_package(suite)?;
    let dir = cache_root.join("testhost").join(&package);
    let vmlinux = dir.join("vmlinux");
    let modules: Vec<PathBuf> = KVM_MODULES
        .iter()
        .map(|m| dir.join(Path::new(m).file_name().expect("module paths have names")))
        .collect();
    if vmlinux.is_file() && modules.iter().all(|m| m.is_file()) {
        return Ok(HostKernel { vmlinux, modules });
    }
    let staging = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    run(Command::new("apt-get")
        .current_dir(&staging)
        .args(["download", &package]))?;
    let deb = std::fs::read_dir(&staging)
        .map_err(io(&staging))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::Layout("apt-get download produced no .deb".into()))?;
    let tree = staging.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let release = package.trim_start_matches("linux-image-");
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    let bz = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;
    let elf = extract_vmlinux(&bz).map_err(|reason| Error::Extract {
        path: vmlinuz.clone(),
        reason,
    })?;
    std::fs::write(staging.join("vmlinux"), elf).map_err(io(&staging))?;
    let module_root = tree.join("lib/modules").join(release).join("kernel");
    for m in KVM_MODULES {
        let src = module_root.join(m);
        let dst = staging.join(Path::new(m).file_name().expect("module paths have names"));
        // Newer Debian kernels ship `.ko.xz`; busybox's insmod wants them plain.
        let xz = src.with_extension("ko.xz");
        if !src.exists() && xz.exists() {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .map_err(io(&xz))?;
            if !out.status.success() {
                return Err(Error::Command {
                    command: format!("xz -dc {}", xz.display()),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            std::fs::write(&dst, out.stdout).map_err(io(&dst))?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
    std::fs::remove_file(&deb).map_err(io(&deb))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).map_err(io(&dir))?;
    Ok(HostKernel { vmlinux, modules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_bzimage() {
        assert!(extract_vmlinux(&[0u8; 4096]).unwrap_err().contains("HdrS"));
    }

    #[test]
    fn extracts_synthetic_bzimage() {
        let elf = [b"\x7fELF".as_slice(), &[9u8; 5000]].concat();
        // As Debian's payload: one legacy frame, then the appended size word.
        let mut payload = lz4_legacy::compress(&elf);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut image = vec![0u8; 0x400];
        image[0x1f1] = 1; // one setup sector: protected-mode code at 1024
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(&payload);
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn extracts_a_zstd_payload_with_its_trailing_size_word() {
        let elf = [b"\x7fELF".as_slice(), &[7u8; 9000]].concat();
        let mut payload = ruzstd::encoding::compress_to_vec(
            elf.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(decompress_payload(&payload).unwrap(), elf);
        assert!(decompress_payload(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]).is_err());
    }
}
