//! The shim's configuration file, `/etc/husk/config.toml`.
//!
//! Every key is optional; a missing file means all defaults. The environment variable
//! `HUSK_CONFIG` names another file (containerd passes its environment to shims, so a
//! private containerd can point its shims elsewhere).
//!
//! ```toml
//! # Guest kernel (ELF vmlinux) and the initramfs holding husk-agent.
//! kernel = "/usr/share/husk/vmlinux"
//! initrd = "/usr/share/husk/initrd.img"
//! # Helper binaries; empty: next to the shim binary, then $PATH.
//! vmm = ""
//! virtiofsd = ""
//! # VM size (per pod; annotations io.husk.vcpus / io.husk.memory_mib override them).
//! vcpus = 1
//! memory_mib = 256
//! # Extra guest kernel parameters, appended to the built-in ones.
//! kernel_params = ""
//! # Per-pod runtime files (sockets, shared directory, console log).
//! state_dir = "/run/husk"
//! # Seconds: VM boot to agent answering; quick agent calls; create/start/exec calls;
//! # how long exit waits for the last output of a process.
//! boot_timeout_secs = 60
//! agent_timeout_secs = 30
//! lifecycle_timeout_secs = 120
//! io_drain_timeout_secs = 5
//! # The pod watcher (see the `watch` module): the agent's Health is called every
//! # health_interval_ms, each call bounded by health_timeout_ms; health_misses failed or
//! # late answers in a row declare the guest dead (hung, paused or crashed), and every
//! # task of the pod exits with status 255. Worst case to notice: misses * (interval +
//! # timeout), 20 s with these values; a dead husk-vmm or virtiofsd is noticed at once.
//! health_interval_ms = 5000
//! health_timeout_ms = 5000
//! health_misses = 2
//! # error, warn, info, debug or trace.
//! log_level = "info"
//! # Keep the whole guest console in <state_dir>/<namespace>/<pod>/console.log; without
//! # it the console is kept only during boot (for boot errors), then emptied.
//! debug_console = false
//! # KiB of console husk-vmm may keep on disk (see the `console` module: enforced by the
//! # VMM, which writes the file; the shim only empties it after boot).
//! console_log_max_kib = 256
//! # Admin caps on what a pod's annotations may ask for; max_vcpus = 0: the host's CPUs.
//! max_vcpus = 0
//! max_memory_mib = 16384
//! # husk annotations (io.husk.*) a pod may set: exact keys, or prefixes ending in '*'.
//! enable_annotations = ["io.husk.vcpus", "io.husk.memory_mib"]
//! # Put husk-vmm and virtiofsd in a cgroup v2 below the pod's cgroup parent, bounded to
//! # the VM's size plus these overheads (see the `host_cgroup` module).
//! host_cgroup = true
//! host_memory_overhead_mib = 256
//! host_cpu_overhead_percent = 50
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration file is looked for.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// Default guest kernel.
pub const DEFAULT_KERNEL: &str = "/usr/share/husk/vmlinux";
/// Default agent initramfs.
pub const DEFAULT_INITRD: &str = "/usr/share/husk/initrd.img";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/husk";
/// Most vCPUs a pod may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Least guest memory a pod may ask for.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most guest memory a pod may ask for (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Default admin cap on a pod's memory: 16 GiB, well above a typical pod and below what
/// one pod should take of a node unnoticed.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 16 * 1024;
/// The husk annotations a pod may set by default: the VM sizing ones, within the caps.
pub const DEFAULT_ENABLE_ANNOTATIONS: [&str; 2] = ["io.husk.vcpus", "io.husk.memory_mib"];

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("config {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The shim's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// Agent initramfs.
    pub initrd: PathBuf,
    /// `husk-vmm` binary; empty: found next to the shim or in `$PATH`.
    pub vmm: PathBuf,
    /// `virtiofsd` binary; empty: found next to the shim or in `$PATH`.
    pub virtiofsd: PathBuf,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Guest memory per VM in MiB.
    pub memory_mib: u64,
    /// Extra guest kernel parameters.
    pub kernel_params: String,
    /// Runtime files of the pods.
    pub state_dir: PathBuf,
    /// Seconds to wait for the agent after the VM starts.
    pub boot_timeout_secs: u64,
    /// Seconds for quick agent calls.
    pub agent_timeout_secs: u64,
    /// Seconds for agent calls that set up or tear down containers.
    pub lifecycle_timeout_secs: u64,
    /// Seconds an exit waits for the process's remaining output.
    pub io_drain_timeout_secs: u64,
    /// Milliseconds between two health checks of the agent.
    pub health_interval_ms: u64,
    /// Milliseconds one health check may take.
    pub health_timeout_ms: u64,
    /// Failed or late health checks in a row that declare the guest dead.
    pub health_misses: u32,
    /// Log level.
    pub log_level: String,
    /// Keep the whole guest console log (else only until the boot succeeded).
    pub debug_console: bool,
    /// Bound on the console log on disk, in KiB, for husk-vmm to enforce ([`crate::console`]).
    pub console_log_max_kib: u64,
    /// Most vCPUs a pod's annotations may ask for; 0: the host's CPU count.
    pub max_vcpus: u32,
    /// Most guest memory (MiB) a pod's annotations may ask for.
    pub max_memory_mib: u64,
    /// husk annotations a pod may set: exact keys, or prefixes ending in `*`.
    pub enable_annotations: Vec<String>,
    /// Whether husk-vmm and virtiofsd run in a cgroup of their own ([`crate::host_cgroup`]).
    pub host_cgroup: bool,
    /// MiB the host cgroup allows beyond the guest memory (VMM and virtiofsd themselves,
    /// KVM's page tables, page cache virtiofsd reads through).
    pub host_memory_overhead_mib: u64,
    /// CPU the host cgroup allows beyond one CPU per vCPU, in percent of a CPU (virtiofsd
    /// serving the guest, the VMM's device threads).
    pub host_cpu_overhead_percent: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: PathBuf::from(DEFAULT_KERNEL),
            initrd: PathBuf::from(DEFAULT_INITRD),
            vmm: PathBuf::new(),
            virtiofsd: PathBuf::new(),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            boot_timeout_secs: 60,
            agent_timeout_secs: 30,
            lifecycle_timeout_secs: 120,
            io_drain_timeout_secs: 5,
            health_interval_ms: 5000,
            health_timeout_ms: 5000,
            health_misses: 2,
            log_level: "info".to_string(),
            debug_console: false,
            console_log_max_kib: 256,
            max_vcpus: 0,
            max_memory_mib: DEFAULT_MAX_MEMORY_MIB,
            enable_annotations: DEFAULT_ENABLE_ANNOTATIONS.map(String::from).to_vec(),
            host_cgroup: true,
            host_memory_overhead_mib: 256,
            host_cpu_overhead_percent: 50,
        }
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Parses TOML text and checks the values.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads `$HUSK_CONFIG` or [`DEFAULT_CONFIG_PATH`].
    pub fn load() -> Result<Config, ConfigError> {
        let path = std::env::var_os(CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH), PathBuf::from);
        Config::load_from(&path)
    }

    /// Checks ranges and required values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return invalid("vcpus", format!("{} is not in 1..={MAX_VCPUS}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return invalid(
                "memory_mib",
                format!(
                    "{} is not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    self.memory_mib
                ),
            );
        }
        if self.kernel.as_os_str().is_empty() {
            return invalid("kernel", "must not be empty".into());
        }
        if self.initrd.as_os_str().is_empty() {
            return invalid("initrd", "must not be empty".into());
        }
        if !self.state_dir.is_absolute() {
            return invalid("state_dir", format!("{:?} is not absolute", self.state_dir));
        }
        for (key, v) in [
            ("boot_timeout_secs", self.boot_timeout_secs),
            ("agent_timeout_secs", self.agent_timeout_secs),
            ("lifecycle_timeout_secs", self.lifecycle_timeout_secs),
            ("console_log_max_kib", self.console_log_max_kib),
            ("health_interval_ms", self.health_interval_ms),
            ("health_timeout_ms", self.health_timeout_ms),
            ("health_misses", u64::from(self.health_misses)),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if self.max_vcpus > MAX_VCPUS {
            return invalid(
                "max_vcpus",
                format!("{} is not in 0..={MAX_VCPUS}", self.max_vcpus),
            );
        }
        if self.max_vcpus != 0 && self.vcpus > self.max_vcpus {
            return invalid(
                "vcpus",
                format!("{} is above max_vcpus = {}", self.vcpus, self.max_vcpus),
            );
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.max_memory_mib) {
            return invalid(
                "max_memory_mib",
                format!(
                    "{} is not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    self.max_memory_mib
                ),
            );
        }
        if self.memory_mib > self.max_memory_mib {
            return invalid(
                "memory_mib",
                format!(
                    "{} is above max_memory_mib = {}",
                    self.memory_mib, self.max_memory_mib
                ),
            );
        }
        if let Some(bad) = self
            .enable_annotations
            .iter()
            .find(|a| a.is_empty() || a.trim_end_matches('*').contains('*'))
        {
            return invalid(
                "enable_annotations",
                format!("{bad:?}: a key, or a prefix ending in a single '*'"),
            );
        }
        if self.host_memory_overhead_mib > MAX_MEMORY_MIB {
            return invalid(
                "host_memory_overhead_mib",
                format!(
                    "{} is above {MAX_MEMORY_MIB}",
                    self.host_memory_overhead_mib
                ),
            );
        }
        if self.host_cpu_overhead_percent > 100 * MAX_VCPUS {
            return invalid(
                "host_cpu_overhead_percent",
                format!(
                    "{} is above {}",
                    self.host_cpu_overhead_percent,
                    100 * MAX_VCPUS
                ),
            );
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return invalid(
                "log_level",
                format!("{:?} is not one of {LOG_LEVELS:?}", self.log_level),
            );
        }
        Ok(())
    }

    /// The most vCPUs a pod may ask for: `max_vcpus`, or the host's CPU count when 0.
    pub fn vcpu_cap(&self) -> u32 {
        if self.max_vcpus != 0 {
            return self.max_vcpus;
        }
        let host = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        u32::try_from(host).unwrap_or(MAX_VCPUS).min(MAX_VCPUS)
    }

    /// Boot timeout as a duration.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }

    /// The agent client's per-call timeouts.
    pub fn agent_timeouts(&self) -> husk_protocol::Timeouts {
        husk_protocol::Timeouts {
            default: Some(Duration::from_secs(self.agent_timeout_secs)),
            lifecycle: Some(Duration::from_secs(self.lifecycle_timeout_secs)),
            read: None,
        }
    }

    /// How long an exit waits for the remaining output.
    pub fn io_drain_timeout(&self) -> Duration {
        Duration::from_secs(self.io_drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).expect("parse");
        assert_eq!(c, Config::default());
        assert_eq!(c.kernel, PathBuf::from(DEFAULT_KERNEL));
        assert_eq!(c.vcpus, 1);
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            "kernel = \"/k\"\nvcpus = 2\nmemory_mib = 512\nlog_level = \"debug\"\n",
            Path::new("x.toml"),
        )
        .expect("parse");
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, PathBuf::from(DEFAULT_INITRD));
        assert_eq!((c.vcpus, c.memory_mib), (2, 512));
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let p = Path::new("x.toml");
        assert!(matches!(
            Config::parse("kernal = \"/k\"", p),
            Err(ConfigError::Parse { .. })
        ));
        for (bad, key) in [
            ("vcpus = 0", "vcpus"),
            ("vcpus = 65", "vcpus"),
            ("memory_mib = 8", "memory_mib"),
            ("state_dir = \"rel\"", "state_dir"),
            ("log_level = \"loud\"", "log_level"),
            ("boot_timeout_secs = 0", "boot_timeout_secs"),
            ("console_log_max_kib = 0", "console_log_max_kib"),
            ("health_timeout_ms = 0", "health_timeout_ms"),
            ("health_misses = 0", "health_misses"),
            ("max_vcpus = 65", "max_vcpus"),
            ("max_vcpus = 2\nvcpus = 4", "vcpus"),
            ("max_memory_mib = 1", "max_memory_mib"),
            ("max_memory_mib = 1024\nmemory_mib = 2048", "memory_mib"),
            ("enable_annotations = [\"\"]", "enable_annotations"),
            ("enable_annotations = [\"io.*.x\"]", "enable_annotations"),
            (
                "host_cpu_overhead_percent = 100000",
                "host_cpu_overhead_percent",
            ),
        ] {
            let r = Config::parse(bad, p);
            assert!(
                matches!(r, Err(ConfigError::Invalid { key: k, .. }) if k == key),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn caps_default_to_the_host_and_16_gib() {
        let c = Config::default();
        assert_eq!(c.max_memory_mib, 16384);
        let host = std::thread::available_parallelism().expect("cpus").get() as u32;
        assert_eq!(c.vcpu_cap(), host.min(MAX_VCPUS));
        let c = Config::parse("max_vcpus = 3", Path::new("x.toml")).expect("parse");
        assert_eq!(c.vcpu_cap(), 3);
        assert_eq!(
            Config::default().enable_annotations,
            ["io.husk.vcpus", "io.husk.memory_mib"]
        );
    }

    #[test]
    fn missing_file_is_defaults_unreadable_is_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config::load_from(&dir.path().join("none.toml")).expect("defaults");
        assert_eq!(c, Config::default());
        assert!(matches!(
            Config::load_from(dir.path()),
            Err(ConfigError::Read { .. })
        ));
    }
}
