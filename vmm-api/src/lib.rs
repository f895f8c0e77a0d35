//! The contract between the husk shim and `husk-vmm`, defined once for both sides (and for
//! the end-to-end tests and benchmarks that start husk-vmm themselves).
//!
//! Two processes agree on five things, each in its own module:
//!
//! - [`config`]: the VM configuration the shim writes as JSON ([`VmConfig`]), with the
//!   checks that need only the values ([`limits`] holds the documented bounds);
//! - [`args`]: husk-vmm's command line ([`VmmArgs`]), which points at that JSON file;
//! - [`cmdline`]: the guest kernel command line every husk guest boots with;
//! - [`protocol`] and [`client`]: the control API on husk-vmm's unix socket, typed and
//!   versioned, with a small blocking client; [`metrics`] is what its `metrics` command
//!   returns;
//! - [`exit`]: what husk-vmm's exit status means ([`VmmExit`]).
//!
//! Nothing here touches KVM: the shim links this crate without linking a VMM.

#![deny(missing_docs)]

pub mod args;
pub mod client;
pub mod cmdline;
pub mod config;
pub mod exit;
pub mod framing;
pub mod limits;
pub mod metrics;
pub mod protocol;

pub use args::VmmArgs;
pub use client::{ApiClient, ApiError};
pub use cmdline::{GuestCmdline, BASE_CMDLINE};
pub use config::{ConfigError, FsConfig, SerialOutput, VmConfig, VsockConfig};
pub use exit::VmmExit;
pub use metrics::{Metrics, VcpuExits};
pub use protocol::{Request, Response, VmState, API_VERSION};

#[cfg(test)]
mod protocol_props;
