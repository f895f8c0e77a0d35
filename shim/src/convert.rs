//! Typed conversions between the shim v2 Task API messages and what the shim works with:
//! every request is checked once here (`TryFrom`), every response is built here.

use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim_protos::api::{
    CreateTaskRequest, ExecProcessRequest, KillRequest, StateResponse,
};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status;
use husk_protocol::agent::ContainerStatsResponse;

use crate::state::ProcState;

/// A request the shim will not act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// Malformed or out-of-range field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A feature husk does not have.
    #[error("{0} is not supported by husk")]
    Unsupported(&'static str),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConvertError {
    ConvertError::Invalid {
        field,
        message: message.into(),
    }
}

/// Longest container or exec id (the agent's limit).
pub const MAX_ID_LEN: usize = 128;

/// Checks an id as containerd ids and the agent's file names allow: `[A-Za-z0-9_.-]`, not
/// starting with a dot.
pub fn check_id(field: &'static str, id: &str) -> Result<(), ConvertError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{id:?} is not a valid id")))
    }
}

/// The standard streams containerd gives a process: FIFO paths (or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO.
    pub stdin: Option<PathBuf>,
    /// stdout FIFO.
    pub stdout: Option<PathBuf>,
    /// stderr FIFO.
    pub stderr: Option<PathBuf>,
    /// Terminal mode (stdout carries the terminal, no stderr).
    pub terminal: bool,
}

fn fifo(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn stdio_paths(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: fifo(stdin),
        stdout: fifo(stdout),
        stderr: fifo(stderr),
        terminal,
    }
}

impl StdioPaths {
    fn as_strings(&self) -> [String; 3] {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        [s(&self.stdin), s(&self.stdout), s(&self.stderr)]
    }
}

/// One mount of the container's root filesystem, as containerd's snapshotter gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// Filesystem type (`overlay`, `bind`).
    pub typ: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// A checked `Create` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTask {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem mounts (empty: `<bundle>/rootfs` is ready).
    pub rootfs: Vec<RootfsMount>,
    /// Streams.
    pub stdio: StdioPaths,
}

impl TryFrom<&CreateTaskRequest> for CreateTask {
    type Error = ConvertError;

    fn try_from(req: &CreateTaskRequest) -> Result<Self, ConvertError> {
        check_id("id", &req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(invalid(
                "bundle",
                format!("{:?} is not an absolute path", req.bundle),
            ));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ConvertError::Unsupported("restoring from a checkpoint"));
        }
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        Ok(CreateTask {
            id: req.id.clone(),
            bundle,
            rootfs,
            stdio: stdio_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        })
    }
}

/// A checked `Exec` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTask {
    /// Container id.
    pub id: String,
    /// Exec id.
    pub exec_id: String,
    /// OCI process JSON.
    pub process_json: Vec<u8>,
    /// Streams.
    pub stdio: StdioPaths,
}

impl TryFrom<&ExecProcessRequest> for ExecTask {
    type Error = ConvertError;

    fn try_from(req: &ExecProcessRequest) -> Result<Self, ConvertError> {
        check_id("id", &req.id)?;
        check_id("exec_id", &req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("spec", "exec without a process spec"))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| invalid("spec", format!("not an OCI process: {e}")))?;
        if process.terminal().unwrap_or(false) != req.terminal {
            return Err(invalid(
                "terminal",
                "the request and the process spec disagree on the terminal",
            ));
        }
        Ok(ExecTask {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            process_json: spec.value.clone(),
            stdio: stdio_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        })
    }
}

/// A checked `Kill` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillTask {
    /// Container id.
    pub id: String,
    /// Exec id (empty: the init process).
    pub exec_id: String,
    /// Signal number.
    pub signal: u32,
    /// Every process of the container.
    pub all: bool,
}

/// Highest signal number on Linux.
pub const MAX_SIGNAL: u32 = 64;

impl TryFrom<&KillRequest> for KillTask {
    type Error = ConvertError;

    fn try_from(req: &KillRequest) -> Result<Self, ConvertError> {
        check_id("id", &req.id)?;
        if !req.exec_id.is_empty() {
            check_id("exec_id", &req.exec_id)?;
        }
        if req.signal == 0 || req.signal > MAX_SIGNAL {
            return Err(invalid(
                "signal",
                format!("{} is not in 1..={MAX_SIGNAL}", req.signal),
            ));
        }
        Ok(KillTask {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
        })
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

/// containerd's status for a process state.
pub fn status(state: &ProcState) -> Status {
    match state {
        ProcState::Created => Status::CREATED,
        ProcState::Running => Status::RUNNING,
        ProcState::Paused => Status::PAUSED,
        ProcState::Stopped { .. } => Status::STOPPED,
    }
}

/// What `State` reports about one process.
#[derive(Debug, Clone)]
pub struct ProcessView<'a> {
    /// Container id.
    pub id: &'a str,
    /// Exec id (empty for init).
    pub exec_id: &'a str,
    /// Bundle directory.
    pub bundle: &'a str,
    /// Guest pid.
    pub pid: u32,
    /// State.
    pub state: ProcState,
    /// Streams.
    pub stdio: &'a StdioPaths,
}

impl From<ProcessView<'_>> for StateResponse {
    fn from(v: ProcessView<'_>) -> StateResponse {
        let [stdin, stdout, stderr] = v.stdio.as_strings();
        let mut resp = StateResponse {
            id: v.id.to_string(),
            exec_id: v.exec_id.to_string(),
            bundle: v.bundle.to_string(),
            pid: v.pid,
            status: status(&v.state).into(),
            stdin,
            stdout,
            stderr,
            terminal: v.stdio.terminal,
            ..Default::default()
        };
        if let ProcState::Stopped {
            exit_status,
            exited_at,
        } = v.state
        {
            resp.exit_status = exit_status;
            resp.exited_at = MessageField::some(timestamp(exited_at));
        }
        resp
    }
}

/// containerd's cgroup v2 metrics from the agent's statistics.
pub fn metrics(s: &ContainerStatsResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = MessageField::some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = MessageField::some(MemoryStat {
            usage: mem.current,
            usage_limit: mem.limit,
            anon: mem.anon,
            file: mem.file,
            max_usage: mem.peak,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(io) = s.io.as_ref() {
        m.io = MessageField::some(IOStat {
            usage: vec![IOEntry {
                rbytes: io.read_bytes,
                wbytes: io.write_bytes,
                rios: io.read_ios,
                wios: io.write_ios,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::types::mount::Mount;
    use husk_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    fn create_req() -> CreateTaskRequest {
        CreateTaskRequest {
            id: "c1".into(),
            bundle: "/run/containerd/b/c1".into(),
            rootfs: vec![Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                options: vec!["lowerdir=/a".into()],
                ..Default::default()
            }],
            stdout: "/fifo/out".into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_is_checked_and_typed() {
        let c = CreateTask::try_from(&create_req()).expect("ok");
        assert_eq!(c.rootfs[0].typ, "overlay");
        assert_eq!(c.stdio.stdout, Some(PathBuf::from("/fifo/out")));
        assert_eq!(c.stdio.stdin, None);

        let mut r = create_req();
        r.id = "../x".into();
        assert!(matches!(
            CreateTask::try_from(&r),
            Err(ConvertError::Invalid { field: "id", .. })
        ));
        let mut r = create_req();
        r.bundle = "rel".into();
        assert!(matches!(
            CreateTask::try_from(&r),
            Err(ConvertError::Invalid { field: "bundle", ref message })
                if message.contains("not an absolute path")
        ));
        let mut r = create_req();
        r.checkpoint = "/cp".into();
        let err = CreateTask::try_from(&r).expect_err("checkpoint");
        assert_eq!(
            err.to_string(),
            "restoring from a checkpoint is not supported by husk"
        );
    }

    fn exec_req(process: &str, terminal: bool) -> ExecProcessRequest {
        ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            terminal,
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn exec_needs_a_consistent_process() {
        let p = r#"{"args":["ps"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
        let e = ExecTask::try_from(&exec_req(p, false)).expect("ok");
        assert_eq!(e.process_json, p.as_bytes());
        assert!(matches!(
            ExecTask::try_from(&exec_req(p, true)),
            Err(ConvertError::Invalid {
                field: "terminal",
                ..
            })
        ));
        assert!(matches!(
            ExecTask::try_from(&exec_req("not json", false)),
            Err(ConvertError::Invalid { field: "spec", ref message })
                if message.starts_with("not an OCI process")
        ));
        let mut r = exec_req(p, false);
        r.spec = MessageField::none();
        assert_eq!(
            ExecTask::try_from(&r),
            Err(ConvertError::Invalid {
                field: "spec",
                message: "exec without a process spec".into()
            })
        );
    }

    #[test]
    fn kill_signal_range() {
        let req = |signal| KillRequest {
            id: "c1".into(),
            signal,
            ..Default::default()
        };
        assert_eq!(KillTask::try_from(&req(15)).expect("ok").signal, 15);
        for bad in [0, MAX_SIGNAL + 1] {
            assert_eq!(
                KillTask::try_from(&req(bad)),
                Err(ConvertError::Invalid {
                    field: "signal",
                    message: format!("{bad} is not in 1..={MAX_SIGNAL}")
                }),
                "signal {bad}"
            );
        }
    }

    #[test]
    fn state_response_carries_exit() {
        let stdio = StdioPaths {
            stdout: Some("/o".into()),
            ..Default::default()
        };
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500);
        let resp = StateResponse::from(ProcessView {
            id: "c1",
            exec_id: "",
            bundle: "/b",
            pid: 42,
            state: ProcState::Running.exit(7, at),
            stdio: &stdio,
        });
        assert_eq!(resp.status.enum_value(), Ok(Status::STOPPED));
        assert_eq!(resp.exit_status, 7);
        assert_eq!(resp.stdout, "/o");
        assert_eq!(resp.stdin, "");
        let ts = resp.exited_at.as_ref().expect("exited_at");
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
    }

    #[test]
    fn metrics_map_agent_stats() {
        let s = ContainerStatsResponse {
            cpu: MessageField::some(CpuStats {
                usage_usec: 10,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStats {
                current: 4096,
                limit: 0,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStats {
                current: 2,
                limit: 64,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = metrics(&s);
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!((m.pids.current, m.pids.limit), (2, 64));
        assert!(m.io.is_none());
    }
}
