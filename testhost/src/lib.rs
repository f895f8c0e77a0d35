//! The husk test host: a QEMU (TCG) virtual machine in which `/dev/kvm` is
//! real KVM, for hosts whose own `/dev/kvm` cannot run an ordinary guest
//! (here: PVM, which has no VT-x/AMD-V).
//!
//! QEMU's TCG emulates AMD SVM with nested paging under `-cpu max`. The test
//! host boots Debian's cloud kernel, loads `kvm.ko` and `kvm-amd.ko` from the
//! same package (then, not fatally, the bridge, veth and netfilter modules a
//! container runtime's CNI plugins need), and runs one shell command with the files a caller asked
//! for (and their shared-library closure) in its initramfs. Its console is
//! streamed to the caller; the command's exit status comes back as the
//! result. The QEMU process is always killed when the run ends, a timeout
//! included.
//!
//! On a host with hardware virtualisation none of this is needed:
//! [`hardware_kvm_available`] tells the caller to run directly instead.

pub mod closure;
pub mod host_kernel;
pub mod image;
pub mod module_deps;
pub mod qemu;

pub use image::{HostFile, TestHostImage};
pub use qemu::{RunOutcome, TestHost, TestHostConfig, Watch};

/// Parameters for `kvm-amd.ko` in the test host unless a caller says
/// otherwise (`HUSK_TESTHOST_KVM_AMD` overrides them for the CLI and xtask).
pub const DEFAULT_KVM_AMD_PARAMS: &str = "";

/// The kvm-amd parameters to use: `HUSK_TESTHOST_KVM_AMD` or the default.
pub fn kvm_amd_params() -> String {
    std::env::var("HUSK_TESTHOST_KVM_AMD").unwrap_or_else(|_| DEFAULT_KVM_AMD_PARAMS.to_string())
}

/// True when this host can run ordinary KVM guests itself: `/dev/kvm` exists
/// and the CPU advertises VT-x or AMD-V. A PVM `/dev/kvm` does not count.
pub fn hardware_kvm_available() -> bool {
    if std::env::var_os("HUSK_FORCE_TESTHOST").is_some() {
        return false;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let pvm = modules.lines().any(|l| l.starts_with("kvm_pvm "));
    has_virt && !pvm && std::path::Path::new("/dev/kvm").exists()
}
