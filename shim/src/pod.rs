//! The seam between the Task service and the host side of a pod: putting a container's
//! files into the pod share, and booting the pod VM. The service only sees these traits, so
//! its unit tests plug in a fake that mounts nothing and boots nothing; the product plugs
//! in [`HostPodLauncher`] (host mounts, virtiofsd, husk-vmm, the agent connection).

use husk_lock::MutexExt;
use std::path::Path;
use std::sync::Arc;

use husk_protocol::AgentApi;

use crate::annotations::VmSize;
use crate::config::Config;
use crate::convert::RootfsMount;
use crate::host_cgroup::{CgroupTarget, HostCgroups};
use crate::mounts::{self, MountError};
use crate::sandbox::{Sandbox, SandboxError, SandboxPaths};
use crate::spec::HostBind;
use crate::vmm::VmLauncher;
use crate::watch::{Fault, Part};

/// What one container brings into the pod share.
#[derive(Debug, Clone, Copy)]
pub struct ContainerFiles<'a> {
    /// containerd's snapshot mounts (empty: `root` is ready to be bound).
    pub rootfs: &'a [RootfsMount],
    /// The spec's root directory on the host.
    pub root: &'a Path,
    /// Host paths bound in for the guest.
    pub binds: &'a [HostBind],
}

/// Starts pod VMs and prepares what they share; one per shim.
pub trait PodLauncher: Send + Sync {
    /// Makes a container's files visible under `dir` (`shared/<container-id>` of the pod):
    /// its rootfs at `dir/rootfs`, undone with [`mounts::remove_tree`], which only unmounts
    /// what lies below the directory; each host bind at `shared/.volumes/<name>`, bound by
    /// the first container of the pod that needs it and kept until the pod ends.
    fn share_container(&self, dir: &Path, files: ContainerFiles<'_>) -> Result<(), MountError>;

    /// Boots the pod VM whose files live at `paths`, its host side in the cgroup `cgroup`
    /// says, and waits until its agent answered. On error nothing it started is left
    /// running, and the pod directory and cgroup are removed.
    fn start(
        &self,
        paths: SandboxPaths,
        size: VmSize,
        cgroup: &CgroupTarget,
    ) -> Result<Arc<dyn PodVm>, SandboxError>;
}

/// A running pod VM, as the Task service uses it.
pub trait PodVm: Send + Sync {
    /// The client of the guest agent.
    fn agent(&self) -> Arc<dyn AgentApi>;
    /// The pod's files.
    fn paths(&self) -> &SandboxPaths;
    /// The end of the pod's logs, for error reports.
    fn diagnostics(&self) -> String;
    /// Whether the VM has already exited (the guest is gone).
    fn exited(&self) -> bool;
    /// Descriptors that turn readable when a host-side part of the pod dies, for the pod
    /// watcher ([`crate::watch`]); `Err` when one has died already.
    fn parts(&self) -> Result<Vec<Part>, Fault>;
    /// Powers the VM off, stops its helpers and removes the pod directory.
    fn destroy(&self);
    /// Tears the pod down at once without asking the guest (hung or gone): kills and
    /// reaps the VMM and helpers, removes the host cgroup and the pod directory.
    fn kill(&self);
}

/// The real launcher: host mounts, then [`Sandbox::start`] (the host cgroup, virtiofsd,
/// husk-vmm through `vmm`, the agent connection).
pub struct HostPodLauncher {
    config: Config,
    vmm: Box<dyn VmLauncher>,
    /// Held while binding volumes: two containers of a pod created at once must not both
    /// see a volume unbound and bind it twice.
    volumes: std::sync::Mutex<()>,
    cgroups: Box<dyn HostCgroups>,
}

impl HostPodLauncher {
    /// A launcher booting VMs with `vmm` as `config` says, their host side in cgroups as
    /// `config.host_cgroup` says.
    pub fn new(config: Config, vmm: Box<dyn VmLauncher>) -> Self {
        let cgroups = crate::host_cgroup::from_config(&config);
        HostPodLauncher {
            config,
            vmm,
            volumes: std::sync::Mutex::new(()),
            cgroups,
        }
    }
}

impl PodLauncher for HostPodLauncher {
    fn share_container(&self, dir: &Path, files: ContainerFiles<'_>) -> Result<(), MountError> {
        // `dir` is `<pod>/shared/<id>`: the pod directory is made private before anything
        // is mounted below it (the sandbox container's share comes before the VM).
        if let Some(shared) = dir.parent() {
            if let Some(pod_dir) = shared.parent() {
                crate::private::create_dir(&self.config.state_dir, pod_dir).map_err(|source| {
                    MountError::Io {
                        path: pod_dir.to_path_buf(),
                        source,
                    }
                })?;
            }
            // Before anything is mounted below it: virtiofsd's namespace sees later mounts
            // only through a shared mount ([`crate::share`]).
            std::fs::create_dir_all(shared).map_err(|source| MountError::Io {
                path: shared.to_path_buf(),
                source,
            })?;
            crate::share::make_shared(shared).map_err(|e| MountError::Io {
                path: shared.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        mounts::mount_rootfs(files.rootfs, files.root, &dir.join("rootfs"))?;
        if files.binds.is_empty() {
            return Ok(());
        }
        let (volumes, staging) = match dir.parent().and_then(|s| Some((s, s.parent()?))) {
            Some((shared, pod_dir)) => (
                shared.join(crate::spec::VOLUMES_DIR),
                pod_dir.join("staging"),
            ),
            None => return Err(MountError::RelativeSource(dir.to_path_buf())),
        };
        let _one_at_a_time = self.volumes.locked();
        std::fs::create_dir_all(&staging).map_err(|source| MountError::Io {
            path: staging.clone(),
            source,
        })?;
        crate::share::make_private(&staging).map_err(|e| MountError::Io {
            path: staging.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        for b in files.binds {
            let target = volumes.join(&b.name);
            crate::volume::share_volume(&b.source, &target, &b.options, &staging)?;
        }
        Ok(())
    }

    fn start(
        &self,
        paths: SandboxPaths,
        size: VmSize,
        cgroup: &CgroupTarget,
    ) -> Result<Arc<dyn PodVm>, SandboxError> {
        let sb = Sandbox::start(
            &self.config,
            self.vmm.as_ref(),
            self.cgroups.as_ref(),
            paths,
            size,
            cgroup,
        )?;
        Ok(Arc::new(sb))
    }
}

impl PodVm for Sandbox {
    fn agent(&self) -> Arc<dyn AgentApi> {
        Arc::clone(Sandbox::agent(self))
    }

    fn paths(&self) -> &SandboxPaths {
        Sandbox::paths(self)
    }

    fn diagnostics(&self) -> String {
        Sandbox::diagnostics(self)
    }

    fn exited(&self) -> bool {
        self.vm().exited()
    }

    fn parts(&self) -> Result<Vec<Part>, Fault> {
        Sandbox::parts(self)
    }

    fn destroy(&self) {
        Sandbox::destroy(self);
    }

    fn kill(&self) {
        Sandbox::kill(self);
    }
}
