//! The ttrpc service: decodes requests, calls the [`Runtime`], encodes answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::Agent;
use husk_protocol::{MAX_STREAM_CHUNK, PROTOCOL_VERSION};
use ttrpc::TtrpcContext;

use crate::container::Runtime;
use crate::error::Error;
use crate::sandbox;

/// What the agent does when told to destroy the sandbox: in a guest, end the VM; on a host
/// (tests), exit.
pub trait EndSandbox: Send + Sync {
    /// Called after the reply to `DestroySandbox` has been sent (from another thread).
    fn end_sandbox(&self);
}

/// Whether the agent is the guest's init (sandbox settings apply) or runs on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 in a guest.
    Guest,
    /// A normal process on a host (tests).
    Host,
}

/// The ttrpc service.
pub struct Service {
    runtime: Arc<Runtime>,
    mode: Mode,
    end: Arc<dyn EndSandbox>,
    started: Instant,
    init_t0: Option<Duration>,
    first_health: AtomicBool,
    sandbox_created: AtomicBool,
}

type R<T> = ttrpc::Result<T>;

/// Longest a `GetOomEvent` call waits (each waiting call holds a server thread).
const MAX_OOM_WAIT: Duration = Duration::from_secs(60);

fn stream_chunk(max: u32) -> usize {
    if max == 0 || max > MAX_STREAM_CHUNK {
        MAX_STREAM_CHUNK as usize
    } else {
        max as usize
    }
}

fn timeout_of(ctx: &TtrpcContext) -> Option<Duration> {
    (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64))
}

impl Service {
    /// A service over `runtime`; `started` is when the agent process began, `init_t0` the
    /// boot-clock time /init first started (guest mode).
    pub fn new(
        runtime: Arc<Runtime>,
        mode: Mode,
        end: Arc<dyn EndSandbox>,
        started: Instant,
        init_t0: Option<Duration>,
    ) -> Self {
        Service {
            runtime,
            mode,
            end,
            started,
            init_t0,
            first_health: AtomicBool::new(true),
            sandbox_created: AtomicBool::new(false),
        }
    }
}

fn stream_response(r: crate::error::Result<Option<Vec<u8>>>) -> R<ReadStreamResponse> {
    let data = r?;
    Ok(ReadStreamResponse {
        eof: data.is_none(),
        data: data.unwrap_or_default(),
        ..Default::default()
    })
}

impl Agent for Service {
    fn health(&self, _ctx: &TtrpcContext, _req: HealthRequest) -> R<HealthResponse> {
        if self.first_health.swap(false, Ordering::Relaxed) {
            // Measured figure: /init start (or process start on a host) to first answer.
            match self.init_t0 {
                Some(t0) => {
                    let now = crate::init::boottime();
                    let ms = now.saturating_sub(t0).as_secs_f64() * 1000.0;
                    println!(
                        "husk-agent: first health check answered {ms:.1} ms after /init start \
                         (boot clock {:.1} ms)",
                        now.as_secs_f64() * 1000.0
                    );
                }
                None => {
                    let ms = self.started.elapsed().as_secs_f64() * 1000.0;
                    println!("husk-agent: first health check answered {ms:.1} ms after start");
                }
            }
        }
        Ok(HealthResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        })
    }

    fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        if self.sandbox_created.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyExists("sandbox".into()).into());
        }
        if self.mode == Mode::Guest {
            if let Err(e) = sandbox::apply(&req, self.runtime.share()) {
                self.sandbox_created.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        }
        Ok(Empty::default())
    }

    fn destroy_sandbox(&self, _ctx: &TtrpcContext, _req: DestroySandboxRequest) -> R<Empty> {
        self.runtime.remove_all();
        let end = self.end.clone();
        // Answer first, then end the sandbox.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            end.end_sandbox();
        });
        Ok(Empty::default())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> R<CreateContainerResponse> {
        let pid = self.runtime.create(
            &req.container_id,
            &req.spec_json,
            req.pod_namespaces.as_ref(),
        )?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.runtime.start(&req.container_id)?;
        Ok(Empty::default())
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.runtime.remove(&req.container_id)?;
        Ok(Empty::default())
    }

    fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> R<ExecProcessResponse> {
        let pid = self
            .runtime
            .exec(&req.container_id, &req.exec_id, &req.process_json)?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        self.runtime
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::default())
    }

    fn wait_process(&self, ctx: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        let (code, pid) = self
            .runtime
            .wait(&req.container_id, &req.exec_id, timeout_of(ctx))?;
        Ok(WaitProcessResponse {
            exit_status: code,
            pid: u32::try_from(pid).unwrap_or(0),
            ..Default::default()
        })
    }

    fn remove_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> R<Empty> {
        self.runtime.remove_exec(&req.container_id, &req.exec_id)?;
        Ok(Empty::default())
    }

    fn get_oom_event(&self, _ctx: &TtrpcContext, req: GetOomEventRequest) -> R<OomEvent> {
        let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_OOM_WAIT);
        Ok(OomEvent {
            container_id: self.runtime.next_oom(wait).unwrap_or_default(),
            ..Default::default()
        })
    }

    fn write_stdin(&self, _ctx: &TtrpcContext, req: WriteStdinRequest) -> R<WriteStdinResponse> {
        let p = self.runtime.io(&req.container_id, &req.exec_id)?;
        let n = p.io.write_stdin(&req.data)?;
        Ok(WriteStdinResponse {
            written: u32::try_from(n).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> R<Empty> {
        self.runtime
            .io(&req.container_id, &req.exec_id)?
            .io
            .close_stdin()?;
        Ok(Empty::default())
    }

    fn read_stdout(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = self.runtime.io(&req.container_id, &req.exec_id)?;
        stream_response(p.io.read_stdout(stream_chunk(req.max_bytes)))
    }

    fn read_stderr(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = self.runtime.io(&req.container_id, &req.exec_id)?;
        stream_response(p.io.read_stderr(stream_chunk(req.max_bytes)))
    }

    fn resize_terminal(&self, _ctx: &TtrpcContext, req: ResizeTerminalRequest) -> R<Empty> {
        let rows = u16::try_from(req.rows).map_err(|_| Error::InvalidArgument("rows".into()))?;
        let cols = u16::try_from(req.cols).map_err(|_| Error::InvalidArgument("cols".into()))?;
        self.runtime
            .io(&req.container_id, &req.exec_id)?
            .io
            .resize(rows, cols)?;
        Ok(Empty::default())
    }

    fn container_stats(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> R<ContainerStatsResponse> {
        Ok(self.runtime.stats(&req.container_id)?)
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.runtime.freeze(&req.container_id, true)?;
        Ok(Empty::default())
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.runtime.freeze(&req.container_id, false)?;
        Ok(Empty::default())
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        self.runtime
            .update(&req.container_id, &req.resources_json)?;
        Ok(Empty::default())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> R<ListProcessesResponse> {
        Ok(ListProcessesResponse {
            pids: self.runtime.list(&req.container_id)?,
            ..Default::default()
        })
    }
}
