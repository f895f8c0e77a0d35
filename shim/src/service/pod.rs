//! The pod VM's life inside the service: booted for a standalone container or a pod's
//! sandbox container, shared by the pod's other containers, destroyed after the last
//! container is deleted or when the shim exits.

use husk_lock::MutexExt;
use std::sync::Arc;
use std::time::Instant;

use crate::annotations::{PodRole, VmSize};
use crate::error::ShimError;
use crate::host_cgroup::CgroupTarget;
use crate::oom::{self, OomLimits, OomMonitor};
use crate::pod::PodVm;
use crate::sandbox::SandboxPaths;

use super::{Result, TaskService};

impl TaskService {
    /// The pod VM, started now for a standalone container or a pod sandbox. Returns the
    /// pod and whether this call started it.
    ///
    /// `prepare_share` puts the container's files into the pod share. It runs under the pod
    /// lock and, for the first container, before the VM boots, so those files are there
    /// when virtiofsd opens the share and the guest mounts it. A VM that fails to boot
    /// (its guest died, the agent never answered) fails the create: there is no second
    /// boot, and the error says how husk-vmm ended and what it logged.
    pub(super) fn sandbox_for(
        &self,
        role: &PodRole,
        id: &str,
        size: VmSize,
        cgroup: &CgroupTarget,
        prepare_share: &dyn Fn() -> Result<()>,
    ) -> Result<(Arc<dyn PodVm>, bool)> {
        let mut pod = self.pod.locked();
        if let Some(vm) = pod.as_ref() {
            prepare_share()?;
            return Ok((Arc::clone(vm), false));
        }
        if let PodRole::Member { sandbox_id } = role {
            return Err(ShimError::FailedPrecondition(format!(
                "the VM of pod {sandbox_id} is not running in this shim"
            )));
        }
        let paths = SandboxPaths::new(&self.config.state_dir, &self.namespace, role.pod_id(id));
        prepare_share()?;
        let started = Instant::now();
        let vm = self.launcher.start(paths, size, cgroup)?;
        tracing::info!("pod VM for {id} up in {:?}", started.elapsed());
        self.watch_oom(vm.as_ref(), id);
        *pod = Some(Arc::clone(&vm));
        self.watch_pod(&vm);
        Ok((vm, true))
    }

    /// Starts publishing the guest's OOM kills; a pod without them still runs.
    fn watch_oom(&self, vm: &dyn PodVm, id: &str) {
        let source = Arc::new(oom::AgentOom(vm.agent()));
        let containers = Arc::clone(&self.containers);
        let known: oom::KnownContainers =
            Arc::new(move |id: &str| containers.locked().contains_key(id));
        let events = Arc::clone(&self.events);
        match OomMonitor::start(source, events, known, OomLimits::default(), oom::POLL_WAIT) {
            Ok(m) => *self.oom.locked() = Some(m),
            Err(e) => tracing::warn!("no OOM events for pod of {id}: {e}"),
        }
    }

    /// Stops the watcher and the OOM monitor and destroys the pod VM, if one runs.
    pub(super) fn destroy_pod(&self) {
        // First: the helpers it watches are about to exit on purpose.
        self.watch.locked().take();
        self.oom.locked().take();
        let vm = self.pod.locked().take();
        if let Some(vm) = vm {
            vm.destroy();
        }
    }
}
