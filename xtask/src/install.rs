//! `cargo xtask install`: puts husk where containerd and the shim's default
//! configuration look for it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::artifacts;

/// Binaries containerd and the shim run, by their name in the bin directory.
const HOST_BINARIES: &[&str] = &["containerd-shim-husk-v2", "husk-vmm"];

fn copy(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    // Copy to a temporary name and rename, so a running shim never sees a half-written file.
    let tmp = dst.with_extension("husk-install");
    std::fs::copy(src, &tmp).with_context(|| format!("copy {}", src.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("install {}", dst.display()))?;
    println!("installed {}", dst.display());
    Ok(())
}

/// Builds everything and installs the host binaries into `<prefix>/bin` and
/// the guest kernel and initramfs into `share_dir`.
pub fn run(prefix: &Path, share_dir: &Path) -> Result<bool> {
    let a = artifacts::build_all()?;
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("create {}", bin.display()))?;
    std::fs::create_dir_all(share_dir)
        .with_context(|| format!("create {}", share_dir.display()))?;
    for name in HOST_BINARIES {
        copy(&a.bin_dir.join(name), &bin.join(name), 0o755)?;
    }
    match artifacts::virtiofsd() {
        Some(v) => copy(&v, &bin.join("virtiofsd"), 0o755)?,
        None => eprintln!("xtask: virtiofsd not found: `cargo install --locked virtiofsd` first"),
    }
    copy(&a.kernel, &share_dir.join("vmlinux"), 0o644)?;
    copy(&a.initrd, &share_dir.join("initrd.img"), 0o644)?;
    println!(
        "husk installed; register runtime io.containerd.husk.v2 in containerd (README, \
         \"Using husk with containerd\")"
    );
    Ok(true)
}
