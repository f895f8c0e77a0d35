//! [`RemoteEvents`]: the queue to containerd and the thread that empties it.
//!
//! One queue keeps the events in order. A guest can report OOM kills as fast as it likes,
//! so droppable events ([`TaskEvent::droppable`]) may hold at most [`DROPPABLE_CAPACITY`]
//! places in it; beyond that they are dropped and counted. The other events (create,
//! start, exit, delete, ...) are never dropped and never wait: there are only as many of
//! them as containerd's own calls and the exits of the processes it started, so they
//! cannot grow without bound, and a Task call never blocks behind a stalled containerd or a
//! flood of OOM reports. (A plain bounded channel would do neither: a full one makes an
//! exit wait behind a thousand OOM reports, or be lost.)

use husk_lock::MutexExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;

use super::{EventSink, TaskEvent};
use crate::ratelimit::Throttled;

/// Most droppable events waiting for containerd at once.
pub const DROPPABLE_CAPACITY: usize = 1024;

/// How often a warning about dropped events may be logged.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How long [`EventSink::flush`] waits for the queue to empty.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one event to containerd: its events service, or a fake in tests.
pub trait EventTransport: Send + 'static {
    /// Sends `event` on `topic` in `namespace`.
    fn send(&self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) -> Result<(), String>;
}

impl EventTransport for RemotePublisher {
    fn send(&self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        self.publish(Context::default(), topic, namespace, event)
            .map_err(|e| e.to_string())
    }
}

enum Msg {
    Event(TaskEvent),
    Flush(Sender<()>),
}

/// Publishes to containerd from one thread, in order.
pub struct RemoteEvents {
    tx: Mutex<Sender<Msg>>,
    /// Droppable events queued and not yet taken by the thread.
    droppable: Arc<AtomicUsize>,
    dropped: Mutex<Throttled>,
}

impl RemoteEvents {
    /// Starts the publisher thread for `namespace` over containerd's events service.
    pub fn start(publisher: RemotePublisher, namespace: String) -> std::io::Result<Self> {
        RemoteEvents::with_transport(publisher, namespace)
    }

    /// Starts the publisher thread sending with `transport`.
    pub fn with_transport(
        transport: impl EventTransport,
        namespace: String,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Msg>();
        let droppable = Arc::new(AtomicUsize::new(0));
        let queued = Arc::clone(&droppable);
        std::thread::Builder::new()
            .name("husk-events".into())
            .spawn(move || {
                for msg in rx {
                    let ev = match msg {
                        Msg::Event(ev) => ev,
                        Msg::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    if ev.droppable() {
                        queued.fetch_sub(1, Ordering::SeqCst);
                    }
                    let topic = ev.topic();
                    if let Err(e) = transport.send(topic, &namespace, ev.into_message()) {
                        tracing::warn!("publish {topic}: {e}");
                    }
                }
            })?;
        Ok(RemoteEvents {
            tx: Mutex::new(tx),
            droppable,
            dropped: Mutex::new(Throttled::new(DROP_WARN_INTERVAL)),
        })
    }

    /// Takes a place for a droppable event; false when all are taken.
    fn reserve_droppable(&self) -> bool {
        self.droppable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < DROPPABLE_CAPACITY).then_some(n + 1)
            })
            .is_ok()
    }
}

impl EventSink for RemoteEvents {
    fn publish(&self, event: TaskEvent) {
        tracing::debug!("event {}", event.topic());
        if event.droppable() && !self.reserve_droppable() {
            if let Some(n) = self.dropped.locked().hit(Instant::now()) {
                tracing::warn!(
                    "{n} {} event(s) dropped: {DROPPABLE_CAPACITY} already wait for containerd",
                    event.topic()
                );
            }
            return;
        }
        let droppable = event.droppable();
        if self.tx.locked().send(Msg::Event(event)).is_err() && droppable {
            self.droppable.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {
        let (done, wait) = channel();
        let sent = self.tx.locked().send(Msg::Flush(done));
        if sent.is_ok() {
            let _ = wait.recv_timeout(FLUSH_TIMEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
    use std::sync::{Condvar, Mutex};

    /// Records the topics sent; blocks every send while `hold` is set, as a stalled
    /// containerd does.
    #[derive(Clone, Default)]
    struct Stalled {
        sent: Arc<Mutex<Vec<String>>>,
        hold: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Stalled {
        fn set_hold(&self, on: bool) {
            *self.hold.0.locked() = on;
            self.hold.1.notify_all();
        }
    }

    impl EventTransport for Stalled {
        fn send(&self, topic: &str, _: &str, _: Box<dyn MessageDyn>) -> Result<(), String> {
            let mut held = self.hold.0.locked();
            while *held {
                held = self.hold.1.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            self.sent.locked().push(topic.to_string());
            Ok(())
        }
    }

    fn oom() -> TaskEvent {
        TaskEvent::Oom(TaskOOM {
            container_id: "c1".into(),
            ..Default::default()
        })
    }

    #[test]
    fn an_oom_flood_neither_drops_nor_delays_an_exit() {
        let t = Stalled::default();
        t.set_hold(true);
        let events = RemoteEvents::with_transport(t.clone(), "default".into()).expect("start");
        let started = Instant::now();
        for _ in 0..10_000 {
            events.publish(oom());
        }
        events.publish(TaskEvent::Exit(TaskExit {
            container_id: "c1".into(),
            ..Default::default()
        }));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "publishing never waits on containerd"
        );
        t.set_hold(false);
        events.flush();
        let sent = t.sent.locked().clone();
        assert_eq!(sent.last().map(String::as_str), Some("/tasks/exit"));
        let ooms = sent.iter().filter(|s| *s == "/tasks/oom").count();
        // The thread may have taken one OOM event before the queue filled up.
        assert!(
            (DROPPABLE_CAPACITY..=DROPPABLE_CAPACITY + 1).contains(&ooms),
            "{ooms} OOM events sent"
        );
        // Once the queue drained, OOM events are accepted again.
        events.publish(oom());
        events.flush();
        assert_eq!(t.sent.locked().len(), sent.len() + 1);
    }

    #[test]
    fn essential_events_are_never_dropped() {
        let t = Stalled::default();
        t.set_hold(true);
        let events = RemoteEvents::with_transport(t.clone(), "default".into()).expect("start");
        for _ in 0..(DROPPABLE_CAPACITY * 3) {
            events.publish(TaskEvent::Exit(TaskExit::default()));
        }
        t.set_hold(false);
        events.flush();
        assert_eq!(t.sent.locked().len(), DROPPABLE_CAPACITY * 3);
    }
}
