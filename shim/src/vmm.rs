//! The VMM seam: what the shim needs from a running VM ([`Vm`]), how one is started
//! ([`VmLauncher`]), and the implementation with `husk-vmm` ([`HuskVmm`]).

use husk_lock::MutexExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use husk_vmm_api::{
    ApiClient, ApiError, ConfigError, FsConfig, Metrics, Request, SerialOutput, VmConfig, VmmArgs,
    VmmExit, VsockConfig,
};

use crate::child;
use crate::host_cgroup::CgroupProcs;

/// How long one control API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the VMM seam.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM process could not be started.
    #[error("start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VM configuration was rejected or could not be written.
    #[error("husk-vmm configuration: {0}")]
    Config(#[from] ConfigError),
    /// The control API failed.
    #[error("VMM control API {request:?}: {source}")]
    Api {
        /// The request.
        request: Request,
        /// What went wrong.
        #[source]
        source: ApiError,
    },
}

/// What the shim starts a pod's VM with; [`VmSpec::vm_config`] turns it into husk-vmm's
/// [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Hybrid vsock socket.
    pub vsock_socket: PathBuf,
    /// Guest CID.
    pub vsock_cid: u32,
    /// virtiofsd's vhost-user socket.
    pub fs_socket: PathBuf,
    /// virtio-fs tag.
    pub fs_tag: String,
    /// Control API socket.
    pub api_socket: PathBuf,
    /// Guest console log.
    pub console: PathBuf,
    /// Size at which husk-vmm rotates the console log (`console_log_max_kib`).
    pub console_max_bytes: u64,
    /// The VMM's own stdout/stderr.
    pub log: PathBuf,
    /// Where husk-vmm's configuration file is written.
    pub config: PathBuf,
    /// The pod's host cgroup, which husk-vmm is started in.
    pub cgroup: Option<CgroupProcs>,
}

impl VmSpec {
    /// husk-vmm's configuration for this VM.
    pub fn vm_config(&self) -> Result<VmConfig, ConfigError> {
        let vcpus = u8::try_from(self.vcpus).map_err(|_| ConfigError::Invalid {
            field: "vcpus",
            reason: format!("{} does not fit husk-vmm's limit", self.vcpus),
        })?;
        Ok(VmConfig {
            initrd: Some(self.initrd.clone()),
            cmdline: self.cmdline.clone(),
            vcpus,
            memory_mib: self.memory_mib,
            serial: SerialOutput::File(self.console.clone()),
            serial_max_bytes: Some(self.console_max_bytes),
            vsock: Some(VsockConfig {
                socket: self.vsock_socket.clone(),
                guest_cid: self.vsock_cid,
            }),
            fs: vec![FsConfig::new(&self.fs_socket, &self.fs_tag)],
            api_socket: Some(self.api_socket.clone()),
            ..VmConfig::new(&self.kernel)
        })
    }
}

/// A running VM.
pub trait Vm: Send + Sync {
    /// Host pid of the VMM process.
    fn pid(&self) -> u32;
    /// Whether the VMM has exited.
    fn exited(&self) -> bool;
    /// How the VMM ended (exit code or signal), once it has.
    fn exit_status(&self) -> Option<String>;
    /// Waits up to `timeout` for the VMM to exit; true if it did.
    fn wait_exit(&self, timeout: Duration) -> bool;
    /// VMM metrics.
    fn metrics(&self) -> Result<Metrics, VmmError>;
    /// Asks the VMM to exit, then kills it if it has not within `grace`; reaps it.
    fn stop(&self, grace: Duration);
    /// SIGKILLs the VMM without asking and reaps it (its guest is hung or gone: a paused
    /// VMM would not act on a shutdown request, and a dead one must not stay a zombie).
    fn kill(&self);
}

/// Starts VMs.
pub trait VmLauncher: Send + Sync {
    /// Starts a VM; it runs until [`Vm::stop`] or until the guest powers off.
    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError>;
}

/// Starts VMs with the `husk-vmm` binary.
#[derive(Debug, Clone)]
pub struct HuskVmmLauncher {
    /// The binary.
    pub binary: PathBuf,
}

impl VmLauncher for HuskVmmLauncher {
    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        let spawn_err = |source| VmmError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        // Checked here too, so that a bad value is reported as such rather than as husk-vmm
        // exiting with status 2.
        let config = spec.vm_config()?;
        config.validate()?;
        config.write_json_file(&spec.config)?;
        crate::private::restrict_file(&spec.config).map_err(spawn_err)?;
        let log = crate::private::create_file(&spec.log).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(VmmArgs::new(&spec.config).to_args())
            // At info husk-vmm says why the VM ended (guest reset, triple fault, ...): the
            // first thing to know when a VM dies during boot.
            .env(
                "HUSK_VMM_LOG",
                std::env::var("HUSK_VMM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = child::spawn_tied_in(cmd, spec.cgroup.as_ref()).map_err(spawn_err)?;
        Ok(Box::new(HuskVmm {
            child: Mutex::new(child),
            api_socket: spec.api_socket.clone(),
        }))
    }
}

/// A `husk-vmm` process and its control socket.
pub struct HuskVmm {
    child: Mutex<Child>,
    api_socket: PathBuf,
}

/// Connects to the control socket and makes one call with `f`.
fn api_call<T>(
    socket: &std::path::Path,
    request: Request,
    f: impl FnOnce(&mut ApiClient) -> Result<T, ApiError>,
) -> Result<T, VmmError> {
    ApiClient::connect(socket, API_TIMEOUT)
        .and_then(|mut c| f(&mut c))
        .map_err(|source| VmmError::Api { request, source })
}

impl HuskVmm {
    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.locked()
    }
}

impl Vm for HuskVmm {
    fn pid(&self) -> u32 {
        self.lock().id()
    }

    fn exited(&self) -> bool {
        !matches!(self.lock().try_wait(), Ok(None))
    }

    fn exit_status(&self) -> Option<String> {
        match self.lock().try_wait() {
            Ok(Some(status)) => Some(VmmExit::describe(status)),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.exited() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn metrics(&self) -> Result<Metrics, VmmError> {
        api_call(&self.api_socket, Request::Metrics, ApiClient::metrics)
    }

    fn stop(&self, grace: Duration) {
        if !self.exited() {
            let _ = api_call(&self.api_socket, Request::Shutdown, ApiClient::shutdown);
        }
        if !self.wait_exit(grace) {
            child::stop(&mut self.lock(), Duration::from_millis(500));
        }
    }

    fn kill(&self) {
        child::kill(&mut self.lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path) -> VmSpec {
        VmSpec {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock_socket: dir.join("v.sock"),
            vsock_cid: 3,
            fs_socket: dir.join("fs.sock"),
            fs_tag: "husk".into(),
            api_socket: dir.join("api.sock"),
            console: dir.join("console.log"),
            console_max_bytes: 4096,
            log: dir.join("vmm.log"),
            config: dir.join("vmm.json"),
            cgroup: None,
        }
    }

    #[test]
    fn config_names_every_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(dir.path());
        std::fs::write(&s.kernel, b"").expect("kernel");
        std::fs::write(&s.initrd, b"").expect("initrd");
        let c = s.vm_config().expect("config");
        c.validate().expect("valid");
        assert_eq!((c.vcpus, c.memory_mib), (2, 256));
        assert_eq!(c.serial, SerialOutput::File(s.console.clone()));
        assert_eq!(c.serial_max_bytes, Some(4096));
        assert_eq!(c.vsock.as_ref().map(|v| v.guest_cid), Some(3));
        assert_eq!(c.fs[0].tag, "husk");
        assert_eq!(c.fs[0].socket, s.fs_socket);
        assert_eq!(c.api_socket.as_ref(), Some(&s.api_socket));
        assert_eq!(c.initrd.as_ref(), Some(&s.initrd));
    }

    #[test]
    fn too_many_vcpus_are_refused() {
        let mut s = spec(std::path::Path::new("/p"));
        s.vcpus = 300;
        assert!(matches!(
            s.vm_config(),
            Err(ConfigError::Invalid { field: "vcpus", .. })
        ));
    }

    #[test]
    fn launch_writes_a_private_config_and_reports_the_exit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(dir.path());
        std::fs::write(&s.kernel, b"").expect("kernel");
        std::fs::write(&s.initrd, b"").expect("initrd");
        // `true` stands in for husk-vmm: it ignores its arguments and exits with 0.
        let vm = HuskVmmLauncher {
            binary: "true".into(),
        }
        .launch(&s)
        .expect("launch");
        assert!(vm.wait_exit(Duration::from_secs(10)));
        assert_eq!(
            vm.exit_status().as_deref(),
            Some("husk-vmm exited with status 0 (guest reset or shutdown requested)")
        );
        let mode = std::fs::metadata(&s.config)
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            VmConfig::from_json_file(&s.config).expect("parse"),
            s.vm_config().expect("config")
        );
    }

    #[test]
    fn exit_status_says_what_the_code_means() {
        let vm = HuskVmm {
            child: Mutex::new(
                Command::new("sh")
                    .args(["-c", "exit 3"])
                    .spawn()
                    .expect("spawn"),
            ),
            api_socket: PathBuf::from("/nonexistent/api.sock"),
        };
        assert!(vm.wait_exit(Duration::from_secs(10)));
        assert_eq!(
            vm.exit_status().as_deref(),
            Some("husk-vmm exited with status 3 (guest triple fault)")
        );
    }

    #[test]
    fn api_errors_name_the_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = HuskVmm {
            child: Mutex::new(Command::new("true").spawn().expect("spawn")),
            api_socket: dir.path().join("none.sock"),
        };
        let err = vm.metrics().expect_err("no socket");
        assert!(matches!(
            err,
            VmmError::Api {
                request: Request::Metrics,
                source: ApiError::Connect { .. }
            }
        ));
        vm.stop(Duration::from_secs(5));
        assert!(vm.exited());
    }

    #[test]
    fn kill_stops_and_reaps_at_once() {
        let vm = HuskVmm {
            child: Mutex::new(Command::new("sleep").arg("300").spawn().expect("spawn")),
            api_socket: PathBuf::from("/nonexistent/api.sock"),
        };
        let pid = vm.pid();
        vm.kill();
        assert_eq!(
            vm.exit_status().as_deref(),
            Some("husk-vmm was killed by signal 9")
        );
        // Reaped: no zombie is left under that pid.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
