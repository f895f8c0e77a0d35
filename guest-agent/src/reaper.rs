//! The one place that calls `waitpid`: reaps every child (and, as PID 1 or subreaper, every
//! orphan) and keeps exit statuses until their owner asks for them.
//!
//! A container process can exit before its creator learns its pid (the setup process
//! reports it through a pipe), so statuses of pids nobody watches yet are kept for
//! [`UNCLAIMED_TTL`] and handed over by [`Reaper::watch`].

use husk_lock::MutexExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long the status of a pid nobody watches is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(10);

/// Exit status as shells report it: the exit code, or 128 + signal number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[derive(Default)]
struct State {
    /// Exit codes by pid, with when they were reaped.
    exited: HashMap<i32, (i32, Instant)>,
    /// Pids somebody will ask about.
    watched: HashSet<i32>,
}

/// Shared reaper state; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<(Mutex<State>, Condvar)>,
    thread: Arc<OnceLock<Thread>>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Reaper {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
            thread: Arc::new(OnceLock::new()),
        };
        let worker = reaper.clone();
        let handle = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || worker.run())?;
        let _ = reaper.thread.set(handle.thread().clone());
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.inner.0.locked()
    }

    /// Tells the reaper a child was just created (it naps while there are none).
    pub fn child_spawned(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Keeps the status of `pid` until [`Reaper::forget`].
    pub fn watch(&self, pid: i32) {
        self.lock().watched.insert(pid);
    }

    /// Stops keeping `pid`'s status for good: it is dropped [`UNCLAIMED_TTL`] after the
    /// exit, so a waiter that is about to wake still finds it.
    pub fn forget(&self, pid: i32) {
        self.lock().watched.remove(&pid);
    }

    /// The exit code of `pid`, if it has exited.
    pub fn status(&self, pid: i32) -> Option<i32> {
        self.lock().exited.get(&pid).map(|(c, _)| *c)
    }

    /// Waits until `pid` exits, at most `timeout` (`None`: forever).
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if let Some((code, _)) = st.exited.get(&pid) {
                return Some(*code);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return None,
                },
                None => Duration::from_secs(3600),
            };
            st = match self.inner.1.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn record(&self, pid: i32, code: i32) {
        let mut st = self.lock();
        let now = Instant::now();
        st.exited.insert(pid, (code, now));
        let watched = std::mem::take(&mut st.watched);
        st.exited
            .retain(|p, (_, at)| watched.contains(p) || now.duration_since(*at) < UNCLAIMED_TTL);
        st.watched = watched;
        drop(st);
        self.inner.1.notify_all();
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) {
                        self.record(pid.as_raw(), code);
                    }
                }
                Err(Errno::ECHILD) => std::thread::park_timeout(Duration::from_millis(50)),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_survives_until_claimed_and_briefly_after_forget() {
        let reaper = Reaper {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
            thread: Arc::new(OnceLock::new()),
        };
        // Exit recorded before anybody watched the pid (the setup-process race).
        reaper.record(42, 3);
        reaper.watch(42);
        assert_eq!(reaper.wait(42, Some(Duration::from_millis(10))), Some(3));
        reaper.forget(42);
        assert_eq!(reaper.status(42), Some(3), "still there for late waiters");
        assert_eq!(reaper.wait(7, Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn exit_codes_like_a_shell() {
        use nix::sys::signal::Signal;
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 5)), Some(5));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
    }
}
