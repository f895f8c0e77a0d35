//! [`FakeAgent`]: an `AgentApi` whose answers the test scripts.

use husk_lock::{CondvarExt, MutexExt};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_protocol::agent::{
    ContainerStatsResponse, CreateSandboxRequest, HealthResponse, PodNamespaces,
};
use husk_protocol::{AgentApi, AgentError, ErrorKind, WaitStatus};

/// The agent's RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    Health,
    CreateSandbox,
    DestroySandbox,
    CreateContainer,
    StartContainer,
    RemoveContainer,
    ExecProcess,
    SignalProcess,
    WaitProcess,
    RemoveProcess,
    GetOomEvent,
    WriteStdin,
    CloseStdin,
    ReadStdout,
    ReadStderr,
    ResizeTerminal,
    ContainerStats,
    PauseContainer,
    ResumeContainer,
    UpdateContainer,
    ListProcesses,
}

impl Rpc {
    /// Polled over and over by the relay and OOM threads: not recorded, so that the
    /// recorded calls are the ones the service made.
    fn polled(self) -> bool {
        matches!(self, Rpc::ReadStdout | Rpc::ReadStderr | Rpc::GetOomEvent)
    }

    fn name(self) -> &'static str {
        match self {
            Rpc::Health => "Health",
            Rpc::CreateSandbox => "CreateSandbox",
            Rpc::DestroySandbox => "DestroySandbox",
            Rpc::CreateContainer => "CreateContainer",
            Rpc::StartContainer => "StartContainer",
            Rpc::RemoveContainer => "RemoveContainer",
            Rpc::ExecProcess => "ExecProcess",
            Rpc::SignalProcess => "SignalProcess",
            Rpc::WaitProcess => "WaitProcess",
            Rpc::RemoveProcess => "RemoveProcess",
            Rpc::GetOomEvent => "GetOomEvent",
            Rpc::WriteStdin => "WriteStdin",
            Rpc::CloseStdin => "CloseStdin",
            Rpc::ReadStdout => "ReadStdout",
            Rpc::ReadStderr => "ReadStderr",
            Rpc::ResizeTerminal => "ResizeTerminal",
            Rpc::ContainerStats => "ContainerStats",
            Rpc::PauseContainer => "PauseContainer",
            Rpc::ResumeContainer => "ResumeContainer",
            Rpc::UpdateContainer => "UpdateContainer",
            Rpc::ListProcesses => "ListProcesses",
        }
    }
}

/// How a scripted call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The agent answers with an error of this kind.
    Status(ErrorKind),
    /// The call gets no answer in time (the client's `AgentError::Timeout`).
    Timeout,
}

impl Failure {
    fn error(self, rpc: Rpc) -> AgentError {
        match self {
            Failure::Status(kind) => AgentError::Status {
                kind,
                message: format!("{} failed (scripted)", rpc.name()),
            },
            Failure::Timeout => AgentError::Timeout { call: rpc.name() },
        }
    }
}

/// One call the agent received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which RPC.
    pub rpc: Rpc,
    /// Container id (empty for pod-wide calls).
    pub id: String,
    /// Exec id (empty for init and container calls).
    pub exec_id: String,
    /// The signal of `SignalProcess` (and whether to all processes).
    pub signal: Option<(u32, bool)>,
}

type ProcKey = (String, String);

#[derive(Default)]
struct Script {
    next_pid: u32,
    pids: HashMap<ProcKey, u32>,
    failures: HashMap<Rpc, Failure>,
    hangs: std::collections::HashSet<Rpc>,
    delays: HashMap<Rpc, Duration>,
    exits: HashMap<ProcKey, i32>,
    gone: bool,
    calls: Vec<Call>,
    stdout: VecDeque<Vec<u8>>,
    stdin: Vec<u8>,
    stdin_closed: bool,
    pod_namespaces: HashMap<String, Option<PodNamespaces>>,
}

/// A scriptable agent: hands out pids, fails chosen calls, blocks `WaitProcess` until the
/// test lets the process exit, and records every call the service made.
pub struct FakeAgent {
    script: Mutex<Script>,
    changed: Condvar,
    /// Most stdin bytes one `WriteStdin` takes (like a nearly full pipe).
    stdin_chunk: usize,
}

fn key(id: &str, exec_id: &str) -> ProcKey {
    (id.to_string(), exec_id.to_string())
}

impl FakeAgent {
    /// An agent on which every call succeeds; pids count up from 100.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeAgent {
            script: Mutex::new(Script {
                next_pid: 100,
                ..Script::default()
            }),
            changed: Condvar::new(),
            stdin_chunk: 3,
        })
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.locked()
    }

    /// The pid the guest gives process `exec_id` (empty: init) of container `id`.
    pub fn set_pid(&self, id: &str, exec_id: &str, pid: u32) {
        self.script().pids.insert(key(id, exec_id), pid);
    }

    /// Every later `rpc` call fails this way.
    pub fn fail(&self, rpc: Rpc, how: Failure) {
        self.script().failures.insert(rpc, how);
    }

    /// `rpc` calls succeed again (hung ones return).
    pub fn heal(&self, rpc: Rpc) {
        let mut s = self.script();
        s.failures.remove(&rpc);
        s.hangs.remove(&rpc);
        s.delays.remove(&rpc);
        self.changed.notify_all();
    }

    /// Later `rpc` calls get no answer, as from a hung or paused guest: they block until
    /// [`FakeAgent::heal`] or until the guest is gone (the real client's connection closes
    /// when the VMM dies), then fail as on a closed connection.
    pub fn hang(&self, rpc: Rpc) {
        self.script().hangs.insert(rpc);
    }

    /// Later `rpc` calls answer after `delay` (a slow but live guest).
    pub fn delay(&self, rpc: Rpc, delay: Duration) {
        self.script().delays.insert(rpc, delay);
    }

    /// The process exits with `status`: its `WaitProcess` returns.
    pub fn exit(&self, id: &str, exec_id: &str, status: i32) {
        self.script().exits.insert(key(id, exec_id), status);
        self.changed.notify_all();
    }

    /// The guest is gone: every call fails as on a closed connection, blocked waits
    /// included.
    pub fn vanish(&self) {
        self.script().gone = true;
        self.changed.notify_all();
    }

    /// Queues a chunk for `ReadStdout`; after the queue, stdout is at EOF.
    pub fn push_stdout(&self, chunk: Vec<u8>) {
        self.script().stdout.push_back(chunk);
    }

    /// Everything written to stdin so far.
    pub fn stdin(&self) -> Vec<u8> {
        self.script().stdin.clone()
    }

    /// Whether stdin was closed.
    pub fn stdin_closed(&self) -> bool {
        self.script().stdin_closed
    }

    /// The calls made so far, in order (without the polled stream and OOM calls).
    pub fn calls(&self) -> Vec<Call> {
        self.script().calls.clone()
    }

    /// The pod namespaces `CreateContainer` of container `id` named (outer `None`: no
    /// such call).
    pub fn pod_namespaces(&self, id: &str) -> Option<Option<PodNamespaces>> {
        self.script().pod_namespaces.get(id).cloned()
    }

    /// The calls of one RPC as `(id, exec_id)`.
    pub fn calls_of(&self, rpc: Rpc) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter(|c| c.rpc == rpc)
            .map(|c| (c.id, c.exec_id))
            .collect()
    }

    /// Records a call and answers with its scripted failure, if any.
    fn call(
        &self,
        rpc: Rpc,
        id: &str,
        exec_id: &str,
    ) -> Result<MutexGuard<'_, Script>, AgentError> {
        self.call_with(rpc, id, exec_id, None)
    }

    fn call_with(
        &self,
        rpc: Rpc,
        id: &str,
        exec_id: &str,
        signal: Option<(u32, bool)>,
    ) -> Result<MutexGuard<'_, Script>, AgentError> {
        let mut s = self.script();
        if !rpc.polled() {
            s.calls.push(Call {
                rpc,
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal,
            });
        }
        if let Some(delay) = s.delays.get(&rpc).copied() {
            drop(s);
            std::thread::sleep(delay);
            s = self.script();
        }
        while s.hangs.contains(&rpc) && !s.gone {
            s = self.changed.wait_recovering(s);
        }
        if s.gone {
            return Err(AgentError::Status {
                kind: ErrorKind::Unavailable,
                message: "the guest is gone".into(),
            });
        }
        match s.failures.get(&rpc) {
            Some(f) => Err(f.error(rpc)),
            None => Ok(s),
        }
    }

    fn pid_for(&self, rpc: Rpc, id: &str, exec_id: &str) -> Result<u32, AgentError> {
        let mut s = self.call(rpc, id, exec_id)?;
        if let Some(pid) = s.pids.get(&key(id, exec_id)) {
            return Ok(*pid);
        }
        s.next_pid += 1;
        Ok(s.next_pid)
    }
}

impl AgentApi for FakeAgent {
    fn health(&self) -> Result<HealthResponse, AgentError> {
        self.call(Rpc::Health, "", "").map(drop)?;
        Ok(HealthResponse::default())
    }
    fn create_sandbox(&self, _: &CreateSandboxRequest) -> Result<(), AgentError> {
        self.call(Rpc::CreateSandbox, "", "").map(drop)
    }
    fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.call(Rpc::DestroySandbox, "", "").map(drop)
    }
    fn create_container(
        &self,
        id: &str,
        _: &[u8],
        pod: Option<&PodNamespaces>,
    ) -> Result<u32, AgentError> {
        self.script()
            .pod_namespaces
            .insert(id.to_string(), pod.cloned());
        self.pid_for(Rpc::CreateContainer, id, "")
    }
    fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(Rpc::StartContainer, id, "").map(drop)
    }
    fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(Rpc::RemoveContainer, id, "").map(drop)
    }
    fn exec_process(&self, id: &str, exec_id: &str, _: &[u8]) -> Result<u32, AgentError> {
        self.pid_for(Rpc::ExecProcess, id, exec_id)
    }
    fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        self.call_with(Rpc::SignalProcess, id, exec_id, Some((signal, all)))
            .map(drop)
    }
    fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<WaitStatus, AgentError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.call(Rpc::WaitProcess, id, exec_id)?;
        loop {
            if let Some(status) = s.exits.get(&key(id, exec_id)) {
                let pid = s.pids.get(&key(id, exec_id)).copied().unwrap_or(0);
                return Ok(WaitStatus {
                    exit_status: *status,
                    pid,
                });
            }
            if s.gone {
                return Err(AgentError::Status {
                    kind: ErrorKind::Unavailable,
                    message: "the guest is gone".into(),
                });
            }
            s = match deadline {
                None => self.changed.wait_recovering(s),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(AgentError::Timeout {
                            call: Rpc::WaitProcess.name(),
                        });
                    }
                    self.changed.wait_timeout_recovering(s, left).0
                }
            };
        }
    }
    fn remove_process(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.call(Rpc::RemoveProcess, id, exec_id).map(drop)
    }
    fn get_oom_event(&self, wait: Duration) -> Result<Option<String>, AgentError> {
        // Like the agent's long poll: nothing happens until `wait` ends or the guest goes.
        let deadline = Instant::now() + wait;
        let mut s = self.call(Rpc::GetOomEvent, "", "")?;
        loop {
            if s.gone {
                return Err(AgentError::Status {
                    kind: ErrorKind::Unavailable,
                    message: "the guest is gone".into(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            s = self.changed.wait_timeout_recovering(s, left).0;
        }
    }
    fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize, AgentError> {
        let mut s = self.call(Rpc::WriteStdin, id, exec_id)?;
        let n = data.len().min(self.stdin_chunk);
        s.stdin.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.call(Rpc::CloseStdin, id, exec_id)?.stdin_closed = true;
        Ok(())
    }
    fn read_stdout(&self, id: &str, exec_id: &str, _: u32) -> Result<Option<Vec<u8>>, AgentError> {
        Ok(self.call(Rpc::ReadStdout, id, exec_id)?.stdout.pop_front())
    }
    fn read_stderr(&self, id: &str, exec_id: &str, _: u32) -> Result<Option<Vec<u8>>, AgentError> {
        self.call(Rpc::ReadStderr, id, exec_id).map(drop)?;
        Ok(None)
    }
    fn resize_terminal(&self, id: &str, exec_id: &str, _: u32, _: u32) -> Result<(), AgentError> {
        self.call(Rpc::ResizeTerminal, id, exec_id).map(drop)
    }
    fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError> {
        self.call(Rpc::ContainerStats, id, "").map(drop)?;
        Ok(ContainerStatsResponse::default())
    }
    fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(Rpc::PauseContainer, id, "").map(drop)
    }
    fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(Rpc::ResumeContainer, id, "").map(drop)
    }
    fn update_container(&self, id: &str, _: &[u8]) -> Result<(), AgentError> {
        self.call(Rpc::UpdateContainer, id, "").map(drop)
    }
    fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        let s = self.call(Rpc::ListProcesses, id, "")?;
        let mut pids: Vec<u32> = s
            .pids
            .iter()
            .filter(|((c, _), _)| c == id)
            .map(|(_, pid)| *pid)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }
}
