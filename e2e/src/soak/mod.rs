//! The soak (`husk-soak`, `cargo xtask soak`): create/start/exec/kill/delete cycles
//! through a private containerd, by `ctr` and, when asked, alternately by CRI pods,
//! checking after every cycle that nothing of husk is left and sampling containerd's
//! and the shims' memory and file descriptors, to show that nothing leaks or grows.
//!
//! - `args`: the command line of `husk-soak`;
//! - `cycle`: one ctr cycle and one CRI pod cycle;
//! - `residue`: what a cycle may leave behind (processes, mounts, dirs, sockets, cgroups);
//! - `procs`: memory and fds of containerd and the shims, from `/proc`;
//! - `runner`: the workers, the checks after each cycle, the samples;
//! - `report`: the figures, the verdict, the table and the JSON (pure);
//! - `stats`: percentiles, windows, trend (pure).

pub mod args;
pub mod cycle;
pub mod procs;
pub mod report;
pub mod residue;
pub mod runner;
pub mod stats;

/// How every soak container's (and CRI pod's name) id starts.
pub const ID_PREFIX: &str = "soak-";
/// The containerd namespace of a ctr-only soak (a CRI soak runs in CRI's `k8s.io`). Not
/// `husk-…`: `ctr`'s cgroup parent `/<namespace>` would look like a cgroup of husk's.
pub const NAMESPACE: &str = "soak";
/// Prefix of the JSON line on stdout, so a wrapper can pick it out of a console log.
pub const JSON_PREFIX: &str = "HUSK-SOAK-JSON ";
