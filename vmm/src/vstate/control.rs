//! Run state shared by the vCPU threads and the control API: running, paused, exiting.
//!
//! A vCPU blocked in `KVM_RUN` is kicked with a real-time signal whose handler sets
//! `immediate_exit` in that thread's `kvm_run`, so a kick is never lost even when it lands
//! just before `KVM_RUN` starts.

use husk_lock::{CondvarExt, MutexExt};
use std::cell::Cell;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;

/// What the vCPUs should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Running,
    /// Park until resumed.
    Paused,
    /// Leave the run loop.
    Exiting,
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this thread to its own mmap'ed kvm_run, which
            // outlives the registration (cleared before the VcpuFd is dropped).
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Records this thread's `kvm_run` for the kick handler (null to clear).
pub fn set_thread_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|p| p.set(run));
}

#[derive(Debug)]
struct Inner {
    state: RunState,
    parked: usize,
    threads: Vec<libc::pthread_t>,
}

/// Shared run-state controller.
#[derive(Debug)]
pub struct VcpuControl {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: RunState::Running,
                parked: 0,
                threads: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// Registers the calling vCPU thread for kicks.
    pub fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    /// Removes the calling thread (it is about to exit).
    pub fn unregister_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.retain(|t| *t != me);
        self.cv.notify_all();
    }

    /// Current state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    fn kick_all(inner: &Inner) {
        for t in &inner.threads {
            // SAFETY: `t` is a live thread registered by itself and removed before it exits.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Asks all vCPUs to park and waits until they have (or `timeout` passes).
    /// Returns true when every vCPU is parked.
    pub fn pause(&self, timeout: Duration) -> bool {
        let mut g = self.lock();
        if g.state == RunState::Exiting {
            return false;
        }
        g.state = RunState::Paused;
        Self::kick_all(&g);
        let deadline = Instant::now() + timeout;
        while g.parked < g.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.cv.wait_timeout_recovering(g, left).0;
        }
        true
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        let mut g = self.lock();
        if g.state == RunState::Paused {
            g.state = RunState::Running;
        }
        self.cv.notify_all();
    }

    /// Tells all vCPUs to leave their run loops.
    pub fn exit(&self) {
        let mut g = self.lock();
        g.state = RunState::Exiting;
        Self::kick_all(&g);
        self.cv.notify_all();
    }

    /// Waits until all vCPU threads unregistered, up to `timeout`.
    pub fn wait_threads_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while !g.threads.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.cv.wait_timeout_recovering(g, left).0;
        }
        true
    }

    /// Called by a vCPU thread between runs: parks while paused. Returns false when the
    /// thread must exit.
    pub fn checkpoint(&self) -> bool {
        let mut g = self.lock();
        if g.state == RunState::Paused {
            g.parked += 1;
            self.cv.notify_all();
            while g.state == RunState::Paused {
                g = self.cv.wait_recovering(g);
            }
            g.parked -= 1;
        }
        g.state != RunState::Exiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::wait_until;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn pause_parks_threads_and_resume_releases_them() {
        install_kick_handler().unwrap();
        let c = Arc::new(VcpuControl::default());
        let work = Arc::new(AtomicU64::new(0));
        let mut handles = vec![];
        for _ in 0..2 {
            let (c, work) = (c.clone(), work.clone());
            handles.push(std::thread::spawn(move || {
                c.register_current_thread();
                while c.checkpoint() {
                    work.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
                c.unregister_current_thread();
            }));
        }
        while c.lock().threads.len() < 2 {
            std::thread::yield_now();
        }
        assert!(c.pause(Duration::from_secs(5)));
        assert_eq!(
            c.lock().parked,
            2,
            "pause returned before both threads parked"
        );
        let w = work.load(Ordering::SeqCst);
        // That the threads stay parked needs a span of time to be seen: watch the whole
        // span (running threads would count about once per millisecond each).
        let span = Instant::now() + Duration::from_millis(50);
        let moved = wait_until(span, || {
            work.load(Ordering::SeqCst) != w || c.lock().parked != 2
        });
        assert!(!moved, "a thread ran while paused");
        c.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(
            wait_until(deadline, || work.load(Ordering::SeqCst) > w),
            "no thread ran after resume"
        );
        c.exit();
        assert!(c.wait_threads_gone(Duration::from_secs(5)));
        for h in handles {
            h.join().unwrap();
        }
        assert!(!c.pause(Duration::from_millis(1)));
    }
}
