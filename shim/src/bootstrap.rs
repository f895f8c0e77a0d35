//! The shim binary's three actions, as containerd runs them:
//!
//! - `start`: prints the ttrpc address of the shim that serves this container, starting
//!   one if needed. Containers of one CRI pod share the pod's shim (grouped by the sandbox
//!   id), so the second and later get the existing address. The reply is the bare address
//!   (shim protocol of containerd 1.6/1.7, which 2.x still accepts).
//! - `delete`: cleanup after a shim died: kills the pod's helpers, unmounts, removes files.
//! - otherwise: serve the Task service on `-socket` until `Shutdown`. The service is
//!   registered as both `containerd.task.v2.Task` (containerd 1.x) and
//!   `containerd.task.v3.Task` (containerd 2.x); the messages are the same.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::ttrpc::{MethodHandler, Server};

use crate::annotations::PodRole;
use crate::child;
use crate::config::Config;
use crate::events::RemoteEvents;
use crate::pod::HostPodLauncher;
use crate::sandbox::{self, SandboxPaths};
use crate::service::{TaskHandler, TaskService};
use crate::spec;
use crate::vmm::HuskVmmLauncher;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// Exit status reported for a task whose shim died.
const KILLED_STATUS: u32 = 128 + 9;

/// Errors of the shim's actions.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Bad command line or environment.
    #[error("{0}")]
    Usage(String),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The bundle's spec.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The pod annotations.
    #[error(transparent)]
    Annotation(#[from] crate::annotations::AnnotationError),
    /// I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// containerd-shim library error.
    #[error(transparent)]
    Shim(#[from] containerd_shim::Error),
    /// ttrpc server error.
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] containerd_shim_protos::ttrpc::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Io { what, source }
}

fn bundle_dir(flags: &Flags) -> Result<PathBuf, BootError> {
    if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io("current directory"))
    } else {
        Ok(PathBuf::from(&flags.bundle))
    }
}

/// The pod role of the container in `bundle`.
fn role_of(bundle: &Path) -> Result<PodRole, BootError> {
    let oci = spec::read_bundle_spec(bundle)?;
    Ok(PodRole::from_annotations(
        &oci.annotations().clone().unwrap_or_default(),
    )?)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: returns the address of the shim serving this container.
pub fn start(flags: &Flags) -> Result<String, BootError> {
    // A broken config is reported here, where containerd shows our stderr.
    Config::load()?;
    let bundle = bundle_dir(flags)?;
    let role = role_of(&bundle)?;
    let grouping = role.pod_id(&flags.id).to_string();
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let alive = std::os::unix::net::UnixStream::connect(socket_path(&address)).is_ok();
    if !alive {
        if let PodRole::Member { sandbox_id } = &role {
            return Err(BootError::Usage(format!(
                "no shim serves pod {sandbox_id}: start its sandbox first"
            )));
        }
        let _ = std::fs::remove_file(socket_path(&address));
        spawn_server(flags, &bundle, &address)?;
    }
    containerd_shim::util::write_address(&address)?;
    Ok(address)
}

fn spawn_server(flags: &Flags, bundle: &Path, address: &str) -> Result<(), BootError> {
    let exe = std::env::current_exe().map_err(io("find the shim binary"))?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
            "-socket",
            address,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    // SAFETY: setsid is async-signal-safe; it only detaches the child from containerd's
    // process group and session, so signals meant for `start` do not reach the server.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut server = cmd.spawn().map_err(io("spawn the shim server"))?;
    // The server closes its stdout once it listens.
    let mut sink = Vec::new();
    if let Some(mut out) = server.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    if let Ok(Some(status)) = server.try_wait() {
        return Err(BootError::Usage(format!(
            "the shim server exited during start ({status}); see containerd's log"
        )));
    }
    Ok(())
}

/// `delete`: cleans up after a shim that is gone.
pub fn delete(flags: &Flags) -> Result<DeleteResponse, BootError> {
    let config = Config::load().unwrap_or_default();
    let bundle = bundle_dir(flags)?;
    let role = role_of(&bundle).unwrap_or(PodRole::Standalone);
    let paths = SandboxPaths::new(&config.state_dir, &flags.namespace, role.pod_id(&flags.id));
    match role {
        PodRole::Member { .. } => {
            crate::mounts::remove_tree_or_warn(&paths.container_dir(&flags.id))
        }
        PodRole::Standalone | PodRole::Sandbox => {
            sandbox::remove_leftovers(&paths);
            // The dead server could not remove its socket.
            let address =
                containerd_shim::socket_address(&flags.address, &flags.namespace, &flags.id);
            let path = Path::new(socket_path(&address));
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok(DeleteResponse {
        pid: 0,
        exit_status: KILLED_STATUS,
        exited_at: MessageField::some(crate::convert::timestamp(std::time::SystemTime::now())),
        ..Default::default()
    })
}

/// Writes the `delete` reply.
pub fn write_delete_response(resp: &DeleteResponse) -> Result<(), BootError> {
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| BootError::Usage(format!("encode delete response: {e}")))?;
    std::io::Write::write_all(&mut std::io::stdout(), &bytes).map_err(io("write stdout"))
}

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// The Task service's methods under both the v3 and the v2 service name.
pub fn task_methods(handler: &TaskHandler) -> Methods {
    let v3 = containerd_shim_protos::create_task(Arc::new(handler.clone()));
    let v2: Methods = containerd_shim_protos::create_task(Arc::new(handler.clone()))
        .into_iter()
        .map(|(k, v)| {
            (
                k.replacen("containerd.task.v3.", "containerd.task.v2.", 1),
                v,
            )
        })
        .collect();
    v3.into_iter().chain(v2).collect()
}

/// Serves the Task service until `Shutdown`.
pub fn serve(flags: &Flags) -> Result<(), BootError> {
    if flags.socket.is_empty() || flags.namespace.is_empty() {
        return Err(BootError::Usage(
            "serve needs -namespace and -socket".into(),
        ));
    }
    let config = Config::load()?;
    containerd_shim::logger::init(flags.debug, &config.log_level, &flags.namespace, &flags.id)?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| BootError::Usage("TTRPC_ADDRESS is not set".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address)?;
    let events =
        RemoteEvents::start(publisher, flags.namespace.clone()).map_err(io("events thread"))?;
    let vmm = child::find_helper(&config.vmm, "husk-vmm").unwrap_or_else(|| "husk-vmm".into());
    let exit = Arc::new(ExitSignal::default());
    let launcher = HostPodLauncher::new(config.clone(), Box::new(HuskVmmLauncher { binary: vmm }));
    let svc = TaskService::new(
        config,
        flags.namespace.clone(),
        Box::new(launcher),
        Box::new(events),
        Arc::clone(&exit),
    );
    let handler = TaskHandler(Arc::clone(&svc));

    let path = socket_path(&flags.socket).to_string();
    if let Some(dir) = Path::new(&path).parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    // `Wait` calls block a worker each (one per process containerd waits on), so the pool
    // must be able to grow well past ttrpc's default of five.
    let mut server = Server::new()
        .bind(&flags.socket)?
        .set_thread_count_min(2)
        .set_thread_count_default(4)
        .set_thread_count_max(256)
        .register_service(task_methods(&handler));
    server.start()?;
    // Tell `start` we are listening: our stdout is its pipe.
    // SAFETY: dup2 on the process's own standard descriptors; no Rust object owns fd 1.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
    tracing::info!("husk shim serving {}", flags.socket);
    exit.wait();
    tracing::info!("husk shim shutting down");
    svc.shutdown_all();
    let _ = std::fs::remove_file(&path);
    // Not `server.shutdown()`: it joins every connection thread, and a handler blocked on
    // a guest that is gone would keep the shim (and containerd's caller) waiting forever.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_strips_the_scheme() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/ab"),
            "/run/containerd/s/ab"
        );
        assert_eq!(socket_path("/x"), "/x");
    }

    #[test]
    fn pod_members_share_the_sandbox_address() {
        let sb =
            containerd_shim::socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1");
        let role = PodRole::Member {
            sandbox_id: "pod1".into(),
        };
        let member = containerd_shim::socket_address(
            "/run/containerd/containerd.sock",
            "k8s.io",
            role.pod_id("c2"),
        );
        assert_eq!(sb, member);
        assert_ne!(
            sb,
            containerd_shim::socket_address("/run/containerd/containerd.sock", "k8s.io", "c2")
        );
    }
}
