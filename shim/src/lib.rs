//! husk's containerd shim v2 (`containerd-shim-husk-v2`, runtime `io.containerd.husk.v2`):
//! runs each pod (or each standalone container) in a husk micro-VM.
//!
//! Modules, one concern each:
//! - [`config`], [`annotations`]: configuration file and per-pod annotations;
//! - [`convert`], [`state`], [`spec`], [`namespaces`]: pure request/response conversions,
//!   the process state machine, the guest's OCI spec and its namespaces;
//! - [`vmm`] (the VMM seam), [`virtiofsd`], [`child`], [`mounts`], [`volume`], [`cleanup`],
//!   [`private`], [`console`], [`share`], [`sandbox`]: the pod VM;
//! - [`host_cgroup`]: the cgroup of a pod's host-side processes;
//! - [`pidfd`], [`identity`]: exact handles on helper processes (watching, crash cleanup);
//! - [`watch`], [`deadline`]: the pod watcher (helper exits, agent health) and bounded
//!   calls into a guest that may hang;
//! - [`pod`]: the seam between the Task service and the pod VM's host side;
//! - [`stdio`], [`events`], [`oom`], [`ratelimit`], [`process`], [`service`]: the Task service;
//! - [`bootstrap`]: the binary's `start`, `delete` and serve actions.

pub mod annotations;
pub mod bootstrap;
pub mod child;
pub mod cleanup;
pub mod config;
pub mod console;
pub mod convert;
pub mod deadline;
pub mod error;
pub mod events;
pub mod host_cgroup;
pub mod identity;
pub mod mounts;
pub mod namespaces;
pub mod oom;
pub mod pidfd;
pub mod pod;
pub mod private;
pub mod process;
pub mod ratelimit;
pub mod sandbox;
pub mod service;
pub mod share;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod virtiofsd;
pub mod vmm;
pub mod volume;
pub mod watch;

#[cfg(test)]
mod testing;
