//! What the agent tells a setup process (as JSON on fd [`CONFIG_FD`]) and what the setup
//! process answers (JSON lines on fd [`SYNC_FD`]).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

/// fd of the setup process carrying the [`LaunchConfig`] (read to EOF).
pub const CONFIG_FD: i32 = 3;
/// fd on which the setup process writes [`SyncMessage`] lines to the agent. It is
/// close-on-exec and the container process holds the only write end: after `Ready` and the
/// start byte, its EOF tells the agent that `execve` succeeded, and an `Invalid`/`Error`
/// line before that EOF that it failed.
pub const SYNC_FD: i32 = 4;
/// fd from which the container process reads one byte before exec ("start").
pub const START_FD: i32 = 5;

/// Argument that makes `husk-agent` run as a setup process.
pub const SETUP_ARG: &str = "__husk_setup";

/// A container init process or an exec'd process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LaunchMode {
    /// New container: namespaces, rootfs and everything else from the spec.
    Create {
        /// The whole OCI spec.
        spec: Box<Spec>,
        /// Absolute, checked path of the root filesystem.
        rootfs: PathBuf,
    },
    /// New process in the namespaces and root of a running container.
    Exec {
        /// Pid (agent's view) of the container's init process.
        init_pid: i32,
        /// The process to run.
        process: Box<Process>,
        /// The container's seccomp profile, applied to exec'd processes too.
        seccomp: Option<LinuxSeccomp>,
    },
}

/// Everything a setup process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchConfig {
    /// Create or exec.
    pub mode: LaunchMode,
    /// Cgroup v2 directory to join, if any.
    pub cgroup: Option<PathBuf>,
    /// Hostname to set (only in a UTS namespace of the container's own, new or joined).
    pub hostname: Option<String>,
}

/// Messages from the setup process to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SyncMessage {
    /// Pid of the container process (agent's pid namespace).
    Pid(i32),
    /// The process's terminal was made in the container's devpts: this descriptor of the
    /// container process is the master, for the agent to take (`pidfd_getfd`). Sent
    /// before `Ready`.
    Console(i32),
    /// Set up, waiting for the start byte.
    Ready,
    /// The spec cannot be run as given (bad program, bad option); the process exits.
    Invalid(String),
    /// Setup failed otherwise; the process exits.
    Error(String),
}
