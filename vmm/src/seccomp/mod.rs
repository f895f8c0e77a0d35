//! Per-thread seccomp filters, after Firecracker: every kind of husk-vmm thread loads its
//! own allow-list ([`rules`]) as the first thing it does, and any other system call kills
//! the whole process (`SIGSYS`, "killed by signal 31" in the shim's report), because a
//! thread making an unexpected call means the guest has found a way to make husk-vmm do
//! something it never does.
//!
//! The filters are compiled once, before the jail and the capability drop, into a
//! [`ThreadFilters`] that the builder hands to each thread it spawns ([`spawn`]); the main
//! thread loads its own last, after it spawned every other thread, so none of them inherits
//! it.

pub mod rules;

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Errors building or loading a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule or filter was rejected by seccompiler (a bug in [`rules`]).
    #[error("building a seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// Loading a filter into the calling thread failed.
    #[error("loading the {0:?} seccomp filter: {1}")]
    Load(ThreadKind, seccompiler::Error),
    /// A thread could not be created.
    #[error("spawning {0}: {1}")]
    Spawn(String, std::io::Error),
    /// A spawned thread ended before reporting whether its filter loaded.
    #[error("thread {0} ended before loading its filter")]
    Vanished(String),
}

/// The kinds of threads husk-vmm runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Runs one vCPU (`KVM_RUN`) and the device accesses it traps into.
    Vcpu,
    /// The main thread: the event loop and the teardown at the end.
    EventLoop,
    /// Accepts control-API connections and starts a thread for each.
    ApiListener,
    /// Serves one control-API connection.
    ApiConnection,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::ApiListener,
        ThreadKind::ApiConnection,
    ];

    /// The allow-list of this kind.
    pub fn rules(self) -> Result<rules::Rules, SeccompError> {
        let kick = crate::vstate::control::kick_signal();
        match self {
            ThreadKind::Vcpu => rules::vcpu(),
            ThreadKind::EventLoop => rules::event_loop(kick),
            ThreadKind::ApiListener => rules::api_listener(kick),
            ThreadKind::ApiConnection => rules::api_connection(kick),
        }
    }

    /// The compiled filter of this kind: the allow-list, and `KillProcess` for the rest.
    pub fn compile(self) -> Result<BpfProgram, SeccompError> {
        let filter = SeccompFilter::new(
            self.rules()?,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        Ok(filter.try_into()?)
    }
}

/// The compiled filter of every thread kind, or none when seccomp is switched off
/// (`--no-seccomp`, for debugging only).
#[derive(Debug, Clone, Default)]
pub struct ThreadFilters {
    programs: Option<Arc<HashMap<ThreadKind, BpfProgram>>>,
}

impl ThreadFilters {
    /// Compiles the filter of every kind.
    pub fn compile() -> Result<Self, SeccompError> {
        let programs = ThreadKind::ALL
            .iter()
            .map(|k| Ok((*k, k.compile()?)))
            .collect::<Result<HashMap<_, _>, SeccompError>>()?;
        Ok(Self {
            programs: Some(Arc::new(programs)),
        })
    }

    /// No filters: [`ThreadFilters::load`] does nothing.
    pub fn disabled() -> Self {
        Self { programs: None }
    }

    /// Whether filters are loaded at all.
    pub fn enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// Loads the filter of `kind` into the calling thread (and sets no_new_privs, which
    /// loading a filter without `CAP_SYS_ADMIN` requires). It cannot be taken off again.
    pub fn load(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(programs) = &self.programs else {
            return Ok(());
        };
        let program = programs
            .get(&kind)
            .expect("ThreadFilters::compile builds every ThreadKind");
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Load(kind, e))
    }
}

/// Spawns thread `name` that loads the filter of `kind` and then runs `f`. Returns once the
/// filter is loaded, so that a thread never runs unconfined; a failure to load is this
/// function's error and `f` does not run.
pub fn spawn<F>(
    name: String,
    kind: ThreadKind,
    filters: &ThreadFilters,
    f: F,
) -> Result<JoinHandle<()>, SeccompError>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let filters = filters.clone();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let loaded = filters.load(kind);
            let ok = loaded.is_ok();
            let _ = tx.send(loaded);
            if ok {
                f();
            }
        })
        .map_err(|e| SeccompError::Spawn(name.clone(), e))?;
    rx.recv().map_err(|_| SeccompError::Vanished(name))??;
    Ok(handle)
}

#[cfg(test)]
mod tests;
