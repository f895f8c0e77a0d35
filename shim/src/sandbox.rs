//! A pod's VM: its runtime directory, virtiofsd, the VMM and the agent connection.
//!
//! Layout of `<state_dir>/<namespace>/<pod-id>/`:
//!
//! ```text
//! shared/                 exported by virtiofsd, mounted by the guest at /run/husk/shared
//!   <container-id>/rootfs the container's rootfs (a mount)
//!   <container-id>/mounts host files bound in for the guest
//! fs.sock                 virtiofsd's vhost-user socket
//! vsock.sock              the VMM's hybrid vsock socket
//! api.sock                the VMM's control socket
//! vmm.json                husk-vmm's configuration
//! console.log vmm.log virtiofsd.log
//! vmm.pid virtiofsd.pid   each helper's pid, start time and argv, for `shim delete`
//!                         after a crash ([`crate::identity`])
//! cgroup                  the pod's host cgroup (and parents made for it), for the same
//! ```
//!
//! The directory is 0700 and every file in it 0600 ([`crate::private`]).

use husk_lock::MutexExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::agent::CreateSandboxRequest;
use husk_protocol::{AgentApi, AgentClient, AgentError};
use husk_vmm_api::GuestCmdline;

use crate::annotations::VmSize;
use crate::child;
use crate::config::Config;
use crate::deadline;
use crate::host_cgroup::{self, CgroupError, CgroupTarget, HostCgroups, Limits, PodCgroup};
use crate::identity;
use crate::mounts;
use crate::pidfd::PidFd;
use crate::virtiofsd::{self, VirtiofsdError};
use crate::vmm::{Vm, VmLauncher, VmSpec, VmmError};
use crate::watch::{Fault, Part};

/// virtio-fs tag of the pod share.
pub const SHARE_TAG: &str = "husk-share";
/// Guest CID.
pub const GUEST_CID: u32 = 3;
/// Longest unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long virtiofsd may take to create its socket.
const VIRTIOFSD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a powered-off guest's VMM may take to exit.
const VMM_EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long the guest may take to answer `DestroySandbox` on a normal teardown; a guest
/// that does not is stopped through the VMM anyway, so a hung guest cannot hold up a
/// Delete or Shutdown for the agent client's lifecycle timeout.
const GUEST_POWEROFF_WAIT: Duration = Duration::from_secs(5);
/// Bytes of console shown in boot errors.
const CONSOLE_TAIL: usize = 2000;

/// Errors creating or running a pod VM.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A configured file is missing.
    #[error("{what} {path} does not exist (set `{key}` in the husk config, {config})")]
    Missing {
        /// What it is.
        what: &'static str,
        /// The config key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The config file.
        config: &'static str,
    },
    /// A helper binary is not installed.
    #[error("{0} not found next to the shim or in PATH")]
    HelperMissing(&'static str),
    /// The state directory path is too long for unix sockets.
    #[error("socket path {0} is too long; use a shorter state_dir")]
    SocketPathTooLong(PathBuf),
    /// Filesystem error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// virtiofsd failed.
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The VMM exited before the agent answered.
    #[error(
        "the VM exited during boot ({status}); husk-vmm said:\n{vmm_log}\nconsole:\n{console}"
    )]
    VmExited {
        /// How husk-vmm ended.
        status: String,
        /// The end of the guest console.
        console: String,
        /// The end of husk-vmm's own log (why it stopped).
        vmm_log: String,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {timeout:?}; console:\n{console}")]
    BootTimeout {
        /// The boot timeout.
        timeout: Duration,
        /// The end of the guest console.
        console: String,
    },
    /// An agent call failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The pod's host cgroup could not be made.
    #[error("host cgroup: {0}")]
    Cgroup(#[from] CgroupError),
}

/// The files of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    /// `<state_dir>/<namespace>/<pod-id>`.
    pub dir: PathBuf,
    /// The exported directory.
    pub shared: PathBuf,
    /// virtiofsd socket.
    pub fs_socket: PathBuf,
    /// Hybrid vsock socket.
    pub vsock: PathBuf,
    /// VMM control socket.
    pub api: PathBuf,
    /// Guest console.
    pub console: PathBuf,
}

impl SandboxPaths {
    /// Paths of pod `pod_id` in `namespace`.
    pub fn new(state_dir: &Path, namespace: &str, pod_id: &str) -> SandboxPaths {
        let dir = state_dir.join(namespace).join(pod_id);
        SandboxPaths {
            shared: dir.join("shared"),
            fs_socket: dir.join("fs.sock"),
            vsock: dir.join("vsock.sock"),
            api: dir.join("api.sock"),
            console: dir.join("console.log"),
            dir,
        }
    }

    /// Checks that every socket path (and the vsock's `_<port>` listeners) fits.
    pub fn check(&self) -> Result<(), SandboxError> {
        let longest = self.vsock.display().to_string().len() + "_4294967295".len();
        if longest > MAX_SOCKET_PATH {
            return Err(SandboxError::SocketPathTooLong(self.vsock.clone()));
        }
        Ok(())
    }

    /// `shared/<container-id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.shared.join(id)
    }

    /// A file of the pod directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The guest kernel command line: husk-vmm-api's base line (which says why each parameter
/// is there), `quiet` unless the console is for debugging, then the configured extras.
pub fn cmdline(config: &Config) -> String {
    GuestCmdline::new()
        .quiet(!config.debug_console)
        .param(&config.kernel_params)
        .build()
}

fn tail(path: &Path) -> String {
    crate::console::tail(path, CONSOLE_TAIL)
}

/// A running pod VM.
pub struct Sandbox {
    paths: SandboxPaths,
    vm: Box<dyn Vm>,
    virtiofsd: Mutex<Child>,
    agent: Arc<dyn AgentApi>,
    cgroup: Box<dyn PodCgroup>,
}

/// Undoes a half-made sandbox unless disarmed.
struct Partial<'a> {
    paths: &'a SandboxPaths,
    virtiofsd: Option<Child>,
    vm: Option<Box<dyn Vm>>,
    cgroup: Option<Box<dyn PodCgroup>>,
    armed: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(vm) = self.vm.take() {
            vm.stop(Duration::from_millis(200));
        }
        if let Some(mut v) = self.virtiofsd.take() {
            child::stop(&mut v, Duration::from_millis(200));
        }
        if let Some(cg) = self.cgroup.take() {
            remove_cgroup_or_warn(cg.as_ref());
        }
        mounts::remove_tree_or_warn(&self.paths.dir);
    }
}

fn must_exist(path: &Path, what: &'static str, key: &'static str) -> Result<(), SandboxError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(SandboxError::Missing {
            what,
            key,
            path: path.to_path_buf(),
            config: crate::config::DEFAULT_CONFIG_PATH,
        })
    }
}

impl Sandbox {
    /// Makes the pod's host cgroup, starts virtiofsd and the VM in it, waits for the agent
    /// and creates the sandbox in the guest. On error everything started is stopped, the
    /// cgroup and the directory removed.
    pub fn start(
        config: &Config,
        launcher: &dyn VmLauncher,
        cgroups: &dyn HostCgroups,
        paths: SandboxPaths,
        size: VmSize,
        target: &CgroupTarget,
    ) -> Result<Sandbox, SandboxError> {
        paths.check()?;
        must_exist(&config.kernel, "guest kernel", "kernel")?;
        must_exist(&config.initrd, "guest initrd", "initrd")?;
        let virtiofsd_bin = child::find_helper(&config.virtiofsd, "virtiofsd")
            .ok_or(SandboxError::HelperMissing("virtiofsd"))?;
        let cgroup = cgroups.create(&target.request(Limits::for_vm(size, config)))?;
        let mut partial = Partial {
            paths: &paths,
            virtiofsd: None,
            vm: None,
            cgroup: Some(cgroup),
            armed: true,
        };
        let procs = partial.cgroup.as_ref().and_then(|c| c.procs().cloned());
        crate::private::create_dir(&config.state_dir, &paths.dir).map_err(|source| {
            SandboxError::Io {
                what: "create",
                path: paths.dir.clone(),
                source,
            }
        })?;
        std::fs::create_dir_all(&paths.shared).map_err(|source| SandboxError::Io {
            what: "create",
            path: paths.shared.clone(),
            source,
        })?;
        // Made by the shim so that it is 0600 from the start; husk-vmm opens it as it is.
        crate::private::create_file(&paths.console).map_err(|source| SandboxError::Io {
            what: "create",
            path: paths.console.clone(),
            source,
        })?;
        let record = partial
            .cgroup
            .as_ref()
            .map(|c| c.record())
            .unwrap_or_default();
        if !record.is_empty() {
            let _ = crate::private::write_file(&paths.file("cgroup"), record.as_bytes());
        }
        // virtiofsd and the VMM start side by side: husk-vmm retries connecting to the
        // vhost-user socket, so the VMM's own start overlaps virtiofsd's.
        let fs_log = paths.file("virtiofsd.log");
        let v = virtiofsd::spawn(
            &virtiofsd_bin,
            &paths.fs_socket,
            &paths.shared,
            &fs_log,
            procs.as_ref(),
        )?;
        identity::record_or_warn(v.id(), &paths.file("virtiofsd.pid"));
        let v = partial.virtiofsd.insert(v);

        let spec = VmSpec {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: cmdline(config),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            vsock_socket: paths.vsock.clone(),
            vsock_cid: GUEST_CID,
            fs_socket: paths.fs_socket.clone(),
            fs_tag: SHARE_TAG.to_string(),
            api_socket: paths.api.clone(),
            console: paths.console.clone(),
            console_max_bytes: config.console_log_max_kib.saturating_mul(1024),
            log: paths.file("vmm.log"),
            config: paths.file("vmm.json"),
            cgroup: procs,
        };
        let vm = launcher.launch(&spec)?;
        identity::record_or_warn(vm.pid(), &paths.file("vmm.pid"));
        virtiofsd::wait_socket(v, &paths.fs_socket, &fs_log, VIRTIOFSD_TIMEOUT)?;
        let vm = partial.vm.insert(vm);

        let agent = wait_for_agent(config, &paths, vm.as_ref())?;
        restrict_sockets(&paths);
        if let Err(e) = crate::console::after_boot(&paths.console, config.debug_console) {
            tracing::warn!("empty {}: {e}", paths.console.display());
        }
        agent.create_sandbox(&CreateSandboxRequest {
            share_tag: SHARE_TAG.to_string(),
            ..Default::default()
        })?;

        let vm = partial.vm.take().ok_or(SandboxError::VmExited {
            status: "gone".into(),
            console: String::new(),
            vmm_log: String::new(),
        })?;
        let virtiofsd = partial.virtiofsd.take().ok_or(SandboxError::VmExited {
            status: "gone".into(),
            console: String::new(),
            vmm_log: String::new(),
        })?;
        let cgroup = partial
            .cgroup
            .take()
            .unwrap_or_else(|| Box::new(host_cgroup::NoHostCgroup));
        partial.armed = false;
        drop(partial);
        Ok(Sandbox {
            paths,
            vm,
            virtiofsd: Mutex::new(virtiofsd),
            agent: Arc::new(agent),
            cgroup,
        })
    }

    /// The agent client.
    pub fn agent(&self) -> &Arc<dyn AgentApi> {
        &self.agent
    }

    /// The pod's paths.
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }

    /// The VM.
    pub fn vm(&self) -> &dyn Vm {
        self.vm.as_ref()
    }

    /// The end of the guest console and of virtiofsd's log, for error reports.
    pub fn diagnostics(&self) -> String {
        format!(
            "guest console:\n{}\nvirtiofsd log:\n{}",
            tail(&self.paths.console),
            tail(&self.paths.file("virtiofsd.log"))
        )
    }

    /// What the pod watcher blocks on: a pidfd of husk-vmm and of virtiofsd. `Err`: one
    /// of them has already exited. A pidfd that cannot be opened for another reason (a
    /// kernel without pidfd_open) is logged and left out; the health check still covers
    /// the guest.
    pub fn parts(&self) -> Result<Vec<Part>, Fault> {
        let mut parts = Vec::new();
        match PidFd::open(self.vm.pid()) {
            Ok(fd) => parts.push(Part {
                name: "husk-vmm",
                fd: fd.into(),
            }),
            Err(e) => tracing::warn!("husk-vmm exits are not watched: {e}"),
        }
        let mut v = self.virtiofsd.locked();
        match PidFd::open(v.id()) {
            Ok(fd) => parts.push(Part {
                name: "virtiofsd",
                fd: fd.into(),
            }),
            Err(e) => tracing::warn!("virtiofsd exits are not watched: {e}"),
        }
        // Checked after the opens: a helper reaped before them would have let its pid go
        // to another process, and the pidfd name that one.
        if self.vm.exited() {
            return Err(Fault::PartExited("husk-vmm"));
        }
        if !matches!(v.try_wait(), Ok(None)) {
            return Err(Fault::PartExited("virtiofsd"));
        }
        Ok(parts)
    }

    /// Tears the pod down without asking the guest (it is hung or gone): SIGKILLs and
    /// reaps husk-vmm and virtiofsd, removes the host cgroup, unmounts and removes the pod
    /// directory.
    pub fn kill(&self) {
        self.vm.kill();
        child::kill(&mut self.virtiofsd.locked());
        remove_cgroup_or_warn(self.cgroup.as_ref());
        mounts::remove_tree_or_warn(&self.paths.dir);
    }

    /// Powers the guest off (waiting at most [`GUEST_POWEROFF_WAIT`] for it), stops the VMM
    /// and virtiofsd, unmounts and removes the pod directory.
    pub fn destroy(&self) {
        if !self.vm.exited() {
            let agent = Arc::clone(&self.agent);
            match deadline::run_within("husk-poweroff", GUEST_POWEROFF_WAIT, move || {
                agent.destroy_sandbox()
            }) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("destroy sandbox: {e}"),
                Err(e) => tracing::warn!("destroy sandbox: {e}; stopping the VM"),
            }
        }
        self.vm.stop(VMM_EXIT_GRACE);
        {
            let mut v = self.virtiofsd.locked();
            // virtiofsd exits by itself once the VMM closes the vhost-user connection.
            if child::wait_timeout(&mut v, Duration::from_millis(500)).is_none() {
                child::stop(&mut v, Duration::from_secs(1));
            }
        }
        remove_cgroup_or_warn(self.cgroup.as_ref());
        mounts::remove_tree_or_warn(&self.paths.dir);
    }
}

fn wait_for_agent(
    config: &Config,
    paths: &SandboxPaths,
    vm: &dyn Vm,
) -> Result<AgentClient, SandboxError> {
    let timeout = config.boot_timeout();
    let deadline = Instant::now() + timeout;
    loop {
        if paths.vsock.exists() {
            if let Ok(c) = AgentClient::connect_hybrid_vsock(
                &paths.vsock,
                Duration::from_secs(5),
                config.agent_timeouts(),
            ) {
                if c.handshake().is_ok() {
                    return Ok(c);
                }
            }
        }
        if vm.exited() {
            return Err(SandboxError::VmExited {
                status: vm.exit_status().unwrap_or_default(),
                console: tail(&paths.console),
                vmm_log: tail(&paths.file("vmm.log")),
            });
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::BootTimeout {
                timeout,
                console: tail(&paths.console),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Narrows the sockets husk-vmm and virtiofsd made to 0600, now that they exist. The 0700
/// pod directory already keeps others out; this holds even if its mode is changed.
fn restrict_sockets(paths: &SandboxPaths) {
    for s in [&paths.fs_socket, &paths.vsock, &paths.api] {
        match crate::private::restrict_file(s) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("chmod 0600 {}: {e}", s.display()),
        }
    }
}

/// Removes the pod's host cgroup once its processes are stopped; a failure is logged (the
/// cgroup is left, holding nothing or the processes that would not die).
fn remove_cgroup_or_warn(cgroup: &dyn PodCgroup) {
    if let Err(e) = cgroup.remove() {
        tracing::warn!("host cgroup: {e}");
    }
}

/// Cleanup for `shim delete` after a crash: kills the pod's recorded helpers if they are
/// still the very processes recorded (pid, start time and argv, [`identity`]), then
/// whatever is left in its host cgroup, removes the cgroup, its mounts and its directory.
pub fn remove_leftovers(paths: &SandboxPaths) {
    identity::kill_recorded(&paths.file("vmm.pid"));
    identity::kill_recorded(&paths.file("virtiofsd.pid"));
    if let Ok(record) = std::fs::read_to_string(paths.file("cgroup")) {
        let root = Path::new(host_cgroup::CGROUP_ROOT);
        if let Err(e) = host_cgroup::remove_recorded(&record, root) {
            tracing::warn!("host cgroup of {}: {e}", paths.dir.display());
        }
    }
    mounts::remove_tree_or_warn(&paths.dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_layout() {
        let p = SandboxPaths::new(Path::new("/run/husk"), "default", "pod1");
        assert_eq!(p.dir, PathBuf::from("/run/husk/default/pod1"));
        assert_eq!(
            p.container_dir("c1"),
            PathBuf::from("/run/husk/default/pod1/shared/c1")
        );
        assert_eq!(p.vsock, PathBuf::from("/run/husk/default/pod1/vsock.sock"));
        assert!(p.check().is_ok());
        let long = SandboxPaths::new(Path::new(&"/x".repeat(40)), "k8s.io", &"a".repeat(64));
        assert!(matches!(
            long.check(),
            Err(SandboxError::SocketPathTooLong(_))
        ));
    }

    #[test]
    fn cmdline_has_reset_console_and_extra_params() {
        let mut c = Config::default();
        assert!(cmdline(&c).starts_with(husk_vmm_api::BASE_CMDLINE));
        assert!(cmdline(&c).ends_with(" quiet"));
        c.debug_console = true;
        c.kernel_params = " loglevel=7 ".into();
        let line = cmdline(&c);
        assert!(!line.contains("quiet"));
        assert!(line.ends_with(" loglevel=7"));
    }

    struct NoVm;
    impl VmLauncher for NoVm {
        fn launch(&self, _: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
            Err(VmmError::Spawn {
                binary: "husk-vmm".into(),
                source: std::io::Error::other("not in unit tests"),
            })
        }
    }

    #[test]
    fn missing_kernel_is_named_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            kernel: dir.path().join("no-vmlinux"),
            ..Config::default()
        };
        let paths = SandboxPaths::new(dir.path(), "default", "p1");
        let target = CgroupTarget {
            path: None,
            namespace: "default".into(),
            pod_id: "p1".into(),
        };
        let err = Sandbox::start(
            &config,
            &NoVm,
            &host_cgroup::NoHostCgroup,
            paths.clone(),
            VmSize {
                vcpus: 1,
                memory_mib: 128,
            },
            &target,
        )
        .err()
        .expect("missing kernel");
        assert!(err.to_string().contains("no-vmlinux"), "{err}");
        assert!(!paths.dir.exists());
    }
}
