//! The pod share as a mount of its own with shared propagation.
//!
//! virtiofsd runs in its own mount namespace (`--sandbox=namespace`), a copy of the host's
//! taken when it starts, which it makes a slave of the host's. Container rootfs and volumes
//! are mounted below the share *after* that, when later containers of the pod are created;
//! virtiofsd sees them only if they propagate, which needs the share to be a shared mount on
//! the host side. So before anything is mounted below it, the share directory is bound
//! onto itself (it becomes a mount point) and marked shared. A bind made later, over
//! existing submounts, would hide them from the host's cleanup, hence "before".

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Errors preparing the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A mount call failed.
    #[error("{what} {path}: {source}")]
    Mount {
        /// What was done.
        what: &'static str,
        /// The share.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// mountinfo could not be read.
    #[error("read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
}

/// Whether `mountinfo` lists `point` as a mount point (field 5, octal escapes decoded).
pub fn is_mount_point(mountinfo: &str, point: &Path) -> bool {
    crate::mounts::mount_points_under(mountinfo, point)
        .iter()
        .any(|p| p == point)
}

/// Makes `dir` (which exists, with nothing mounted below it) a mount point with shared
/// propagation; does nothing more if it is a mount point already (a later container of
/// the pod).
pub fn make_shared(dir: &Path) -> Result<(), ShareError> {
    make_mount_point(dir, MsFlags::MS_SHARED)
}

/// Makes `dir` a private mount point (see [`make_shared`]): the volumes' staging
/// directory, where a bind gets its options and propagation before it is moved into the
/// share ([`crate::volume::share_volume`]).
pub fn make_private(dir: &Path) -> Result<(), ShareError> {
    make_mount_point(dir, MsFlags::MS_PRIVATE)
}

fn make_mount_point(dir: &Path, propagation: MsFlags) -> Result<(), ShareError> {
    let err = |what| {
        move |source| ShareError::Mount {
            what,
            path: dir.to_path_buf(),
            source,
        }
    };
    let real = std::fs::canonicalize(dir).map_err(ShareError::Mountinfo)?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(ShareError::Mountinfo)?;
    if is_mount_point(&text, &real) {
        return Ok(());
    }
    mount(
        Some(&real),
        &real,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err("bind onto itself"))?;
    mount(None::<&str>, &real, None::<&str>, propagation, None::<&str>)
        .map_err(err("set the propagation of"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_exact_paths() {
        let info = "22 1 0:21 / / rw - tmpfs tmpfs rw\n\
                    42 22 0:42 / /run/husk/default/p1/shared rw shared:5 - tmpfs tmpfs rw\n";
        assert!(is_mount_point(
            info,
            Path::new("/run/husk/default/p1/shared")
        ));
        assert!(!is_mount_point(info, Path::new("/run/husk/default/p1")));
        assert!(!is_mount_point(
            info,
            Path::new("/run/husk/default/p1/shared/c1")
        ));
    }
}
