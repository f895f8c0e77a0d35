//! The namespaces a container gets in the guest: a pod member joins its sandbox's, a spec
//! that asks for the host's is refused before any VM starts.

use husk_protocol::agent::PodNamespaces;

use crate::testing::Rpc;

use super::*;

/// What containerd writes for a member of pod `pause` (pid 42 on the host): the sandbox's
/// namespaces by path, the pid one too when the pod shares it.
fn member_namespaces(share_pid: bool) -> serde_json::Value {
    let pid = if share_pid {
        json!({"type": "pid", "path": "/proc/42/ns/pid"})
    } else {
        json!({"type": "pid"})
    };
    json!([
        pid,
        {"type": "ipc", "path": "/proc/42/ns/ipc"},
        {"type": "uts", "path": "/proc/42/ns/uts"},
        {"type": "mount"},
        {"type": "network", "path": "/proc/42/ns/net"}
    ])
}

#[test]
fn a_member_joins_its_sandboxs_namespaces_in_the_guest() {
    let h = Harness::new();
    let sandbox = h.bundle_with(
        "pause",
        sandbox_of("pause"),
        json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1"}
        ]),
    );
    h.create_bundle("pause", &sandbox).expect("sandbox");
    assert_eq!(
        h.agent.pod_namespaces("pause"),
        Some(None),
        "the sandbox's namespaces are the pod's: it joins none"
    );

    let shared = h.bundle_with("app", member_of("pause"), member_namespaces(true));
    h.create_bundle("app", &shared).expect("member sharing pid");
    let own_pid = h.bundle_with("side", member_of("pause"), member_namespaces(false));
    h.create_bundle("side", &own_pid)
        .expect("member with its own pid");

    let joined = |id: &str| {
        h.agent
            .pod_namespaces(id)
            .expect("CreateContainer was called")
            .expect("it joins the sandbox")
    };
    assert_eq!(
        joined("app"),
        PodNamespaces {
            sandbox_id: "pause".into(),
            types: vec!["pid".into(), "ipc".into(), "uts".into(), "network".into()],
            ..Default::default()
        }
    );
    assert_eq!(joined("side").types, ["ipc", "uts", "network"]);
}

#[test]
fn a_standalone_container_joins_nothing() {
    let h = Harness::new();
    h.create("c1").expect("create");
    assert_eq!(h.agent.pod_namespaces("c1"), Some(None));
}

#[test]
fn a_host_network_pod_is_refused_before_a_vm_starts_and_leaves_nothing() {
    let h = Harness::new();
    // containerd's sandbox spec for `hostNetwork: true`: no network (and no uts) namespace.
    let bundle = h.bundle_with(
        "pause",
        sandbox_of("pause"),
        json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]),
    );
    let err = h.create_bundle("pause", &bundle).expect_err("host network");
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "husk runs every pod in its own VM, which cannot share the host's network namespace \
         (hostNetwork); run this pod with runc"
    );
    assert_eq!(h.pods.starts(), 0, "no VM");
    assert!(h.agent.calls().is_empty(), "the agent was never asked");
    assert!(!h.has_pod());
    assert!(!h.pod_paths("pause").dir.exists(), "no state dir");
    assert!(h.events.events().is_empty(), "no event");
    assert!(is_not_found(h.status("pause", "")));
}

#[test]
fn a_member_asking_for_the_hosts_pid_and_ipc_is_refused_and_the_pod_kept() {
    let h = Harness::new();
    h.create_with("pause", sandbox_of("pause"))
        .expect("sandbox");
    let bundle = h.bundle_with(
        "app",
        member_of("pause"),
        json!([{"type": "mount"}, {"type": "network", "path": "/proc/42/ns/net"}]),
    );
    let err = h
        .create_bundle("app", &bundle)
        .expect_err("host pid and ipc");
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("the host's pid and ipc namespaces (hostPID, hostIPC)"),
        "{msg}"
    );
    assert_eq!(
        h.agent.calls_of(Rpc::CreateContainer).len(),
        1,
        "only the sandbox's"
    );
    assert!(h.has_pod(), "the sandbox still runs");
    assert!(!h.pod_paths("pause").container_dir("app").exists());
    assert!(is_not_found(h.status("app", "")));
}
