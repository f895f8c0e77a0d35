//! [`FakePodLauncher`] and [`FakePodVm`]: a pod seam that boots nothing and mounts nothing.

use husk_lock::{CondvarExt, MutexExt};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use husk_protocol::AgentApi;

use crate::annotations::VmSize;
use crate::host_cgroup::CgroupTarget;
use crate::mounts::MountError;
use crate::pod::{ContainerFiles, PodLauncher, PodVm};
use crate::sandbox::{SandboxError, SandboxPaths};
use crate::watch::{Fault, Part};

use super::FakeAgent;

/// The host-side parts a [`FakePodVm`] pretends to run.
pub const FAKE_PARTS: [&str; 2] = ["husk-vmm", "virtiofsd"];

/// A pod VM that runs nothing: it hands out the launcher's fake agent and records its
/// destruction. Each of its pretend helpers is a pipe: the watcher gets the read end, and
/// [`FakePodVm::part_dies`] closes the write end, as a pidfd turns readable on an exit.
pub struct FakePodVm {
    paths: SandboxPaths,
    agent: Arc<FakeAgent>,
    destroyed: AtomicU32,
    killed: AtomicU32,
    /// Write ends of the parts still "running".
    alive: Mutex<HashMap<&'static str, OwnedFd>>,
    /// Read ends, handed out once by `parts`.
    watched: Mutex<Vec<Part>>,
}

impl FakePodVm {
    /// How many times it was destroyed (gracefully).
    pub fn destroyed(&self) -> u32 {
        self.destroyed.load(Ordering::SeqCst)
    }

    /// How many times it was torn down without the guest ([`PodVm::kill`]).
    pub fn killed(&self) -> u32 {
        self.killed.load(Ordering::SeqCst)
    }

    /// The helper `name` (one of [`FAKE_PARTS`]) exits.
    pub fn part_dies(&self, name: &str) {
        self.alive.locked().retain(|n, _| *n != name);
    }

    /// Whether any pretend helper still runs.
    pub fn parts_alive(&self) -> bool {
        !self.alive.locked().is_empty()
    }
}

impl PodVm for FakePodVm {
    fn agent(&self) -> Arc<dyn AgentApi> {
        self.agent.clone()
    }
    fn paths(&self) -> &SandboxPaths {
        &self.paths
    }
    fn diagnostics(&self) -> String {
        "fake pod: no logs".into()
    }
    fn exited(&self) -> bool {
        self.destroyed() > 0 || self.killed() > 0
    }
    fn parts(&self) -> Result<Vec<Part>, Fault> {
        Ok(std::mem::take(&mut *self.watched.locked()))
    }
    fn destroy(&self) {
        self.destroyed.fetch_add(1, Ordering::SeqCst);
        self.stop_all();
    }
    fn kill(&self) {
        self.killed.fetch_add(1, Ordering::SeqCst);
        self.stop_all();
    }
}

impl FakePodVm {
    /// As with the real VM: the guest is gone, the helpers too, and so is the pod
    /// directory.
    fn stop_all(&self) {
        self.agent.vanish();
        self.alive.locked().clear();
        let _ = std::fs::remove_dir_all(&self.paths.dir);
    }
}

#[derive(Default)]
struct LauncherState {
    starts: u32,
    fail_boot: bool,
    hold_boot: bool,
    vms: Vec<Arc<FakePodVm>>,
    shared: Vec<PathBuf>,
    cgroups: Vec<CgroupTarget>,
}

/// Boots [`FakePodVm`]s sharing one [`FakeAgent`]; can fail the boot as a guest that died
/// does. Sharing a container only creates its directories.
pub struct FakePodLauncher {
    agent: Arc<FakeAgent>,
    state: Mutex<LauncherState>,
    released: Condvar,
}

impl FakePodLauncher {
    /// A launcher whose VMs answer with `agent`.
    pub fn new(agent: Arc<FakeAgent>) -> Arc<Self> {
        Arc::new(FakePodLauncher {
            agent,
            state: Mutex::new(LauncherState::default()),
            released: Condvar::new(),
        })
    }

    /// Later boots block (after counting themselves in [`FakePodLauncher::starts`]) until
    /// [`FakePodLauncher::release_boots`]: a slow boot.
    pub fn hold_boots(&self) {
        self.state.locked().hold_boot = true;
    }

    /// Lets held boots go on.
    pub fn release_boots(&self) {
        self.state.locked().hold_boot = false;
        self.released.notify_all();
    }

    /// Later boots fail (`true`) with [`SandboxError::VmExited`], or succeed.
    pub fn fail_boots(&self, fail: bool) {
        self.state.locked().fail_boot = fail;
    }

    /// How many boots were tried.
    pub fn starts(&self) -> u32 {
        self.state.locked().starts
    }

    /// The VMs booted, oldest first.
    pub fn vms(&self) -> Vec<Arc<FakePodVm>> {
        self.state.locked().vms.clone()
    }

    /// The host cgroups asked for by the boots, oldest first.
    pub fn cgroups(&self) -> Vec<CgroupTarget> {
        self.state.locked().cgroups.clone()
    }

    /// The container directories shared so far.
    pub fn shared(&self) -> Vec<PathBuf> {
        self.state.locked().shared.clone()
    }
}

/// The message husk-vmm's log ends with in a boot failure of [`FakePodLauncher`].
pub const FAKE_VMM_LOG: &str = "vCPU 0: guest reset (triple fault)";

impl PodLauncher for Arc<FakePodLauncher> {
    fn share_container(&self, dir: &Path, files: ContainerFiles<'_>) -> Result<(), MountError> {
        let mk = |p: PathBuf| {
            std::fs::create_dir_all(&p).map_err(|source| MountError::Io { path: p, source })
        };
        mk(dir.join("rootfs"))?;
        if let Some(shared) = dir.parent() {
            for b in files.binds {
                mk(shared.join(crate::spec::VOLUMES_DIR).join(&b.name))?;
            }
        }
        self.state.locked().shared.push(dir.to_path_buf());
        Ok(())
    }

    fn start(
        &self,
        paths: SandboxPaths,
        _: VmSize,
        cgroup: &CgroupTarget,
    ) -> Result<Arc<dyn PodVm>, SandboxError> {
        let mut s = self.state.locked();
        s.starts += 1;
        s.cgroups.push(cgroup.clone());
        while s.hold_boot {
            s = self.released.wait_recovering(s);
        }
        if s.fail_boot {
            // A failed start removes what it made, the pod directory included.
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Err(SandboxError::VmExited {
                status: "exit status: 1".into(),
                console: String::new(),
                vmm_log: FAKE_VMM_LOG.into(),
            });
        }
        let mut alive = HashMap::new();
        let mut watched = Vec::new();
        for name in FAKE_PARTS {
            let (rd, wr) = nix::unistd::pipe().map_err(|e| SandboxError::Io {
                what: "pipe",
                path: paths.dir.clone(),
                source: e.into(),
            })?;
            alive.insert(name, wr);
            watched.push(Part { name, fd: rd });
        }
        let vm = Arc::new(FakePodVm {
            paths,
            agent: Arc::clone(&self.agent),
            destroyed: AtomicU32::new(0),
            killed: AtomicU32::new(0),
            alive: Mutex::new(alive),
            watched: Mutex::new(watched),
        });
        s.vms.push(Arc::clone(&vm));
        Ok(vm)
    }
}
