//! Unit tests of the Task service with the fakes at its seams: a scripted agent, a pod
//! launcher that boots nothing, and an event sink that keeps what was published. Bundles
//! and the state directory live in a tempdir per test.

mod failures;
mod faults;
mod lifecycle;
mod namespaces;

use husk_lock::MutexExt;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::ExitSignal;
use containerd_shim_protos::api::{
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    KillRequest, StartRequest, StartResponse, StateRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status;
use serde_json::json;

use crate::annotations::{CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};
use crate::config::Config;
use crate::error::ShimError;
use crate::sandbox::SandboxPaths;
use crate::testing::{CollectingEvents, FakeAgent, FakePodLauncher};

use super::TaskService;

const NS: &str = "default";

/// A service wired to fakes, and the fakes to script and inspect.
struct Harness {
    dir: tempfile::TempDir,
    svc: Arc<TaskService>,
    agent: Arc<FakeAgent>,
    pods: Arc<FakePodLauncher>,
    events: CollectingEvents,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// A harness whose config `tune` adjusts (after the state dir is set).
    fn with_config(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            state_dir: dir.path().join("state"),
            io_drain_timeout_secs: 5,
            ..Config::default()
        };
        tune(&mut config);
        let agent = FakeAgent::new();
        let pods = FakePodLauncher::new(Arc::clone(&agent));
        let events = CollectingEvents::default();
        let svc = TaskService::new(
            config,
            NS.into(),
            Box::new(Arc::clone(&pods)),
            Box::new(events.clone()),
            Arc::new(ExitSignal::default()),
        );
        Harness {
            dir,
            svc,
            agent,
            pods,
            events,
        }
    }

    /// The state directory of pod `pod_id`.
    fn pod_paths(&self, pod_id: &str) -> SandboxPaths {
        SandboxPaths::new(&self.dir.path().join("state"), NS, pod_id)
    }

    /// A bundle for container `id` with a rootfs directory and `annotations`, whose
    /// namespaces are all its own (none from the host, no paths).
    fn bundle(&self, id: &str, annotations: serde_json::Value) -> PathBuf {
        let own = json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network"}
        ]);
        self.bundle_with(id, annotations, own)
    }

    /// A bundle for container `id` with these `linux.namespaces`.
    fn bundle_with(
        &self,
        id: &str,
        annotations: serde_json::Value,
        namespaces: serde_json::Value,
    ) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).expect("rootfs");
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "linux": {"namespaces": namespaces}
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
        bundle
    }

    fn create_with(
        &self,
        id: &str,
        annotations: serde_json::Value,
    ) -> Result<CreateTaskResponse, ShimError> {
        let bundle = self.bundle(id, annotations);
        self.create_bundle(id, &bundle)
    }

    fn create_bundle(
        &self,
        id: &str,
        bundle: &std::path::Path,
    ) -> Result<CreateTaskResponse, ShimError> {
        self.svc.do_create(&CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        })
    }

    /// Creates a standalone container (it gets its own pod VM).
    fn create(&self, id: &str) -> Result<CreateTaskResponse, ShimError> {
        self.create_with(id, json!({}))
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<StartResponse, ShimError> {
        self.svc.do_start(&StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn exec(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let process = json!({"args": ["ls"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
        self.svc.do_exec(&ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.to_string().into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        self.svc.do_kill(&KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        })
    }

    fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, ShimError> {
        self.svc.do_wait(&WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, ShimError> {
        self.svc.do_delete(&DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn status(&self, id: &str, exec_id: &str) -> Result<Status, ShimError> {
        let r = self.svc.do_state(&StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok(r.status.enum_value_or_default())
    }

    /// Whether the service holds a pod VM.
    fn has_pod(&self) -> bool {
        self.svc.pod.locked().is_some()
    }

    /// A started container `id` whose init runs.
    fn running(&self, id: &str) {
        self.create(id).expect("create");
        self.start(id, "").expect("start");
    }

    /// Lets process `exec_id` of `id` exit with `status` and waits until the shim knows.
    fn exit(&self, id: &str, exec_id: &str, status: i32) -> WaitResponse {
        self.agent.exit(id, exec_id, status);
        self.wait(id, exec_id).expect("wait")
    }
}

/// Annotations of a CRI pod's sandbox container.
fn sandbox_of(pod: &str) -> serde_json::Value {
    json!({ CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: pod })
}

/// Annotations of a CRI pod's ordinary container.
fn member_of(pod: &str) -> serde_json::Value {
    json!({ CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: pod })
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, ShimError>) -> bool {
    matches!(r, Err(ShimError::NotFound(_)))
}
