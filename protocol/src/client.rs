//! The typed client: [`AgentApi`] (the seam) and [`AgentClient`] (ttrpc implementation).

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::agent::{
    ContainerRequest, ContainerStatsResponse, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, ExecProcessRequest, GetOomEventRequest, HealthRequest, HealthResponse,
    PodNamespaces, ProcessRequest, ReadStreamRequest, ResizeTerminalRequest, SignalProcessRequest,
    UpdateContainerRequest, WriteStdinRequest,
};
use crate::connect::{hybrid_vsock_connect, ConnectError};
use crate::error::AgentError;
use crate::{AGENT_VSOCK_PORT, PROTOCOL_VERSION};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStatus {
    /// Exit code, or 128 + signal number.
    pub exit_status: i32,
    /// The process id in the guest.
    pub pid: u32,
}

/// Per-call timeouts. `None` waits without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Quick calls: health, signal, stats, pause, resume, update, list, resize, stdin.
    pub default: Option<Duration>,
    /// Calls that set up or tear down processes and mounts: create sandbox, create, start,
    /// exec, remove, destroy.
    pub lifecycle: Option<Duration>,
    /// `ReadStdout`/`ReadStderr`, which block until the process writes.
    pub read: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            default: Some(Duration::from_secs(10)),
            lifecycle: Some(Duration::from_secs(60)),
            read: None,
        }
    }
}

/// The agent's API as the shim uses it. Implemented by [`AgentClient`]; tests of the shim
/// can plug in a fake.
pub trait AgentApi: Send + Sync {
    /// Health check; returns the agent's version and protocol version.
    fn health(&self) -> Result<HealthResponse, AgentError>;
    /// Mounts the share, sets hostname, DNS and sysctls of the guest.
    fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), AgentError>;
    /// Kills every container and powers the VM off.
    fn destroy_sandbox(&self) -> Result<(), AgentError>;
    /// Creates a container from an OCI spec (JSON; empty reads the bundle's config.json),
    /// joining the namespaces `pod` names of its pod's sandbox container (`None`: a
    /// standalone container or the sandbox itself). Returns the pid of its init process,
    /// which waits for [`AgentApi::start_container`].
    fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        pod: Option<&PodNamespaces>,
    ) -> Result<u32, AgentError>;
    /// Lets the container's init process exec its program.
    fn start_container(&self, id: &str) -> Result<(), AgentError>;
    /// Kills whatever is left of the container and removes all traces of it.
    fn remove_container(&self, id: &str) -> Result<(), AgentError>;
    /// Starts an extra process (OCI process JSON) in a running container; returns its pid.
    fn exec_process(&self, id: &str, exec_id: &str, process_json: &[u8])
        -> Result<u32, AgentError>;
    /// Sends `signal` to the process, or with `all` to every process of the container.
    fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError>;
    /// Waits for the process to exit (at most `timeout`, `None` = forever).
    fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<WaitStatus, AgentError>;
    /// Forgets an exec'd process (killed first if it still runs), so its exec id is free
    /// again. The init process is removed with its container.
    fn remove_process(&self, id: &str, exec_id: &str) -> Result<(), AgentError>;
    /// Waits up to `wait` for an OOM kill in a container's cgroup; returns the container's
    /// id, or `None` when there was none in that time.
    fn get_oom_event(&self, wait: Duration) -> Result<Option<String>, AgentError>;
    /// Writes to the process's stdin; returns how many bytes were taken.
    fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize, AgentError>;
    /// Closes the process's stdin (EOF).
    fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError>;
    /// Reads stdout; `None` at EOF.
    fn read_stdout(&self, id: &str, exec_id: &str, max: u32)
        -> Result<Option<Vec<u8>>, AgentError>;
    /// Reads stderr; `None` at EOF.
    fn read_stderr(&self, id: &str, exec_id: &str, max: u32)
        -> Result<Option<Vec<u8>>, AgentError>;
    /// Sets the window size of a terminal process.
    fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError>;
    /// Cgroup statistics of the container.
    fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError>;
    /// Freezes the container.
    fn pause_container(&self, id: &str) -> Result<(), AgentError>;
    /// Thaws the container.
    fn resume_container(&self, id: &str) -> Result<(), AgentError>;
    /// Applies new OCI Linux resources (JSON).
    fn update_container(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentError>;
    /// Pids (guest view) of the container's processes.
    fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError>;
}

/// ttrpc client of the agent.
#[derive(Clone)]
pub struct AgentClient {
    inner: crate::agent_ttrpc::AgentClient,
    timeouts: Timeouts,
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    let nanos = timeout.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX));
    ttrpc::context::with_timeout(nanos)
}

fn container(id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    }
}

fn process(id: &str, exec_id: &str) -> ProcessRequest {
    ProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}

fn read_req(id: &str, exec_id: &str, max: u32) -> ReadStreamRequest {
    ReadStreamRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        max_bytes: max,
        ..Default::default()
    }
}

impl AgentClient {
    /// Wraps an already-connected stream (e.g. after a hybrid vsock handshake).
    pub fn from_stream(stream: UnixStream, timeouts: Timeouts) -> Result<Self, AgentError> {
        let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(ConnectError::Ttrpc)?;
        Ok(AgentClient {
            inner: crate::agent_ttrpc::AgentClient::new(client),
            timeouts,
        })
    }

    /// Connects to an agent listening on a unix socket (host mode).
    pub fn connect_unix(path: &Path, timeouts: Timeouts) -> Result<Self, AgentError> {
        let stream = UnixStream::connect(path).map_err(|source| ConnectError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_stream(stream, timeouts)
    }

    /// Connects to the guest agent (vsock port 1024) through the VMM's hybrid vsock socket.
    pub fn connect_hybrid_vsock(
        uds: &Path,
        handshake_timeout: Duration,
        timeouts: Timeouts,
    ) -> Result<Self, AgentError> {
        let stream = hybrid_vsock_connect(uds, AGENT_VSOCK_PORT, handshake_timeout)?;
        Self::from_stream(stream, timeouts)
    }

    /// Health check that also insists on this crate's [`PROTOCOL_VERSION`].
    pub fn handshake(&self) -> Result<HealthResponse, AgentError> {
        let health = self.health()?;
        if health.protocol_version != PROTOCOL_VERSION {
            return Err(AgentError::Version {
                agent: health.protocol_version,
                expected: PROTOCOL_VERSION,
            });
        }
        Ok(health)
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

impl AgentApi for AgentClient {
    fn health(&self) -> Result<HealthResponse, AgentError> {
        self.inner
            .health(ctx(self.timeouts.default), &HealthRequest::default())
            .map_err(|e| AgentError::from_ttrpc("Health", e))
    }

    fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), AgentError> {
        self.inner
            .create_sandbox(ctx(self.timeouts.lifecycle), req)
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("CreateSandbox", e))
    }

    fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.inner
            .destroy_sandbox(
                ctx(self.timeouts.lifecycle),
                &DestroySandboxRequest::default(),
            )
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("DestroySandbox", e))
    }

    fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        pod: Option<&PodNamespaces>,
    ) -> Result<u32, AgentError> {
        let req = CreateContainerRequest {
            container_id: id.to_string(),
            spec_json: spec_json.to_vec(),
            pod_namespaces: pod.cloned().into(),
            ..Default::default()
        };
        self.inner
            .create_container(ctx(self.timeouts.lifecycle), &req)
            .map(|r| r.pid)
            .map_err(|e| AgentError::from_ttrpc("CreateContainer", e))
    }

    fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.inner
            .start_container(ctx(self.timeouts.lifecycle), &container(id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("StartContainer", e))
    }

    fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.inner
            .remove_container(ctx(self.timeouts.lifecycle), &container(id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("RemoveContainer", e))
    }

    fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32, AgentError> {
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process_json: process_json.to_vec(),
            ..Default::default()
        };
        self.inner
            .exec_process(ctx(self.timeouts.lifecycle), &req)
            .map(|r| r.pid)
            .map_err(|e| AgentError::from_ttrpc("ExecProcess", e))
    }

    fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.inner
            .signal_process(ctx(self.timeouts.default), &req)
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("SignalProcess", e))
    }

    fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<WaitStatus, AgentError> {
        self.inner
            .wait_process(ctx(timeout), &process(id, exec_id))
            .map(|r| WaitStatus {
                exit_status: r.exit_status,
                pid: r.pid,
            })
            .map_err(|e| AgentError::from_ttrpc("WaitProcess", e))
    }

    fn remove_process(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.inner
            .remove_process(ctx(self.timeouts.lifecycle), &process(id, exec_id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("RemoveProcess", e))
    }

    fn get_oom_event(&self, wait: Duration) -> Result<Option<String>, AgentError> {
        let req = GetOomEventRequest {
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // The agent answers after at most `wait`; the deadline adds the usual margin.
        let deadline = self.timeouts.default.map(|d| d + wait);
        self.inner
            .get_oom_event(ctx(deadline), &req)
            .map(|r| (!r.container_id.is_empty()).then_some(r.container_id))
            .map_err(|e| AgentError::from_ttrpc("GetOomEvent", e))
    }

    fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize, AgentError> {
        let req = WriteStdinRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        self.inner
            .write_stdin(ctx(self.timeouts.default), &req)
            .map(|r| r.written as usize)
            .map_err(|e| AgentError::from_ttrpc("WriteStdin", e))
    }

    fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.inner
            .close_stdin(ctx(self.timeouts.default), &process(id, exec_id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("CloseStdin", e))
    }

    fn read_stdout(
        &self,
        id: &str,
        exec_id: &str,
        max: u32,
    ) -> Result<Option<Vec<u8>>, AgentError> {
        self.inner
            .read_stdout(ctx(self.timeouts.read), &read_req(id, exec_id, max))
            .map(|r| (!r.eof).then_some(r.data))
            .map_err(|e| AgentError::from_ttrpc("ReadStdout", e))
    }

    fn read_stderr(
        &self,
        id: &str,
        exec_id: &str,
        max: u32,
    ) -> Result<Option<Vec<u8>>, AgentError> {
        self.inner
            .read_stderr(ctx(self.timeouts.read), &read_req(id, exec_id, max))
            .map(|r| (!r.eof).then_some(r.data))
            .map_err(|e| AgentError::from_ttrpc("ReadStderr", e))
    }

    fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let req = ResizeTerminalRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.inner
            .resize_terminal(ctx(self.timeouts.default), &req)
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("ResizeTerminal", e))
    }

    fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError> {
        self.inner
            .container_stats(ctx(self.timeouts.default), &container(id))
            .map_err(|e| AgentError::from_ttrpc("ContainerStats", e))
    }

    fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.inner
            .pause_container(ctx(self.timeouts.default), &container(id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("PauseContainer", e))
    }

    fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.inner
            .resume_container(ctx(self.timeouts.default), &container(id))
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("ResumeContainer", e))
    }

    fn update_container(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentError> {
        let req = UpdateContainerRequest {
            container_id: id.to_string(),
            resources_json: resources_json.to_vec(),
            ..Default::default()
        };
        self.inner
            .update_container(ctx(self.timeouts.default), &req)
            .map(drop)
            .map_err(|e| AgentError::from_ttrpc("UpdateContainer", e))
    }

    fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        self.inner
            .list_processes(ctx(self.timeouts.default), &container(id))
            .map(|r| r.pids)
            .map_err(|e| AgentError::from_ttrpc("ListProcesses", e))
    }
}
