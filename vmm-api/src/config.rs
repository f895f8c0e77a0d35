//! The VM configuration the shim hands husk-vmm, as a JSON file named by `--config`
//! ([`crate::VmmArgs`]). Unknown fields are rejected, so a misspelt or stale field fails at
//! start instead of being silently ignored. [`VmConfig::validate`] checks every value
//! against [`crate::limits`] with no side effects; husk-vmm calls it before any KVM call.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cmdline::BASE_CMDLINE;
use crate::limits::{
    CMDLINE_BYTES_PER_DEVICE, CMDLINE_MAX_SIZE, FS_MAX_QUEUE_SIZE, FS_MAX_REQUEST_QUEUES,
    FS_TAG_MAX, MAX_MEMORY_MIB, MAX_VCPUS, MAX_VIRTIO_DEVICES, MIN_GUEST_CID, MIN_MEMORY_MIB,
    UNIX_PATH_MAX, VSOCK_PORT_SUFFIX_MAX,
};

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SerialOutput {
    /// husk-vmm's stdout.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

/// The hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host unix socket `S`; guest connections to port P go to `S_P`.
    pub socket: PathBuf,
    /// Guest context id (>= 3).
    pub guest_cid: u32,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
    /// Number of request queues (besides the high-priority queue).
    #[serde(default = "default_fs_queues")]
    pub num_request_queues: u16,
    /// Size of each queue.
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

impl FsConfig {
    /// A device on `socket` with tag `tag` and the default queues.
    pub fn new(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            tag: tag.into(),
            num_request_queues: default_fs_queues(),
            queue_size: default_fs_queue_size(),
        }
    }
}

fn default_fs_queues() -> u16 {
    1
}
fn default_fs_queue_size() -> u16 {
    1024
}

/// Everything husk-vmm needs to start a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (husk-vmm appends the virtio-mmio devices).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Console destination.
    #[serde(default)]
    pub serial: SerialOutput,
    /// With [`SerialOutput::File`]: the file's size limit in bytes. What the guest writes
    /// to its console is guest-controlled, so a file that reaches this size is renamed to
    /// `<file>.1` (replacing an older one) and a new one is started: the console costs at
    /// most about twice this on disk. `None`: unbounded (a console for a person to read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_max_bytes: Option<u64>,
    /// Optional vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// Control API socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
}

fn default_cmdline() -> String {
    BASE_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}

/// A configuration that was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A field has an invalid value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The JSON file could not be read, written or parsed.
    #[error("config file {0}: {1}")]
    File(PathBuf, String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_file(field: &'static str, p: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a regular file", p.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", p.display()))),
    }
}

fn check_parent_dir(field: &'static str, p: &Path) -> Result<(), ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(invalid(field, "empty path"));
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(invalid(
            field,
            format!("directory {} does not exist", parent.display()),
        ));
    }
    Ok(())
}

fn check_socket_len(field: &'static str, p: &Path, suffix: usize) -> Result<(), ConfigError> {
    if p.as_os_str().len() + suffix > UNIX_PATH_MAX {
        return Err(invalid(field, "path too long for a unix socket"));
    }
    Ok(())
}

impl VmConfig {
    /// A configuration with the defaults (base command line, 1 vCPU, 128 MiB, console on
    /// stdout, no devices) booting `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: SerialOutput::default(),
            serial_max_bytes: None,
            vsock: None,
            fs: Vec::new(),
            api_socket: None,
        }
    }

    /// Reads a JSON configuration file and validates it.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes the configuration as JSON to a new file `path`, readable by its owner only
    /// (it names the pod's sockets). A file already there is replaced.
    pub fn write_json_file(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |e: std::io::Error| ConfigError::File(path.to_owned(), e.to_string());
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(&json).map_err(err)
    }

    /// Number of virtio-mmio devices this configuration creates.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock.is_some()) + self.fs.len()
    }

    /// Checks every field; no side effects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_file("kernel", &self.kernel)?;
        if let Some(i) = &self.initrd {
            check_file("initrd", i)?;
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!("{} not in 1..={MAX_VCPUS}", self.vcpus),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!(
                    "{} not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    self.memory_mib
                ),
            ));
        }
        self.validate_cmdline()?;
        if let SerialOutput::File(p) = &self.serial {
            check_parent_dir("serial", p)?;
        }
        if self.serial_max_bytes == Some(0) {
            return Err(invalid("serial_max_bytes", "must be at least 1"));
        }
        if let Some(v) = &self.vsock {
            check_parent_dir("vsock.socket", &v.socket)?;
            check_socket_len("vsock.socket", &v.socket, VSOCK_PORT_SUFFIX_MAX)?;
            if v.guest_cid < MIN_GUEST_CID || v.guest_cid == u32::MAX {
                return Err(invalid(
                    "vsock.guest_cid",
                    format!("{} (must be >= {MIN_GUEST_CID})", v.guest_cid),
                ));
            }
        }
        self.validate_fs()?;
        if self.virtio_device_count() > MAX_VIRTIO_DEVICES {
            return Err(invalid("devices", "too many virtio devices"));
        }
        if let Some(a) = &self.api_socket {
            check_parent_dir("api_socket", a)?;
            check_socket_len("api_socket", a, 0)?;
        }
        Ok(())
    }

    fn validate_cmdline(&self) -> Result<(), ConfigError> {
        if self.cmdline.contains('\0') || self.cmdline.contains('\n') {
            return Err(invalid("cmdline", "contains NUL or newline"));
        }
        let reserved = CMDLINE_BYTES_PER_DEVICE * self.virtio_device_count();
        if self.cmdline.len() + reserved >= CMDLINE_MAX_SIZE {
            return Err(invalid(
                "cmdline",
                format!(
                    "{} bytes, max {}",
                    self.cmdline.len(),
                    CMDLINE_MAX_SIZE.saturating_sub(1 + reserved)
                ),
            ));
        }
        Ok(())
    }

    fn validate_fs(&self) -> Result<(), ConfigError> {
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            if f.tag.is_empty() || f.tag.len() > FS_TAG_MAX {
                return Err(invalid(
                    "fs.tag",
                    format!("{:?}: 1..={FS_TAG_MAX} bytes", f.tag),
                ));
            }
            if !tags.insert(f.tag.as_str()) {
                return Err(invalid("fs.tag", format!("{:?} used twice", f.tag)));
            }
            if f.num_request_queues == 0 || f.num_request_queues > FS_MAX_REQUEST_QUEUES {
                return Err(invalid(
                    "fs.num_request_queues",
                    format!("must be 1..={FS_MAX_REQUEST_QUEUES}"),
                ));
            }
            if !f.queue_size.is_power_of_two() || f.queue_size > FS_MAX_QUEUE_SIZE {
                return Err(invalid(
                    "fs.queue_size",
                    format!("power of two up to {FS_MAX_QUEUE_SIZE}"),
                ));
            }
            check_socket_len("fs.socket", &f.socket, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    fn field(cfg: &VmConfig) -> &'static str {
        match cfg.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_use_the_base_cmdline() {
        let k = kernel();
        let c = VmConfig::new(k.path());
        c.validate().unwrap();
        assert_eq!(c.cmdline, BASE_CMDLINE);
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        let parsed: VmConfig =
            serde_json::from_value(serde_json::json!({"kernel": k.path()})).unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let k = kernel();
        let ok = || VmConfig::new(k.path());
        let with = |f: &dyn Fn(&mut VmConfig)| {
            let mut c = ok();
            f(&mut c);
            c
        };
        assert_eq!(field(&VmConfig::new("/nonexistent/vmlinux")), "kernel");
        assert_eq!(field(&with(&|c| c.vcpus = 0)), "vcpus");
        assert_eq!(field(&with(&|c| c.vcpus = MAX_VCPUS + 1)), "vcpus");
        assert_eq!(field(&with(&|c| c.memory_mib = 1)), "memory_mib");
        assert_eq!(
            field(&with(&|c| c.initrd = Some("/nonexistent".into()))),
            "initrd"
        );
        assert_eq!(field(&with(&|c| c.cmdline = "x".repeat(3000))), "cmdline");
        assert_eq!(field(&with(&|c| c.cmdline = "a\nb".into())), "cmdline");
        let vsock = |cid| {
            Some(VsockConfig {
                socket: "/tmp/v".into(),
                guest_cid: cid,
            })
        };
        assert_eq!(field(&with(&|c| c.vsock = vsock(2))), "vsock.guest_cid");
        let long = format!("/tmp/{}", "v".repeat(95));
        let long_vsock = with(&|c| {
            c.vsock = Some(VsockConfig {
                socket: long.clone().into(),
                guest_cid: 3,
            })
        });
        assert_eq!(field(&long_vsock), "vsock.socket");
        let tag = "t".repeat(FS_TAG_MAX + 1);
        assert_eq!(
            field(&with(&|c| c.fs = vec![FsConfig::new("/tmp/f", tag.clone())])),
            "fs.tag"
        );
        assert_eq!(
            field(&with(&|c| c.fs = vec![
                FsConfig::new("/tmp/f", "a"),
                FsConfig::new("/tmp/g", "a")
            ])),
            "fs.tag"
        );
        let mut fs = FsConfig::new("/tmp/f", "a");
        fs.queue_size = 100;
        assert_eq!(field(&with(&|c| c.fs = vec![fs.clone()])), "fs.queue_size");
        let many: Vec<_> = (0..=MAX_VIRTIO_DEVICES)
            .map(|i| FsConfig::new("/tmp/f", format!("t{i}")))
            .collect();
        assert_eq!(field(&with(&|c| c.fs = many.clone())), "devices");
        assert_eq!(
            field(&with(&|c| c.api_socket = Some("/no/such/dir/api".into()))),
            "api_socket"
        );
        assert_eq!(
            field(&with(&|c| c.serial_max_bytes = Some(0))),
            "serial_max_bytes"
        );
        assert_eq!(
            field(&with(
                &|c| c.serial = SerialOutput::File("/no/such/dir/x".into())
            )),
            "serial"
        );
    }

    #[test]
    fn json_file_round_trip_private_and_unknown_fields() {
        use std::os::unix::fs::PermissionsExt;
        let k = kernel();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        let cfg = VmConfig {
            kernel: k.path().to_owned(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 4,
            memory_mib: 512,
            serial: SerialOutput::File(dir.path().join("console.log")),
            serial_max_bytes: Some(1 << 18),
            vsock: Some(VsockConfig {
                socket: dir.path().join("v.sock"),
                guest_cid: 7,
            }),
            fs: vec![FsConfig::new(dir.path().join("fs.sock"), "share")],
            api_socket: Some(dir.path().join("api.sock")),
        };
        cfg.write_json_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(VmConfig::from_json_file(&p).unwrap(), cfg);
        // Written again over the old file.
        cfg.write_json_file(&p).unwrap();
        assert_eq!(VmConfig::from_json_file(&p).unwrap(), cfg);

        for (bad, why) in [
            (r#"{"kernel": "/x", "bogus": 1}"#, "unknown field `bogus`"),
            (
                r#"{"kernel": "/x", "vsock": {"socket": "/v", "guest_cid": 3, "port": 1}}"#,
                "unknown field `port`",
            ),
            (
                r#"{"kernel": "/x", "fs": [{"socket": "/f", "tag": "t", "cache": "none"}]}"#,
                "unknown field `cache`",
            ),
            (
                r#"{"kernel": "/x", "serial": "printer"}"#,
                "unknown variant `printer`",
            ),
            ("not json", "expected ident"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let r = VmConfig::from_json_file(&p);
            assert!(
                matches!(&r, Err(ConfigError::File(f, m)) if *f == p && m.contains(why)),
                "{bad}: {r:?}"
            );
        }
    }
}
