//! Task events published to containerd, in order, from one publisher thread so that Task
//! calls never wait on containerd ([`RemoteEvents`]).

mod remote;

pub use remote::{EventTransport, RemoteEvents, DROPPABLE_CAPACITY};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;

/// One task event.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// A task was created.
    Create(TaskCreate),
    /// A task's init process started.
    Start(TaskStart),
    /// An exec was added.
    ExecAdded(TaskExecAdded),
    /// An exec started.
    ExecStarted(TaskExecStarted),
    /// A process exited.
    Exit(TaskExit),
    /// A task was deleted.
    Delete(TaskDelete),
    /// A task was paused.
    Paused(TaskPaused),
    /// A task was resumed.
    Resumed(TaskResumed),
    /// The guest reported an OOM kill.
    Oom(TaskOOM),
}

impl TaskEvent {
    /// containerd's topic for the event.
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start(_) => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::ExecAdded(_) => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted(_) => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Exit(_) => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Delete(_) => topics::TASK_DELETE_EVENT_TOPIC,
            TaskEvent::Paused(_) => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed(_) => topics::TASK_RESUMED_EVENT_TOPIC,
            TaskEvent::Oom(_) => topics::TASK_OOM_EVENT_TOPIC,
        }
    }

    /// Whether the event may be dropped when the queue to containerd is full. Only events a
    /// guest can cause at will (OOM reports) are: the others follow containerd's own calls
    /// or the exits of processes it started, and containerd relies on each of them.
    pub fn droppable(&self) -> bool {
        matches!(self, TaskEvent::Oom(_))
    }

    fn into_message(self) -> Box<dyn MessageDyn> {
        match self {
            TaskEvent::Create(e) => Box::new(e),
            TaskEvent::Start(e) => Box::new(e),
            TaskEvent::ExecAdded(e) => Box::new(e),
            TaskEvent::ExecStarted(e) => Box::new(e),
            TaskEvent::Exit(e) => Box::new(e),
            TaskEvent::Delete(e) => Box::new(e),
            TaskEvent::Paused(e) => Box::new(e),
            TaskEvent::Resumed(e) => Box::new(e),
            TaskEvent::Oom(e) => Box::new(e),
        }
    }
}

/// Where events go.
pub trait EventSink: Send + Sync {
    /// Queues an event.
    fn publish(&self, event: TaskEvent);
    /// Waits until every queued event was sent (before the shim exits).
    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_containerd() {
        assert_eq!(TaskEvent::Exit(TaskExit::default()).topic(), "/tasks/exit");
        assert_eq!(
            TaskEvent::ExecAdded(TaskExecAdded::default()).topic(),
            "/tasks/exec-added"
        );
        assert_eq!(TaskEvent::Oom(TaskOOM::default()).topic(), "/tasks/oom");
    }

    #[test]
    fn messages_carry_containerd_type_names() {
        let m = TaskEvent::Start(TaskStart::default()).into_message();
        assert_eq!(
            m.descriptor_dyn().full_name(),
            "containerd.events.TaskStart"
        );
    }
}
