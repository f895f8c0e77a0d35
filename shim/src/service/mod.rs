//! The shim v2 Task service: every call is converted once (`convert`), handled against the
//! pod's VM and agent, and answered.
//!
//! - this file: the service and its registry of containers;
//! - `pod`: the pod VM's life (booted for the first container, destroyed after the last);
//! - `create`: the `Create` call (share, pod, agent);
//! - `task`: the other Task calls;
//! - `waiter`: the threads that turn process exits into events;
//! - `fault`: a pod that died under its tasks (watched by [`crate::watch`]);
//! - `shutdown`: the shim's exit, which waits for a `Create` in flight;
//! - `ttrpc`: the adapter containerd's ttrpc server calls ([`TaskHandler`]).

mod create;
mod fault;
mod pod;
mod shutdown;
mod task;
mod ttrpc;
mod waiter;

#[cfg(test)]
mod tests;

use husk_lock::MutexExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use containerd_shim::ExitSignal;
use husk_protocol::AgentApi;

use crate::config::Config;
use crate::error::ShimError;
use crate::events::EventSink;
use crate::oom::OomMonitor;
use crate::pod::{PodLauncher, PodVm};
use crate::process::Process;
use crate::watch::PodWatch;

pub use self::ttrpc::TaskHandler;

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
    /// Itself, for the pod watcher's callback (which must not keep the service alive).
    me: Weak<TaskService>,
    config: Config,
    namespace: String,
    launcher: Box<dyn PodLauncher>,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    pod: Mutex<Option<Arc<dyn PodVm>>>,
    oom: Mutex<Option<OomMonitor>>,
    watch: Mutex<Option<PodWatch>>,
    /// Why the pod VM was torn down under its tasks, for the errors of later calls.
    fault: Mutex<Option<String>>,
    /// Set when the shim is shutting down: no `Create` may finish after it.
    closing: AtomicBool,
    /// `Create` calls in flight, which the shutdown waits for.
    creates: Mutex<u32>,
    creates_done: Condvar,
    /// Shared with the OOM monitor, which publishes only for these containers.
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
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
    /// A service with no containers yet; pod VMs are started with `launcher`.
    pub fn new(
        config: Config,
        namespace: String,
        launcher: Box<dyn PodLauncher>,
        events: Box<dyn EventSink>,
        exit: Arc<ExitSignal>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| TaskService {
            me: me.clone(),
            config,
            namespace,
            launcher,
            events: Arc::from(events),
            exit,
            pod: Mutex::new(None),
            oom: Mutex::new(None),
            watch: Mutex::new(None),
            fault: Mutex::new(None),
            closing: AtomicBool::new(false),
            creates: Mutex::new(0),
            creates_done: Condvar::new(),
            containers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.locked()
    }

    fn pod(&self) -> Result<Arc<dyn PodVm>> {
        self.pod.locked().clone().ok_or_else(|| {
            let why = self.fault.locked().clone();
            ShimError::FailedPrecondition(match why {
                Some(why) => format!("the pod VM is not running: {why}"),
                None => "the pod VM is not running".into(),
            })
        })
    }

    fn agent(&self) -> Result<Arc<dyn AgentApi>> {
        Ok(self.pod()?.agent())
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
}
