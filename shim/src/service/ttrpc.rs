//! The adapter containerd's ttrpc server calls: each method hands its request to the
//! service and turns the result into a ttrpc status.

use std::sync::Arc;

use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};

use crate::error::ShimError;

use super::{Result, TaskService};

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

fn empty(call: &str, r: Result<()>) -> TtrpcResult<Empty> {
    reply(call, r.map(|()| Empty::new()))
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
        empty("pause", self.0.do_pause(&req.id, true))
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        empty("resume", self.0.do_pause(&req.id, false))
    }

    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        empty(
            "checkpoint",
            Err(ShimError::Unimplemented(
                "checkpoint is not supported by husk".into(),
            )),
        )
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        empty("kill", self.0.do_kill(&req))
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        empty("exec", self.0.do_exec(&req))
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        empty("resize_pty", self.0.do_resize_pty(&req))
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        empty("close_io", self.0.do_close_io(&req))
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        empty("update", self.0.do_update(&req))
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        reply("wait", self.0.do_wait(&req))
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        reply("stats", self.0.do_stats(&req))
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.0.task_pid(&req.id),
            version: format!("husk {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.0.is_idle() {
            self.0.exit.signal();
        }
        Ok(Empty::new())
    }
}
