//! Host mounts the shim makes: the container rootfs inside the pod share, host binds for
//! the guest, and their removal.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::convert::RootfsMount;

/// Errors mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The container has no root filesystem.
    #[error("rootfs {0} does not exist or is not a directory")]
    MissingRootfs(PathBuf),
    /// containerd gave more than one rootfs mount.
    #[error("{0} rootfs mounts given; husk supports one")]
    TooManyMounts(usize),
    /// A bind source is not an absolute path.
    #[error("bind source {0:?} is not an absolute path")]
    RelativeSource(PathBuf),
    /// A mount call failed.
    #[error("mount {what} on {target}: {message}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        message: String,
    },
    /// The pod's volume of this name is a bind of another file: names are hashes, so this
    /// is a collision (or someone else's mount); the volume is not reused.
    #[error("pod volume {target} is already a mount of something other than {wanted}")]
    VolumeClash {
        /// The pod volume.
        target: PathBuf,
        /// The bind source asked for.
        wanted: PathBuf,
    },
    /// Creating a mount point failed.
    #[error("create {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Mounts the container's root filesystem at `target`: containerd's snapshot mount when
/// given, else a bind of the spec's root directory `root` (already mounted by containerd,
/// or a directory given with `ctr run --rootfs`).
pub fn mount_rootfs(rootfs: &[RootfsMount], root: &Path, target: &Path) -> Result<(), MountError> {
    if rootfs.is_empty() && !root.is_dir() {
        return Err(MountError::MissingRootfs(root.to_path_buf()));
    }
    std::fs::create_dir_all(target).map_err(io_err(target))?;
    match rootfs {
        [] => bind(root, target),
        [m] => mount_snapshot(m, target),
        many => Err(MountError::TooManyMounts(many.len())),
    }
}

/// Mount options that are flags (`(set, clear)`); the others go to the filesystem as data.
fn option_flag(opt: &str) -> Option<(MsFlags, MsFlags)> {
    let set = |f| Some((f, MsFlags::empty()));
    let clear = |f| Some((MsFlags::empty(), f));
    match opt {
        "ro" => set(MsFlags::MS_RDONLY),
        "rw" => clear(MsFlags::MS_RDONLY),
        "bind" => set(MsFlags::MS_BIND),
        "rbind" => set(MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => set(MsFlags::MS_NOSUID),
        "suid" => clear(MsFlags::MS_NOSUID),
        "nodev" => set(MsFlags::MS_NODEV),
        "dev" => clear(MsFlags::MS_NODEV),
        "noexec" => set(MsFlags::MS_NOEXEC),
        "exec" => clear(MsFlags::MS_NOEXEC),
        "sync" => set(MsFlags::MS_SYNCHRONOUS),
        "async" => clear(MsFlags::MS_SYNCHRONOUS),
        "noatime" => set(MsFlags::MS_NOATIME),
        "atime" => clear(MsFlags::MS_NOATIME),
        "nodiratime" => set(MsFlags::MS_NODIRATIME),
        "relatime" => set(MsFlags::MS_RELATIME),
        "strictatime" => set(MsFlags::MS_STRICTATIME),
        "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
        | "runbindable" => Some((MsFlags::empty(), MsFlags::empty())),
        _ => None,
    }
}

/// Splits OCI/containerd mount options into mount flags and filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match option_flag(o) {
            Some((set, clear)) => {
                flags.remove(clear);
                flags.insert(set);
            }
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts one snapshot mount (`overlay`, `bind`, ...) at `target`, in this process:
/// no helper process, so no child to reap.
fn mount_snapshot(m: &RootfsMount, target: &Path) -> Result<(), MountError> {
    let (flags, data) = parse_options(&m.options);
    let err = |e: nix::Error| MountError::Mount {
        what: format!("{} {}", m.typ, m.source),
        target: target.to_path_buf(),
        message: e.to_string(),
    };
    let is_bind = flags.contains(MsFlags::MS_BIND) || m.typ == "bind";
    let fstype = (!is_bind).then_some(m.typ.as_str());
    let data = (!data.is_empty() && !is_bind).then_some(data.as_str());
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags
            | if is_bind {
                MsFlags::MS_BIND
            } else {
                MsFlags::empty()
            },
        data,
    )
    .map_err(err)?;
    if is_bind && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount ignores MS_RDONLY until remounted.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Creates the mount point `target` for `source`: a directory for a directory, else an
/// empty file.
pub fn create_mount_point(source: &Path, target: &Path) -> Result<(), MountError> {
    if source.is_dir() {
        std::fs::create_dir_all(target).map_err(io_err(target))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::File::create(target).map_err(io_err(target))?;
    }
    Ok(())
}

/// Bind-mounts `source` (file or directory) on `target` recursively, creating the mount
/// point: the rootfs given as a directory. Volumes go through
/// [`crate::volume::bind_volume`], which keeps their options.
pub fn bind(source: &Path, target: &Path) -> Result<(), MountError> {
    create_mount_point(source, target)?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| MountError::Mount {
        what: format!("bind {}", source.display()),
        target: target.to_path_buf(),
        message: e.to_string(),
    })
}

/// Decodes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `prefix` listed in mountinfo `text`, deepest first.
pub fn mount_points_under(text: &str, prefix: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .filter(|p| p.starts_with(prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Unmounts everything at or below `dir` (lazily, so a busy mount cannot block cleanup).
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for p in mount_points_under(&text, dir) {
        // Stacked mounts on one point need one unmount each.
        while umount2(&p, MntFlags::MNT_DETACH).is_ok() {}
    }
}

pub use crate::cleanup::{remove_tree, remove_tree_or_warn, RemoveError};

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw - tmpfs tmpfs rw
40 22 0:40 / /run/husk/default/p1/shared/c1/rootfs rw - overlay overlay rw
41 40 0:41 / /run/husk/default/p1/shared/c1/rootfs/proc rw - proc proc rw
42 22 0:42 / /run/husk/default/p10/shared rw - tmpfs tmpfs rw
43 22 0:43 / /run/husk/default/p1/shared/c2/mounts/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mount_points_below_a_prefix_deepest_first() {
        let p = mount_points_under(MOUNTINFO, Path::new("/run/husk/default/p1"));
        assert_eq!(
            p,
            vec![
                PathBuf::from("/run/husk/default/p1/shared/c1/rootfs/proc"),
                PathBuf::from("/run/husk/default/p1/shared/c2/mounts/with space"),
                PathBuf::from("/run/husk/default/p1/shared/c1/rootfs"),
            ]
        );
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = [
            "rbind",
            "ro",
            "nosuid",
            "lowerdir=/a:/b",
            "upperdir=/u",
            "rw",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID));
        assert!(!flags.contains(MsFlags::MS_RDONLY), "a later rw clears ro");
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u");
    }

    #[test]
    fn missing_rootfs_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t");
        let err = mount_rootfs(&[], &dir.path().join("rootfs"), &target).expect_err("missing");
        assert!(
            matches!(err, MountError::MissingRootfs(ref p) if p == &dir.path().join("rootfs")),
            "{err}"
        );
        assert!(!target.exists(), "nothing is created for a missing rootfs");
        assert!(err.to_string().contains("rootfs"), "{err}");
        let two = RootfsMount {
            typ: "bind".into(),
            source: "/x".into(),
            options: vec![],
        };
        assert!(matches!(
            mount_rootfs(&[two.clone(), two], dir.path(), &dir.path().join("t")),
            Err(MountError::TooManyMounts(2))
        ));
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;

    #[test]
    fn snapshot_bind_mount_is_made_and_removed_in_process() {
        crate::testing::need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("snap");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(src.join("marker"), "x").expect("marker");
        let pod = dir.path().join("pod");
        let target = pod.join("shared/c1/rootfs");
        let m = RootfsMount {
            typ: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        };
        mount_rootfs(&[m], Path::new("/nonexistent"), &target).expect("mount");
        assert!(target.join("marker").exists());
        let err = std::fs::write(target.join("new"), "y").expect_err("read-only bind");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::EROFS as i32),
            "{err}"
        );
        remove_tree(&pod).expect("remove");
        assert!(!pod.exists());
        assert!(src.join("marker").exists(), "the source is untouched");
    }
}
