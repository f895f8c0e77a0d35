//! What husk may leave behind on the host: helper processes, mounts, pod
//! directories and shim sockets. Tests assert all of it is gone.

use std::path::Path;

/// Command names of husk's host processes.
const HELPERS: &[&str] = &["husk-vmm", "virtiofsd", "containerd-shim"];

/// Everything of husk found on the host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// `pid comm` of helper processes.
    pub processes: Vec<String>,
    /// Mount points under the state directory.
    pub mounts: Vec<String>,
    /// Pod directories of the namespace.
    pub dirs: Vec<String>,
    /// containerd shim sockets.
    pub sockets: Vec<String>,
}

impl Leftovers {
    /// Looks for leftovers of namespace `namespace` under `state_dir`.
    pub fn scan(state_dir: &str, namespace: &str) -> Self {
        let mut processes = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if HELPERS.iter().any(|h| comm.starts_with(h)) {
                processes.push(format!("{} {comm}", entry.file_name().to_string_lossy()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(state_dir))
            .map(str::to_string)
            .collect();
        let list = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        };
        Self {
            processes,
            mounts,
            dirs: list(&Path::new(state_dir).join(namespace)),
            sockets: list(Path::new("/run/containerd/s")),
        }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
