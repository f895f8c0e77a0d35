//! The namespaces of a container in the guest, from the ones containerd wrote for the host.
//!
//! containerd expresses pod namespace sharing with host paths: a CRI member container's
//! `linux.namespaces[type=network].path` is `/proc/<pause pid>/ns/net` (likewise ipc, uts,
//! and pid when the pod shares its PID namespace). Those paths mean nothing in the guest,
//! where the pod's namespaces are the sandbox container's. So:
//!
//! - a member's network/ipc/uts/pid namespace *with* a path is removed from the spec and
//!   named in [`PodNamespaces`]: the agent joins the sandbox container's namespace of that
//!   type (what runc does with the path on the host);
//! - every other namespace keeps its type and loses its path: a fresh namespace in the
//!   guest (the sandbox's and a standalone container's become the pod's; a member's pid
//!   namespace without a path is its own, `NamespaceOption.pid = CONTAINER`);
//! - mount, cgroup, user and time namespaces are never shared this way: a pod's containers
//!   do not share them under runc either (a user namespace path is dropped too: a host
//!   user namespace cannot be entered from the guest).
//!
//! A container without a network, pid or ipc namespace would share the host's
//! (`hostNetwork`, `hostPID`, `hostIPC`, `ctr run --net-host`), which a VM cannot do: such
//! a spec is refused ([`HostNamespaces`]) rather than silently given the VM's.

use std::fmt;

use husk_protocol::agent::PodNamespaces;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use crate::annotations::PodRole;

/// The namespace types a pod member may join the sandbox container's of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNamespace {
    /// Network: the pod's interfaces, addresses and ports.
    Network,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname.
    Uts,
    /// Process ids (`shareProcessNamespace`).
    Pid,
}

impl PodNamespace {
    fn of(typ: LinuxNamespaceType) -> Option<PodNamespace> {
        match typ {
            LinuxNamespaceType::Network => Some(PodNamespace::Network),
            LinuxNamespaceType::Ipc => Some(PodNamespace::Ipc),
            LinuxNamespaceType::Uts => Some(PodNamespace::Uts),
            LinuxNamespaceType::Pid => Some(PodNamespace::Pid),
            LinuxNamespaceType::Mount
            | LinuxNamespaceType::Cgroup
            | LinuxNamespaceType::User
            | LinuxNamespaceType::Time => None,
        }
    }

    /// The OCI type name, as the agent API spells it (`PodNamespaces.types`).
    pub fn oci_name(self) -> &'static str {
        match self {
            PodNamespace::Network => "network",
            PodNamespace::Ipc => "ipc",
            PodNamespace::Uts => "uts",
            PodNamespace::Pid => "pid",
        }
    }
}

/// The host namespaces a spec asks to share (by lacking a namespace of that type), in the
/// order network, pid, ipc. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct HostNamespaces(Vec<PodNamespace>);

/// The namespace types a container must have its own of (or its pod's): a missing one
/// means the host's.
const NOT_FROM_THE_HOST: [PodNamespace; 3] =
    [PodNamespace::Network, PodNamespace::Pid, PodNamespace::Ipc];

impl HostNamespaces {
    /// The types asked for.
    pub fn types(&self) -> &[PodNamespace] {
        &self.0
    }
}

/// The pod spec field through which Kubernetes asks for a host namespace.
fn pod_field(ns: PodNamespace) -> &'static str {
    match ns {
        PodNamespace::Network => "hostNetwork",
        PodNamespace::Pid => "hostPID",
        PodNamespace::Ipc => "hostIPC",
        // Kubernetes has no field of its own for it: a hostNetwork pod gets the host's.
        PodNamespace::Uts => "hostNetwork",
    }
}

/// "a", "a and b", "a, b and c".
fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl fmt::Display for HostNamespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|n| n.oci_name()).collect();
        let fields: Vec<&str> = self.0.iter().map(|n| pod_field(*n)).collect();
        let plural = if self.0.len() > 1 { "s" } else { "" };
        write!(
            f,
            "husk runs every pod in its own VM, which cannot share the host's {} namespace{plural} \
             ({}); run this pod with runc",
            join_and(&names),
            fields.join(", ")
        )
    }
}

/// Refuses a spec that asks for any of the host's network, pid or ipc namespaces.
pub fn refuse_host_namespaces(spec: &Spec) -> Result<(), HostNamespaces> {
    let nss: &[LinuxNamespace] = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default();
    let missing: Vec<PodNamespace> = NOT_FROM_THE_HOST
        .into_iter()
        .filter(|want| {
            !nss.iter()
                .any(|ns| PodNamespace::of(ns.typ()) == Some(*want))
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HostNamespaces(missing))
    }
}

/// Rewrites `spec.linux.namespaces` for the guest (no host path stays) and says which of
/// the sandbox container's namespaces a member joins; `None` for the sandbox container, a
/// standalone container, and a member that shares none.
pub fn guest_namespaces(spec: &mut Spec, role: &PodRole) -> Option<PodNamespaces> {
    let sandbox_id = match role {
        PodRole::Member { sandbox_id } => Some(sandbox_id),
        PodRole::Sandbox | PodRole::Standalone => None,
    };
    let linux = spec.linux_mut().as_mut()?;
    let nss = linux.namespaces().clone()?;
    let mut shared = Vec::new();
    let mut own = Vec::with_capacity(nss.len());
    for mut ns in nss {
        let joins = sandbox_id.is_some() && ns.path().is_some();
        match PodNamespace::of(ns.typ()) {
            Some(pod_ns) if joins => {
                if !shared.contains(&pod_ns) {
                    shared.push(pod_ns);
                }
            }
            _ => {
                ns.set_path(None);
                own.push(ns);
            }
        }
    }
    linux.set_namespaces(Some(own));
    let sandbox_id = sandbox_id?;
    if shared.is_empty() {
        return None;
    }
    Some(PodNamespaces {
        sandbox_id: sandbox_id.clone(),
        types: shared.iter().map(|n| n.oci_name().to_string()).collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A spec with these `(type, path)` namespaces.
    fn spec(nss: &[(&str, Option<&str>)]) -> Spec {
        let nss: Vec<serde_json::Value> = nss
            .iter()
            .map(|(t, p)| match p {
                Some(p) => json!({"type": t, "path": p}),
                None => json!({"type": t}),
            })
            .collect();
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": nss}
        }))
        .expect("spec")
    }

    /// The spec's namespaces as `(type, has a path)`, with OCI type names.
    fn left(spec: &Spec) -> Vec<(String, bool)> {
        let v = serde_json::to_value(spec).expect("json");
        v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| {
                (
                    n["type"].as_str().expect("type").to_string(),
                    n.get("path").is_some_and(|p| !p.is_null()),
                )
            })
            .collect()
    }

    fn member() -> PodRole {
        PodRole::Member {
            sandbox_id: "pause1".into(),
        }
    }

    /// What containerd's CRI plugin writes for a pod's sandbox (pause) container.
    fn sandbox_spec() -> Spec {
        spec(&[
            ("pid", None),
            ("ipc", None),
            ("uts", None),
            ("mount", None),
            ("network", Some("/var/run/netns/cni-1234")),
        ])
    }

    /// What containerd writes for a member: the sandbox's namespaces by path, and its pid
    /// namespace by path when `share_pid` (`NamespaceOption.pid = POD`).
    fn member_spec(share_pid: bool) -> Spec {
        spec(&[
            ("pid", share_pid.then_some("/proc/42/ns/pid")),
            ("ipc", Some("/proc/42/ns/ipc")),
            ("uts", Some("/proc/42/ns/uts")),
            ("mount", None),
            ("network", Some("/proc/42/ns/net")),
            ("cgroup", Some("/proc/42/ns/cgroup")),
        ])
    }

    #[test]
    fn the_sandbox_keeps_its_types_without_paths_and_joins_nothing() {
        let mut s = sandbox_spec();
        assert_eq!(guest_namespaces(&mut s, &PodRole::Sandbox), None);
        let want: Vec<(String, bool)> = ["pid", "ipc", "uts", "mount", "network"]
            .iter()
            .map(|t| (t.to_string(), false))
            .collect();
        assert_eq!(left(&s), want);
    }

    #[test]
    fn a_member_sharing_the_pods_pid_namespace_joins_all_four() {
        let mut s = member_spec(true);
        let pod = guest_namespaces(&mut s, &member()).expect("joins the sandbox");
        assert_eq!(pod.sandbox_id, "pause1");
        assert_eq!(pod.types, ["pid", "ipc", "uts", "network"]);
        // Mount and cgroup stay its own, and the cgroup path is gone.
        assert_eq!(
            left(&s),
            [("mount".to_string(), false), ("cgroup".to_string(), false)]
        );
    }

    #[test]
    fn a_member_with_its_own_pid_namespace_keeps_it() {
        let mut s = member_spec(false);
        let pod = guest_namespaces(&mut s, &member()).expect("joins the sandbox");
        assert_eq!(pod.types, ["ipc", "uts", "network"]);
        assert_eq!(
            left(&s),
            [
                ("pid".to_string(), false),
                ("mount".to_string(), false),
                ("cgroup".to_string(), false)
            ]
        );
    }

    #[test]
    fn a_member_never_joins_mount_user_or_cgroup_namespaces() {
        let mut s = spec(&[
            ("pid", None),
            ("ipc", None),
            ("network", None),
            ("mount", Some("/proc/42/ns/mnt")),
            ("user", Some("/proc/42/ns/user")),
        ]);
        assert_eq!(guest_namespaces(&mut s, &member()), None);
        assert!(left(&s).iter().all(|(_, path)| !path), "{:?}", left(&s));
        assert_eq!(left(&s).len(), 5);
    }

    #[test]
    fn a_standalone_container_gets_fresh_namespaces_even_with_paths() {
        // `ctr run --with-ns network:/var/run/netns/x`: the VM is the container's own.
        let mut s = spec(&[
            ("pid", None),
            ("ipc", None),
            ("network", Some("/var/run/netns/x")),
            ("uts", Some("/proc/7/ns/uts")),
        ]);
        assert_eq!(guest_namespaces(&mut s, &PodRole::Standalone), None);
        assert_eq!(
            left(&s),
            [
                ("pid".to_string(), false),
                ("ipc".to_string(), false),
                ("network".to_string(), false),
                ("uts".to_string(), false)
            ]
        );
    }

    #[test]
    fn specs_with_their_own_namespaces_are_accepted() {
        assert_eq!(refuse_host_namespaces(&sandbox_spec()), Ok(()));
        assert_eq!(refuse_host_namespaces(&member_spec(false)), Ok(()));
    }

    #[test]
    fn host_network_is_refused_by_name() {
        // containerd's spec for a hostNetwork pod (and `ctr run --net-host`): no network
        // namespace, and no uts one.
        let err = refuse_host_namespaces(&spec(&[("pid", None), ("ipc", None), ("mount", None)]))
            .expect_err("host network");
        assert_eq!(err.types(), [PodNamespace::Network]);
        assert_eq!(
            err.to_string(),
            "husk runs every pod in its own VM, which cannot share the host's network \
             namespace (hostNetwork); run this pod with runc"
        );
    }

    #[test]
    fn every_missing_host_namespace_is_named() {
        let err = refuse_host_namespaces(&spec(&[("mount", None), ("uts", None)]))
            .expect_err("host namespaces");
        assert_eq!(
            err.to_string(),
            "husk runs every pod in its own VM, which cannot share the host's network, pid \
             and ipc namespaces (hostNetwork, hostPID, hostIPC); run this pod with runc"
        );
        let err = refuse_host_namespaces(&spec(&[("network", None), ("ipc", None)]))
            .expect_err("host pid");
        assert_eq!(err.types(), [PodNamespace::Pid]);
        assert!(err.to_string().contains("(hostPID)"), "{err}");
    }

    #[test]
    fn a_spec_without_linux_namespaces_shares_everything_and_is_refused() {
        let s: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        }))
        .expect("spec");
        let err = refuse_host_namespaces(&s).expect_err("no namespaces");
        assert_eq!(err.types().len(), 3);
    }
}
