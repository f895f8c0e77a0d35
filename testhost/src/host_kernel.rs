//! The test host's own kernel: Debian's cloud kernel (`linux-image-cloud-amd64`),
//! the three modules that give it `/dev/kvm` (irqbypass, kvm, kvm-amd) and the
//! networking modules a Kubernetes node's container runtime needs
//! ([`NET_MODULES`]).
//!
//! The `.deb` is downloaded with `apt-get download` and unpacked with
//! `dpkg-deb`; the ELF `vmlinux` is recovered from the bzImage's LZ4 payload
//! because QEMU's microvm machine boots an ELF directly. Everything is cached
//! under `<cache>/testhost/<package>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use husk_rootfs::lz4_legacy;

use crate::module_deps::{self, ModuleIndex};

/// The meta package naming the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules to load, in order, relative to `lib/modules/<release>/kernel/`.
pub const KVM_MODULES: &[&str] = &[
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
];

/// Networking (and overlayfs) modules the test host loads after KVM, by
/// module name; their dependencies come from the package's `modules.dep`.
///
/// They are there because the e2e tests compare husk with runc on the same
/// test host: runc's half runs ordinary containers, whose pod networking is
/// set up by Debian's CNI plugins (`bridge`, `host-local`, `portmap`,
/// `loopback`). Those need a bridge with veth pairs and NAT: masquerading
/// (`bridge`'s ipMasq), DNAT with marks, comments, address-type, multiport and
/// conntrack matches (`portmap`), through iptables-legacy (`ip_tables`) or
/// iptables-nft (`nf_tables` and `nft_compat`) or native nftables rules. The
/// test host has no `modprobe`, so nothing is loaded on demand: whatever a
/// tool would autoload has to be here. `br_netfilter` is deliberately absent
/// (the tests do not filter bridged traffic). `tun` gives taps, `overlay` the
/// containerd snapshotter's filesystem. A module that fails to load is only a
/// warning: the KVM tests still run.
pub const NET_MODULES: &[&str] = &[
    // links
    "bridge",
    "veth",
    "tun",
    "overlay",
    // iptables-legacy: the filter and nat tables
    "iptable_filter",
    "iptable_nat",
    // iptables-nft and nft: nat chains, masquerade, redirect, conntrack
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_redir",
    "nft_ct",
    // matches and targets both iptables flavours use
    "xt_tcpudp",
    "xt_REDIRECT",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_mark",
    "xt_comment",
    "xt_addrtype",
    "xt_multiport",
    "xt_conntrack",
    // portmap flushes stale UDP conntrack entries over netlink
    "nf_conntrack_netlink",
];

/// The package's module index, kept in the cache so that a cache hit can
/// resolve [`NET_MODULES`] again (and notice files it lacks).
const INDEX_FILES: [&str; 2] = ["modules.dep", "modules.builtin"];

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
    /// The network modules could not be resolved from the package's index.
    #[error("network modules of the test host: {0}")]
    Modules(#[from] module_deps::Error),
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
    pub kvm_modules: Vec<PathBuf>,
    /// The network modules with their dependencies, in load order.
    pub net_modules: Vec<PathBuf>,
}

impl HostKernel {
    /// The kernel cached in `dir`: file paths only, whether they exist or not.
    /// Fails when the cached module index is missing (a cache made before
    /// the network modules) or does not resolve.
    fn in_cache(dir: &Path) -> Result<Self> {
        let kvm_modules = KVM_MODULES
            .iter()
            .map(|m| dir.join(cached_name(m)))
            .collect();
        let net_modules = cached_index(dir)?
            .load_order(NET_MODULES)?
            .iter()
            .map(|m| dir.join(cached_name(m)))
            .collect();
        Ok(Self {
            vmlinux: dir.join("vmlinux"),
            kvm_modules,
            net_modules,
        })
    }

    /// The kernel cached in `dir` if every file it needs is there.
    fn cached(dir: &Path) -> Option<Self> {
        let kernel = Self::in_cache(dir).ok()?;
        let mut files = std::iter::once(&kernel.vmlinux)
            .chain(&kernel.kvm_modules)
            .chain(&kernel.net_modules);
        files.all(|f| f.is_file()).then_some(kernel)
    }
}

/// The file name a module has in the cache and the test host: decompressed.
fn cached_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".xz").unwrap_or(file).to_string()
}

/// Reads the module index copied into the cache directory `dir`.
fn cached_index(dir: &Path) -> Result<ModuleIndex> {
    let [dep, builtin] = INDEX_FILES.map(|f| {
        let path = dir.join(f);
        std::fs::read_to_string(&path).map_err(io(&path))
    });
    Ok(ModuleIndex::parse(&dep?, &builtin?)?)
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
    if let Some(kernel) = HostKernel::cached(&dir) {
        return Ok(kernel);
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
    let release_dir = tree.join("lib/modules").join(release);
    stage_modules(&tree, release, &release_dir, &staging)?;
    std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
    std::fs::remove_file(&deb).map_err(io(&deb))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).map_err(io(&dir))?;
    HostKernel::in_cache(&dir)
}

/// Copies the module index, the KVM modules and the network modules (with
/// their dependencies) of the unpacked package `tree` into `staging`.
fn stage_modules(tree: &Path, release: &str, release_dir: &Path, staging: &Path) -> Result<()> {
    ensure_modules_dep(tree, release, release_dir)?;
    for file in INDEX_FILES {
        let src = release_dir.join(file);
        std::fs::copy(&src, staging.join(file)).map_err(io(&src))?;
    }
    for m in KVM_MODULES {
        let src = existing_module(release_dir.join("kernel").join(m));
        install_module(&src, &staging.join(cached_name(m)))?;
    }
    for m in cached_index(staging)?.load_order(NET_MODULES)? {
        install_module(&release_dir.join(&m), &staging.join(cached_name(&m)))?;
    }
    Ok(())
}

/// Where `depmod` is: `/usr/sbin` is not on an ordinary user's PATH on Debian.
fn depmod_program() -> PathBuf {
    ["/usr/sbin/depmod", "/sbin/depmod"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("depmod"))
}

/// Makes sure the unpacked package has a `modules.dep`: Debian's image
/// packages do not ship one (their postinst runs `depmod`), so run `depmod`
/// on the unpacked tree.
fn ensure_modules_dep(tree: &Path, release: &str, release_dir: &Path) -> Result<()> {
    let dep = release_dir.join("modules.dep");
    if dep.is_file() {
        return Ok(());
    }
    run(Command::new(depmod_program())
        .arg("-b")
        .arg(tree)
        .arg(release))?;
    if !dep.is_file() {
        return Err(Error::Layout(format!(
            "`depmod -b` wrote no {}",
            dep.display()
        )));
    }
    Ok(())
}

/// `path`, or the `.ko.xz` beside it when only that exists (newer Debian
/// kernels compress their modules).
fn existing_module(path: PathBuf) -> PathBuf {
    let xz = path.with_extension("ko.xz");
    if !path.exists() && xz.exists() {
        xz
    } else {
        path
    }
}

/// Copies the module `src` to `dst`, decompressing a `.ko.xz`: busybox's
/// insmod wants them plain.
fn install_module(src: &Path, dst: &Path) -> Result<()> {
    if src.extension().is_none_or(|e| e != "xz") {
        std::fs::copy(src, dst).map_err(io(src))?;
        return Ok(());
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(src)
        .output()
        .map_err(io(src))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("xz -dc {}", src.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::write(dst, out.stdout).map_err(io(dst))
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

    /// A cache directory as `prepare` leaves it, with `dep` as the module
    /// index (none built in), without any network module file.
    fn fake_cache(dir: &Path, dep: &str) {
        std::fs::write(dir.join("modules.dep"), dep).unwrap();
        std::fs::write(dir.join("modules.builtin"), "").unwrap();
        std::fs::write(dir.join("vmlinux"), "elf").unwrap();
        for m in KVM_MODULES {
            std::fs::write(dir.join(cached_name(m)), "ko").unwrap();
        }
    }

    /// A modules.dep naming every module of `NET_MODULES`, without deps.
    fn net_dep() -> String {
        NET_MODULES
            .iter()
            .map(|m| format!("kernel/net/{m}.ko.xz:\n"))
            .collect()
    }

    #[test]
    fn cached_names_are_decompressed_file_names() {
        assert_eq!(cached_name("kernel/net/bridge/bridge.ko.xz"), "bridge.ko");
        assert_eq!(cached_name("arch/x86/kvm/kvm-amd.ko"), "kvm-amd.ko");
    }

    #[test]
    fn a_complete_cache_is_a_hit_with_net_modules_in_order() {
        let dir = tempfile::tempdir().unwrap();
        fake_cache(dir.path(), &net_dep());
        for m in NET_MODULES {
            std::fs::write(dir.path().join(format!("{m}.ko")), "ko").unwrap();
        }
        let kernel = HostKernel::cached(dir.path()).expect("cache hit");
        assert_eq!(kernel.kvm_modules.len(), KVM_MODULES.len());
        let names: Vec<_> = kernel
            .net_modules
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let expected: Vec<_> = NET_MODULES.iter().map(|m| format!("{m}.ko")).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_cache_from_before_the_net_modules_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        fake_cache(dir.path(), &net_dep());
        std::fs::remove_file(dir.path().join("modules.dep")).unwrap();
        assert!(HostKernel::cached(dir.path()).is_none(), "no module index");
        fake_cache(dir.path(), &net_dep());
        assert!(HostKernel::cached(dir.path()).is_none(), "no net modules");
    }

    #[test]
    fn plain_and_xz_modules_are_installed_plain() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.ko");
        std::fs::write(&plain, b"\x7fELF module").unwrap();
        let out = dir.path().join("out.ko");
        install_module(&plain, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"\x7fELF module");
        let status = Command::new("xz").arg("-k").arg(&plain).status().unwrap();
        assert!(status.success());
        let xz = dir.path().join("a.ko.xz");
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(existing_module(plain), xz);
        let out2 = dir.path().join("out2.ko");
        install_module(&xz, &out2).unwrap();
        assert_eq!(std::fs::read(&out2).unwrap(), b"\x7fELF module");
    }
}
