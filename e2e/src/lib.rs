//! End-to-end tests of husk that need a host with real KVM.
//!
//! The tests in `tests/` boot real guests with the real guest kernel. They
//! are built statically and run by `cargo xtask e2e`: directly on a host
//! with VT-x/AMD-V, or inside the nested-KVM test host (crate
//! `husk-testhost`) elsewhere. They find what they need through
//! [`Artifacts::from_env`].

use husk_lock::MutexExt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod cmd;
pub mod containerd;
pub mod cri;
pub mod leftovers;
pub mod oci_image;
pub mod pods;
pub mod soak;

/// Environment variable: the guest `vmlinux`.
pub const ENV_KERNEL: &str = "HUSK_KERNEL";
/// Environment variable: the agent initramfs.
pub const ENV_INITRD: &str = "HUSK_INITRD";
/// Environment variable: directory of husk's and helper binaries.
pub const ENV_BIN_DIR: &str = "HUSK_BIN_DIR";
/// Environment variable: a scratch directory the tests may fill.
pub const ENV_WORK_DIR: &str = "HUSK_WORK_DIR";

/// Where the artifacts under test are.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The agent initramfs.
    pub initrd: PathBuf,
    /// Directory with `husk-vmm`, `husk-agent`, `containerd-shim-husk-v2`,
    /// `husk-guest-probe`, `virtiofsd`, `busybox`.
    pub bin_dir: PathBuf,
    /// Scratch directory.
    pub work_dir: PathBuf,
}

fn required(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!("{name} is not set: run the end-to-end tests with `cargo xtask e2e`"),
    }
}

impl Artifacts {
    /// Reads the artifact locations from the environment; panics with a
    /// pointer to `cargo xtask e2e` when they are missing.
    pub fn from_env() -> Self {
        let work_dir = std::env::var_os(ENV_WORK_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Self {
            kernel: required(ENV_KERNEL),
            initrd: required(ENV_INITRD),
            bin_dir: required(ENV_BIN_DIR),
            work_dir,
        }
    }

    /// The path of binary `name` in the bin directory.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A fresh, empty scratch directory named after `test`.
    pub fn scratch(&self, test: &str) -> PathBuf {
        let dir = self.work_dir.join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        dir
    }
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held. Tests wait
/// with this for what they assert instead of sleeping a fixed time first.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test's environment: the artifacts, a fresh work directory, and the
/// lock that runs the tests of a test binary one at a time (nested guests
/// are slow; one VM at a time keeps their timing sane).
pub struct TestEnv {
    /// The artifacts under test.
    pub artifacts: Artifacts,
    /// This test's own scratch directory.
    pub work: PathBuf,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl TestEnv {
    /// Takes the lock, reads the artifacts and makes a fresh `<work_dir>/<name>-<pid>`.
    pub fn new(name: &str) -> Self {
        static SERIAL: Mutex<()> = Mutex::new(());
        let guard = SERIAL.locked();
        let artifacts = Artifacts::from_env();
        let work = artifacts.scratch(&format!("{name}-{}", std::process::id()));
        Self {
            artifacts,
            work,
            _one_at_a_time: guard,
        }
    }

    /// The busybox binary: the bin directory's, else the system's.
    pub fn busybox(&self) -> PathBuf {
        let p = self.bin("busybox");
        if p.exists() {
            p
        } else {
            PathBuf::from("/bin/busybox")
        }
    }
}

impl Deref for TestEnv {
    type Target = Artifacts;

    fn deref(&self) -> &Artifacts {
        &self.artifacts
    }
}
