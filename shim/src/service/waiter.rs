//! One thread per started process waits for its exit in the guest and reports it.

use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::MessageField;
use husk_protocol::AgentApi;

use crate::convert;
use crate::events::TaskEvent;
use crate::process::Process;

use super::TaskService;

/// Exit status reported when the agent cannot say: the VM, a helper of it, or the guest
/// died or hung under the process (255, as Kata reports a VM that is gone; a guest
/// process never ends with it, since a signal gives 128 + n, at most 128 + 64).
pub(super) const LOST_EXIT_STATUS: u32 = 255;

impl TaskService {
    /// Waits (on its own thread) for `p` to exit, lets its output drain, then publishes
    /// `TaskExit` and records the exit, unless the pod's teardown claimed it first.
    pub(super) fn spawn_waiter(self: &Arc<Self>, agent: Arc<dyn AgentApi>, p: Arc<Process>) {
        let svc = Arc::clone(self);
        std::thread::spawn(move || {
            let status = match agent.wait_process(&p.id, &p.exec_id, None) {
                Ok(w) => u32::try_from(w.exit_status).unwrap_or(LOST_EXIT_STATUS),
                Err(e) => {
                    tracing::warn!("wait {}/{}: {e}", p.id, p.exec_id);
                    LOST_EXIT_STATUS
                }
            };
            if !p.claim_exit() {
                // The pod's teardown reported it (the VM died under it).
                return;
            }
            let drained = p
                .with_relay(|r| r.wait_output(svc.config.io_drain_timeout()))
                .unwrap_or(true);
            if !drained {
                tracing::warn!("output of {}/{} not drained in time", p.id, p.exec_id);
            }
            svc.publish_exit(&p, status, SystemTime::now());
        });
    }

    /// Publishes `TaskExit` for `p`, then records the exit. The event is queued before
    /// the process is marked stopped: `Wait` returns and `Delete` is allowed only once the
    /// process is stopped, so containerd always sees the exit before the delete.
    pub(super) fn publish_exit(&self, p: &Process, status: u32, at: SystemTime) {
        self.events.publish(TaskEvent::Exit(TaskExit {
            container_id: p.id.clone(),
            id: if p.exec_id.is_empty() {
                p.id.clone()
            } else {
                p.exec_id.clone()
            },
            pid: p.pid(),
            exit_status: status,
            exited_at: MessageField::some(convert::timestamp(at)),
            ..Default::default()
        }));
        p.exited(status, at);
    }
}
