//! Removing a pod or container directory without ever deleting through a mount.
//!
//! A pod directory holds mounts (the container rootfs, host binds of volumes). If one of
//! them survived the unmount, a plain recursive delete would walk into it and delete the
//! files of the volume or of the image snapshot. So [`remove_tree`]:
//! 1. resolves the real path (a `state_dir` under a symlink such as `/var/run` → `/run`:
//!    mountinfo lists real paths only, so matching the unresolved one would miss mounts);
//! 2. unmounts everything below it, deepest first ([`crate::mounts::unmount_under`]);
//! 3. reads mountinfo again: anything still mounted below means the files stay;
//! 4. removes the files without crossing into another filesystem (`st_dev` of each entry
//!    against the top directory's) and without following symlinks.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::mounts::{mount_points_under, unmount_under};

/// Why a directory was not (fully) removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The directory's real path cannot be resolved.
    #[error("resolve {path}: {source}")]
    Resolve {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// /proc/self/mountinfo cannot be read, so the shim cannot tell what is mounted.
    #[error("read mountinfo to check {dir}: {source}")]
    Mountinfo {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something is still mounted below the directory; no file was removed.
    #[error("{mount_point} is still mounted below {dir}; its files are left in place")]
    StillMounted {
        /// The directory.
        dir: PathBuf,
        /// The first (deepest) mount point that stayed.
        mount_point: PathBuf,
    },
    /// An entry below the directory is on another filesystem; it and its parents stay.
    #[error("{path} is on another filesystem than {dir}; it is left in place")]
    OtherFilesystem {
        /// The directory.
        dir: PathBuf,
        /// The entry on another filesystem.
        path: PathBuf,
    },
    /// Removing a file or directory failed.
    #[error("remove {path}: {source}")]
    Io {
        /// The entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Unmounts everything below `dir` and removes it, never deleting through a mount. A
/// missing `dir` is already removed.
pub fn remove_tree(dir: &Path) -> Result<(), RemoveError> {
    remove_tree_with(dir, unmount_under)
}

/// [`remove_tree`] for callers that cannot do more than report: logs the error (with the
/// mount point that stayed, if that is why) as a warning.
pub fn remove_tree_or_warn(dir: &Path) {
    if let Err(e) = remove_tree(dir) {
        tracing::warn!("cleanup of {}: {e}", dir.display());
    }
}

/// [`remove_tree`] with the unmount step given, so tests can skip it.
fn remove_tree_with(dir: &Path, unmount: impl FnOnce(&Path)) -> Result<(), RemoveError> {
    let real = match std::fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RemoveError::Resolve {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    unmount(&real);
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
        RemoveError::Mountinfo {
            dir: real.clone(),
            source,
        }
    })?;
    if let Some(mount_point) = mount_points_under(&text, &real).into_iter().next() {
        return Err(RemoveError::StillMounted {
            dir: real,
            mount_point,
        });
    }
    remove_same_filesystem(&real)
}

/// Removes `top` and everything below it that is on `top`'s filesystem; symlinks are
/// removed, never followed. Entries on another filesystem (and so their parents) stay.
fn remove_same_filesystem(top: &Path) -> Result<(), RemoveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError::Io { path, source }
    };
    let meta = std::fs::symlink_metadata(top).map_err(io(top))?;
    if !meta.is_dir() {
        return std::fs::remove_file(top).map_err(io(top));
    }
    let mut crossed = None;
    remove_below(top, meta.dev(), &mut crossed)?;
    match crossed {
        Some(path) => Err(RemoveError::OtherFilesystem {
            dir: top.to_path_buf(),
            path,
        }),
        None => std::fs::remove_dir(top).map_err(io(top)),
    }
}

/// Removes the contents of directory `dir` that are on device `dev`; records in `crossed`
/// the first entry on another device (left in place, with the directories holding it).
/// Returns whether `dir` is now empty.
fn remove_below(dir: &Path, dev: u64, crossed: &mut Option<PathBuf>) -> Result<bool, RemoveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError::Io { path, source }
    };
    let mut empty = true;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        // `symlink_metadata`: the entry itself, a symlink is not followed.
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.dev() != dev {
            crossed.get_or_insert(path);
            empty = false;
        } else if meta.is_dir() {
            if remove_below(&path, dev, crossed)? {
                std::fs::remove_dir(&path).map_err(io(&path))?;
            } else {
                empty = false;
            }
        } else {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(empty)
}

#[cfg(test)]
mod root_tests {
    use super::*;
    use crate::testing::need_root;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};

    fn tmpfs(target: &Path) {
        std::fs::create_dir_all(target).expect("mount point");
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
    }

    fn mounted_under(dir: &Path) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        mount_points_under(&text, &std::fs::canonicalize(dir).expect("real path"))
    }

    #[test]
    fn state_dir_through_a_symlink_is_unmounted_then_removed() {
        need_root("mounts tmpfs");
        let base = tempfile::tempdir().expect("tempdir");
        let real = base.path().join("run");
        std::fs::create_dir_all(&real).expect("real dir");
        let link = base.path().join("var-run");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let pod = link.join("husk/default/p1");
        let mnt = pod.join("shared/c1/rootfs");
        tmpfs(&mnt);
        std::fs::write(mnt.join("file"), "x").expect("file in tmpfs");
        assert_eq!(mounted_under(&pod).len(), 1, "the tmpfs is mounted");

        remove_tree(&pod).expect("remove");

        assert!(mounted_under(&real).is_empty(), "the mount is gone");
        assert!(
            !real.join("husk/default/p1").exists(),
            "the pod dir is removed"
        );
        assert!(link.exists(), "the symlink above is kept");
    }

    #[test]
    fn a_mount_that_stays_keeps_every_file() {
        need_root("mounts tmpfs");
        let base = tempfile::tempdir().expect("tempdir");
        let pod = base.path().join("pod");
        let mnt = pod.join("shared/c1/mounts/0");
        tmpfs(&mnt);
        std::fs::write(mnt.join("volume-data"), "x").expect("file in tmpfs");
        std::fs::write(pod.join("vmm.json"), "{}").expect("own file");

        let err = remove_tree_with(&pod, |_| {}).expect_err("still mounted");
        let still = matches!(&err, RemoveError::StillMounted { mount_point, .. }
            if mount_point.ends_with("shared/c1/mounts/0"));
        umount2(&mnt, MntFlags::MNT_DETACH).ok();
        assert!(still, "{err}");
        assert!(pod.join("vmm.json").exists(), "nothing is removed");
    }

    #[test]
    fn the_walker_never_crosses_into_another_filesystem() {
        need_root("mounts tmpfs");
        let base = tempfile::tempdir().expect("tempdir");
        let pod = base.path().join("pod");
        let mnt = pod.join("shared/c1/mounts/0");
        tmpfs(&mnt);
        std::fs::write(mnt.join("volume-data"), "x").expect("file in tmpfs");
        std::fs::write(pod.join("vmm.json"), "{}").expect("own file");
        std::os::unix::fs::symlink(base.path(), pod.join("up")).expect("symlink");
        std::fs::write(base.path().join("outside"), "x").expect("outside file");

        let result = remove_same_filesystem(&pod);
        let data_kept = mnt.join("volume-data").exists();
        umount2(&mnt, MntFlags::MNT_DETACH).ok();
        let err = result.expect_err("another filesystem below");
        assert!(
            matches!(&err, RemoveError::OtherFilesystem { path, .. } if path.ends_with("mounts/0")),
            "{err}"
        );
        assert!(data_kept, "files on the other filesystem are not deleted");
        assert!(!pod.join("vmm.json").exists(), "own files are removed");
        assert!(!pod.join("up").exists(), "the symlink itself is removed");
        assert!(base.path().join("outside").exists(), "its target is not");
    }
}
