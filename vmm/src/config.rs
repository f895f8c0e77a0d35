//! Typed VM configuration, from command-line flags or a JSON file, validated before any
//! KVM call.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::layout::{CMDLINE_MAX_SIZE, IRQ_BASE, IRQ_MAX, MAX_VCPUS};

/// Command line used when none is given.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Largest virtio-fs tag (the config space field is 36 bytes).
pub const FS_TAG_MAX: usize = 36;
/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SerialOutput {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialOutput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(format!(
                    "serial output {s:?}: use stdout, none or file:PATH"
                )),
            },
        }
    }
}

/// The hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Host unix socket `S`; guest connections to port P go to `S_P`.
    pub socket: PathBuf,
    /// Guest context id (>= 3).
    pub guest_cid: u32,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

fn default_fs_queues() -> u16 {
    1
}
fn default_fs_queue_size() -> u16 {
    1024
}

/// Everything needed to start a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
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
    DEFAULT_CMDLINE.to_string()
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
    /// The JSON file could not be read or parsed.
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

/// Longest path a `sockaddr_un` holds, minus room for the `_<port>` suffix of vsock.
const UNIX_PATH_MAX: usize = 107;

impl VmConfig {
    /// Reads a JSON configuration file and validates it.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| ConfigError::File(path.to_owned(), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
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
        if self.cmdline.contains('\0') || self.cmdline.contains('\n') {
            return Err(invalid("cmdline", "contains NUL or newline"));
        }
        // Leave room for the virtio-mmio device strings (~40 bytes each).
        let reserved = 48 * self.virtio_device_count();
        if self.cmdline.len() + reserved >= CMDLINE_MAX_SIZE {
            return Err(invalid(
                "cmdline",
                format!(
                    "{} bytes, max {}",
                    self.cmdline.len(),
                    CMDLINE_MAX_SIZE - 1 - reserved
                ),
            ));
        }
        if let SerialOutput::File(p) = &self.serial {
            check_parent_dir("serial", p)?;
        }
        if let Some(v) = &self.vsock {
            check_parent_dir("vsock.socket", &v.socket)?;
            if v.socket.as_os_str().len() + 11 > UNIX_PATH_MAX {
                return Err(invalid("vsock.socket", "path too long for a unix socket"));
            }
            if v.guest_cid < 3 || v.guest_cid == u32::MAX {
                return Err(invalid(
                    "vsock.guest_cid",
                    format!("{} (must be >= 3)", v.guest_cid),
                ));
            }
        }
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
            if f.num_request_queues == 0 || f.num_request_queues > 16 {
                return Err(invalid("fs.num_request_queues", "must be 1..=16"));
            }
            if !f.queue_size.is_power_of_two() || f.queue_size > 1024 {
                return Err(invalid("fs.queue_size", "power of two up to 1024"));
            }
            if f.socket.as_os_str().len() > UNIX_PATH_MAX {
                return Err(invalid("fs.socket", "path too long for a unix socket"));
            }
        }
        if self.virtio_device_count() > (IRQ_MAX - IRQ_BASE + 1) as usize {
            return Err(invalid("devices", "too many virtio devices"));
        }
        if let Some(a) = &self.api_socket {
            check_parent_dir("api_socket", a)?;
            if a.as_os_str().len() > UNIX_PATH_MAX {
                return Err(invalid("api_socket", "path too long for a unix socket"));
            }
        }
        Ok(())
    }
}

/// Command-line flags of `husk-vmm`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "husk-vmm",
    version,
    about = "KVM micro-VM monitor for one husk pod"
)]
pub struct Cli {
    /// JSON configuration file (the other flags are then not allowed).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "memory_mib", "serial", "vsock_socket", "vsock_cid", "fs_socket", "fs_tag", "api_socket"])]
    pub config: Option<PathBuf>,
    /// ELF vmlinux.
    #[arg(long, required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory-mib")]
    pub memory_mib: Option<u64>,
    /// Console: stdout, none or file:PATH.
    #[arg(long)]
    pub serial: Option<SerialOutput>,
    /// Hybrid vsock unix socket.
    #[arg(long = "vsock-socket")]
    pub vsock_socket: Option<PathBuf>,
    /// Guest CID.
    #[arg(long = "vsock-cid", default_value_t = 3)]
    pub vsock_cid: u32,
    /// virtiofsd vhost-user socket (repeatable, paired with --fs-tag).
    #[arg(long = "fs-socket")]
    pub fs_socket: Vec<PathBuf>,
    /// virtio-fs tag (repeatable).
    #[arg(long = "fs-tag")]
    pub fs_tag: Vec<String>,
    /// Control API socket.
    #[arg(long = "api-socket")]
    pub api_socket: Option<PathBuf>,
}

impl TryFrom<Cli> for VmConfig {
    type Error = ConfigError;
    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        if let Some(path) = cli.config {
            return VmConfig::from_json_file(&path);
        }
        if cli.fs_socket.len() != cli.fs_tag.len() {
            return Err(invalid("fs", "each --fs-socket needs one --fs-tag"));
        }
        let cfg = VmConfig {
            kernel: cli.kernel.ok_or_else(|| invalid("kernel", "missing"))?,
            initrd: cli.initrd,
            cmdline: cli.cmdline.unwrap_or_else(default_cmdline),
            vcpus: cli.vcpus.unwrap_or_else(default_vcpus),
            memory_mib: cli.memory_mib.unwrap_or_else(default_memory),
            serial: cli.serial.unwrap_or_default(),
            vsock: cli.vsock_socket.map(|socket| VsockConfig {
                socket,
                guest_cid: cli.vsock_cid,
            }),
            fs: cli
                .fs_socket
                .into_iter()
                .zip(cli.fs_tag)
                .map(|(socket, tag)| FsConfig {
                    socket,
                    tag,
                    num_request_queues: default_fs_queues(),
                    queue_size: default_fs_queue_size(),
                })
                .collect(),
            api_socket: cli.api_socket,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn kernel() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    fn parse(args: &[&str]) -> Result<VmConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("husk-vmm").chain(args.iter().copied()))
            .map_err(|e| invalid("cli", e.to_string()))?;
        VmConfig::try_from(cli)
    }

    #[test]
    fn flags_build_a_valid_config() {
        let k = kernel();
        let kp = k.path().to_str().unwrap();
        let c = parse(&[
            "--kernel",
            kp,
            "--vcpus",
            "2",
            "--memory-mib",
            "256",
            "--vsock-socket",
            "/tmp/v.sock",
            "--fs-socket",
            "/tmp/fs.sock",
            "--fs-tag",
            "share",
            "--serial",
            "none",
        ])
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
        assert_eq!(c.fs[0].tag, "share");
        assert_eq!(c.serial, SerialOutput::None);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let k = kernel();
        let kp = k.path().to_str().unwrap();
        let field = |args: &[&str]| match parse(args) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected rejection, got {other:?}"),
        };
        assert_eq!(field(&["--kernel", "/nonexistent/vmlinux"]), "kernel");
        assert_eq!(field(&["--kernel", kp, "--vcpus", "0"]), "vcpus");
        assert_eq!(field(&["--kernel", kp, "--vcpus", "33"]), "vcpus");
        assert_eq!(field(&["--kernel", kp, "--memory-mib", "1"]), "memory_mib");
        assert_eq!(
            field(&["--kernel", kp, "--initrd", "/nonexistent"]),
            "initrd"
        );
        let long = "x".repeat(3000);
        assert_eq!(field(&["--kernel", kp, "--cmdline", &long]), "cmdline");
        assert_eq!(
            field(&[
                "--kernel",
                kp,
                "--vsock-socket",
                "/tmp/v",
                "--vsock-cid",
                "2"
            ]),
            "vsock.guest_cid"
        );
        let tag = "t".repeat(37);
        assert_eq!(
            field(&["--kernel", kp, "--fs-socket", "/tmp/f", "--fs-tag", &tag]),
            "fs.tag"
        );
        assert_eq!(field(&["--kernel", kp, "--fs-socket", "/tmp/f"]), "fs");
        assert_eq!(
            field(&["--kernel", kp, "--api-socket", "/no/such/dir/api"]),
            "api_socket"
        );
        assert_eq!(
            field(&["--kernel", kp, "--serial", "file:/no/such/dir/x"]),
            "serial"
        );
        assert_eq!(field(&["--kernel", kp, "--serial", "bogus"]), "cli");
    }

    #[test]
    fn json_file_round_trip_and_unknown_fields() {
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
            vsock: Some(VsockConfig {
                socket: dir.path().join("v.sock"),
                guest_cid: 7,
            }),
            fs: vec![],
            api_socket: Some(dir.path().join("api.sock")),
        };
        std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(VmConfig::from_json_file(&p).unwrap(), cfg);
        assert_eq!(parse(&["--config", p.to_str().unwrap()]).unwrap(), cfg);
        std::fs::write(&p, r#"{"kernel": "/x", "bogus": 1}"#).unwrap();
        assert!(matches!(
            VmConfig::from_json_file(&p),
            Err(ConfigError::File(..))
        ));
        std::fs::write(&p, "not json").unwrap();
        assert!(matches!(
            VmConfig::from_json_file(&p),
            Err(ConfigError::File(..))
        ));
    }
}
