//! Faults under running tasks: a helper or the guest dies or hangs; calls into a guest
//! that never answers; a shutdown that overtakes a create.

use std::time::Duration;

use containerd_shim_protos::api::StatsRequest;
use containerd_shim_protos::types::task::Status;
use husk_protocol::ErrorKind;

use crate::events::TaskEvent;
use crate::service::waiter::LOST_EXIT_STATUS;
use crate::testing::{wait_until, Failure, Rpc};

use super::*;

/// Health checks that never come during a test: only helper exits are watched.
fn no_health(c: &mut Config) {
    c.health_interval_ms = 3_600_000;
}

/// Quick health checks: a hung agent is declared dead within about 120 ms.
fn quick_health(c: &mut Config) {
    c.health_interval_ms = 10;
    c.health_timeout_ms = 50;
    c.health_misses = 2;
}

/// The exit statuses published for `(container, id)`, in order.
fn exits(h: &Harness, container: &str, id: &str) -> Vec<u32> {
    h.events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            TaskEvent::Exit(x) if x.container_id == container && x.id == id => Some(x.exit_status),
            _ => None,
        })
        .collect()
}

/// A running container `c1` with a running exec `e1`.
fn busy_pod(h: &Harness) {
    h.running("c1");
    h.exec("c1", "e1").expect("exec");
    h.start("c1", "e1").expect("start exec");
}

/// After a fault: every process exits with 255 once, the VM is killed (not asked) and
/// its files are gone, and containerd's deletes succeed without the guest.
fn assert_pod_torn_down_and_deletable(h: &Harness) {
    wait_until("the init to stop", || {
        h.status("c1", "").ok() == Some(Status::STOPPED)
    });
    assert_eq!(
        h.wait("c1", "").expect("wait").exit_status,
        LOST_EXIT_STATUS
    );
    assert_eq!(
        h.wait("c1", "e1").expect("wait").exit_status,
        LOST_EXIT_STATUS
    );
    assert_eq!(exits(h, "c1", "c1"), [LOST_EXIT_STATUS]);
    assert_eq!(exits(h, "c1", "e1"), [LOST_EXIT_STATUS]);
    let vm = &h.pods.vms()[0];
    assert_eq!(vm.killed(), 1, "torn down without the guest");
    assert!(!vm.parts_alive(), "the helpers are stopped");
    assert!(!h.pod_paths("c1").dir.exists(), "the pod files are removed");
    assert!(!h.has_pod());

    // A call that needs the guest says why it is gone.
    let err = h
        .svc
        .do_stats(&StatsRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .expect_err("no guest");
    assert!(
        err.to_string().contains("the pod VM is not running: "),
        "{err}"
    );
    let removes_before = h.agent.calls_of(Rpc::RemoveContainer).len();
    h.delete("c1", "e1").expect("delete exec");
    let d = h.delete("c1", "").expect("delete init");
    assert_eq!(d.exit_status, LOST_EXIT_STATUS);
    assert_eq!(
        h.agent.calls_of(Rpc::RemoveContainer).len(),
        removes_before,
        "the delete did not ask the dead guest"
    );
    assert!(h.svc.is_idle());
}

#[test]
fn a_dead_vmm_ends_every_task_of_the_pod() {
    let h = Harness::with_config(no_health);
    busy_pod(&h);
    h.pods.vms()[0].part_dies("husk-vmm");
    assert_pod_torn_down_and_deletable(&h);
}

#[test]
fn a_dead_virtiofsd_ends_every_task_of_the_pod() {
    let h = Harness::with_config(no_health);
    busy_pod(&h);
    h.pods.vms()[0].part_dies("virtiofsd");
    assert_pod_torn_down_and_deletable(&h);
}

#[test]
fn a_hung_agent_ends_every_task_of_the_pod() {
    let h = Harness::with_config(quick_health);
    busy_pod(&h);
    h.agent.hang(Rpc::Health);
    assert_pod_torn_down_and_deletable(&h);
}

#[test]
fn a_slow_agent_or_a_paused_container_is_not_a_fault() {
    let h = Harness::with_config(quick_health);
    busy_pod(&h);
    // containerd's own Pause freezes the container; the agent still answers.
    h.svc.do_pause("c1", true).expect("pause");
    // Slower than the interval, within the deadline.
    h.agent.delay(Rpc::Health, Duration::from_millis(20));
    let before = h.agent.calls_of(Rpc::Health).len();
    wait_until("several slow health checks", || {
        h.agent.calls_of(Rpc::Health).len() >= before + 5
    });
    assert_eq!(h.status("c1", "").expect("state"), Status::PAUSED);
    assert_eq!(h.pods.vms()[0].killed(), 0);
    assert!(exits(&h, "c1", "c1").is_empty());
    assert!(h.has_pod());
}

#[test]
fn a_sigkill_the_guest_never_answers_tears_the_vm_down() {
    let h = Harness::with_config(no_health);
    busy_pod(&h);
    // The client's deadline passed without an answer.
    h.agent.fail(Rpc::SignalProcess, Failure::Timeout);
    let err = h
        .kill("c1", "", 15, false)
        .expect_err("SIGTERM is not forced");
    assert!(matches!(err, ShimError::Agent(_)), "{err:?}");
    assert!(h.has_pod(), "only a SIGKILL tears down");
    h.kill("c1", "", 9, true).expect("forced kill succeeds");
    assert_pod_torn_down_and_deletable(&h);
}

#[test]
fn a_kill_hanging_in_a_hung_guest_returns_once_the_watcher_tears_it_down() {
    let h = Harness::with_config(quick_health);
    busy_pod(&h);
    h.agent.hang(Rpc::SignalProcess);
    h.agent.hang(Rpc::Health);
    // Returns (within the test's deadline, not the client's) as the pod goes.
    h.kill("c1", "", 9, true).expect("forced kill");
    assert_eq!(
        h.kill("c1", "e1", 15, false).map_err(|e| e.to_string()),
        Err("process e1 already finished".into())
    );
    assert_pod_torn_down_and_deletable(&h);
}

#[test]
fn a_delete_the_guest_never_answers_tears_the_vm_down() {
    let h = Harness::with_config(no_health);
    h.create("c1").expect("create");
    h.agent.fail(Rpc::RemoveContainer, Failure::Timeout);
    h.delete("c1", "").expect("delete succeeds anyway");
    let vm = &h.pods.vms()[0];
    assert_eq!(vm.killed(), 1);
    assert!(!h.has_pod());
    assert!(!h.pod_paths("c1").dir.exists());
    assert!(h.svc.is_idle());
}

#[test]
fn a_delete_refused_by_the_guest_keeps_the_pod() {
    let h = Harness::with_config(no_health);
    h.create("c1").expect("create");
    h.agent
        .fail(Rpc::RemoveContainer, Failure::Status(ErrorKind::Internal));
    h.delete("c1", "").expect("delete");
    // An answer, even an error, is not a dead guest: a normal teardown follows.
    let vm = &h.pods.vms()[0];
    assert_eq!((vm.killed(), vm.destroyed()), (0, 1));
}

#[test]
fn a_shutdown_during_a_slow_create_leaves_nothing() {
    let h = Harness::with_config(no_health);
    h.pods.hold_boots();
    let svc = Arc::clone(&h.svc);
    let bundle = h.bundle("c1", json!({}));
    let create = std::thread::spawn(move || {
        svc.do_create(&CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        })
    });
    wait_until("the boot to begin", || h.pods.starts() == 1);
    let svc = Arc::clone(&h.svc);
    let shutdown = std::thread::spawn(move || svc.shutdown_all());
    wait_until("the shutdown to begin", || h.svc.check_open().is_err());
    h.pods.release_boots();
    let created = create.join().expect("create thread");
    shutdown.join().expect("shutdown thread");

    assert!(created.is_err(), "a create overtaken by the shutdown fails");
    assert!(is_not_found(h.status("c1", "")), "no container");
    let vm = &h.pods.vms()[0];
    assert_eq!(
        vm.destroyed() + vm.killed(),
        1,
        "the VM it booted is stopped"
    );
    assert!(!h.pod_paths("c1").dir.exists(), "no pod files");
    assert!(
        !h.events.topics().contains(&"/tasks/create"),
        "no create event: {:?}",
        h.events.topics()
    );
    // And no create starts after it.
    assert!(h.create("c3").is_err());
    assert_eq!(h.pods.starts(), 1);
}
