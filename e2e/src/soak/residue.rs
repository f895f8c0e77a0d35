//! What a soak cycle may leave behind: [`Leftovers`] (helper processes, mounts, pod
//! directories, shim sockets) and host cgroups.
//!
//! Two scopes. With one worker nothing else of husk runs between cycles, so the whole
//! host is checked after every cycle ([`Residue::global`]). With several, other workers'
//! pods are alive at that moment, so a cycle checks only what carries its own id
//! ([`Residue::of_pod`]), and the whole host is checked once all workers have stopped;
//! the number of live shims and shim sockets, bounded by the number of workers, catches
//! what carries no id in between.

use std::path::{Path, PathBuf};

use crate::containerd::HUSK_STATE_DIR;
use crate::leftovers::Leftovers;

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How deep below [`CGROUP_ROOT`] cgroups are looked for (kubepods nest four deep).
const CGROUP_DEPTH: usize = 8;
/// Command names of husk's host processes (as [`Leftovers`] knows them; `containerd-shim`
/// is the 15-byte `comm` of `containerd-shim-husk-v2`).
const HELPERS: &[&str] = &["husk-vmm", "virtiofsd", "containerd-shim"];
/// Where containerd's shims put their sockets (fixed by containerd, whatever its state dir).
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// Everything of husk found on the host (or of one pod).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Residue {
    /// Processes, mounts, pod directories and shim sockets.
    pub leftovers: Leftovers,
    /// Host cgroups, relative to [`CGROUP_ROOT`].
    pub cgroups: Vec<String>,
}

impl Residue {
    /// Everything of husk on the host: [`Leftovers::scan`] of `namespace`, and cgroups
    /// named `husk-*` (a pod without `cgroupsPath`) or `<namespace>/<prefix>*` (`ctr`'s
    /// default `/<namespace>/<id>` of a soak container whose id starts with `prefix`).
    pub fn global(namespace: &str, prefix: &str) -> Self {
        let cgroups = cgroup_dirs(Path::new(CGROUP_ROOT), CGROUP_DEPTH)
            .into_iter()
            .filter(|rel| is_husk_cgroup(rel, namespace, prefix))
            .collect();
        Self {
            leftovers: Leftovers::scan(HUSK_STATE_DIR, namespace),
            cgroups,
        }
    }

    /// What carries pod `id` of `namespace`: helper processes naming it in their
    /// arguments, mounts and the pod directory under the state dir, and its cgroups
    /// (`husk-<namespace>-<id>` anywhere, `<namespace>/<id>`). Shim sockets carry no id.
    pub fn of_pod(namespace: &str, id: &str) -> Self {
        let pod_dir = Path::new(HUSK_STATE_DIR).join(namespace).join(id);
        let pod_path = pod_dir.to_string_lossy().into_owned();
        let processes = crate::soak::procs::processes()
            .into_iter()
            .filter(|(pid, args)| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                HELPERS.iter().any(|h| comm.trim().starts_with(h))
                    && args.iter().any(|a| a.contains(id))
            })
            .map(|(pid, args)| format!("{pid} {}", args.join(" ")))
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&pod_path))
            .map(str::to_string)
            .collect();
        let dirs = if pod_dir.exists() {
            vec![pod_path]
        } else {
            Vec::new()
        };
        let cgroups = cgroup_dirs(Path::new(CGROUP_ROOT), CGROUP_DEPTH)
            .into_iter()
            .filter(|rel| is_pod_cgroup(rel, namespace, id))
            .collect();
        Self {
            leftovers: Leftovers {
                processes,
                mounts,
                dirs,
                sockets: Vec::new(),
            },
            cgroups,
        }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether cgroup `rel` (relative to the root) is one husk or `ctr` made for a soak pod.
pub fn is_husk_cgroup(rel: &str, namespace: &str, prefix: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with("husk-")
        || rel
            .strip_prefix(namespace)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|leaf| leaf.starts_with(prefix) && !leaf.contains('/'))
}

/// Whether cgroup `rel` (relative to the root) is pod `id`'s.
pub fn is_pod_cgroup(rel: &str, namespace: &str, id: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name == format!("husk-{namespace}-{id}") || rel == format!("{namespace}/{id}")
}

/// The directories below `root`, at most `depth` deep, relative to it.
pub fn cgroup_dirs(root: &Path, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    while let Some((dir, level)) = todo.pop() {
        if level == depth {
            continue;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
                todo.push((path, level + 1));
            }
        }
    }
    out.sort();
    out
}

/// The number of shim sockets now.
pub fn shim_sockets() -> usize {
    std::fs::read_dir(SHIM_SOCKET_DIR)
        .into_iter()
        .flatten()
        .count()
}

/// Whether cgroup v2 is mounted at [`CGROUP_ROOT`]: without it no cgroup check can see
/// anything, and the soak refuses to pass unseen.
pub fn cgroup2_mounted() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn husk_and_ctr_default_cgroups_are_recognised() {
        assert!(is_husk_cgroup("husk-k8s.io-abc", "k8s.io", "soak-"));
        assert!(is_husk_cgroup(
            "system.slice/husk-k8s.io-abc",
            "k8s.io",
            "soak-"
        ));
        assert!(is_husk_cgroup(
            "husk-soak/soak-00-000001",
            "husk-soak",
            "soak-"
        ));
        assert!(!is_husk_cgroup(
            "husk-soakx/soak-00-000001",
            "husk-soak",
            "soak-"
        ));
        assert!(
            !is_husk_cgroup("k8s.io", "k8s.io", "soak-"),
            "the parent alone"
        );
        assert!(!is_husk_cgroup("k8s.io/other", "k8s.io", "soak-"));
        assert!(!is_husk_cgroup("init.scope", "k8s.io", "soak-"));
    }

    #[test]
    fn a_pods_cgroups_are_known_by_its_id() {
        assert!(is_pod_cgroup("husk-k8s.io-abc", "k8s.io", "abc"));
        assert!(is_pod_cgroup("a/b/husk-k8s.io-abc", "k8s.io", "abc"));
        assert!(is_pod_cgroup("k8s.io/abc", "k8s.io", "abc"));
        assert!(!is_pod_cgroup("husk-k8s.io-abcd", "k8s.io", "abc"));
        assert!(!is_pod_cgroup("k8s.io/abcd", "k8s.io", "abc"));
    }

    #[test]
    fn cgroup_dirs_walks_directories_to_a_depth() {
        let root = tempfile::tempdir().expect("tempdir");
        for d in ["a/b/c", "husk-x", "k8s.io/soak-1"] {
            std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        std::fs::write(root.path().join("a/cgroup.procs"), "").expect("file");
        assert_eq!(
            cgroup_dirs(root.path(), 8),
            ["a", "a/b", "a/b/c", "husk-x", "k8s.io", "k8s.io/soak-1"]
        );
        assert_eq!(cgroup_dirs(root.path(), 1), ["a", "husk-x", "k8s.io"]);
    }

    #[test]
    fn nothing_is_empty() {
        assert!(Residue::default().is_empty());
        let r = Residue {
            cgroups: vec!["husk-x".into()],
            ..Default::default()
        };
        assert!(!r.is_empty());
    }
}
