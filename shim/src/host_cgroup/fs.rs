//! [`CgroupV2`]: a pod's host cgroup on the cgroup v2 filesystem.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::path::{own_cgroup, placement, CgroupsPath};
use super::{CgroupError, CgroupProcs, CgroupRequest, HostCgroups, PodCgroup, CONTROLLERS};

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long removal waits for the cgroup's last processes to be gone.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// How often removal looks again meanwhile.
const REMOVE_POLL: Duration = Duration::from_millis(5);

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |e| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("write", path))
}

/// The cgroup v2 hierarchy at `root`.
#[derive(Debug, Clone)]
pub struct CgroupV2 {
    root: PathBuf,
    /// Whether `root` must be a cgroup2 mount (false only for tests on a tempdir).
    require_cgroup2: bool,
    /// Where the shim's own cgroup is read.
    proc_self_cgroup: PathBuf,
}

impl CgroupV2 {
    /// The hierarchy mounted at `root` (normally [`CGROUP_ROOT`]).
    pub fn new(root: &Path) -> Self {
        CgroupV2 {
            root: root.to_path_buf(),
            require_cgroup2: true,
            proc_self_cgroup: PathBuf::from("/proc/self/cgroup"),
        }
    }

    /// A stand-in hierarchy in a plain directory, with the shim's cgroup read from
    /// `proc_self_cgroup`.
    #[cfg(test)]
    fn fake(root: &Path, proc_self_cgroup: &Path) -> Self {
        CgroupV2 {
            root: root.to_path_buf(),
            require_cgroup2: false,
            proc_self_cgroup: proc_self_cgroup.to_path_buf(),
        }
    }

    fn check_cgroup2(&self) -> Result<(), CgroupError> {
        if !self.require_cgroup2 {
            return Ok(());
        }
        let is_v2 = nix::sys::statfs::statfs(&self.root)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        if is_v2 {
            Ok(())
        } else {
            Err(CgroupError::NotCgroup2(self.root.clone()))
        }
    }

    fn own_cgroup(&self) -> Result<PathBuf, CgroupError> {
        let text = std::fs::read_to_string(&self.proc_self_cgroup)
            .map_err(io("read", &self.proc_self_cgroup))?;
        own_cgroup(&text)
    }

    fn check_controllers(&self) -> Result<(), CgroupError> {
        let file = self.root.join("cgroup.controllers");
        let text = std::fs::read_to_string(&file).map_err(io("read", &file))?;
        let have: Vec<&str> = text.split_whitespace().collect();
        match CONTROLLERS.into_iter().find(|c| !have.contains(c)) {
            Some(controller) => Err(CgroupError::ControllerUnavailable {
                controller,
                root: self.root.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes `rel` (relative to the root) and the missing directories above it, down from
    /// `must_exist`; returns those it made, deepest first.
    fn make_dirs(&self, rel: &Path, must_exist: &Path) -> Result<Vec<PathBuf>, CgroupError> {
        let top = self.root.join(must_exist);
        if !top.is_dir() {
            return Err(CgroupError::ParentMissing(top));
        }
        let mut made = Vec::new();
        let mut dir = self.root.clone();
        for c in rel.components() {
            dir.push(c);
            if !dir.starts_with(&top) || dir == top {
                continue;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => made.insert(0, dir.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove_dirs(&made);
                    return Err(io("create cgroup", &dir)(e));
                }
            }
        }
        Ok(made)
    }

    /// Enables the controllers in every cgroup from the root down to `rel`'s parent.
    fn enable_controllers(&self, rel: &Path) -> Result<(), CgroupError> {
        let mut dir = self.root.clone();
        let names: Vec<Component<'_>> = rel.components().collect();
        for i in 0..names.len() {
            if i > 0 {
                dir.push(names[i - 1]);
            }
            let file = dir.join("cgroup.subtree_control");
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
                Err(e) => return Err(io("read", &file)(e)),
            };
            let on: Vec<&str> = text
                .split_whitespace()
                .map(|w| w.trim_start_matches('+'))
                .collect();
            for c in CONTROLLERS.into_iter().filter(|c| !on.contains(c)) {
                // EBUSY here: the cgroup holds processes, and cgroup v2 lets such a
                // cgroup (other than the root) enable no controller for its children.
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)
                    .and_then(|mut f| {
                        std::io::Write::write_all(&mut f, format!("+{c} ").as_bytes())
                    })
                    .map_err(io("enable controllers in", &file))?;
            }
        }
        Ok(())
    }
}

/// Removes `dirs` in order, ignoring those that are busy or gone (another pod's parents).
fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        if let Err(e) = std::fs::remove_dir(d) {
            tracing::debug!("rmdir {}: {e}", d.display());
        }
    }
}

/// Whether the cgroup at `dir` holds processes (`populated 1` in `cgroup.events`).
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// Removes the cgroup at `dir`, waiting up to [`REMOVE_WAIT`] for its processes to be
/// gone (their exit is seen by the kernel a moment after they are reaped).
fn remove_cgroup(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        if !populated(dir) {
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(io("remove", dir)(e)),
                Err(_) => {}
            }
        } else if Instant::now() >= deadline {
            return Err(CgroupError::StillPopulated(dir.to_path_buf()));
        }
        std::thread::sleep(REMOVE_POLL);
    }
}

/// A pod's cgroup made by [`CgroupV2`].
#[derive(Debug)]
struct HostCgroup {
    procs: CgroupProcs,
    /// Parents made for it, deepest first.
    made_parents: Vec<PathBuf>,
}

impl PodCgroup for HostCgroup {
    fn procs(&self) -> Option<&CgroupProcs> {
        Some(&self.procs)
    }

    fn record(&self) -> String {
        let mut lines = vec![self.procs.dir.display().to_string()];
        lines.extend(self.made_parents.iter().map(|p| p.display().to_string()));
        lines.join("\n") + "\n"
    }

    fn remove(&self) -> Result<(), CgroupError> {
        remove_cgroup(&self.procs.dir)?;
        remove_dirs(&self.made_parents);
        Ok(())
    }
}

impl HostCgroups for CgroupV2 {
    fn create(&self, req: &CgroupRequest<'_>) -> Result<Box<dyn PodCgroup>, CgroupError> {
        self.check_cgroup2()?;
        let needs_own = match req.path {
            None => true,
            Some(CgroupsPath::Cgroupfs(p)) => !p.is_absolute(),
            Some(CgroupsPath::Systemd { .. }) => false,
        };
        let own = if needs_own {
            self.own_cgroup()?
        } else {
            PathBuf::from("/")
        };
        let place = placement(req.path, &own, req.namespace, req.pod_id)?;
        self.check_controllers()?;
        let mut made = self.make_dirs(&place.dir, &place.must_exist)?;
        let leaf = self.root.join(&place.dir);
        let leaf_made = made.first() == Some(&leaf);
        let result = (|| {
            if !leaf_made && populated(&leaf) {
                return Err(CgroupError::InUse(leaf.clone()));
            }
            self.enable_controllers(&place.dir)?;
            for (name, value) in req.limits.files() {
                write(&leaf.join(name), &value)?;
            }
            let procs = leaf.join("cgroup.procs");
            OpenOptions::new()
                .create(!self.require_cgroup2)
                .append(true)
                .open(&procs)
                .map_err(io("open", &procs))
        })();
        match result {
            Ok(file) => {
                if leaf_made {
                    made.remove(0);
                }
                Ok(Box::new(HostCgroup {
                    procs: CgroupProcs {
                        dir: leaf,
                        file: Arc::new(file),
                    },
                    made_parents: made,
                }))
            }
            Err(e) => {
                if self.require_cgroup2 {
                    remove_dirs(&made);
                } else {
                    // A plain directory keeps the files written into it.
                    for d in &made {
                        let _ = std::fs::remove_dir_all(d);
                    }
                }
                Err(e)
            }
        }
    }
}

/// Removes a cgroup recorded by [`PodCgroup::record`] after a crash (`shim delete`): kills
/// whatever still runs in it (`cgroup.kill`: exactly the pod's helpers, whatever their pids
/// became), then removes it and the parents made for it. Paths outside `root` or with `..`
/// are ignored.
pub fn remove_recorded(record: &str, root: &Path) -> Result<(), CgroupError> {
    let safe = |p: &Path| {
        p.starts_with(root)
            && p != root
            && p.components().all(|c| !matches!(c, Component::ParentDir))
    };
    let mut lines = record.lines().map(Path::new).filter(|p| safe(p));
    let Some(leaf) = lines.next() else {
        return Ok(());
    };
    let kill = leaf.join("cgroup.kill");
    if kill.exists() {
        write(&kill, "1")?;
    }
    remove_cgroup(leaf)?;
    let parents: Vec<PathBuf> = lines.map(Path::to_path_buf).collect();
    remove_dirs(&parents);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Limits};
    use super::*;

    const LIMITS: Limits = Limits {
        memory_bytes: 512 << 20,
        cpu_quota_us: 150_000,
        pids: 1024,
    };

    /// A directory standing in for /sys/fs/cgroup, the shim in `own`.
    fn fake_root(own: &str) -> (tempfile::TempDir, CgroupV2) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("cg");
        std::fs::create_dir(&root).expect("root");
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("controllers");
        let proc_cgroup = dir.path().join("proc-self-cgroup");
        std::fs::write(&proc_cgroup, format!("0::{own}\n")).expect("proc");
        let cg = CgroupV2::fake(&root, &proc_cgroup);
        (dir, cg)
    }

    fn req<'a>(path: Option<&'a CgroupsPath>) -> CgroupRequest<'a> {
        CgroupRequest {
            path,
            namespace: "k8s.io",
            pod_id: "abc",
            limits: LIMITS,
        }
    }

    #[test]
    fn a_cgroupfs_path_is_made_with_parents_limits_and_controllers() {
        let (dir, cg) = fake_root("/");
        let root = dir.path().join("cg");
        let path = parse("/kubepods/besteffort/pod123/abc").expect("parse");
        let pod = cg.create(&req(path.as_ref())).expect("create");
        let leaf = root.join("kubepods/besteffort/pod123/abc");
        assert_eq!(pod.procs().map(|p| p.dir.clone()), Some(leaf.clone()));
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(leaf.join("memory.max")), (512u64 << 20).to_string());
        assert_eq!(read(leaf.join("cpu.max")), "150000 100000");
        assert_eq!(read(leaf.join("pids.max")), "1024");
        for d in [
            "",
            "kubepods",
            "kubepods/besteffort",
            "kubepods/besteffort/pod123",
        ] {
            let on = read(root.join(d).join("cgroup.subtree_control"));
            assert_eq!(on.trim(), "+memory +cpu +pids", "{d}");
        }
        assert!(
            !leaf.join("cgroup.subtree_control").exists(),
            "not in the leaf"
        );
        assert_eq!(
            pod.record().lines().collect::<Vec<_>>(),
            [
                leaf.display().to_string(),
                root.join("kubepods/besteffort/pod123")
                    .display()
                    .to_string(),
                root.join("kubepods/besteffort").display().to_string(),
                root.join("kubepods").display().to_string(),
            ]
        );
    }

    #[test]
    fn a_missing_slice_or_controller_is_an_error_and_leaves_nothing() {
        let (dir, cg) = fake_root("/system.slice/containerd.service");
        let root = dir.path().join("cg");
        let path = parse("kubepods-besteffort-pod1.slice:cri-containerd:abc").expect("parse");
        let err = cg.create(&req(path.as_ref())).err().expect("no slice");
        assert!(
            matches!(&err, CgroupError::ParentMissing(p)
                if p.ends_with("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice")),
            "{err}"
        );
        std::fs::write(root.join("cgroup.controllers"), "cpu pids\n").expect("controllers");
        let err = cg.create(&req(None)).err().expect("no memory controller");
        assert!(
            matches!(
                err,
                CgroupError::ControllerUnavailable {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(&root)
            .expect("root")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["cgroup.controllers"], "nothing made");
    }

    #[test]
    fn without_a_path_the_cgroup_is_a_sibling_of_the_shims() {
        let (dir, cg) = fake_root("/system.slice/containerd.service");
        let root = dir.path().join("cg");
        std::fs::create_dir_all(root.join("system.slice/containerd.service")).expect("own");
        let pod = cg.create(&req(None)).expect("create");
        let leaf = root.join("system.slice/husk-k8s.io-abc");
        assert_eq!(pod.procs().map(|p| p.dir.clone()), Some(leaf.clone()));
        assert_eq!(pod.record(), format!("{}\n", leaf.display()));
    }
}

#[cfg(test)]
mod root_tests {
    use super::super::Limits;
    use super::*;
    use crate::testing::need_root;
    use std::process::Command;
    use std::time::Duration;

    /// The cgroup v2 mount: /sys/fs/cgroup on a cgroup v2 host, /sys/fs/cgroup/unified on a
    /// hybrid one (where it has few controllers).
    fn cgroup2_mount() -> PathBuf {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        text.lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let point = left.split_whitespace().nth(4)?;
                (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(point))
            })
            .expect("a cgroup2 mount")
    }

    fn has_controllers(root: &Path) -> bool {
        let text = std::fs::read_to_string(root.join("cgroup.controllers")).expect("read");
        CONTROLLERS
            .iter()
            .all(|c| text.split_whitespace().any(|w| w == *c))
    }

    /// Spawns `sleep` into the cgroup with the shim's mechanism, checks the kernel has it
    /// there, stops it and removes the cgroup.
    fn spawn_into_and_remove(pod: &dyn PodCgroup, root: &Path) {
        let procs = pod.procs().expect("procs");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = crate::child::spawn_tied_in(cmd, Some(procs)).expect("spawn");
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).expect("cgroup");
        let rel = procs.dir.strip_prefix(root).expect("below root");
        let want = format!("0::/{}", rel.display());
        let moved = own.lines().any(|l| l == want);
        assert!(populated(&procs.dir), "cgroup.events says populated");
        crate::child::stop(&mut child, Duration::from_secs(5));
        assert!(moved, "{own:?} has no line {want:?}");
        pod.remove().expect("remove");
        assert!(!procs.dir.exists(), "the cgroup is removed");
    }

    #[test]
    fn a_child_is_spawned_into_the_pod_cgroup_with_its_limits() {
        need_root("makes cgroups");
        let root = cgroup2_mount();
        let cg = CgroupV2::new(&root);
        let top = format!("husk-shim-test-{}", std::process::id());
        let path = CgroupsPath::Cgroupfs(PathBuf::from(format!("/{top}/pod1/sandbox")));
        let req = CgroupRequest {
            path: Some(&path),
            namespace: "default",
            pod_id: "sandbox",
            limits: Limits {
                memory_bytes: 300 << 20,
                cpu_quota_us: 150_000,
                pids: 64,
            },
        };
        if !has_controllers(&root) {
            // A hybrid host: the v2 hierarchy lacks memory, cpu or pids. The product
            // refuses with a clear error and makes nothing ...
            let err = cg.create(&req).err().expect("controllers missing");
            assert!(
                matches!(err, CgroupError::ControllerUnavailable { .. }),
                "{err}"
            );
            assert!(!root.join(&top).exists(), "nothing made");
            // ... and the spawn mechanism is checked on a limit-less cgroup.
            let made = cg
                .make_dirs(Path::new(&format!("{top}/pod1/sandbox")), Path::new(""))
                .expect("mkdir");
            let leaf = made[0].clone();
            let pod = HostCgroup {
                procs: CgroupProcs {
                    file: Arc::new(
                        OpenOptions::new()
                            .append(true)
                            .open(leaf.join("cgroup.procs"))
                            .expect("open"),
                    ),
                    dir: leaf,
                },
                made_parents: made[1..].to_vec(),
            };
            spawn_into_and_remove(&pod, &root);
            assert!(!root.join(&top).exists(), "the parents made are removed");
            return;
        }
        let pod = cg.create(&req).expect("create");
        let leaf = root.join(&top).join("pod1/sandbox");
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).expect(f);
        assert_eq!(read("memory.max").trim(), (300u64 << 20).to_string());
        assert_eq!(read("cpu.max").trim(), "150000 100000");
        assert_eq!(read("pids.max").trim(), "64");
        spawn_into_and_remove(pod.as_ref(), &root);
        assert!(!root.join(&top).exists(), "the parents made are removed");
    }

    #[test]
    fn a_cgroup_with_a_live_process_is_killed_by_crash_cleanup() {
        need_root("makes cgroups");
        let root = cgroup2_mount();
        let cg = CgroupV2::new(&root);
        let top = format!("husk-shim-crash-{}", std::process::id());
        let made = cg
            .make_dirs(Path::new(&format!("{top}/leaf")), Path::new(""))
            .expect("mkdir");
        let procs = CgroupProcs {
            file: Arc::new(
                OpenOptions::new()
                    .append(true)
                    .open(made[0].join("cgroup.procs"))
                    .expect("open"),
            ),
            dir: made[0].clone(),
        };
        let record = HostCgroup {
            procs: procs.clone(),
            made_parents: made[1..].to_vec(),
        }
        .record();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = crate::child::spawn_tied_in(cmd, Some(&procs)).expect("spawn");
        // A reaper, as the shim that died would have been.
        let reaper = std::thread::spawn(move || child.wait());
        remove_recorded(&record, &root).expect("remove");
        assert!(reaper.join().expect("join").is_ok());
        assert!(!root.join(&top).exists(), "cgroup and parents removed");
    }
}
