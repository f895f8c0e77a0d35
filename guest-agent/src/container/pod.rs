//! A container of a CRI pod joining namespaces of its pod's sandbox container in the guest
//! (`CreateContainerRequest.pod_namespaces`). The shim cannot name them: the namespace
//! paths in the container's spec are the host's. The agent knows the sandbox's init and
//! writes the paths of its namespaces into the spec it runs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use oci_spec::runtime::{Linux, LinuxNamespace, LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// The namespace a pod type name stands for, and its name under `/proc/<pid>/ns`.
pub fn ns_of(name: &str) -> Result<(LinuxNamespaceType, &'static str)> {
    Ok(match name {
        "network" => (LinuxNamespaceType::Network, "net"),
        "ipc" => (LinuxNamespaceType::Ipc, "ipc"),
        "uts" => (LinuxNamespaceType::Uts, "uts"),
        "pid" => (LinuxNamespaceType::Pid, "pid"),
        other => {
            return Err(Error::InvalidArgument(format!(
                "pod namespace type {other:?} (known: network, ipc, uts, pid)"
            )))
        }
    })
}

/// The sandbox's namespaces, opened. They are held open until the container has joined
/// them, and the spec names them through these descriptors (`/proc/<agent>/fd/<n>`), not
/// through `/proc/<sandbox pid>/ns`: should the sandbox's init exit and its pid be reused
/// meanwhile, the container still joins the sandbox's namespaces or fails, never another
/// process's.
pub struct Joined {
    _held: Vec<File>,
}

/// Opens the namespaces `types` of process `sandbox_pid` and sets them as paths in `spec`.
/// `alive` says whether that pid is still the sandbox's living init (not reaped): it is
/// asked after the opening, so the descriptors are the sandbox's.
pub fn join(
    spec: &mut Spec,
    types: &[String],
    sandbox_id: &str,
    sandbox_pid: i32,
    alive: impl Fn() -> bool,
) -> Result<Joined> {
    let wanted = types.iter().map(|t| ns_of(t)).collect::<Result<Vec<_>>>()?;
    let mut held = Vec::new();
    let mut paths = Vec::new();
    for (typ, name) in wanted {
        let path = PathBuf::from(format!("/proc/{sandbox_pid}/ns/{name}"));
        let file = File::open(&path).map_err(|e| {
            Error::FailedPrecondition(format!(
                "sandbox {sandbox_id:?} is not running ({path:?}: {e})"
            ))
        })?;
        paths.push((
            typ,
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                file.as_raw_fd()
            )),
        ));
        held.push(file);
    }
    if !alive() {
        return Err(Error::FailedPrecondition(format!(
            "sandbox {sandbox_id:?} is not running"
        )));
    }
    for (typ, path) in paths {
        set_path(spec, typ, path)?;
    }
    Ok(Joined { _held: held })
}

/// Sets the path of namespace `typ` in the spec, adding the entry when the spec does not
/// list the type. A path the spec already gives is refused: the shim must not send one.
fn set_path(spec: &mut Spec, typ: LinuxNamespaceType, path: PathBuf) -> Result<()> {
    let linux = spec.linux_mut().get_or_insert_with(Linux::default);
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    match namespaces.iter_mut().find(|n| n.typ() == typ) {
        Some(ns) => {
            if let Some(p) = ns.path() {
                return Err(Error::InvalidArgument(format!(
                    "namespace {typ:?} has a path ({p:?}) and is also a pod namespace"
                )));
            }
            ns.set_path(Some(path));
        }
        None => {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            ns.set_path(Some(path));
            namespaces.push(ns);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
                "linux":{{"namespaces":{namespaces}}}}}"#
        ))
        .expect("spec")
    }

    fn path_of(spec: &Spec, typ: LinuxNamespaceType) -> Option<PathBuf> {
        spec.linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == typ)?
            .path()
            .clone()
    }

    #[test]
    fn listed_and_unlisted_types_get_the_sandbox_paths() {
        let mut s = spec(r#"[{"type":"mount"},{"type":"ipc"}]"#);
        let types = vec!["ipc".to_string(), "uts".to_string()];
        let me = std::process::id() as i32;
        let _held = join(&mut s, &types, "sb", me, || true).expect("join");
        let ipc = path_of(&s, LinuxNamespaceType::Ipc).expect("ipc path");
        let uts = path_of(&s, LinuxNamespaceType::Uts).expect("uts path");
        assert!(ipc.starts_with(format!("/proc/{me}/fd/")), "{ipc:?}");
        assert!(uts.starts_with(format!("/proc/{me}/fd/")), "{uts:?}");
        assert_eq!(path_of(&s, LinuxNamespaceType::Mount), None);
    }

    #[test]
    fn bad_types_and_given_paths_and_dead_sandboxes_are_refused() {
        let me = std::process::id() as i32;
        let mut s = spec("[]");
        let err = join(&mut s, &["mount".into()], "sb", me, || true).err();
        assert!(matches!(err, Some(Error::InvalidArgument(_))), "{err:?}");
        let mut s = spec(r#"[{"type":"network","path":"/var/run/netns/x"}]"#);
        let err = join(&mut s, &["network".into()], "sb", me, || true).err();
        assert!(matches!(err, Some(Error::InvalidArgument(_))), "{err:?}");
        let mut s = spec("[]");
        let err = join(&mut s, &["pid".into()], "sb", me, || false).err();
        assert!(matches!(err, Some(Error::FailedPrecondition(_))), "{err:?}");
    }
}
