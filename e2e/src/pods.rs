//! Finding a husk pod's host side: its directory and its helper processes.

use std::path::{Path, PathBuf};

use crate::containerd::{Containerd, HUSK_STATE_DIR};

/// The pod directory of container `id` (a `ctr run` container is its own pod).
pub fn pod_dir(d: &Containerd, id: &str) -> PathBuf {
    Path::new(HUSK_STATE_DIR).join(&d.opts.namespace).join(id)
}

/// Host processes whose argv\[0\] ends with `binary` and one of whose arguments mentions
/// `dir` (a pod's husk-vmm and virtiofsd name files of the pod directory).
pub fn processes_of(binary: &str, dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is = args.first().is_some_and(|a| a.ends_with(binary));
        if is && args.iter().skip(1).any(|a| a.contains(&dir)) {
            out.push(pid);
        }
    }
    out
}
