//! The shim's exit: no `Create` may finish after it, and one in flight is waited for
//! (bounded), so that what it made is torn down with the rest instead of being left
//! behind when the process exits.

use husk_lock::{CondvarExt, MutexExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::ShimError;

use super::{Container, Result, TaskService};

/// A `Create` in flight; dropping it lets a waiting shutdown go on.
pub(super) struct CreateGuard<'a>(&'a TaskService);

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        let mut n = self.0.creates.locked();
        *n = n.saturating_sub(1);
        self.0.creates_done.notify_all();
    }
}

impl TaskService {
    /// Counts a `Create` in; refused once the shim is shutting down.
    pub(super) fn begin_create(&self) -> Result<CreateGuard<'_>> {
        let mut n = self.creates.locked();
        self.check_open()?;
        *n += 1;
        Ok(CreateGuard(self))
    }

    /// An error once the shim is shutting down.
    pub(super) fn check_open(&self) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(ShimError::FailedPrecondition(
                "the shim is shutting down".into(),
            ));
        }
        Ok(())
    }

    /// The longest a `Create` may take: its boot and its agent call.
    fn create_bound(&self) -> Duration {
        self.config.boot_timeout()
            + Duration::from_secs(self.config.lifecycle_timeout_secs)
            + Duration::from_secs(5)
    }

    /// Stops the VM and removes everything; called when the shim exits. A `Create` in
    /// flight is waited for (at most as long as a create may take), and undoes itself
    /// when it sees the shim closing.
    pub fn shutdown_all(&self) {
        {
            let mut n = self.creates.locked();
            self.closing.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + self.create_bound();
            while *n > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!("shutdown: {} create(s) still in flight", *n);
                    break;
                }
                n = self.creates_done.wait_timeout_recovering(n, left).0;
            }
        }
        let all: Vec<std::sync::Arc<Container>> =
            self.containers().drain().map(|(_, c)| c).collect();
        for c in all {
            c.init.drop_relay();
            for e in c.execs().values() {
                e.drop_relay();
            }
        }
        self.destroy_pod();
        self.events.flush();
    }
}
