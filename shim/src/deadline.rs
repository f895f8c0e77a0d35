//! Bounding a blocking call that the shim cannot interrupt (a call into a guest that may
//! hang): the call runs on a thread of its own and the caller waits at most its deadline.
//! A call that overruns keeps its thread until it returns by itself; the agent client's
//! own timeouts, or the VM's connection closing when the pod is torn down, end it.

use std::sync::mpsc;
use std::time::Duration;

/// Why a bounded call gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    /// No result within the deadline.
    #[error("no answer within {0:?}")]
    Elapsed(Duration),
    /// The thread could not be started, or the call panicked.
    #[error("the call's thread failed")]
    Thread,
}

/// Runs `f` on a new thread named `name` and returns its result if it comes within
/// `deadline`.
pub fn run_within<T: Send + 'static>(
    name: &str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DeadlineError> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|_| DeadlineError::Thread)?;
    match rx.recv_timeout(deadline) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(DeadlineError::Elapsed(deadline)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(DeadlineError::Thread),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_quick_call_gives_its_result() {
        assert_eq!(run_within("t", Duration::from_secs(10), || 7), Ok(7));
    }

    #[test]
    fn a_hung_call_is_abandoned_at_its_deadline() {
        let release = Arc::new(Barrier::new(2));
        let r = Arc::clone(&release);
        let got = run_within("t", Duration::from_millis(20), move || {
            r.wait();
        });
        assert_eq!(got, Err(DeadlineError::Elapsed(Duration::from_millis(20))));
        release.wait();
    }
}
