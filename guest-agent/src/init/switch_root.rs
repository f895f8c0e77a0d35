//! Moving the guest's root off the initramfs onto a tmpfs (switch_root style), because
//! `pivot_root(2)` refuses to pivot away from the initramfs (design §5) and containers
//! want pivot_root.
//!
//! The agent binary itself is neither copied nor deleted: copying megabytes is the
//! slowest part of a boot (it touches every page twice), and the running agent keeps reaching its own
//! image through `/proc/self/exe` (which is how it starts setup processes) even once the
//! initramfs is hidden below the new root. Everything else is copied and then freed.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use super::InitError;

/// Where the new root is assembled before it is moved onto `/`.
const NEW_ROOT: &str = "/.husk-root";

/// Top-level directories that are mount points later and are not copied.
const SKIP: [&str; 4] = ["proc", "sys", "dev", "run"];

/// Whether `/` is the initramfs ("rootfs" in /proc/self/mountinfo; needs /proc mounted).
pub fn root_is_initramfs() -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split_whitespace().nth(4) == Some("/") && right.starts_with("rootfs ")
    })
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> InitError {
    move |e| InitError::Io(what, e)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), InitError> {
    for entry in fs::read_dir(from).map_err(io(format!("read {from:?}")))? {
        let entry = entry.map_err(io(format!("read {from:?}")))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(io(format!("stat {src:?}")))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            fs::create_dir_all(&dst).map_err(io(format!("mkdir {dst:?}")))?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(io(format!("readlink {src:?}")))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io(format!("symlink {dst:?}")))?;
            continue;
        } else if ft.is_file() {
            fs::copy(&src, &dst).map_err(io(format!("copy {src:?}")))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            mknod(&dst, kind, Mode::from_bits_truncate(mode), meta.rdev())
                .map_err(|e| InitError::Sys(format!("mknod {dst:?}"), e))?;
        } else {
            continue; // sockets: nothing to keep
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {dst:?}")))?;
    }
    Ok(())
}

/// Copies the initramfs (except `keep`, the agent's own binary) into a tmpfs, frees the
/// copied files and makes the tmpfs the root (`MS_MOVE` onto `/` + `chroot`).
pub fn move_root_to_tmpfs(keep: &Path) -> Result<(), InitError> {
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(io(format!("mkdir {NEW_ROOT}")))?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| InitError::Sys("mount tmpfs root".into(), e))?;
    for entry in fs::read_dir("/").map_err(io("read /".into()))? {
        let entry = entry.map_err(io("read /".into()))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        let src = entry.path();
        if src == new_root || src == keep {
            continue;
        }
        let dst = new_root.join(&name);
        if SKIP.contains(&name_str) {
            fs::create_dir_all(&dst).map_err(io(format!("mkdir {dst:?}")))?;
            continue;
        }
        let meta = fs::symlink_metadata(&src).map_err(io(format!("stat {src:?}")))?;
        if meta.is_dir() {
            fs::create_dir_all(&dst).map_err(io(format!("mkdir {dst:?}")))?;
            fs::set_permissions(&dst, meta.permissions()).map_err(io(format!("chmod {dst:?}")))?;
            copy_tree(&src, &dst)?;
            let _ = fs::remove_dir_all(&src);
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(io(format!("readlink {src:?}")))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io(format!("symlink {dst:?}")))?;
            let _ = fs::remove_file(&src);
        } else {
            fs::copy(&src, &dst).map_err(io(format!("copy {src:?}")))?;
            let _ = fs::remove_file(&src);
        }
    }
    nix::unistd::chdir(new_root).map_err(|e| InitError::Sys("chdir new root".into(), e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| InitError::Sys("move new root".into(), e))?;
    nix::unistd::chroot(".").map_err(|e| InitError::Sys("chroot".into(), e))?;
    nix::unistd::chdir("/").map_err(|e| InitError::Sys("chdir /".into(), e))
}
