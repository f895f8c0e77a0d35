//! [`CollectingEvents`]: an event sink that keeps what the service published.

use husk_lock::MutexExt;
use std::sync::{Arc, Mutex};

use crate::events::{EventSink, TaskEvent};

use super::wait_until;

/// An event sink that keeps what was published, in order.
#[derive(Clone, Default)]
pub struct CollectingEvents {
    events: Arc<Mutex<Vec<TaskEvent>>>,
}

impl CollectingEvents {
    /// Everything published so far.
    pub fn events(&self) -> Vec<TaskEvent> {
        self.events.locked().clone()
    }

    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<&'static str> {
        self.events.locked().iter().map(TaskEvent::topic).collect()
    }

    /// Waits until an event matching `f` was published and returns it.
    pub fn wait_for(&self, what: &str, f: impl Fn(&TaskEvent) -> bool) -> TaskEvent {
        let mut found = None;
        wait_until(what, || {
            found = self.events.locked().iter().find(|e| f(e)).cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| unreachable!("wait_until returned without a match"))
    }
}

impl EventSink for CollectingEvents {
    fn publish(&self, event: TaskEvent) {
        self.events.locked().push(event);
    }
}
