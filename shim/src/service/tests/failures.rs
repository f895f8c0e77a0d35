//! Failed calls: what they return and that they leave nothing half-made behind.

use containerd_shim_protos::api::{
    CloseIORequest, PidsRequest, ResizePtyRequest, StatsRequest, UpdateTaskRequest,
};
use containerd_shim_protos::types::task::Status;
use husk_protocol::{AgentError, ErrorKind};

use crate::testing::{Failure, Rpc, FAKE_VMM_LOG};

use super::*;

#[test]
fn a_vm_that_dies_during_boot_fails_the_create_once_and_leaves_nothing() {
    let h = Harness::new();
    h.pods.fail_boots(true);
    let err = h.create("c1").expect_err("boot fails");
    assert!(matches!(err, ShimError::Internal(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("exited during boot"), "{msg}");
    assert!(msg.contains("exit status: 1"), "husk-vmm's status: {msg}");
    assert!(msg.contains(FAKE_VMM_LOG), "husk-vmm's log: {msg}");
    assert_eq!(h.pods.starts(), 1, "no second boot");
    assert!(is_not_found(h.status("c1", "")), "no container");
    assert!(!h.has_pod(), "no pod");
    assert!(!h.pod_paths("c1").dir.exists(), "the state dir is removed");
    assert!(h.events.events().is_empty(), "no event");
    assert!(h.agent.calls().is_empty(), "the agent was never asked");

    // The next create boots afresh.
    h.pods.fail_boots(false);
    h.create("c1").expect("create after a failed boot");
    assert_eq!(h.pods.starts(), 2);
}

#[test]
fn a_failed_container_create_destroys_the_pod_started_for_it() {
    let h = Harness::new();
    h.agent
        .fail(Rpc::CreateContainer, Failure::Status(ErrorKind::Internal));
    let err = h.create("c1").expect_err("agent refuses");
    assert!(
        matches!(
            &err,
            ShimError::Agent(AgentError::Status {
                kind: ErrorKind::Internal,
                ..
            })
        ),
        "{err:?}"
    );
    let vms = h.pods.vms();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].destroyed(), 1, "the pod booted for it is destroyed");
    assert!(!h.has_pod());
    assert!(is_not_found(h.status("c1", "")));
    assert!(!h.pod_paths("c1").dir.exists(), "the state dir is removed");
    assert!(h.events.events().is_empty(), "no event");
}

#[test]
fn a_failed_member_create_keeps_the_pod_of_the_others() {
    let h = Harness::new();
    h.create_with("pod1", sandbox_of("pod1")).expect("sandbox");
    h.agent.fail(
        Rpc::CreateContainer,
        Failure::Status(ErrorKind::InvalidArgument),
    );
    h.create_with("app", member_of("pod1"))
        .expect_err("agent refuses");
    assert_eq!(h.pods.vms()[0].destroyed(), 0, "the sandbox still runs");
    assert!(h.has_pod());
    let paths = h.pod_paths("pod1");
    assert!(!paths.container_dir("app").exists(), "its share is removed");
    assert!(
        paths.container_dir("pod1").exists(),
        "the sandbox's is kept"
    );
    assert!(is_not_found(h.status("app", "")));
}

#[test]
fn a_member_without_its_pods_vm_is_refused_without_a_boot() {
    let h = Harness::new();
    let err = h
        .create_with("app", member_of("pod1"))
        .expect_err("no pod VM here");
    assert!(matches!(err, ShimError::FailedPrecondition(_)), "{err:?}");
    assert_eq!(h.pods.starts(), 0);
    assert!(!h.pod_paths("pod1").dir.exists());
    assert!(h.events.events().is_empty());
}

#[test]
fn a_start_that_times_out_leaves_the_container_created_and_deletable() {
    let h = Harness::new();
    h.create("c1").expect("create");
    h.agent.fail(Rpc::StartContainer, Failure::Timeout);
    let err = h.start("c1", "").expect_err("times out");
    assert!(
        matches!(err, ShimError::Agent(AgentError::Timeout { .. })),
        "{err:?}"
    );
    assert_eq!(h.status("c1", "").expect("state"), Status::CREATED);
    assert!(
        !h.agent
            .calls_of(Rpc::WaitProcess)
            .contains(&("c1".into(), String::new())),
        "no waiter for a process that did not start"
    );
    h.delete("c1", "").expect("delete");
    assert_eq!(
        h.events.topics(),
        vec!["/tasks/create", "/tasks/delete"],
        "no TaskStart"
    );
    assert_eq!(h.pods.vms()[0].destroyed(), 1);
}

#[test]
fn a_create_with_a_taken_id_is_refused_without_a_second_pod() {
    let h = Harness::new();
    h.create("c1").expect("create");
    assert!(matches!(h.create("c1"), Err(ShimError::AlreadyExists(_))));
    assert_eq!(h.pods.starts(), 1);
    assert_eq!(h.events.topics(), vec!["/tasks/create"]);
}

#[test]
fn a_bundle_without_rootfs_is_refused_before_a_boot() {
    let h = Harness::new();
    let bundle = h.bundle("c1", json!({}));
    std::fs::remove_dir(bundle.join("rootfs")).expect("remove rootfs");
    let err = h
        .svc
        .do_create(&CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        })
        .expect_err("no rootfs");
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
    assert_eq!(h.pods.starts(), 0);
}

#[test]
fn calls_for_unknown_ids_are_not_found() {
    let h = Harness::new();
    h.running("c1");
    for (id, exec_id) in [("nope", ""), ("c1", "nope")] {
        assert!(is_not_found(h.start(id, exec_id)), "start {id}/{exec_id}");
        assert!(is_not_found(h.kill(id, exec_id, 9, false)), "kill");
        assert!(is_not_found(h.delete(id, exec_id)), "delete");
        assert!(is_not_found(h.status(id, exec_id)), "state");
        assert!(is_not_found(h.wait(id, exec_id)), "wait");
        let close = h.svc.do_close_io(&CloseIORequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        });
        assert!(is_not_found(close), "close_io");
        let resize = h.svc.do_resize_pty(&ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width: 80,
            height: 24,
            ..Default::default()
        });
        assert!(is_not_found(resize), "resize_pty");
    }
    assert!(is_not_found(h.exec("nope", "e1")), "exec");
    let pids = h.svc.do_pids(&PidsRequest {
        id: "nope".into(),
        ..Default::default()
    });
    assert!(is_not_found(pids), "pids");
    let stats = h.svc.do_stats(&StatsRequest {
        id: "nope".into(),
        ..Default::default()
    });
    assert!(is_not_found(stats), "stats");
    let update = h.svc.do_update(&UpdateTaskRequest {
        id: "nope".into(),
        ..Default::default()
    });
    assert!(is_not_found(update), "update");
    assert!(is_not_found(h.svc.do_pause("nope", true)), "pause");
    assert!(is_not_found(h.svc.do_pause("nope", false)), "resume");
    assert_eq!(h.svc.task_pid("nope"), 0);
    let asked: Vec<Rpc> = h.agent.calls().iter().map(|c| c.rpc).collect();
    assert!(
        asked.iter().all(|r| !matches!(
            r,
            Rpc::SignalProcess | Rpc::RemoveContainer | Rpc::ExecProcess | Rpc::ListProcesses
        )),
        "unknown ids never reach the agent: {asked:?}"
    );
}

#[test]
fn annotations_above_the_caps_or_not_allowed_are_refused_before_anything_is_made() {
    let h = Harness::new();
    for (key, value, says) in [
        ("io.husk.memory_mib", "999999", "above the cap of 16384"),
        ("io.husk.kernel", "/tmp/evil", "not allowed"),
    ] {
        let err = h
            .create_with("c1", json!({ key: value }))
            .expect_err("refused");
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(key) && msg.contains(value) && msg.contains(says),
            "{msg}"
        );
        assert_eq!(h.pods.starts(), 0, "no boot");
        assert!(h.pods.shared().is_empty(), "nothing shared");
        assert!(!h.pod_paths("c1").dir.exists(), "no state dir");
        assert!(h.events.events().is_empty(), "no event");
    }
}

/// A bundle for `id` whose spec has `linux.cgroupsPath = path`.
fn bundle_in_cgroup(h: &Harness, id: &str, path: &str) -> std::path::PathBuf {
    let bundle = h.bundle(id, json!({}));
    let file = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    spec["linux"]["cgroupsPath"] = json!(path);
    std::fs::write(&file, spec.to_string()).expect("write");
    bundle
}

#[test]
fn the_cgroups_path_reaches_the_launcher_and_a_bad_one_is_refused_first() {
    let h = Harness::new();
    for bad in ["/kubepods/../../etc", "x.slice:cri:../y"] {
        let err = h
            .create_bundle("c1", &bundle_in_cgroup(&h, "c1", bad))
            .expect_err("bad path");
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(bad), "{err}");
        assert_eq!(h.pods.starts(), 0, "no boot");
        assert!(h.pods.shared().is_empty(), "nothing shared");
        assert!(!h.pod_paths("c1").dir.exists(), "no state dir");
    }
    let path = "kubepods-besteffort-pod1.slice:cri-containerd:c1";
    h.create_bundle("c1", &bundle_in_cgroup(&h, "c1", path))
        .expect("create");
    let asked = h.pods.cgroups();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].path,
        crate::host_cgroup::parse(path).expect("parse")
    );
    assert_eq!(
        (asked[0].namespace.as_str(), asked[0].pod_id.as_str()),
        (NS, "c1")
    );
}
