//! The OOM monitor of a pod: long-polls the agent's `GetOomEvent` and publishes
//! `TaskOOM` for the containers the guest reports.
//!
//! The guest may be hostile and answer as fast and with whatever ids it likes, so the
//! monitor publishes only for containers this shim created ([`KnownContainers`]), at most
//! one event per container per [`OomLimits::per_container`] (an OOM kill is a state to
//! know about, not a count: containerd and the kubelet only record that one happened), and
//! polls at most [`OomLimits::max_polls_per_sec`] times a second. Unknown ids are dropped
//! with a warning logged at most once per [`UNKNOWN_WARN_INTERVAL`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskOOM;
use husk_protocol::{AgentApi, AgentError};

use crate::events::{EventSink, TaskEvent};
use crate::ratelimit::{PerKeyInterval, Throttled};

/// How long one `GetOomEvent` call waits in the agent.
pub const POLL_WAIT: Duration = Duration::from_secs(30);

/// Pause after a failed call before the next one.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Consecutive failed calls after which the monitor gives up (the VM is gone, or its
/// agent does not know the call).
const MAX_FAILURES: u32 = 5;

/// How often the warning about OOM reports for unknown containers may be logged.
pub const UNKNOWN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a container id is one of this shim's containers.
pub type KnownContainers = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How much the monitor lets a guest publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomLimits {
    /// At most one event per container per this interval.
    pub per_container: Duration,
    /// At most this many `GetOomEvent` answers are taken per second (0: no bound); a guest
    /// answering at once cannot make the monitor spin.
    pub max_polls_per_sec: u32,
}

impl Default for OomLimits {
    fn default() -> Self {
        OomLimits {
            per_container: Duration::from_secs(1),
            max_polls_per_sec: 100,
        }
    }
}

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
    /// Starts polling `source` (each call waiting up to `wait`) and publishing to `events`
    /// the OOM kills of `known` containers, within `limits`.
    pub fn start(
        source: Arc<dyn OomSource>,
        events: Arc<dyn EventSink>,
        known: KnownContainers,
        limits: OomLimits,
        wait: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("husk-oom".into())
            .spawn(move || {
                let mut filter = Filter::new(known, limits);
                run(source.as_ref(), events.as_ref(), &mut filter, wait, &flag)
            })?;
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

/// Decides which reports become events: known containers only, within the limits.
struct Filter {
    known: KnownContainers,
    limits: OomLimits,
    per_container: PerKeyInterval,
    unknown: Throttled,
    window: (Instant, u32),
}

impl Filter {
    fn new(known: KnownContainers, limits: OomLimits) -> Self {
        Filter {
            known,
            limits,
            per_container: PerKeyInterval::new(limits.per_container),
            unknown: Throttled::new(UNKNOWN_WARN_INTERVAL),
            window: (Instant::now(), 0),
        }
    }

    /// Whether the report for `id` at `now` is published.
    fn pass(&mut self, id: &str, now: Instant) -> bool {
        if !(self.known)(id) {
            if let Some(n) = self.unknown.hit(now) {
                // `{:?}`: the id comes from the guest; escaped, it cannot forge log lines.
                tracing::warn!("{n} OOM report(s) for containers this shim does not know (last: {id:.64?}) dropped");
            }
            return false;
        }
        self.per_container.allow(id, now)
    }

    /// Waits, if needed, so that at most `max_polls_per_sec` answers are taken a second.
    fn pace(&mut self) {
        let max = self.limits.max_polls_per_sec;
        if max == 0 {
            return;
        }
        let (start, count) = &mut self.window;
        let elapsed = start.elapsed();
        if elapsed >= Duration::from_secs(1) {
            *start = Instant::now();
            *count = 0;
        } else if *count >= max {
            std::thread::sleep(Duration::from_secs(1) - elapsed);
            *start = Instant::now();
            *count = 0;
        }
        *count += 1;
    }
}

fn run(
    source: &dyn OomSource,
    events: &dyn EventSink,
    filter: &mut Filter,
    wait: Duration,
    stop: &AtomicBool,
) {
    let mut failures = 0;
    while !stop.load(Ordering::SeqCst) {
        match source.next_oom(wait) {
            Ok(found) => {
                failures = 0;
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(container_id) = found {
                    if filter.pass(&container_id, Instant::now()) {
                        tracing::info!("OOM kill in container {container_id}");
                        events.publish(TaskEvent::Oom(TaskOOM {
                            container_id,
                            ..Default::default()
                        }));
                    }
                }
                filter.pace();
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

    /// No rate limit: each report of a known container is published.
    const UNLIMITED: OomLimits = OomLimits {
        per_container: Duration::ZERO,
        max_polls_per_sec: 0,
    };

    fn known(ids: &[&'static str]) -> KnownContainers {
        let ids: Vec<&'static str> = ids.to_vec();
        Arc::new(move |id: &str| ids.contains(&id))
    }

    /// Answers `id` `n` times, then fails (so the monitor gives up).
    fn flood(id: &'static str, n: usize) -> Arc<Script> {
        Arc::new(Script(
            Mutex::new(std::iter::repeat_n(Some(id), n).collect()),
            Mutex::new(0),
        ))
    }

    fn run_until_given_up(script: &Arc<Script>, known: KnownContainers, l: OomLimits) -> usize {
        let events = Arc::new(Recorder::default());
        let _m = OomMonitor::start(script.clone(), events.clone(), known, l, Duration::ZERO)
            .expect("start");
        wait_until("the monitor to give up", || Arc::strong_count(script) == 1);
        let n = events.0.locked().len();
        n
    }

    #[test]
    fn a_flood_for_an_unknown_container_publishes_nothing() {
        let script = flood("not-ours", 10_000);
        let published = run_until_given_up(&script, known(&["c1"]), UNLIMITED);
        assert_eq!(published, 0);
        assert_eq!(
            *script.1.locked(),
            10_000 + MAX_FAILURES,
            "every report was read"
        );
    }

    #[test]
    fn a_flood_for_a_known_container_publishes_at_most_the_rate() {
        let script = flood("c1", 10_000);
        let started = Instant::now();
        let limits = OomLimits {
            per_container: Duration::from_secs(1),
            max_polls_per_sec: 0,
        };
        let published = run_until_given_up(&script, known(&["c1"]), limits);
        // One per started second of the flood.
        let bound = started.elapsed().as_secs() as usize + 1;
        assert!(
            (1..=bound).contains(&published),
            "{published} published, at most {bound}"
        );
    }

    #[test]
    fn polls_are_paced() {
        let script = flood("c1", 30);
        let limits = OomLimits {
            per_container: Duration::ZERO,
            max_polls_per_sec: 10,
        };
        let started = Instant::now();
        let published = run_until_given_up(&script, known(&["c1"]), limits);
        assert_eq!(published, 30);
        // 30 answers at 10 a second: the last ones wait for the third second.
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn publishes_each_reported_container_then_gives_up_on_errors() {
        let answers = [None, Some("c1"), None, Some("c2"), Some("c1")];
        let script = Arc::new(Script(Mutex::new(answers.into()), Mutex::new(0)));
        let events = Arc::new(Recorder::default());
        let _m = OomMonitor::start(
            script.clone(),
            events.clone(),
            known(&["c1", "c2"]),
            UNLIMITED,
            Duration::ZERO,
        )
        .expect("start");
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
        let m = OomMonitor::start(
            source.clone(),
            events.clone(),
            known(&["late"]),
            UNLIMITED,
            Duration::from_millis(200),
        )
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
