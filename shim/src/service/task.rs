//! The Task calls after `Create`: start, delete, exec, kill, pause/resume, state, wait,
//! pids, stats, update, and the stream calls.

use husk_lock::MutexExt;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::api::{
    CloseIORequest, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::ProcessInfo;
use husk_protocol::ErrorKind;

use crate::convert::{self, ExecTask, KillTask, ProcessView};
use crate::error::ShimError;
use crate::events::TaskEvent;
use crate::mounts;
use crate::process::Process;
use crate::state::{KillRefused, ProcState};
use crate::stdio::IoRelay;
use crate::watch::Fault;

use super::{fault, Result, TaskService};

/// The signal whose delivery a torn-down VM achieves.
const SIGKILL: u32 = 9;

impl TaskService {
    pub(super) fn do_start(self: &Arc<Self>, req: &StartRequest) -> Result<StartResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let agent = self.agent()?;
        p.state().start()?;
        if req.exec_id.is_empty() {
            agent.start_container(&req.id)?;
            p.transition(ProcState::start)?;
            self.events.publish(TaskEvent::Start(TaskStart {
                container_id: req.id.clone(),
                pid: p.pid(),
                ..Default::default()
            }));
        } else {
            let pid = agent.exec_process(&req.id, &req.exec_id, &p.process_json)?;
            p.set_pid(pid);
            p.set_relay(IoRelay::start(
                Arc::clone(&agent),
                &req.id,
                &req.exec_id,
                &p.stdio,
            ));
            p.transition(ProcState::start)?;
            self.events.publish(TaskEvent::ExecStarted(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }));
        }
        self.spawn_waiter(agent, Arc::clone(&p));
        Ok(StartResponse {
            pid: p.pid(),
            ..Default::default()
        })
    }

    pub(super) fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let state = p.state();
        state.check_delete()?;
        let (exit_status, exited_at) = match state {
            ProcState::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, exited_at),
            _ => (0, SystemTime::now()),
        };
        let resp = DeleteResponse {
            pid: p.pid(),
            exit_status,
            exited_at: MessageField::some(convert::timestamp(exited_at)),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            // The guest forgets it too, so the exec id can be used again.
            match self
                .agent()
                .map(|a| a.remove_process(&req.id, &req.exec_id))
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == Some(ErrorKind::NotFound) => {}
                Ok(Err(e)) => tracing::warn!("remove exec {}/{}: {e}", req.id, req.exec_id),
                Err(e) => tracing::debug!("remove exec {}/{}: {e}", req.id, req.exec_id),
            }
            p.drop_relay();
            c.execs().remove(&req.exec_id);
            return Ok(resp);
        }
        // No pod: it was torn down under the task (its files went with it), and the
        // delete needs no guest.
        let vm = self.pod.locked().clone();
        if let Some(vm) = &vm {
            match vm.agent().remove_container(&req.id) {
                Ok(()) => {}
                Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
                Err(e) if fault::unanswered(&e) => {
                    // A guest that does not answer is torn down, not left holding the
                    // delete (containerd's `delete -f` must always work).
                    let error = e.to_string();
                    self.pod_failed(
                        vm,
                        &Fault::Unanswered {
                            call: "RemoveContainer",
                            error,
                        },
                    );
                }
                Err(e) => tracing::warn!("remove container {}: {e}", req.id),
            }
            mounts::remove_tree_or_warn(&vm.paths().container_dir(&req.id));
        }
        p.drop_relay();
        for e in c.execs().values() {
            e.drop_relay();
        }
        let now_empty = {
            let mut all = self.containers();
            all.remove(&req.id);
            all.is_empty()
        };
        self.events.publish(TaskEvent::Delete(TaskDelete {
            container_id: req.id.clone(),
            pid: p.pid(),
            exit_status,
            exited_at: MessageField::some(convert::timestamp(exited_at)),
            ..Default::default()
        }));
        if now_empty {
            self.destroy_pod();
        }
        Ok(resp)
    }

    pub(super) fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let task = ExecTask::try_from(req)?;
        let c = self.container(&task.id)?;
        if !matches!(c.init.state(), ProcState::Running) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is {}, not running",
                task.id,
                c.init.state().name()
            )));
        }
        {
            let mut execs = c.execs();
            if execs.contains_key(&task.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} already exists",
                    task.exec_id
                )));
            }
            execs.insert(
                task.exec_id.clone(),
                Arc::new(Process::new(
                    &task.id,
                    &task.exec_id,
                    task.stdio.clone(),
                    task.process_json.clone(),
                )),
            );
        }
        self.events.publish(TaskEvent::ExecAdded(TaskExecAdded {
            container_id: task.id,
            exec_id: task.exec_id,
            ..Default::default()
        }));
        Ok(())
    }

    pub(super) fn do_kill(&self, req: &KillRequest) -> Result<()> {
        let k = KillTask::try_from(req)?;
        let (_, p) = self.process(&k.id, &k.exec_id)?;
        let exec = !k.exec_id.is_empty();
        let name = if exec { &k.exec_id } else { &k.id };
        match p.state().check_kill(exec, k.all) {
            Ok(()) => {}
            // containerd takes NotFound as "nothing left to kill".
            Err(KillRefused::Finished) => {
                return Err(ShimError::NotFound(format!(
                    "process {name} already finished"
                )))
            }
            Err(KillRefused::NotStarted) => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {name} is not started"
                )))
            }
        }
        let Some(vm) = self.pod.locked().clone() else {
            if self.fault.locked().is_some() {
                // Its pod died under it; its exit is being (or has been) reported.
                return if k.signal == SIGKILL {
                    Ok(())
                } else {
                    Err(ShimError::NotFound(format!(
                        "process {name} already finished"
                    )))
                };
            }
            return Err(ShimError::FailedPrecondition(
                "the pod VM is not running".into(),
            ));
        };
        let Err(e) = vm
            .agent()
            .signal_process(&k.id, &k.exec_id, k.signal, k.all)
        else {
            return Ok(());
        };
        let torn_down = !self
            .pod
            .locked()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &vm));
        if torn_down || p.state().is_stopped() {
            // The pod died while the signal was on its way: a SIGKILL got what it asked
            // for; for any other signal there is nothing left to signal.
            if k.signal == SIGKILL {
                return Ok(());
            }
            return Err(ShimError::NotFound(format!(
                "process {name} already finished"
            )));
        }
        if k.signal == SIGKILL && fault::unanswered(&e) {
            // A SIGKILL the guest does not take: tearing the VM down kills the process
            // all the same, and containerd's forced delete can go on.
            self.pod_failed(
                &vm,
                &Fault::Unanswered {
                    call: "SignalProcess(SIGKILL)",
                    error: e.to_string(),
                },
            );
            return Ok(());
        }
        Err(e.into())
    }

    pub(super) fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let (_, p) = self.process(id, "")?;
        let agent = self.agent()?;
        if pause {
            p.state().pause()?;
            agent.pause_container(id)?;
            p.transition(ProcState::pause)?;
            self.events.publish(TaskEvent::Paused(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            }));
        } else {
            p.state().resume()?;
            agent.resume_container(id)?;
            p.transition(ProcState::resume)?;
            self.events.publish(TaskEvent::Resumed(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            }));
        }
        Ok(())
    }

    pub(super) fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let bundle = c.bundle.display().to_string();
        Ok(StateResponse::from(ProcessView {
            id: &req.id,
            exec_id: &req.exec_id,
            bundle: &bundle,
            pid: p.pid(),
            state: p.state(),
            stdio: &p.stdio,
        }))
    }

    /// Blocks until the process has exited.
    pub(super) fn do_wait(&self, req: &WaitRequest) -> Result<WaitResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let (exit_status, at) = p.wait();
        Ok(WaitResponse {
            exit_status,
            exited_at: MessageField::some(convert::timestamp(at)),
            ..Default::default()
        })
    }

    pub(super) fn do_pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        self.container(&req.id)?;
        let pids = self.agent()?.list_processes(&req.id)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub(super) fn do_stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        self.container(&req.id)?;
        let stats = self.agent()?.container_stats(&req.id)?;
        let any = containerd_shim::util::convert_to_any(Box::new(convert::metrics(&stats)))
            .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    pub(super) fn do_update(&self, req: &UpdateTaskRequest) -> Result<()> {
        self.container(&req.id)?;
        let res = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&res.value).map_err(|e| {
            ShimError::InvalidArgument(format!("resources are not OCI LinuxResources: {e}"))
        })?;
        self.agent()?.update_container(&req.id, &res.value)?;
        Ok(())
    }

    pub(super) fn do_resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        self.process(&req.id, &req.exec_id)?;
        self.agent()?
            .resize_terminal(&req.id, &req.exec_id, req.height, req.width)?;
        Ok(())
    }

    pub(super) fn do_close_io(&self, req: &CloseIORequest) -> Result<()> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.with_relay(|r| r.close_stdin());
        }
        Ok(())
    }

    /// The guest pid of a container's init, 0 for an unknown container.
    pub(super) fn task_pid(&self, id: &str) -> u32 {
        self.container(id).map(|c| c.init.pid()).unwrap_or(0)
    }

    /// Whether the shim serves no container any more (it may exit).
    pub(super) fn is_idle(&self) -> bool {
        self.containers().is_empty()
    }
}
