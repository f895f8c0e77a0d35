//! The normal life of containers, execs and the pod, and what containerd hears of it.

use containerd_shim_protos::types::task::Status;

use crate::events::TaskEvent;
use crate::testing::{FakeAgent, Rpc};

use super::*;

const CREATE: &str = "/tasks/create";
const START: &str = "/tasks/start";
const EXEC_ADDED: &str = "/tasks/exec-added";
const EXEC_STARTED: &str = "/tasks/exec-started";
const EXIT: &str = "/tasks/exit";
const DELETE: &str = "/tasks/delete";

fn calls(agent: &FakeAgent, rpc: Rpc) -> Vec<(String, String)> {
    agent.calls_of(rpc)
}

fn pair(id: &str, exec_id: &str) -> (String, String) {
    (id.to_string(), exec_id.to_string())
}

#[test]
fn create_boots_a_pod_and_reports_the_agents_pid() {
    let h = Harness::new();
    h.agent.set_pid("c1", "", 42);
    let resp = h.create("c1").expect("create");
    assert_eq!(resp.pid, 42);
    assert_eq!(h.pods.starts(), 1, "a standalone container gets its own VM");
    assert!(h.has_pod());
    assert_eq!(calls(&h.agent, Rpc::CreateContainer), vec![pair("c1", "")]);
    let paths = h.pod_paths("c1");
    assert_eq!(h.pods.shared(), vec![paths.container_dir("c1")]);
    assert!(paths.container_dir("c1").join("rootfs").is_dir());
    match h.events.events().as_slice() {
        [TaskEvent::Create(e)] => {
            assert_eq!(e.container_id, "c1");
            assert_eq!(e.pid, 42);
            assert!(e.bundle.ends_with("bundles/c1"), "{}", e.bundle);
        }
        other => panic!("expected one TaskCreate, got {other:?}"),
    }
    assert_eq!(h.status("c1", "").expect("state"), Status::CREATED);
}

#[test]
fn a_pods_containers_share_its_vm() {
    let h = Harness::new();
    h.create_with("pod1", sandbox_of("pod1")).expect("sandbox");
    h.create_with("app", member_of("pod1")).expect("member");
    assert_eq!(h.pods.starts(), 1, "the member joins the sandbox's VM");
    let paths = h.pod_paths("pod1");
    assert_eq!(
        h.pods.shared(),
        vec![paths.container_dir("pod1"), paths.container_dir("app")]
    );
    // The VM outlives the first delete and goes with the last.
    h.delete("app", "").expect("delete member");
    assert_eq!(h.pods.vms()[0].destroyed(), 0);
    assert!(!paths.container_dir("app").exists(), "its share is removed");
    h.delete("pod1", "").expect("delete sandbox");
    assert_eq!(h.pods.vms()[0].destroyed(), 1);
}

#[test]
fn start_publishes_task_start_and_runs_a_waiter() {
    let h = Harness::new();
    h.agent.set_pid("c1", "", 7);
    h.create("c1").expect("create");
    let resp = h.start("c1", "").expect("start");
    assert_eq!(resp.pid, 7);
    assert_eq!(calls(&h.agent, Rpc::StartContainer), vec![pair("c1", "")]);
    assert_eq!(h.status("c1", "").expect("state"), Status::RUNNING);
    match h.events.events().last() {
        Some(TaskEvent::Start(e)) => assert_eq!((e.container_id.as_str(), e.pid), ("c1", 7)),
        other => panic!("expected TaskStart, got {other:?}"),
    }
    wait_until_waiting(&h, "c1", "");
    assert!(
        matches!(h.start("c1", ""), Err(ShimError::FailedPrecondition(_))),
        "a second start is refused"
    );
}

/// Waits until the waiter thread of the process asked the agent.
fn wait_until_waiting(h: &Harness, id: &str, exec_id: &str) {
    crate::testing::wait_until("the waiter's WaitProcess", || {
        calls(&h.agent, Rpc::WaitProcess).contains(&pair(id, exec_id))
    });
}

#[test]
fn exec_add_and_start_publish_their_events() {
    let h = Harness::new();
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    match h.events.events().last() {
        Some(TaskEvent::ExecAdded(e)) => {
            assert_eq!((e.container_id.as_str(), e.exec_id.as_str()), ("c1", "e1"))
        }
        other => panic!("expected TaskExecAdded, got {other:?}"),
    }
    assert_eq!(h.status("c1", "e1").expect("state"), Status::CREATED);
    assert!(
        calls(&h.agent, Rpc::ExecProcess).is_empty(),
        "nothing runs in the guest before start"
    );

    h.agent.set_pid("c1", "e1", 55);
    let resp = h.start("c1", "e1").expect("start exec");
    assert_eq!(resp.pid, 55);
    assert_eq!(calls(&h.agent, Rpc::ExecProcess), vec![pair("c1", "e1")]);
    match h.events.events().last() {
        Some(TaskEvent::ExecStarted(e)) => {
            assert_eq!(
                (e.container_id.as_str(), e.exec_id.as_str(), e.pid),
                ("c1", "e1", 55)
            )
        }
        other => panic!("expected TaskExecStarted, got {other:?}"),
    }
    assert_eq!(h.status("c1", "e1").expect("state"), Status::RUNNING);
}

#[test]
fn a_duplicate_exec_id_is_refused() {
    let h = Harness::new();
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    let before = h.events.events().len();
    assert!(matches!(
        h.exec("c1", "e1"),
        Err(ShimError::AlreadyExists(_))
    ));
    assert_eq!(h.events.events().len(), before, "no second TaskExecAdded");
}

#[test]
fn exec_needs_a_running_container() {
    let h = Harness::new();
    h.create("c1").expect("create");
    assert!(matches!(
        h.exec("c1", "e1"),
        Err(ShimError::FailedPrecondition(_))
    ));
    assert!(is_not_found(h.status("c1", "e1")));
}

#[test]
fn kill_reaches_the_agent_until_the_process_finished() {
    let h = Harness::new();
    h.running("c1");
    h.kill("c1", "", 15, false).expect("kill");
    let signals: Vec<_> = h
        .agent
        .calls()
        .into_iter()
        .filter(|c| c.rpc == Rpc::SignalProcess)
        .map(|c| (c.id, c.exec_id, c.signal))
        .collect();
    assert_eq!(
        signals,
        vec![("c1".to_string(), String::new(), Some((15, false)))]
    );

    h.exit("c1", "", 143);
    assert!(
        is_not_found(h.kill("c1", "", 9, false)),
        "a finished process is not found"
    );
    // `all` still reaches what is left of the container.
    h.kill("c1", "", 9, true).expect("kill all");
    assert_eq!(calls(&h.agent, Rpc::SignalProcess).len(), 2);
}

#[test]
fn kill_of_an_exec_that_was_not_started_is_refused() {
    let h = Harness::new();
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    assert!(matches!(
        h.kill("c1", "e1", 9, false),
        Err(ShimError::FailedPrecondition(_))
    ));
    assert!(calls(&h.agent, Rpc::SignalProcess).is_empty());
}

#[test]
fn the_waiter_publishes_the_agents_exit_status_and_wait_returns_it() {
    let h = Harness::new();
    h.agent.set_pid("c1", "", 9);
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    h.agent.set_pid("c1", "e1", 10);
    h.start("c1", "e1").expect("start exec");

    assert_eq!(h.exit("c1", "e1", 3).exit_status, 3);
    let exit = h
        .events
        .wait_for("exec TaskExit", |e| matches!(e, TaskEvent::Exit(_)));
    match exit {
        TaskEvent::Exit(e) => {
            assert_eq!(
                (e.container_id.as_str(), e.id.as_str(), e.pid, e.exit_status),
                ("c1", "e1", 10, 3)
            );
        }
        other => panic!("expected TaskExit, got {other:?}"),
    }
    assert_eq!(h.status("c1", "e1").expect("state"), Status::STOPPED);
    assert_eq!(h.status("c1", "").expect("state"), Status::RUNNING);

    assert_eq!(h.exit("c1", "", 137).exit_status, 137);
    let init_exit = h.events.events().into_iter().find_map(|e| match e {
        TaskEvent::Exit(x) if x.id == "c1" => Some(x),
        _ => None,
    });
    let init_exit = init_exit.expect("TaskExit of init before Wait returned");
    assert_eq!((init_exit.pid, init_exit.exit_status), (9, 137));
}

#[test]
fn a_vm_that_dies_turns_running_processes_into_lost_exits() {
    let h = Harness::new();
    h.running("c1");
    wait_until_waiting(&h, "c1", "");
    h.agent.vanish();
    let w = h.wait("c1", "").expect("wait");
    assert_eq!(w.exit_status, super::super::waiter::LOST_EXIT_STATUS);
}

#[test]
fn deleting_an_exec_frees_its_id_in_the_guest() {
    let h = Harness::new();
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    h.start("c1", "e1").expect("start exec");
    h.exit("c1", "e1", 0);
    let resp = h.delete("c1", "e1").expect("delete exec");
    assert_eq!(resp.exit_status, 0);
    assert_eq!(calls(&h.agent, Rpc::RemoveProcess), vec![pair("c1", "e1")]);
    assert!(is_not_found(h.status("c1", "e1")));
    h.exec("c1", "e1").expect("the id is free again");
    assert!(
        !h.events.topics().contains(&DELETE),
        "an exec's delete is not a TaskDelete"
    );
}

#[test]
fn delete_publishes_task_delete_and_the_last_one_destroys_the_pod() {
    let h = Harness::new();
    h.running("c1");
    assert!(
        matches!(h.delete("c1", ""), Err(ShimError::FailedPrecondition(_))),
        "a running container is killed before it is deleted"
    );
    h.exit("c1", "", 2);
    let resp = h.delete("c1", "").expect("delete");
    assert_eq!(resp.exit_status, 2);
    assert_eq!(calls(&h.agent, Rpc::RemoveContainer), vec![pair("c1", "")]);
    match h.events.events().last() {
        Some(TaskEvent::Delete(e)) => {
            assert_eq!((e.container_id.as_str(), e.exit_status), ("c1", 2))
        }
        other => panic!("expected TaskDelete, got {other:?}"),
    }
    assert!(is_not_found(h.status("c1", "")));
    assert!(!h.has_pod());
    assert_eq!(h.pods.vms()[0].destroyed(), 1);
    assert!(!h.pod_paths("c1").dir.exists(), "the pod directory is gone");
}

#[test]
fn shutdown_tears_the_pod_down() {
    let h = Harness::new();
    h.running("c1");
    h.svc.shutdown_all();
    assert_eq!(h.pods.vms()[0].destroyed(), 1);
    assert!(!h.has_pod());
    assert!(is_not_found(h.status("c1", "")));
    assert!(h.svc.is_idle());
}

#[test]
fn events_of_a_whole_life_come_in_order() {
    let h = Harness::new();
    h.create("c1").expect("create");
    h.start("c1", "").expect("start");
    h.exec("c1", "e1").expect("exec");
    h.start("c1", "e1").expect("start exec");
    h.exit("c1", "e1", 0);
    h.delete("c1", "e1").expect("delete exec");
    h.exit("c1", "", 0);
    h.delete("c1", "").expect("delete");
    assert_eq!(
        h.events.topics(),
        vec![CREATE, START, EXEC_ADDED, EXEC_STARTED, EXIT, EXIT, DELETE]
    );
}

#[test]
fn pause_and_resume_reach_the_agent() {
    let h = Harness::new();
    h.running("c1");
    h.svc.do_pause("c1", true).expect("pause");
    assert_eq!(h.status("c1", "").expect("state"), Status::PAUSED);
    h.svc.do_pause("c1", false).expect("resume");
    assert_eq!(h.status("c1", "").expect("state"), Status::RUNNING);
    assert_eq!(calls(&h.agent, Rpc::PauseContainer), vec![pair("c1", "")]);
    assert_eq!(calls(&h.agent, Rpc::ResumeContainer), vec![pair("c1", "")]);
    let topics = h.events.topics();
    assert_eq!(
        &topics[topics.len() - 2..],
        ["/tasks/paused", "/tasks/resumed"]
    );
}
