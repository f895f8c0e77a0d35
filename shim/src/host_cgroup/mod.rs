//! The host cgroup of a pod: husk-vmm and virtiofsd live in a cgroup v2 of their own below
//! the pod's cgroup parent, bounded to the VM's size plus an overhead, so that the kubelet
//! accounts and bounds them as it would the pod's containers under runc (Kata's
//! `sandbox_cgroup_only`).
//!
//! - `path`: where the cgroup goes (pure): the sandbox spec's `linux.cgroupsPath`, either
//!   form, or `husk-<namespace>-<pod id>` next to the shim's own cgroup without one;
//! - `fs`: making it on the cgroup filesystem ([`CgroupV2`]), enabling the controllers on
//!   the way down, writing the limits, removing it once its processes are gone;
//! - this file: errors, limits, and the [`HostCgroups`] seam ([`NoHostCgroup`] when the
//!   config turns the feature off).
//!
//! Processes are put in the cgroup before they run anything: the child writes `0` to the
//! cgroup's `cgroup.procs`, opened by the shim before the fork ([`crate::child`]), so guest
//! memory the VMM maps is charged to the pod from its first page.

mod fs;
mod path;

pub use fs::{remove_recorded, CgroupV2, CGROUP_ROOT};
pub use path::{parse, CgroupsPath, Placement};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::annotations::VmSize;
use crate::config::Config;

/// `cpu.max` period in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// `pids.max`: the VMM (a thread per vCPU and device) and virtiofsd (a thread per queue)
/// need some tens; a bound stops a compromised one from forking without end.
pub const PIDS_MAX: u64 = 1024;
/// The controllers a pod's cgroup uses.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Errors making or removing a host cgroup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    /// The spec's `cgroupsPath` is not acceptable.
    #[error("linux.cgroupsPath {path:?}: {why}")]
    InvalidPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The cgroup root is not a cgroup v2 filesystem (cgroup v1 or hybrid host).
    #[error("{0} is not a cgroup v2 mount (a cgroup v1 or hybrid host?): husk's host cgroup needs cgroup v2 only; set host_cgroup = false in the husk config to run without it")]
    NotCgroup2(PathBuf),
    /// `/proc/self/cgroup` has no cgroup v2 line.
    #[error("/proc/self/cgroup names no cgroup v2 path for the shim")]
    NoOwnCgroup,
    /// A parent that husk does not make (a systemd slice) does not exist.
    #[error("cgroup {0} does not exist (its slice is made by systemd or the kubelet)")]
    ParentMissing(PathBuf),
    /// A controller is not available at the cgroup root.
    #[error("the {controller} controller is not available in {root}/cgroup.controllers")]
    ControllerUnavailable {
        /// The controller.
        controller: &'static str,
        /// The cgroup root.
        root: PathBuf,
    },
    /// The cgroup exists and holds processes: another pod's, or not husk's.
    #[error("cgroup {0} already exists and holds processes")]
    InUse(PathBuf),
    /// A file operation on the cgroup filesystem failed.
    #[error("{what} {path}: {message}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (EBUSY on `subtree_control`: the cgroup holds processes).
        message: String,
    },
    /// The cgroup still had processes when it was to be removed.
    #[error("cgroup {0} still holds processes; it is left in place")]
    StillPopulated(PathBuf),
}

/// The limits of a pod's host cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_bytes: u64,
    /// `cpu.max` quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: u64,
    /// `pids.max`.
    pub pids: u64,
}

impl Limits {
    /// The VM's memory and one CPU per vCPU, each plus the configured overhead.
    pub fn for_vm(size: VmSize, config: &Config) -> Limits {
        let mib = size
            .memory_mib
            .saturating_add(config.host_memory_overhead_mib);
        let percent = u64::from(size.vcpus) * 100 + u64::from(config.host_cpu_overhead_percent);
        Limits {
            memory_bytes: mib.saturating_mul(1 << 20),
            cpu_quota_us: percent * CPU_PERIOD_US / 100,
            pids: PIDS_MAX,
        }
    }

    /// What is written to each interface file.
    pub fn files(&self) -> [(&'static str, String); 3] {
        [
            ("memory.max", self.memory_bytes.to_string()),
            ("cpu.max", format!("{} {CPU_PERIOD_US}", self.cpu_quota_us)),
            ("pids.max", self.pids.to_string()),
        ]
    }
}

/// A cgroup's `cgroup.procs`, opened for writing: a child writes `0` to it to move itself
/// in before it execs.
#[derive(Debug, Clone)]
pub struct CgroupProcs {
    /// The cgroup's directory.
    pub dir: PathBuf,
    /// Its `cgroup.procs`, open for writing.
    pub file: Arc<File>,
}

impl PartialEq for CgroupProcs {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
    }
}

impl Eq for CgroupProcs {}

/// Which cgroup a pod's host side goes in, as the create call learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    /// The sandbox spec's `cgroupsPath`, parsed (and so validated) before anything is made.
    pub path: Option<CgroupsPath>,
    /// containerd namespace.
    pub namespace: String,
    /// The pod id.
    pub pod_id: String,
}

impl CgroupTarget {
    /// The request for this pod with `limits`.
    pub fn request(&self, limits: Limits) -> CgroupRequest<'_> {
        CgroupRequest {
            path: self.path.as_ref(),
            namespace: &self.namespace,
            pod_id: &self.pod_id,
            limits,
        }
    }
}

/// Which pod's cgroup to make.
#[derive(Debug, Clone)]
pub struct CgroupRequest<'a> {
    /// The sandbox spec's `cgroupsPath`, parsed.
    pub path: Option<&'a CgroupsPath>,
    /// containerd namespace.
    pub namespace: &'a str,
    /// The pod id.
    pub pod_id: &'a str,
    /// Its limits.
    pub limits: Limits,
}

/// A pod's host cgroup; removed with [`PodCgroup::remove`] once its processes are gone.
pub trait PodCgroup: Send + Sync {
    /// Where children are put; `None`: nowhere (the feature is off).
    fn procs(&self) -> Option<&CgroupProcs>;
    /// What `shim delete` needs after a crash to remove it ([`remove_recorded`]).
    fn record(&self) -> String;
    /// Removes the cgroup (and the parents made for it), waiting briefly for its
    /// processes, which the caller has stopped, to be gone.
    fn remove(&self) -> Result<(), CgroupError>;
}

/// Makes pods' host cgroups: [`CgroupV2`], or [`NoHostCgroup`].
pub trait HostCgroups: Send + Sync {
    /// Makes the cgroup of a pod with its limits. On error nothing is left behind.
    fn create(&self, req: &CgroupRequest<'_>) -> Result<Box<dyn PodCgroup>, CgroupError>;
}

/// `host_cgroup = false`: the helpers stay in the shim's cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHostCgroup;

impl PodCgroup for NoHostCgroup {
    fn procs(&self) -> Option<&CgroupProcs> {
        None
    }
    fn record(&self) -> String {
        String::new()
    }
    fn remove(&self) -> Result<(), CgroupError> {
        Ok(())
    }
}

impl HostCgroups for NoHostCgroup {
    fn create(&self, _: &CgroupRequest<'_>) -> Result<Box<dyn PodCgroup>, CgroupError> {
        Ok(Box::new(NoHostCgroup))
    }
}

/// The host cgroups the config asks for: [`CgroupV2`] at [`CGROUP_ROOT`], or none.
pub fn from_config(config: &Config) -> Box<dyn HostCgroups> {
    if config.host_cgroup {
        Box::new(CgroupV2::new(Path::new(CGROUP_ROOT)))
    } else {
        Box::new(NoHostCgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_the_vm_plus_overhead() {
        let config = Config::default();
        let l = Limits::for_vm(
            VmSize {
                vcpus: 2,
                memory_mib: 512,
            },
            &config,
        );
        assert_eq!(l.memory_bytes, (512 + 256) << 20);
        assert_eq!(l.cpu_quota_us, 250_000);
        let files = l.files();
        assert_eq!(files[0], ("memory.max", "805306368".to_string()));
        assert_eq!(files[1], ("cpu.max", "250000 100000".to_string()));
        assert_eq!(files[2], ("pids.max", "1024".to_string()));
    }
}
