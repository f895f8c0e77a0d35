//! The OOM monitor of a pod: long-polls the agent's `GetOomEvent` and publishes
//! `TaskOOM` for every container the guest reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::TaskOOM;
use husk_protocol::{AgentApi, AgentError};

use crate::events::{EventSink, TaskEvent};

/// How long one `GetOomEvent` call waits in the agent.
pub const POLL_WAIT: Duration = Duration::from_secs(30);

/// Pause after a failed call before the next one.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Consecutive failed calls after which the monitor gives up (the VM is gone, or its
/// agent does not know the call).
const MAX_FAILURES: u32 = 5;

/// Where OOM events come from (the agent; a fake in tests).
pub trait OomSource: Send + Sync {
    /// The next container with an OOM kill within `wait`, or `None`.
    fn next_oom(&self, wait: Duration) -> Result<Option<String>, AgentError>;
}

/// The agent as an [`OomSource`] (its `GetOomEvent` call).
pub struct AgentOom(pub Arc<dyn AgentApi>);

impl OomSource for AgentOom {
    fn next_oom(&self, wait: Duration) -> Result<Option<String>, AgentError> {
        self.0.get_oom_event(wait)
    }
}

/// A running monitor thread; stops when dropped (after its current poll returns).
pub struct OomMonitor {
    stop: Arc<AtomicBool>,
}

impl OomMonitor {
    /// Starts polling `source` every `wait` and publishing to `events`.
    pub fn start(
        source: Arc<dyn OomSource>,
        events: Arc<dyn EventSink>,
        wait: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("husk-oom".into())
            .spawn(move || run(source.as_ref(), events.as_ref(), wait, &flag))?;
        Ok(OomMonitor { stop })
    }

    /// Asks the thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for OomMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(source: &dyn OomSource, events: &dyn EventSink, wait: Duration, stop: &AtomicBool) {
    let mut failures = 0;
    while !stop.load(Ordering::SeqCst) {
        match source.next_oom(wait) {
            Ok(found) => {
                failures = 0;
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(container_id) = found {
                    tracing::info!("OOM kill in container {container_id}");
                    events.publish(TaskEvent::Oom(TaskOOM {
                        container_id,
                        ..Default::default()
                    }));
                }
            }
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                failures += 1;
                if failures >= MAX_FAILURES {
                    tracing::warn!("OOM events end: {e}");
                    return;
                }
                tracing::debug!("GetOomEvent: {e}");
                std::thread::sleep(RETRY_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::wait_until;
    use husk_lock::MutexExt;
    use husk_protocol::ErrorKind;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Answers from a script; once it is used up, fails. Counts the calls.
    struct Script(Mutex<VecDeque<Option<&'static str>>>, Mutex<u32>);

    impl OomSource for Script {
        fn next_oom(&self, _: Duration) -> Result<Option<String>, AgentError> {
            *self.1.locked() += 1;
            match self.0.locked().pop_front() {
                Some(answer) => Ok(answer.map(str::to_string)),
                None => Err(AgentError::Status {
                    kind: ErrorKind::Internal,
                    message: "connection closed".into(),
                }),
            }
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<TaskEvent>>);

    impl EventSink for Recorder {
        fn publish(&self, event: TaskEvent) {
            self.0.locked().push(event);
        }
    }

    #[test]
    fn publishes_each_reported_container_then_gives_up_on_errors() {
        let answers = [None, Some("c1"), None, Some("c2"), Some("c1")];
        let script = Arc::new(Script(Mutex::new(answers.into()), Mutex::new(0)));
        let events = Arc::new(Recorder::default());
        let _m = OomMonitor::start(script.clone(), events.clone(), Duration::ZERO).expect("start");
        // The script, then MAX_FAILURES failed calls, then no more calls.
        let all = answers.len() as u32 + MAX_FAILURES;
        // The monitor thread holds its own reference to the source until it returns: the
        // count falling to ours proves the thread is gone, so no call can follow.
        wait_until("the monitor to give up", || Arc::strong_count(&script) == 1);
        assert_eq!(*script.1.locked(), all, "calls before giving up");
        let ids: Vec<String> = events
            .0
            .locked()
            .iter()
            .map(|e| match e {
                TaskEvent::Oom(o) => o.container_id.clone(),
                other => panic!("not an OOM event: {other:?}"),
            })
            .collect();
        assert_eq!(ids, ["c1", "c2", "c1"]);
        assert_eq!(events.0.locked()[0].topic(), "/tasks/oom");
    }

    #[test]
    fn stops_when_asked() {
        struct Never(AtomicBool);
        impl OomSource for Never {
            fn next_oom(&self, wait: Duration) -> Result<Option<String>, AgentError> {
                self.0.store(true, Ordering::SeqCst);
                std::thread::sleep(wait);
                Ok(Some("late".into()))
            }
        }
        let source = Arc::new(Never(AtomicBool::new(false)));
        let events = Arc::new(Recorder::default());
        let m = OomMonitor::start(source.clone(), events.clone(), Duration::from_millis(200))
            .expect("start");
        wait_until("the monitor's first poll", || {
            source.0.load(Ordering::SeqCst)
        });
        drop(m);
        // The thread's reference to the source goes when it returns: after that, nothing
        // more can be published.
        wait_until("the monitor to stop", || Arc::strong_count(&source) == 1);
        assert!(
            events.0.locked().is_empty(),
            "an answer after stop is dropped"
        );
    }
}
