//! The shim v2 Task service: every call is converted once (`convert`), handled against the
//! pod's VM and agent, and answered.

use husk_lock::MutexExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::ExitSignal;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::mount::Mount;
use containerd_shim_protos::types::task::ProcessInfo;
use husk_protocol::{AgentApi, ErrorKind};

use crate::annotations::{PodRole, VmSize};
use crate::config::Config;
use crate::convert::{self, CreateTask, ExecTask, KillTask, ProcessView};
use crate::error::ShimError;
use crate::events::{EventSink, TaskEvent};
use crate::mounts;
use crate::oom::{self, OomMonitor};
use crate::process::Process;
use crate::sandbox::{self, Sandbox, SandboxPaths};
use crate::spec;
use crate::state::ProcState;
use crate::stdio::IoRelay;
use crate::vmm::VmLauncher;

/// Exit status reported when the agent cannot say (the VM died).
const LOST_EXIT_STATUS: u32 = 255;

/// A container of the pod.
struct Container {
    bundle: PathBuf,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.locked()
    }
}

/// The Task service of one shim (one pod).
pub struct TaskService {
    config: Config,
    namespace: String,
    launcher: Box<dyn VmLauncher>,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    pod: Mutex<Option<Arc<Sandbox>>>,
    oom: Mutex<Option<OomMonitor>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

type Result<T> = std::result::Result<T, ShimError>;

fn not_found(id: &str, exec_id: &str) -> ShimError {
    if exec_id.is_empty() {
        ShimError::NotFound(format!("container {id} not found"))
    } else {
        ShimError::NotFound(format!("exec {exec_id} of container {id} not found"))
    }
}

impl TaskService {
    /// A service with no containers yet.
    pub fn new(
        config: Config,
        namespace: String,
        launcher: Box<dyn VmLauncher>,
        events: Box<dyn EventSink>,
        exit: Arc<ExitSignal>,
    ) -> Arc<Self> {
        Arc::new(TaskService {
            config,
            namespace,
            launcher,
            events: Arc::from(events),
            exit,
            pod: Mutex::new(None),
            oom: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.locked()
    }

    fn pod(&self) -> Result<Arc<Sandbox>> {
        self.pod
            .locked()
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod VM is not running".into()))
    }

    fn agent(&self) -> Result<Arc<dyn AgentApi>> {
        Ok(Arc::clone(self.pod()?.agent()))
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id, ""))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let init = Arc::clone(&c.init);
            return Ok((c, init));
        }
        let p = c.execs().get(exec_id).cloned();
        p.map(|p| (c, p)).ok_or_else(|| not_found(id, exec_id))
    }

    /// The pod VM, started now for a standalone container or a pod sandbox. Returns the
    /// sandbox and whether this call started it.
    /// `prepare_share` puts the container's files into the pod share; it runs before every
    /// boot attempt, because a pod VM whose guest dies during boot is booted once more and
    /// the failed attempt removes the pod directory with everything in it.
    fn sandbox_for(
        &self,
        role: &PodRole,
        id: &str,
        size: VmSize,
        prepare_share: &dyn Fn() -> Result<()>,
    ) -> Result<(Arc<Sandbox>, bool)> {
        let mut pod = self.pod.locked();
        if let Some(sb) = pod.as_ref() {
            prepare_share()?;
            return Ok((Arc::clone(sb), false));
        }
        if let PodRole::Member { sandbox_id } = role {
            return Err(ShimError::FailedPrecondition(format!(
                "the VM of pod {sandbox_id} is not running in this shim"
            )));
        }
        let paths = SandboxPaths::new(&self.config.state_dir, &self.namespace, role.pod_id(id));
        let started = std::time::Instant::now();
        let mut retries_done = 0;
        let sb = loop {
            prepare_share()?;
            match Sandbox::start(&self.config, self.launcher.as_ref(), paths.clone(), size) {
                Err(e) if sandbox::boot_again(&e, retries_done) => {
                    tracing::warn!("the pod VM died during boot; booting it once more: {e}");
                    retries_done += 1;
                }
                result => break Arc::new(result?),
            }
        };
        tracing::info!("pod VM for {id} up in {:?}", started.elapsed());
        let source = Arc::new(oom::AgentOom(Arc::clone(sb.agent())));
        match OomMonitor::start(source, Arc::clone(&self.events), oom::POLL_WAIT) {
            Ok(m) => *self.oom.locked() = Some(m),
            Err(e) => tracing::warn!("no OOM events for pod of {id}: {e}"),
        }
        *pod = Some(Arc::clone(&sb));
        Ok((sb, true))
    }

    fn destroy_pod(&self) {
        self.oom.locked().take();
        let sb = self.pod.locked().take();
        if let Some(sb) = sb {
            sb.destroy();
        }
    }

    /// Stops the VM and removes everything; called when the shim exits.
    pub fn shutdown_all(&self) {
        let all: Vec<Arc<Container>> = self.containers().drain().map(|(_, c)| c).collect();
        for c in all {
            c.init.drop_relay();
        }
        self.destroy_pod();
        self.events.flush();
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let task = CreateTask::try_from(req)?;
        let oci = spec::read_bundle_spec(&task.bundle)?;
        let annotations = oci.annotations().clone().unwrap_or_default();
        let role = PodRole::from_annotations(&annotations)?;
        let size = VmSize::from_annotations(&self.config, &annotations)?;
        if self.containers().contains_key(&task.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                task.id
            )));
        }
        let root = spec::host_root(&oci, &task.bundle)?;
        if task.rootfs.is_empty() && !root.is_dir() {
            // Checked before a VM is started for it.
            return Err(mounts::MountError::MissingRootfs(root).into());
        }
        let (guest, binds) = spec::guest_spec(oci, &task.id)?;
        let json = serde_json::to_vec(&guest)
            .map_err(|e| ShimError::Internal(format!("encode spec: {e}")))?;

        // The rootfs is mounted into the share before the pod VM starts, so the first
        // container's files are there when virtiofsd opens the share and the guest mounts it.
        let paths = SandboxPaths::new(
            &self.config.state_dir,
            &self.namespace,
            role.pod_id(&task.id),
        );
        let cdir = paths.container_dir(&task.id);
        let discard = |e: ShimError| {
            mounts::remove_tree(&cdir);
            if self.pod.locked().is_none() {
                mounts::remove_tree(&paths.dir);
            }
            e
        };
        let prepare_share = || {
            mounts::mount_rootfs(&task.rootfs, &root, &cdir.join("rootfs"))?;
            for b in &binds {
                mounts::bind(&b.source, &cdir.join("mounts").join(&b.name))?;
            }
            Ok::<(), ShimError>(())
        };
        let (sb, started_here) = self
            .sandbox_for(&role, &task.id, size, &prepare_share)
            .map_err(discard)?;
        let pid = sb.agent().create_container(&task.id, &json).map_err(|e| {
            tracing::warn!(
                "create {} in the guest failed: {e}; host view of the rootfs: {} entries\n{}",
                task.id,
                std::fs::read_dir(cdir.join("rootfs")).map_or(0, |d| d.count()),
                sb.diagnostics()
            );
            mounts::remove_tree(&cdir);
            if started_here && self.containers().is_empty() {
                self.destroy_pod();
            }
            ShimError::from(e)
        })?;

        let init = Arc::new(Process::new(&task.id, "", task.stdio.clone(), Vec::new()));
        init.set_pid(pid);
        init.set_relay(IoRelay::start(
            Arc::clone(sb.agent()),
            &task.id,
            "",
            &task.stdio,
        ));
        self.containers().insert(
            task.id.clone(),
            Arc::new(Container {
                bundle: task.bundle.clone(),
                init,
                execs: Mutex::new(HashMap::new()),
            }),
        );
        self.events.publish(TaskEvent::Create(TaskCreate {
            container_id: task.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.iter().map(Mount::clone).collect(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }));
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn spawn_waiter(self: &Arc<Self>, agent: Arc<dyn AgentApi>, p: Arc<Process>) {
        let svc = Arc::clone(self);
        std::thread::spawn(move || {
            let status = match agent.wait_process(&p.id, &p.exec_id, None) {
                Ok(w) => u32::try_from(w.exit_status).unwrap_or(LOST_EXIT_STATUS),
                Err(e) => {
                    tracing::warn!("wait {}/{}: {e}", p.id, p.exec_id);
                    LOST_EXIT_STATUS
                }
            };
            let drained = p
                .with_relay(|r| r.wait_output(svc.config.io_drain_timeout()))
                .unwrap_or(true);
            if !drained {
                tracing::warn!("output of {}/{} not drained in time", p.id, p.exec_id);
            }
            let at = SystemTime::now();
            p.exited(status, at);
            svc.events.publish(TaskEvent::Exit(TaskExit {
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
        });
    }

    fn do_start(self: &Arc<Self>, req: &StartRequest) -> Result<StartResponse> {
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

    fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
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
        let sb = self.pod()?;
        match sb.agent().remove_container(&req.id) {
            Ok(()) => {}
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
            Err(e) => tracing::warn!("remove container {}: {e}", req.id),
        }
        p.drop_relay();
        for e in c.execs().values() {
            e.drop_relay();
        }
        mounts::remove_tree(&sb.paths().container_dir(&req.id));
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

    fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
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

    fn do_kill(&self, req: &KillRequest) -> Result<()> {
        let k = KillTask::try_from(req)?;
        let (_, p) = self.process(&k.id, &k.exec_id)?;
        if p.state().is_stopped() && !k.all {
            return Err(ShimError::NotFound(format!(
                "process {} already finished",
                if k.exec_id.is_empty() {
                    &k.id
                } else {
                    &k.exec_id
                }
            )));
        }
        if matches!(p.state(), ProcState::Created) && !k.exec_id.is_empty() {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} is not started",
                k.exec_id
            )));
        }
        self.agent()?
            .signal_process(&k.id, &k.exec_id, k.signal, k.all)?;
        Ok(())
    }

    fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
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

    fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
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

    fn do_pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
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

    fn do_stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        self.container(&req.id)?;
        let stats = self.agent()?.container_stats(&req.id)?;
        let any = containerd_shim::util::convert_to_any(Box::new(convert::metrics(&stats)))
            .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn do_update(&self, req: &UpdateTaskRequest) -> Result<()> {
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
}

/// The ttrpc-facing wrapper (the generated trait wants `&self` of a `Send + Sync` type).
#[derive(Clone)]
pub struct TaskHandler(pub Arc<TaskService>);

type TtrpcResult<T> = containerd_shim_protos::ttrpc::Result<T>;
type TtrpcContext = containerd_shim_protos::ttrpc::TtrpcContext;
type Empty = containerd_shim_protos::protobuf::well_known_types::empty::Empty;

fn reply<T>(call: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        // containerd expects NotFound in normal operation (CRI kills every finished
        // ExecSync process before deleting it): not worth a warning each time.
        if matches!(e, ShimError::NotFound(_)) {
            tracing::debug!("{call}: {e}");
        } else {
            tracing::warn!("{call}: {e}");
        }
        e.into()
    })
}

impl containerd_shim_protos::Task for TaskHandler {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        reply("state", self.0.do_state(&req))
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!("create {} bundle {}", req.id, req.bundle);
        reply("create", self.0.do_create(&req))
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        reply("start", self.0.do_start(&req))
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        reply("delete", self.0.do_delete(&req))
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        reply("pids", self.0.do_pids(&req))
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        reply(
            "pause",
            self.0.do_pause(&req.id, true).map(|()| Empty::new()),
        )
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        reply(
            "resume",
            self.0.do_pause(&req.id, false).map(|()| Empty::new()),
        )
    }

    fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "checkpoint",
            Err(ShimError::Unimplemented(
                "checkpoint is not supported by husk".into(),
            )),
        )
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        reply("kill", self.0.do_kill(&req).map(|()| Empty::new()))
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        reply("exec", self.0.do_exec(&req).map(|()| Empty::new()))
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self.0.process(&req.id, &req.exec_id).and_then(|_| {
            self.0
                .agent()?
                .resize_terminal(&req.id, &req.exec_id, req.height, req.width)
                .map_err(ShimError::from)
        });
        reply("resize_pty", r.map(|()| Empty::new()))
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let r = self.0.process(&req.id, &req.exec_id).map(|(_, p)| {
            if req.stdin {
                p.with_relay(|r| r.close_stdin());
            }
            Empty::new()
        });
        reply("close_io", r)
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        reply("update", self.0.do_update(&req).map(|()| Empty::new()))
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let r = self.0.process(&req.id, &req.exec_id).map(|(_, p)| {
            let (exit_status, at) = p.wait();
            WaitResponse {
                exit_status,
                exited_at: MessageField::some(convert::timestamp(at)),
                ..Default::default()
            }
        });
        reply("wait", r)
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        reply("stats", self.0.do_stats(&req))
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.0.container(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("husk {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.0.containers().is_empty() {
            self.0.exit.signal();
        }
        Ok(Empty::new())
    }
}
