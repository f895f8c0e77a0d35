//! The container's rootfs as a mount of its own in the guest.
//!
//! In the guest every container's rootfs and every host bind source lie on one virtio-fs
//! mount (the pod share). The root switch needs the mount holding the rootfs not to be
//! shared (as runc makes it private or a slave), and doing that to the share itself would
//! cut every bind source on it from propagation: an `rshared` bind could no longer carry a
//! container's mounts back to the guest and the pod's other containers. So the agent binds
//! the rootfs onto itself first, as containerd's snapshot mount is a mount of its own on a
//! host: only that mount is then made a slave, and the share keeps its propagation.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};
use crate::setup::propagation::mount_point_of;

/// A rootfs bound onto itself by the agent; unmounted when dropped.
#[derive(Debug)]
pub struct RootMount {
    path: Option<PathBuf>,
}

impl RootMount {
    /// Binds `rootfs` onto itself unless it is a mount point already.
    pub fn bind(rootfs: &Path) -> Result<Self> {
        let already = mount_point_of(rootfs)
            .map_err(|e| Error::Setup(format!("rootfs {}: {e}", rootfs.display())))?;
        if already == rootfs {
            return Ok(Self { path: None });
        }
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::errno("bind the rootfs onto itself", e))?;
        Ok(Self {
            path: Some(rootfs.to_path_buf()),
        })
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!("unmount rootfs {}: {e}", p.display());
            }
        }
    }
}
