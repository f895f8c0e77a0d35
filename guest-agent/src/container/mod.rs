//! Containers and their processes: the state the agent keeps and the operations of the API.

pub mod init_signal;
pub mod launch;
pub mod pod;
pub mod root_mount;
pub mod spec;
pub mod stdio;

use husk_lock::MutexExt;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_protocol::agent::{ContainerStatsResponse, PodNamespaces};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec};

use crate::cgroup::{Cgroup, CgroupRoot};
use crate::error::{Error, Result};
use crate::oom::OomWatcher;
use crate::reaper::Reaper;
use crate::setup::config::{LaunchConfig, LaunchMode};
use stdio::ProcessIo;

/// How long remove waits for a killed container's processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One process of a container (its init, or an exec'd one).
pub struct ProcessEntry {
    /// Pid in the agent's pid namespace.
    pub pid: i32,
    /// Its standard streams.
    pub io: ProcessIo,
}

enum State {
    /// Set up, waiting for start.
    Created(launch::Starter),
    /// Started, at this time (a signal its init cannot handle yet is held a while).
    Running(Instant),
}

/// A container.
pub struct Container {
    spec: Spec,
    cgroup: Option<Cgroup>,
    init: Arc<ProcessEntry>,
    state: Mutex<State>,
    execs: Mutex<HashMap<String, Arc<ProcessEntry>>>,
    /// Exec ids being launched (reserved, so the map's lock is not held meanwhile).
    launching: Mutex<HashSet<String>>,
    /// The rootfs bound onto itself; unmounted with the container.
    _root_mount: root_mount::RootMount,
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The directory holding every container's bundle (the virtio-fs share in the guest).
    pub share: PathBuf,
    /// The cgroup v2 directory for container cgroups (`None`: no cgroups).
    pub cgroup_root: Option<PathBuf>,
}

/// All containers of the sandbox.
pub struct Runtime {
    config: RuntimeConfig,
    reaper: Reaper,
    cgroups: Option<CgroupRoot>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created (reserved so two creates cannot race).
    creating: Mutex<HashSet<String>>,
    /// OOM kills in container cgroups (`None`: the watcher thread could not start).
    oom: Option<OomWatcher>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.locked()
}

fn signal_from(n: u32) -> Result<Signal> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| Error::InvalidArgument(format!("signal {n}")))
}

impl Runtime {
    /// A runtime with no containers.
    pub fn new(config: RuntimeConfig, reaper: Reaper) -> Self {
        let cgroups = config.cgroup_root.as_deref().and_then(CgroupRoot::open);
        if cgroups.is_none() {
            tracing::warn!(
                "no cgroup v2 at {:?}: containers run without cgroups",
                config.cgroup_root
            );
        }
        let oom = OomWatcher::start()
            .map_err(|e| tracing::warn!("OOM watcher: {e}: no OOM events"))
            .ok();
        Runtime {
            config,
            reaper,
            cgroups,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom,
        }
    }

    /// The share directory.
    pub fn share(&self) -> &PathBuf {
        &self.config.share
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<ProcessEntry>)> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            let init = c.init.clone();
            return Ok((c, init));
        }
        let p = lock(&c.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })?;
        Ok((c, p))
    }

    /// Creates a container, joining the namespaces `pod` names of its pod's sandbox
    /// container; its init process waits for [`Runtime::start`].
    pub fn create(&self, id: &str, spec_json: &[u8], pod: Option<&PodNamespaces>) -> Result<u32> {
        spec::check_id("container id", id)?;
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(id) || !creating.insert(id.to_string()) {
                return Err(Error::AlreadyExists(id.to_string()));
            }
        }
        let result = self.create_reserved(id, spec_json, pod);
        lock(&self.creating).remove(id);
        result
    }

    /// Points the spec's pod namespaces at those of the sandbox container's init.
    fn join_pod(&self, spec: &mut Spec, pod: &PodNamespaces) -> Result<pod::Joined> {
        spec::check_id("sandbox id", &pod.sandbox_id)?;
        let sandbox = lock(&self.containers)
            .get(&pod.sandbox_id)
            .cloned()
            .ok_or_else(|| Error::SandboxNotFound(pod.sandbox_id.clone()))?;
        let running = || {
            matches!(*lock(&sandbox.state), State::Running(_))
                && self.reaper.status(sandbox.init.pid).is_none()
        };
        if !running() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {:?} is not running",
                pod.sandbox_id
            )));
        }
        pod::join(spec, &pod.types, &pod.sandbox_id, sandbox.init.pid, running)
    }

    fn create_reserved(
        &self,
        id: &str,
        spec_json: &[u8],
        pod: Option<&PodNamespaces>,
    ) -> Result<u32> {
        let mut spec = spec::load(&self.config.share, id, spec_json)?;
        // Held open until the container process has joined them.
        let _joined = match pod.filter(|p| !p.sandbox_id.is_empty() || !p.types.is_empty()) {
            Some(p) => Some(self.join_pod(&mut spec, p)?),
            None => None,
        };
        let rootfs = spec::resolve_rootfs(&self.config.share, id, &spec)?;
        let root_mount = root_mount::RootMount::bind(&rootfs)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let cgroup = match &self.cgroups {
            Some(root) => Some(root.create(id)?),
            None => None,
        };
        let result = (|| {
            if let (Some(cg), Some(res)) = (
                &cgroup,
                spec.linux().as_ref().and_then(|l| l.resources().as_ref()),
            ) {
                cg.apply(res)?;
            }
            // As runc: set in the container's UTS namespace, new or joined.
            let hostname = spec
                .hostname()
                .clone()
                .filter(|_| spec::has_namespace(&spec, LinuxNamespaceType::Uts));
            let cfg = LaunchConfig {
                mode: LaunchMode::Create {
                    spec: Box::new(spec.clone()),
                    rootfs,
                },
                cgroup: cgroup.as_ref().map(|c| c.dir().to_path_buf()),
                hostname,
            };
            let (io, child) = ProcessIo::new(terminal)?;
            let mut launched = launch::launch(&cfg, child, &self.reaper)?;
            Ok((io.with_console(launched.console.take()), launched))
        })();
        let (io, launched) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove(KILL_WAIT);
                }
                return Err(e);
            }
        };
        let pid = launched.pid;
        if let (Some(oom), Some(cg)) = (&self.oom, &cgroup) {
            let events = cg.dir().join("memory.events");
            // Without the memory controller there is no such file and nothing to report.
            if events.exists() {
                if let Err(e) = oom.watch(id, &events) {
                    tracing::warn!(id, "no OOM events: {e}");
                }
            }
        }
        let container = Container {
            spec,
            cgroup,
            init: Arc::new(ProcessEntry { pid, io }),
            state: Mutex::new(State::Created(launched.start)),
            execs: Mutex::new(HashMap::new()),
            launching: Mutex::new(HashSet::new()),
            _root_mount: root_mount,
        };
        lock(&self.containers).insert(id.to_string(), Arc::new(container));
        tracing::info!(id, pid, "container created");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    /// Lets the init process exec the container's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let starter = {
            let mut state = lock(&c.state);
            if self.reaper.status(c.init.pid).is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} has exited"
                )));
            }
            match std::mem::replace(&mut *state, State::Running(Instant::now())) {
                State::Created(starter) => starter,
                State::Running(at) => {
                    *state = State::Running(at);
                    return Err(Error::FailedPrecondition(format!(
                        "container {id} is already started"
                    )));
                }
            }
        };
        // Outside the lock: this waits for the program's exec.
        starter.start()
    }

    /// Runs an extra process inside a started, living container.
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<u32> {
        spec::check_id("exec id", exec_id)?;
        let c = self.get(id)?;
        if !matches!(*lock(&c.state), State::Running(_)) || self.reaper.status(c.init.pid).is_some()
        {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if c.cgroup.as_ref().is_some_and(Cgroup::is_frozen) {
            // A process joining a frozen cgroup would hang in its setup.
            return Err(Error::FailedPrecondition(format!(
                "container {id} is paused"
            )));
        }
        let process: OciProcess = serde_json::from_slice(process_json)
            .map_err(|e| Error::InvalidArgument(format!("process: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::InvalidArgument("process has no args".into()));
        }
        {
            let execs = lock(&c.execs);
            if execs.contains_key(exec_id) || !lock(&c.launching).insert(exec_id.to_string()) {
                return Err(Error::AlreadyExists(exec_id.to_string()));
            }
        }
        let result = self.launch_exec(&c, &process);
        lock(&c.launching).remove(exec_id);
        let entry = result?;
        let pid = entry.pid;
        lock(&c.execs).insert(exec_id.to_string(), Arc::new(entry));
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    fn launch_exec(&self, c: &Container, process: &OciProcess) -> Result<ProcessEntry> {
        let cfg = LaunchConfig {
            mode: LaunchMode::Exec {
                init_pid: c.init.pid,
                process: Box::new(process.clone()),
                seccomp: c.spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            },
            cgroup: c.cgroup.as_ref().map(|c| c.dir().to_path_buf()),
            hostname: None,
        };
        let (io, child) = ProcessIo::new(process.terminal() == Some(true))?;
        let mut launched = launch::launch(&cfg, child, &self.reaper)?;
        let io = io.with_console(launched.console.take());
        if let Err(e) = launched.start.start() {
            // It exits on its own after a failed exec; reap it so nothing is left.
            let _ = self.reaper.wait(launched.pid, Some(KILL_WAIT));
            self.reaper.forget(launched.pid);
            return Err(e);
        }
        Ok(ProcessEntry {
            pid: launched.pid,
            io,
        })
    }

    /// Forgets an exec'd process, killing it first if it still runs.
    pub fn remove_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument(
                "the init process goes with its container".into(),
            ));
        }
        let c = self.get(id)?;
        let p = lock(&c.execs)
            .remove(exec_id)
            .ok_or_else(|| Error::ProcessNotFound {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })?;
        if self.reaper.status(p.pid).is_none() {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            if self.reaper.wait(p.pid, Some(KILL_WAIT)).is_none() {
                tracing::warn!(id, exec_id, pid = p.pid, "process did not die");
            }
        }
        self.reaper.forget(p.pid);
        Ok(())
    }

    /// The next container with an OOM kill, waiting up to `wait` for one.
    pub fn next_oom(&self, wait: Duration) -> Option<String> {
        match &self.oom {
            Some(oom) => oom.next(wait),
            None => {
                std::thread::sleep(wait);
                None
            }
        }
    }

    /// Sends a signal to one process, or to all processes of the container.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal_from(signal)?;
        let (c, p) = self.process(id, exec_id)?;
        if all {
            if let Some(cg) = &c.cgroup {
                for pid in cg.procs()? {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                }
                return Ok(());
            }
        }
        if self.reaper.status(p.pid).is_some() {
            return Err(Error::FailedPrecondition("process has exited".into()));
        }
        let started = match *lock(&c.state) {
            State::Running(at) if exec_id.is_empty() => Some(at),
            _ => None,
        };
        match started {
            Some(at) => {
                let reaper = self.reaper.clone();
                let pid = p.pid;
                init_signal::send_to_init(pid, sig, at, move || reaper.status(pid).is_none())
            }
            None => kill(Pid::from_raw(p.pid), sig),
        }
        .map_err(|e| Error::errno("kill", e))
    }

    /// Waits for a process to exit; returns (exit status, pid).
    pub fn wait(&self, id: &str, exec_id: &str, timeout: Option<Duration>) -> Result<(i32, i32)> {
        let (_c, p) = self.process(id, exec_id)?;
        match self.reaper.wait(p.pid, timeout) {
            Some(code) => Ok((code, p.pid)),
            None => Err(Error::Timeout(format!("wait for pid {}", p.pid))),
        }
    }

    /// The streams of a process.
    pub fn io(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessEntry>> {
        self.process(id, exec_id).map(|(_, p)| p)
    }

    fn cgroup(&self, id: &str) -> Result<(Arc<Container>, Cgroup)> {
        let c = self.get(id)?;
        let cg = c
            .cgroup
            .clone()
            .ok_or_else(|| Error::Unavailable("no cgroup v2 in this sandbox".into()))?;
        Ok((c, cg))
    }

    /// Cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<ContainerStatsResponse> {
        self.cgroup(id).map(|(_, cg)| cg.stats())
    }

    /// Freezes or thaws the container.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        self.cgroup(id)?.1.freeze(frozen)
    }

    /// Applies new resources.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let res: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        self.cgroup(id)?.1.apply(&res)
    }

    /// Pids of the container's processes.
    pub fn list(&self, id: &str) -> Result<Vec<u32>> {
        match self.cgroup(id) {
            Ok((_, cg)) => cg.procs(),
            Err(Error::Unavailable(_)) => {
                let c = self.get(id)?;
                let mut pids = vec![c.init.pid];
                pids.extend(lock(&c.execs).values().map(|p| p.pid));
                Ok(pids
                    .into_iter()
                    .filter(|p| self.reaper.status(*p).is_none())
                    .filter_map(|p| u32::try_from(p).ok())
                    .collect())
            }
            Err(e) => Err(e),
        }
    }

    /// Kills whatever is left of the container and forgets it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let c = lock(&self.containers)
            .remove(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        // Dropping the start pipe makes a never-started init exit on its own.
        *lock(&c.state) = State::Running(Instant::now());
        if let Some(cg) = &c.cgroup {
            let _ = cg.kill_all();
        }
        let mut pids = vec![c.init.pid];
        pids.extend(lock(&c.execs).values().map(|p| p.pid));
        for pid in &pids {
            if self.reaper.status(*pid).is_none() {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        for pid in &pids {
            if self.reaper.wait(*pid, Some(KILL_WAIT)).is_none() {
                tracing::warn!(id, pid, "process did not die");
            }
            self.reaper.forget(*pid);
        }
        if let Some(oom) = &self.oom {
            oom.unwatch(id);
        }
        if let Some(cg) = &c.cgroup {
            cg.remove(KILL_WAIT)?;
        }
        tracing::info!(id, "container removed");
        Ok(())
    }

    /// Removes every container.
    pub fn remove_all(&self) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id) {
                tracing::warn!(id, "remove: {e}");
            }
        }
    }
}
