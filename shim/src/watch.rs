//! The pod watcher: notices that a part of a pod died and says so once.
//!
//! Two threads per pod, each blocking on what it waits for:
//! - the parts thread sleeps in `poll(2)` on one descriptor per host-side helper (a pidfd
//!   of husk-vmm and of virtiofsd, which turns readable when the process exits), so a
//!   death is noticed the moment it happens, without polling;
//! - the health thread calls the agent's `Health` every `interval`, each call bounded by
//!   `deadline` ([`crate::deadline`]); `misses` failed or late answers in a row mean the
//!   guest is hung, paused behind containerd's back, or its kernel died. One slow answer
//!   within the deadline is not a miss; a container frozen by containerd's own `Pause`
//!   does not stop the agent from answering.
//!
//! The first [`Fault`] is handed to the callback, once; dropping the [`PodWatch`] stops
//! both threads and disarms the callback, so a pod torn down on purpose reports nothing.
//! The threads are not joined: the callback itself may drop the watch (it tears the pod
//! down), and a health call in flight ends by itself within its deadline.

use husk_lock::MutexExt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::AgentApi;

use crate::config::Config;
use crate::deadline::{self, DeadlineError};

/// Errors starting a watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The stop pipe could not be made.
    #[error("pipe: {0}")]
    Pipe(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("start watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A host-side part of the pod and a descriptor that turns readable when it dies.
#[derive(Debug)]
pub struct Part {
    /// Its name in logs (`husk-vmm`, `virtiofsd`).
    pub name: &'static str,
    /// A pidfd (or, in tests, the read end of a pipe whose write end the "process" holds).
    pub fd: OwnedFd,
}

/// Why a pod is declared dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A helper process exited.
    PartExited(&'static str),
    /// A Task call got no answer from the guest (timed out, or its connection broke).
    Unanswered {
        /// The agent call.
        call: &'static str,
        /// What the client said.
        error: String,
    },
    /// The agent missed this many health deadlines in a row; the last failure.
    AgentUnresponsive {
        /// Misses in a row.
        misses: u32,
        /// What the last check got.
        last: String,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::PartExited(name) => write!(f, "{name} exited"),
            Fault::Unanswered { call, error } => {
                write!(f, "the guest did not answer {call} ({error})")
            }
            Fault::AgentUnresponsive { misses, last } => write!(
                f,
                "the guest agent missed {misses} health checks in a row (hung, paused or \
                 crashed guest; last: {last})"
            ),
        }
    }
}

/// How the agent's health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between checks.
    pub interval: Duration,
    /// How long one check may take.
    pub deadline: Duration,
    /// Misses in a row that declare the agent dead.
    pub misses: u32,
}

impl HealthPolicy {
    /// The policy of `config` (`health_interval_ms`, `health_timeout_ms`, `health_misses`).
    pub fn from_config(config: &Config) -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_millis(config.health_interval_ms),
            deadline: Duration::from_millis(config.health_timeout_ms),
            misses: config.health_misses,
        }
    }

    /// The longest time from a guest hanging to the fault: each miss costs at most one
    /// interval and one deadline.
    pub fn worst_detection(&self) -> Duration {
        (self.interval + self.deadline) * self.misses
    }
}

/// Counts misses in a row (pure, so the rule is tested apart from threads).
#[derive(Debug, Default)]
pub struct MissCounter {
    misses: u32,
}

impl MissCounter {
    /// Records one check; returns the misses in a row so far.
    pub fn record(&mut self, answered: bool) -> u32 {
        self.misses = if answered { 0 } else { self.misses + 1 };
        self.misses
    }
}

type OnFault = Box<dyn FnOnce(Fault) + Send>;

/// The one-shot callback, shared by both threads and disarmed on drop.
#[derive(Clone)]
struct Report(Arc<Mutex<Option<OnFault>>>);

impl Report {
    fn fire(&self, fault: Fault) {
        // Taken out before it runs: it may drop the watch, which takes the lock.
        let f = self.0.locked().take();
        if let Some(f) = f {
            f(fault);
        }
    }

    fn disarm(&self) {
        self.0.locked().take();
    }
}

/// A running watcher; dropping it stops watching.
pub struct PodWatch {
    report: Report,
    /// Dropping the write end wakes the parts thread (POLLHUP on the read end).
    _stop_parts: OwnedFd,
    /// Dropping the sender wakes the health thread.
    _stop_health: mpsc::Sender<()>,
}

impl PodWatch {
    /// Starts watching `parts` and `agent`; `on_fault` gets the first fault.
    pub fn start(
        parts: Vec<Part>,
        agent: Arc<dyn AgentApi>,
        policy: HealthPolicy,
        on_fault: impl FnOnce(Fault) + Send + 'static,
    ) -> Result<PodWatch, WatchError> {
        let report = Report(Arc::new(Mutex::new(Some(Box::new(on_fault)))));
        let (stop_rd, stop_wr) = nix::unistd::pipe().map_err(|e| WatchError::Pipe(e.into()))?;
        let r = report.clone();
        std::thread::Builder::new()
            .name("husk-watch-parts".into())
            .spawn(move || {
                if let Some(fault) = wait_parts(&stop_rd, &parts) {
                    r.fire(fault);
                }
            })
            .map_err(WatchError::Thread)?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let r = report.clone();
        std::thread::Builder::new()
            .name("husk-watch-health".into())
            .spawn(move || {
                if let Some(fault) = check_health(agent, policy, &stop_rx) {
                    r.fire(fault);
                }
            })
            .map_err(WatchError::Thread)?;
        Ok(PodWatch {
            report,
            _stop_parts: stop_wr,
            _stop_health: stop_tx,
        })
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.report.disarm();
    }
}

/// Blocks until a part dies (its fault) or `stop` is closed (`None`).
fn wait_parts(stop: &OwnedFd, parts: &[Part]) -> Option<Fault> {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(parts.iter().map(|p| p.fd.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let n = libc::nfds_t::try_from(fds.len()).ok()?;
    loop {
        // SAFETY: `fds` is a valid array of `n` pollfds, alive for the whole call; the
        // descriptors are owned by `stop` and `parts`, which outlive it.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), n, -1) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!("pod watcher poll: {e}; helper exits are no longer watched");
            return None;
        }
        if fds[0].revents != 0 {
            return None;
        }
        if let Some(i) = fds[1..].iter().position(|f| f.revents != 0) {
            return Some(Fault::PartExited(parts[i].name));
        }
    }
}

/// Checks health until `misses` in a row (the fault) or `stop` is dropped (`None`).
fn check_health(
    agent: Arc<dyn AgentApi>,
    policy: HealthPolicy,
    stop: &mpsc::Receiver<()>,
) -> Option<Fault> {
    let mut counter = MissCounter::default();
    loop {
        match stop.recv_timeout(policy.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return None,
        }
        let a = Arc::clone(&agent);
        let last = match deadline::run_within("husk-health", policy.deadline, move || a.health()) {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(DeadlineError::Elapsed(d)) => Some(format!("no answer within {d:?}")),
            Err(e) => Some(e.to_string()),
        };
        let misses = counter.record(last.is_none());
        if let Some(last) = last {
            tracing::warn!("health check {misses}/{}: {last}", policy.misses);
            if misses >= policy.misses {
                return Some(Fault::AgentUnresponsive { misses, last });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{wait_until, FakeAgent, Rpc};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_millis(10),
            deadline: Duration::from_millis(50),
            misses: 2,
        }
    }

    fn recorder() -> (Arc<Mutex<Vec<Fault>>>, impl FnOnce(Fault) + Send + 'static) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        (seen, move |f| s.locked().push(f))
    }

    #[test]
    fn misses_count_only_in_a_row() {
        let mut c = MissCounter::default();
        assert_eq!(c.record(false), 1);
        assert_eq!(c.record(true), 0);
        assert_eq!(c.record(false), 1);
        assert_eq!(c.record(false), 2);
    }

    #[test]
    fn a_part_that_dies_is_reported_once_by_name() {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        let (fs_rd, _fs_wr) = nix::unistd::pipe().expect("pipe");
        let agent = FakeAgent::new();
        let (seen, on_fault) = recorder();
        let parts = vec![
            Part {
                name: "husk-vmm",
                fd: rd,
            },
            Part {
                name: "virtiofsd",
                fd: fs_rd,
            },
        ];
        let _w = PodWatch::start(parts, agent, policy(), on_fault).expect("watch");
        drop(wr);
        wait_until("the fault", || !seen.locked().is_empty());
        assert_eq!(*seen.locked(), [Fault::PartExited("husk-vmm")]);
    }

    #[test]
    fn a_hung_agent_is_declared_dead_a_slow_one_is_not() {
        let agent = FakeAgent::new();
        let (seen, on_fault) = recorder();
        // Slower than the interval but within the deadline: healthy.
        agent.delay(Rpc::Health, Duration::from_millis(20));
        let _w = PodWatch::start(vec![], agent.clone(), policy(), on_fault).expect("watch");
        wait_until("several slow health checks", || {
            agent.calls_of(Rpc::Health).len() >= 5
        });
        assert!(seen.locked().is_empty(), "{:?}", seen.locked());
        agent.hang(Rpc::Health);
        wait_until("the fault", || !seen.locked().is_empty());
        assert!(matches!(
            seen.locked()[0],
            Fault::AgentUnresponsive { misses: 2, .. }
        ));
        agent.vanish();
    }

    #[test]
    fn a_disarmed_report_calls_nothing_and_a_report_fires_once() {
        let fired = Arc::new(AtomicU32::new(0));
        let f = Arc::clone(&fired);
        let r = Report(Arc::new(Mutex::new(Some(Box::new(move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })))));
        r.fire(Fault::PartExited("virtiofsd"));
        r.fire(Fault::PartExited("husk-vmm"));
        assert_eq!(fired.load(Ordering::SeqCst), 1);

        let (seen, on_fault) = recorder();
        let r = Report(Arc::new(Mutex::new(Some(Box::new(on_fault)))));
        r.disarm();
        r.fire(Fault::PartExited("husk-vmm"));
        assert!(seen.locked().is_empty());
    }

    #[test]
    fn dropping_the_watch_disarms_it() {
        let (rd, _wr) = nix::unistd::pipe().expect("pipe");
        let (seen, on_fault) = recorder();
        let agent = FakeAgent::new();
        let w = PodWatch::start(
            vec![Part {
                name: "husk-vmm",
                fd: rd,
            }],
            agent,
            policy(),
            on_fault,
        )
        .expect("watch");
        let report = w.report.clone();
        drop(w);
        report.fire(Fault::PartExited("husk-vmm"));
        assert!(seen.locked().is_empty());
    }
}
