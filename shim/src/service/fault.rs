//! A pod that died under its tasks: husk-vmm or virtiofsd exited, or the guest stopped
//! answering (health deadlines missed, or a Task call unanswered). The pod is torn down at
//! once without asking the guest, and every task and exec of it exits with
//! [`LOST_EXIT_STATUS`] (255, as Kata reports "VM gone"): `Wait` returns, `TaskExit` is
//! published, and containerd's `Delete` that follows needs no guest. `TaskExit` has no
//! field for a reason, so the reason is logged with each task's id and kept for the
//! errors of later calls.

use husk_lock::MutexExt;
use std::sync::Arc;
use std::time::SystemTime;

use husk_protocol::AgentError;

use crate::pod::PodVm;
use crate::process::Process;
use crate::watch::{Fault, HealthPolicy, PodWatch};

use super::waiter::LOST_EXIT_STATUS;
use super::TaskService;

/// Whether an agent error means the guest gave no answer at all (rather than an error
/// answer): the call timed out or its connection broke.
pub(super) fn unanswered(e: &AgentError) -> bool {
    matches!(e, AgentError::Timeout { .. } | AgentError::Transport { .. })
}

impl TaskService {
    /// Starts watching `vm`'s helpers and agent; a fault tears the pod down
    /// ([`TaskService::pod_failed`]).
    pub(super) fn watch_pod(&self, vm: &Arc<dyn PodVm>) {
        let me = self.me.clone();
        let watched = Arc::downgrade(vm);
        let on_fault = move |fault: Fault| {
            if let (Some(svc), Some(vm)) = (me.upgrade(), watched.upgrade()) {
                svc.pod_failed(&vm, &fault);
            }
        };
        let (parts, dead) = match vm.parts() {
            Ok(parts) => (parts, None),
            Err(fault) => (Vec::new(), Some(fault)),
        };
        let policy = HealthPolicy::from_config(&self.config);
        match PodWatch::start(parts, vm.agent(), policy, on_fault) {
            Ok(w) => *self.watch.locked() = Some(w),
            Err(e) => tracing::warn!("pod VM is not watched: {e}"),
        }
        if let Some(fault) = dead {
            // The caller holds the pod lock: torn down from another thread.
            let me = self.me.clone();
            let vm = Arc::clone(vm);
            std::thread::spawn(move || {
                if let Some(svc) = me.upgrade() {
                    svc.pod_failed(&vm, &fault);
                }
            });
        }
    }

    /// Tears down `vm` (if it is still this service's pod) because of `fault`, then
    /// reports every process of the pod that has not exited yet as exited with
    /// [`LOST_EXIT_STATUS`].
    ///
    /// The exits are claimed first (so a waiter whose guest call now fails does not report
    /// them again) and published after the teardown: once containerd sees the last exit
    /// it may delete the tasks and shut the shim down, and by then nothing of the pod is
    /// left on the host.
    pub(super) fn pod_failed(&self, vm: &Arc<dyn PodVm>, fault: &Fault) {
        let taken = {
            let mut pod = self.pod.locked();
            match pod.as_ref() {
                Some(current) if Arc::ptr_eq(current, vm) => pod.take(),
                _ => None,
            }
        };
        let Some(vm) = taken else {
            return;
        };
        tracing::error!("pod VM failed: {fault}; tearing it down");
        *self.fault.locked() = Some(fault.to_string());
        self.watch.locked().take();
        let lost: Vec<Arc<Process>> = self
            .all_processes()
            .into_iter()
            .filter(|p| !p.state().is_stopped() && p.claim_exit())
            .collect();
        vm.kill();
        self.oom.locked().take();
        let at = SystemTime::now();
        for p in lost {
            tracing::warn!(
                "task {} exec {:?}: exit status {LOST_EXIT_STATUS}: {fault}",
                p.id,
                p.exec_id
            );
            self.publish_exit(&p, LOST_EXIT_STATUS, at);
        }
    }

    /// Every process of every container.
    fn all_processes(&self) -> Vec<Arc<Process>> {
        let containers: Vec<_> = self.containers().values().cloned().collect();
        let mut all = Vec::new();
        for c in containers {
            all.push(Arc::clone(&c.init));
            all.extend(c.execs().values().cloned());
        }
        all
    }
}
