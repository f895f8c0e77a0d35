//! Mount propagation around the container's root, as runc does it: the spec's
//! `rootfsPropagation` for the whole tree (default `rslave`: the guest's mounts reach the
//! container, the container's do not leak out), and the mount holding the rootfs kept from
//! being shared, which the root switch needs (`pivot_root` and `MS_MOVE` refuse a shared
//! parent) and which keeps the container's rootfs bind from appearing in the guest.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::SetupError;

type Result<T> = std::result::Result<T, SetupError>;

/// The flags of a `rootfsPropagation` value; no value means `rslave`, as with runc.
pub fn root_flags(value: Option<&str>) -> Result<MsFlags> {
    Ok(match value.unwrap_or("rslave") {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => {
            return Err(SetupError::Invalid(format!(
                "rootfsPropagation {other:?} is not supported"
            )))
        }
    })
}

fn set(path: &Path, flags: MsFlags) -> Result<()> {
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(|e| SetupError::Sys(format!("propagation {flags:?} of {path:?}"), e))
}

/// Whether `path` is the root of a mount (statx `STATX_ATTR_MOUNT_ROOT`; where the kernel
/// does not say, a device change from the parent directory).
fn is_mount_root(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SetupError::Invalid(format!("NUL in {path:?}")))?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and stx a statx the call may fill.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if rc < 0 {
        return Err(SetupError::Sys(
            format!("statx {path:?}"),
            nix::errno::Errno::last(),
        ));
    }
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & attr != 0 {
        return Ok(stx.stx_attributes & attr != 0);
    }
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    match path.parent() {
        None => Ok(true),
        Some(parent) => Ok(dev(path).ok() != dev(parent).ok()),
    }
}

/// The mount point of the mount that holds `path` (absolute): `path` itself when it is a
/// mount point.
pub fn mount_point_of(path: &Path) -> Result<PathBuf> {
    for p in path.ancestors() {
        if is_mount_root(p)? {
            return Ok(p.to_path_buf());
        }
    }
    Ok(PathBuf::from("/"))
}

/// Applies the spec's root propagation to the container's copy of the mount tree and makes
/// the mount holding `rootfs` a slave if it is shared: binding the rootfs under it then
/// neither shows in the guest nor stops the root switch, and bind sources on that mount
/// still receive the guest's mounts (runc makes it private; a slave keeps more of what a
/// guest's shared mount gives). In the guest that mount is the rootfs's own bind (see
/// `container::root_mount`), so the share holding the bind sources keeps its propagation.
pub fn prepare_root(value: Option<&str>, rootfs: &Path) -> Result<()> {
    set(Path::new("/"), root_flags(value)?)?;
    set(&mount_point_of(rootfs)?, MsFlags::MS_SLAVE)
}

/// Makes the current root mount private before the root switch: `pivot_root` refuses a
/// shared root, and `MS_MOVE` onto a shared `/` would copy the container's root onto the
/// guest's. The old root is dropped or covered right after.
pub fn unshare_old_root() -> Result<()> {
    set(Path::new("/"), MsFlags::MS_PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_propagation_values_map_like_runc() {
        assert_eq!(
            root_flags(None).expect("default"),
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        );
        assert_eq!(
            root_flags(Some("rshared")).expect("rshared"),
            MsFlags::MS_SHARED | MsFlags::MS_REC
        );
        assert_eq!(
            root_flags(Some("private")).expect("private"),
            MsFlags::MS_PRIVATE
        );
        assert!(root_flags(Some("bogus")).is_err());
    }

    #[test]
    fn mount_points_are_found_upwards() {
        assert_eq!(
            mount_point_of(Path::new("/")).expect("root"),
            PathBuf::from("/")
        );
        assert_eq!(
            mount_point_of(Path::new("/proc/self")).expect("proc"),
            PathBuf::from("/proc")
        );
    }
}
