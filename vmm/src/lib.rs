//! husk-vmm: a KVM micro-VM monitor that boots one husk pod.
//!
//! The crate is split by concern, after Firecracker and rust-vmm's vmm-reference:
//! [`husk_vmm_api`] (the typed, validated configuration, command line and control API
//! types it shares with the shim), [`arch`] (x86_64 layout and boot state),
//! [`memory`] (memfd-backed guest RAM), [`vstate`] (KVM VM and vCPUs), [`devices`] (legacy and
//! virtio devices), [`event_loop`], [`api`] (control socket), [`confine`] (jail and
//! capabilities) and [`seccomp`] (a filter per thread kind), and [`builder`], which ties them
//! together.

#![deny(missing_docs)]

pub mod api;
pub mod arch;
pub mod builder;
pub mod confine;
pub mod console_file;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod seccomp;
#[cfg(test)]
mod test_util;
pub mod vstate;
