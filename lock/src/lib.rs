//! husk's one policy for poisoned locks, written once.
//!
//! A `Mutex` is poisoned when a thread panicked while holding it. In husk a panic is a bug,
//! and no critical section leaves its data half-updated across a call that can panic (they
//! are short: a map insert, a state change, a handle swap). So a poisoned lock still guards
//! consistent data, and the right thing for a long-lived process (a shim serving containerd,
//! a VMM running a guest, the guest's init) is to go on with it: one panicked worker thread
//! must not cascade into every other thread that touches the same lock, leaving a pod that
//! can neither run nor be torn down. Every lock and condition-variable wait in husk goes
//! through these extension traits instead of repeating `unwrap_or_else(|e| e.into_inner())`.

use std::sync::{Condvar, Mutex, MutexGuard, WaitTimeoutResult};
use std::time::Duration;

/// Locking that recovers the guard of a poisoned mutex (see the crate docs for why).
pub trait MutexExt<T: ?Sized> {
    /// Locks, taking over the data of a poisoned lock as it is.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Condition-variable waits with the same policy.
pub trait CondvarExt {
    /// [`Condvar::wait`], recovering a poisoned guard.
    fn wait_recovering<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
    /// [`Condvar::wait_timeout`], recovering a poisoned guard.
    fn wait_timeout_recovering<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult);
}

impl CondvarExt for Condvar {
    fn wait_recovering<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_timeout_recovering<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        self.wait_timeout(guard, timeout)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poisoned() -> Arc<Mutex<u32>> {
        let m = Arc::new(Mutex::new(7));
        let m2 = Arc::clone(&m);
        let joined = std::thread::spawn(move || {
            let mut g = m2.lock().expect("first lock");
            *g = 8;
            panic!("poison it");
        })
        .join();
        assert!(joined.is_err());
        assert!(m.is_poisoned());
        m
    }

    #[test]
    fn a_poisoned_mutex_still_gives_its_data() {
        let m = poisoned();
        assert_eq!(*m.locked(), 8);
        *m.locked() = 9;
        assert_eq!(*m.locked(), 9);
    }

    #[test]
    fn waits_recover_and_time_out() {
        let m = poisoned();
        let cv = Condvar::new();
        let (g, r) = cv.wait_timeout_recovering(m.locked(), Duration::from_millis(10));
        assert!(r.timed_out());
        assert_eq!(*g, 8);
        drop(g);

        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = Arc::clone(&pair);
        let t = std::thread::spawn(move || {
            *p2.0.locked() = true;
            p2.1.notify_all();
        });
        let mut g = pair.0.locked();
        while !*g {
            g = pair.1.wait_recovering(g);
        }
        t.join().expect("notifier");
    }
}
