//! The VMM seam: what the shim needs from a running VM ([`Vm`]), how one is started
//! ([`VmLauncher`]), and the implementation with `husk-vmm` ([`HuskVmm`]).

use husk_lock::MutexExt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::child;

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
    /// The control API failed.
    #[error("VMM control API {cmd}: {message}")]
    Api {
        /// The command.
        cmd: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// What a VM is started with.
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
    /// The VMM's own stdout/stderr.
    pub log: PathBuf,
}

impl VmSpec {
    /// husk-vmm's command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--kernel".into(),
            p(&self.kernel),
            "--initrd".into(),
            p(&self.initrd),
            "--cmdline".into(),
            self.cmdline.clone(),
            "--vcpus".into(),
            self.vcpus.to_string(),
            "--memory-mib".into(),
            self.memory_mib.to_string(),
            "--serial".into(),
            format!("file:{}", p(&self.console)),
            "--vsock-socket".into(),
            p(&self.vsock_socket),
            "--vsock-cid".into(),
            self.vsock_cid.to_string(),
            "--fs-socket".into(),
            p(&self.fs_socket),
            "--fs-tag".into(),
            self.fs_tag.clone(),
            "--api-socket".into(),
            p(&self.api_socket),
        ]
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
    /// VMM metrics (JSON).
    fn metrics(&self) -> Result<Value, VmmError>;
    /// Asks the VMM to exit, then kills it if it has not within `grace`; reaps it.
    fn stop(&self, grace: Duration);
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
        let log = std::fs::File::create(&spec.log).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(spec.args())
            // At info husk-vmm says why the VM ended (guest reset, triple fault, ...): the
            // first thing to know when a VM dies during boot.
            .env(
                "HUSK_VMM_LOG",
                std::env::var("HUSK_VMM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = child::spawn_tied(cmd).map_err(spawn_err)?;
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

/// Sends one control request line and reads the answer.
pub fn api_call(socket: &Path, cmd: &'static str) -> Result<Value, VmmError> {
    let err = |message: String| VmmError::Api { cmd, message };
    let mut s = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err(e.to_string()))?;
    s.write_all(format!("{{\"v\":1,\"cmd\":\"{cmd}\"}}\n").as_bytes())
        .map_err(|e| err(format!("write: {e}")))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| err(format!("read: {e}")))?;
    parse_api_response(&line).map_err(err)
}

/// Parses `{"v":1,"ok":..,"result":..,"error":..}`.
pub fn parse_api_response(line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad reply {line:?}: {e}"))?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("failed without a message")
            .to_string())
    }
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
            Ok(Some(status)) => Some(status.to_string()),
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

    fn metrics(&self) -> Result<Value, VmmError> {
        api_call(&self.api_socket, "metrics")
    }

    fn stop(&self, grace: Duration) {
        if !self.exited() {
            let _ = api_call(&self.api_socket, "shutdown");
        }
        if !self.wait_exit(grace) {
            child::stop(&mut self.lock(), Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_every_device() {
        let spec = VmSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock_socket: "/s/v.sock".into(),
            vsock_cid: 3,
            fs_socket: "/s/fs.sock".into(),
            fs_tag: "husk".into(),
            api_socket: "/s/api.sock".into(),
            console: "/s/console.log".into(),
            log: "/s/vmm.log".into(),
        };
        let args = spec.args();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].clone()
        };
        assert_eq!(after("--vcpus"), "2");
        assert_eq!(after("--memory-mib"), "256");
        assert_eq!(after("--serial"), "file:/s/console.log");
        assert_eq!(after("--fs-tag"), "husk");
        assert_eq!(after("--vsock-cid"), "3");
    }

    #[test]
    fn api_responses() {
        let ok = parse_api_response(r#"{"v":1,"ok":true,"result":{"state":"paused"}}"#);
        assert_eq!(ok.expect("ok")["state"], "paused");
        let err = parse_api_response(r#"{"v":1,"ok":false,"error":"unknown cmd"}"#);
        assert_eq!(err.expect_err("err"), "unknown cmd");
        assert!(parse_api_response("garbage").is_err());
    }

    #[test]
    fn api_call_over_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("read");
            assert_eq!(line, "{\"v\":1,\"cmd\":\"metrics\"}\n");
            (&s).write_all(b"{\"v\":1,\"ok\":true,\"result\":{\"uptime_ms\":5}}\n")
                .expect("write");
        });
        let v = api_call(&path, "metrics").expect("call");
        assert_eq!(v["uptime_ms"], 5);
        server.join().expect("server");
    }
}
