//! Turning the bundle's OCI spec (written by containerd for the host) into the spec the
//! agent runs in the guest.
//!
//! - `root.path` becomes `rootfs`, which the agent resolves inside the pod share as
//!   `<share>/<container-id>/rootfs`, where the shim mounted the container's rootfs.
//! - Namespace paths are host paths (`/proc/<pid>/ns/net`, `/var/run/netns/...`) that mean
//!   nothing in the guest: a pod member joins its sandbox container's namespaces instead,
//!   other containers get new ones ([`crate::namespaces`]). A spec that asks for the host's
//!   network, pid or ipc namespace is refused.
//! - Bind mounts of host files and directories (CRI's `/etc/hosts`, `/etc/resolv.conf`,
//!   `ctr run --mount`) are shared with the guest through the pod share: the shim binds
//!   each source once per pod to `<share>/.volumes/<name>` ([`crate::volume::volume_name`])
//!   and the spec names the guest path.

use std::path::{Path, PathBuf};

use husk_protocol::agent::PodNamespaces;
use oci_spec::runtime::{Mount, Spec};

use crate::annotations::PodRole;
use crate::host_cgroup::{self, CgroupError, CgroupsPath};
use crate::namespaces::{self, HostNamespaces};

/// Where the agent mounts the pod share in the guest.
pub const GUEST_SHARE: &str = "/run/husk/shared";

/// The directory of the pod's volumes in the share. Container ids start with a letter or
/// digit, so no container's directory can take this name.
pub const VOLUMES_DIR: &str = ".volumes";

/// Errors in the bundle's spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json cannot be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not an OCI spec.
    #[error("parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The spec lacks something the shim needs.
    #[error("spec: {0}")]
    Invalid(String),
    /// `linux.cgroupsPath` is not acceptable.
    #[error(transparent)]
    CgroupsPath(#[from] CgroupError),
    /// A bind mount names a relative host path: relative to what is not defined for a
    /// bind (runc resolves it against its own working directory), so it is refused.
    #[error("bind mount on {destination}: source {given:?} is not an absolute path")]
    RelativeBindSource {
        /// The mount's destination in the container.
        destination: PathBuf,
        /// The source as given.
        given: PathBuf,
    },
    /// The spec asks for namespaces of the host, which a VM cannot share.
    #[error(transparent)]
    HostNamespaces(#[from] HostNamespaces),
}

/// Reads `<bundle>/config.json`.
pub fn read_bundle_spec(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse { path, source })
}

/// The spec's `linux.cgroupsPath`, parsed: where the pod's host cgroup goes.
pub fn cgroups_path(spec: &Spec) -> Result<Option<CgroupsPath>, SpecError> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    else {
        return Ok(None);
    };
    let text = path.to_str().ok_or_else(|| CgroupError::InvalidPath {
        path: path.display().to_string(),
        why: "not UTF-8".into(),
    })?;
    Ok(host_cgroup::parse(text)?)
}

/// The container's root directory on the host: `root.path`, relative to the bundle.
pub fn host_root(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("no root".into()))?;
    Ok(bundle.join(root.path()))
}

/// A host path to bind into the share for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The host path.
    pub source: PathBuf,
    /// File name under `<share>/.volumes/`, shared by the pod's containers binding the same
    /// source alike.
    pub name: String,
    /// The mount's OCI options, applied to the host-side bind too ([`crate::mounts::bind_volume`]):
    /// `ro` is then enforced by the host, not only by the guest.
    pub options: Vec<String>,
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// What the agent gets to create a container, and what the shim must share for it.
#[derive(Debug)]
pub struct GuestSpec {
    /// The spec the agent runs.
    pub spec: Spec,
    /// Host paths the shim binds into the share.
    pub binds: Vec<HostBind>,
    /// The sandbox container's namespaces a pod member joins.
    pub pod: Option<PodNamespaces>,
}

/// The guest spec for a container of a pod in `role`. Refuses a spec that asks for the
/// host's namespaces: checked here, before any VM is started for it.
pub fn guest_spec(mut spec: Spec, role: &PodRole) -> Result<GuestSpec, SpecError> {
    if spec.process().is_none() {
        return Err(SpecError::Invalid("no process".into()));
    }
    namespaces::refuse_host_namespaces(&spec)?;
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    spec.set_root(Some(root));

    let pod = namespaces::guest_namespaces(&mut spec, role);

    let mut binds = Vec::new();
    if let Some(mounts) = spec.mounts().clone() {
        let mut out = Vec::with_capacity(mounts.len());
        for mut m in mounts {
            let host_source = m.source().as_ref().filter(|_| is_bind(&m)).cloned();
            if let Some(source) = host_source {
                if !source.is_absolute() {
                    return Err(SpecError::RelativeBindSource {
                        destination: m.destination().clone(),
                        given: source,
                    });
                }
                let options = m.options().clone().unwrap_or_default();
                let name = crate::volume::volume_name(&source, &options);
                m.set_source(Some(Path::new(GUEST_SHARE).join(VOLUMES_DIR).join(&name)));
                binds.push(HostBind {
                    source,
                    name,
                    options,
                });
            }
            out.push(m);
        }
        spec.set_mounts(Some(out));
    }
    Ok(GuestSpec { spec, binds, pod })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).expect("spec")
    }

    fn base() -> serde_json::Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "/run/containerd/io.containerd.runtime.v2.task/default/c1/rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/pod/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind"]}
            ],
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ]}
        })
    }

    #[test]
    fn root_becomes_relative_and_keeps_readonly() {
        let s = guest_spec(spec(base()), &PodRole::Sandbox)
            .expect("guest")
            .spec;
        let root = s.root().as_ref().expect("root");
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(true));
    }

    #[test]
    fn host_root_is_relative_to_the_bundle() {
        let mut v = base();
        v["root"]["path"] = json!("rootfs");
        let s = spec(v);
        assert_eq!(
            host_root(&s, Path::new("/b")).expect("root"),
            PathBuf::from("/b/rootfs")
        );
        let s = spec(base());
        assert!(host_root(&s, Path::new("/b"))
            .expect("root")
            .starts_with("/run/containerd"));
    }

    #[test]
    fn namespace_paths_are_dropped_types_kept() {
        let s = guest_spec(spec(base()), &PodRole::Sandbox)
            .expect("guest")
            .spec;
        let nss = s.linux().as_ref().and_then(|l| l.namespaces().clone());
        let nss = nss.expect("namespaces");
        assert_eq!(nss.len(), 3);
        assert!(nss.iter().all(|n| n.path().is_none()));
    }

    #[test]
    fn a_member_joins_the_sandbox_and_no_host_path_remains() {
        let mut v = base();
        v["linux"]["namespaces"] = json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "network", "path": "/proc/42/ns/net"}
        ]);
        let member = PodRole::Member {
            sandbox_id: "pod1".into(),
        };
        let g = guest_spec(spec(v), &member).expect("guest");
        let pod = g.pod.expect("pod namespaces");
        assert_eq!(pod.sandbox_id, "pod1");
        assert_eq!(pod.types, ["ipc", "network"]);
        let text = serde_json::to_string(&g.spec).expect("json");
        assert!(!text.contains("/proc/42"), "{text}");
    }

    #[test]
    fn a_spec_sharing_the_hosts_network_is_refused() {
        let mut v = base();
        v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}]);
        let err = guest_spec(spec(v), &PodRole::Standalone).expect_err("host network");
        assert!(matches!(err, SpecError::HostNamespaces(_)), "{err:?}");
        assert!(err.to_string().contains("(hostNetwork)"), "{err}");
    }

    #[test]
    fn host_binds_move_into_the_share() {
        let GuestSpec { spec: s, binds, .. } =
            guest_spec(spec(base()), &PodRole::Standalone).expect("guest");
        let hosts = crate::volume::volume_name(
            Path::new("/var/lib/pod/hosts"),
            &["rbind".into(), "ro".into()],
        );
        let data = crate::volume::volume_name(Path::new("/srv/data"), &["rbind".into()]);
        assert_eq!(
            binds,
            vec![
                HostBind {
                    source: "/var/lib/pod/hosts".into(),
                    name: hosts.clone(),
                    options: vec!["rbind".into(), "ro".into()],
                },
                HostBind {
                    source: "/srv/data".into(),
                    name: data.clone(),
                    options: vec!["rbind".into()],
                },
            ]
        );
        let mounts = s.mounts().clone().expect("mounts");
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
        let guest = |n: &str| Some(Path::new(GUEST_SHARE).join(VOLUMES_DIR).join(n));
        assert_eq!(mounts[1].source().clone(), guest(&hosts));
        assert_eq!(mounts[2].source().clone(), guest(&data));
        // Another container of the pod binding the same source alike gets the same path.
        let other = guest_spec(spec(base()), &PodRole::Standalone).expect("guest");
        assert_eq!(other.binds[1].name, data);
    }

    #[test]
    fn a_relative_bind_source_is_refused() {
        let mut v = base();
        v["mounts"] = json!([
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]}
        ]);
        let err = guest_spec(spec(v), &PodRole::Standalone).expect_err("relative");
        assert!(
            matches!(&err, SpecError::RelativeBindSource { given, .. } if given == Path::new("data")),
            "{err}"
        );
        let shim = crate::error::ShimError::from(err);
        assert!(
            matches!(shim, crate::error::ShimError::InvalidArgument(ref m) if m.contains("not an absolute path")),
            "{shim:?}"
        );
    }

    #[test]
    fn spec_without_process_is_refused() {
        let err = guest_spec(spec(json!({"ociVersion": "1.0.2"})), &PodRole::Standalone)
            .expect_err("none");
        assert!(err.to_string().contains("no process"), "{err}");
    }
}
