//! A process the shim tracks (a container's init or an exec): its state, exit and streams.

use husk_lock::{CondvarExt, MutexExt};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::convert::StdioPaths;
use crate::state::{ProcState, StateError};
use crate::stdio::IoRelay;

/// One process.
pub struct Process {
    /// Container id.
    pub id: String,
    /// Exec id (empty for init).
    pub exec_id: String,
    /// containerd's FIFOs.
    pub stdio: StdioPaths,
    /// OCI process JSON of an exec.
    pub process_json: Vec<u8>,
    pid: AtomicU32,
    /// Set by whoever reports the exit: the process's waiter, or the pod's teardown when
    /// the VM died under it. Only one of them publishes `TaskExit`.
    exit_claimed: AtomicBool,
    state: Mutex<ProcState>,
    changed: Condvar,
    relay: Mutex<Option<IoRelay>>,
}

impl Process {
    /// A created process.
    pub fn new(id: &str, exec_id: &str, stdio: StdioPaths, process_json: Vec<u8>) -> Self {
        Process {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            process_json,
            pid: AtomicU32::new(0),
            exit_claimed: AtomicBool::new(false),
            state: Mutex::new(ProcState::Created),
            changed: Condvar::new(),
            relay: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.locked()
    }

    /// Guest pid (0 before it exists).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Records the guest pid.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
    }

    /// Current state.
    pub fn state(&self) -> ProcState {
        *self.lock()
    }

    /// Applies a transition.
    pub fn transition(
        &self,
        f: impl FnOnce(ProcState) -> Result<ProcState, StateError>,
    ) -> Result<ProcState, StateError> {
        let mut s = self.lock();
        *s = f(*s)?;
        self.changed.notify_all();
        Ok(*s)
    }

    /// Claims the right to report this process's exit; true for the first caller only.
    pub fn claim_exit(&self) -> bool {
        !self.exit_claimed.swap(true, Ordering::SeqCst)
    }

    /// Records the exit and wakes waiters.
    pub fn exited(&self, exit_status: u32, at: SystemTime) -> ProcState {
        let mut s = self.lock();
        *s = s.exit(exit_status, at);
        self.changed.notify_all();
        *s
    }

    /// Blocks until the process has exited; returns its status and time.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut s = self.lock();
        loop {
            if let ProcState::Stopped {
                exit_status,
                exited_at,
            } = *s
            {
                return (exit_status, exited_at);
            }
            s = self.changed.wait_recovering(s);
        }
    }

    /// Installs the stream relay.
    pub fn set_relay(&self, relay: IoRelay) {
        *self.relay.locked() = Some(relay);
    }

    /// Runs `f` on the relay, if any.
    pub fn with_relay<T>(&self, f: impl FnOnce(&mut IoRelay) -> T) -> Option<T> {
        self.relay.locked().as_mut().map(f)
    }

    /// Drops the relay (stops stdin copying).
    pub fn drop_relay(&self) {
        self.relay.locked().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn wait_returns_after_exit_from_another_thread() {
        let p = Arc::new(Process::new("c1", "", StdioPaths::default(), vec![]));
        p.transition(ProcState::start).expect("start");
        let p2 = Arc::clone(&p);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p2.exited(7, SystemTime::UNIX_EPOCH);
        });
        assert_eq!(p.wait(), (7, SystemTime::UNIX_EPOCH));
        t.join().expect("join");
        assert!(p.claim_exit());
        assert!(!p.claim_exit(), "an exit is reported once");
        assert_eq!(
            p.transition(ProcState::start),
            Err(StateError {
                action: "start",
                state: "stopped"
            })
        );
    }
}
