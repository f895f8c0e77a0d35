//! Confining husk-vmm once the VM is built, after Firecracker's jailer: a mount namespace
//! with a minimal root ([`jail`]), no capabilities and no_new_privs ([`caps`]). The
//! per-thread seccomp filters ([`crate::seccomp`]) come after, as each thread starts.
//!
//! Both steps act on the calling thread only (`unshare(CLONE_NEWNS)` moves the caller alone,
//! capabilities are per-thread), so they run on the main thread before it starts any
//! other: every thread started afterwards inherits the namespace and the empty sets.

pub mod caps;
pub mod jail;

use std::path::PathBuf;

/// Errors confining the process.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Entering the jail failed.
    #[error("jail: {0}")]
    Jail(#[from] jail::JailError),
    /// Dropping capabilities failed.
    #[error("capabilities: {0}")]
    Caps(#[from] caps::CapsError),
}

/// Enters the jail keeping `keep` (unless `jail` is false: `--no-jail`, for debugging),
/// then drops every capability and sets no_new_privs.
pub fn confine_process(keep: &[PathBuf], jail: bool) -> Result<(), ConfineError> {
    if jail {
        jail::enter(keep)?;
    } else {
        tracing::warn!("--no-jail: husk-vmm sees the host's file system (debugging only)");
    }
    caps::drop_all()?;
    Ok(())
}
