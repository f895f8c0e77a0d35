//! Host-side binds of a container's volumes into the pod share, with the volume's own OCI
//! options. The guest is not trusted to honour `ro`: the host bind it sees through
//! virtio-fs is itself read-only, so virtiofsd (and the guest behind it) cannot write.
//!
//! - `bind` binds only the source mount, `rbind` also what is mounted below it;
//! - `ro`, `nosuid`, `nodev`, `noexec` (and the atime options) need a second mount call:
//!   a bind ignores them, so the bind is remounted with them (`MS_BIND|MS_REMOUNT`),
//!   keeping whatever the source mount already restricts;
//! - a propagation option (`private`, `rslave`, ...) is applied last, as asked.
//!
//! A volume is bound once per pod ([`share_volume`], named by [`volume_name`]), not once per
//! container: containers of a pod binding the same source with the same host-side options
//! bind the same guest path, so a mount made in the guest under one container's `rshared`
//! bind reaches the others' `rslave` binds, as it does under runc on one host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::mounts::{parse_options, MountError};

/// Per-mount flags a bind remount can set.
const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

/// The propagation `options` ask for, if any (the last one given wins).
fn propagation(options: &[String]) -> Option<MsFlags> {
    options.iter().rev().find_map(|o| {
        let rec = |f: MsFlags| Some(f | MsFlags::MS_REC);
        match o.as_str() {
            "private" => Some(MsFlags::MS_PRIVATE),
            "rprivate" => rec(MsFlags::MS_PRIVATE),
            "slave" => Some(MsFlags::MS_SLAVE),
            "rslave" => rec(MsFlags::MS_SLAVE),
            "shared" => Some(MsFlags::MS_SHARED),
            "rshared" => rec(MsFlags::MS_SHARED),
            "unbindable" => Some(MsFlags::MS_UNBINDABLE),
            "runbindable" => rec(MsFlags::MS_UNBINDABLE),
            _ => None,
        }
    })
}

/// The restrictions the mount at `path` already has, as mount flags, so that a remount
/// adds to them rather than clearing them.
fn current_restrictions(path: &Path) -> nix::Result<MsFlags> {
    let f = statvfs(path)?.flags();
    let mut out = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(st) {
            out.insert(ms);
        }
    }
    Ok(out)
}

/// How a volume's host-side bind relates to mounts made later under its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PropagationClass {
    /// No propagation asked: the bind inherits its parent's.
    Inherited,
    /// `private` or `unbindable`: later mounts do not show.
    Isolated,
    /// `slave` or `shared`: later host mounts show (virtiofsd makes no mounts, so the host
    /// side of a shared and a slave bind behave alike).
    Receiving,
}

fn propagation_class(options: &[String]) -> PropagationClass {
    match propagation(options) {
        None => PropagationClass::Inherited,
        Some(p) if p.intersects(MsFlags::MS_SLAVE | MsFlags::MS_SHARED) => {
            PropagationClass::Receiving
        }
        Some(_) => PropagationClass::Isolated,
    }
}

/// The pod-level name of the bind of `source` with `options`: equal for two containers'
/// mounts exactly when their host-side binds would be alike (same source, same `ro`,
/// `nosuid`, `nodev`, `noexec`, atime and recursion, same propagation class), so they can
/// share one. A hash, so that no host path shows in the guest's share.
pub fn volume_name(source: &Path, options: &[String]) -> String {
    let (flags, _) = parse_options(options);
    let host_side = flags & (REMOUNT_FLAGS | MsFlags::MS_REC);
    let mut h = Sha256::new();
    h.update(source.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(host_side.bits().to_le_bytes());
    h.update(format!("{:?}", propagation_class(options)).as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Binds volume `source` on the pod volume `target` unless an earlier container of the pod
/// already did (then `target` must be a mount of the same file).
///
/// The share is a shared mount (virtiofsd's namespace must see what is mounted below it),
/// and a bind made directly below it would be copied into virtiofsd's namespace as a member
/// of the source's peer group: making the host's copy private afterwards would leave
/// virtiofsd's copy receiving the source's later mounts. So the bind is made in `staging`
/// (a private mount point), gets its options and propagation there, and is then moved into
/// the share, where it starts a peer group of its own (or stays in the source's, for
/// `shared`; a slave of it, for `slave`), exactly as asked.
pub fn share_volume(
    source: &Path,
    target: &Path,
    options: &[String],
    staging: &Path,
) -> Result<(), MountError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| MountError::Io {
            path: "/proc/self/mountinfo".into(),
            source: e,
        })?;
    // mountinfo has real paths (the state dir may sit below a symlink such as /var/run).
    let mounted = std::fs::canonicalize(target)
        .is_ok_and(|real| crate::mounts::mount_points_under(&mountinfo, &real).contains(&real));
    if !mounted {
        return stage_and_move(source, target, options, staging);
    }
    let same = |a: &Path, b: &Path| -> std::io::Result<bool> {
        let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    };
    match same(source, target) {
        Ok(true) => Ok(()),
        Ok(false) => Err(MountError::VolumeClash {
            target: target.to_path_buf(),
            wanted: source.to_path_buf(),
        }),
        Err(e) => Err(MountError::Io {
            path: source.to_path_buf(),
            source: e,
        }),
    }
}

fn stage_and_move(
    source: &Path,
    target: &Path,
    options: &[String],
    staging: &Path,
) -> Result<(), MountError> {
    let name = target.file_name().unwrap_or(target.as_os_str());
    let staged = staging.join(name);
    bind_volume(source, &staged, options)?;
    let moved = crate::mounts::create_mount_point(source, target).and_then(|()| {
        mount(
            Some(&staged),
            target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| MountError::Mount {
            what: format!("move {}", staged.display()),
            target: target.to_path_buf(),
            message: e.to_string(),
        })
    });
    if moved.is_err() {
        crate::mounts::unmount_under(&staged);
    }
    // The mount point left behind in staging (an empty file or directory).
    let _ = std::fs::remove_dir(&staged).or_else(|_| std::fs::remove_file(&staged));
    moved
}

/// Binds volume `source` on `target` (creating the mount point) with the volume's OCI
/// `options`. A relative `source` is refused.
pub fn bind_volume(source: &Path, target: &Path, options: &[String]) -> Result<(), MountError> {
    if !source.is_absolute() {
        return Err(MountError::RelativeSource(source.to_path_buf()));
    }
    let (flags, _data) = parse_options(options);
    let err = |e: nix::Error| MountError::Mount {
        what: format!("bind {}", source.display()),
        target: target.to_path_buf(),
        message: e.to_string(),
    };
    crate::mounts::create_mount_point(source, target)?;
    let rec = flags & MsFlags::MS_REC;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .map_err(err)?;
    let wanted = flags & REMOUNT_FLAGS;
    if !wanted.is_empty() {
        let keep = current_restrictions(target).map_err(err)?;
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | wanted | keep,
            None::<&str>,
        )
        .map_err(err)?;
    }
    if let Some(p) = propagation(options) {
        mount(None::<&str>, target, None::<&str>, p, None::<&str>).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_is_the_last_one_asked() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(propagation(&o(&["rbind", "ro"])), None);
        assert_eq!(
            propagation(&o(&["shared", "rslave"])),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(propagation(&o(&["private"])), Some(MsFlags::MS_PRIVATE));
    }

    #[test]
    fn volume_names_match_exactly_when_host_binds_are_alike() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let src = Path::new("/srv/data");
        let name = volume_name(src, &o(&["rbind", "rshared"]));
        assert_eq!(name.len(), 32);
        assert!(!name.contains('/'));
        // shared and slave: one host bind serves both.
        assert_eq!(name, volume_name(src, &o(&["rbind", "rslave"])));
        for other in [
            volume_name(src, &o(&["rbind", "rprivate"])),
            volume_name(src, &o(&["rbind"])),
            volume_name(src, &o(&["rbind", "rshared", "ro"])),
            volume_name(src, &o(&["bind", "rshared"])),
            volume_name(src, &o(&["rbind", "rshared", "nosuid"])),
            volume_name(Path::new("/srv/data2"), &o(&["rbind", "rshared"])),
        ] {
            assert_ne!(name, other);
        }
    }

    #[test]
    fn a_relative_source_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t");
        let err = bind_volume(Path::new("data"), &target, &[]).expect_err("relative");
        assert!(matches!(err, MountError::RelativeSource(_)), "{err}");
        assert!(!target.exists(), "nothing is created");
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;
    use crate::mounts::mount_points_under;
    use crate::testing::need_root;
    use nix::mount::{umount2, MntFlags};
    use std::path::PathBuf;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The mount options field of `target`'s mountinfo line.
    fn mount_options(target: &Path) -> String {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let target = std::fs::canonicalize(target).expect("real path");
        text.lines()
            .filter(|l| l.split(' ').nth(4).map(PathBuf::from) == Some(target.clone()))
            .filter_map(|l| l.split(' ').nth(5).map(str::to_string))
            .next_back()
            .expect("target is a mount point")
    }

    fn detach_all(dir: &Path) {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        for p in mount_points_under(&text, &std::fs::canonicalize(dir).expect("real")) {
            while umount2(&p, MntFlags::MNT_DETACH).is_ok() {}
        }
    }

    #[test]
    fn a_ro_bind_is_read_only_on_the_host() {
        need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("vol");
        std::fs::create_dir(&src).expect("src");
        let target = dir.path().join("pod/mounts/0");
        bind_volume(
            &src,
            &target,
            &opts(&["rbind", "ro", "nosuid", "nodev", "noexec"]),
        )
        .expect("bind");
        let options = mount_options(&target);
        let write = std::fs::write(target.join("new"), "x");
        detach_all(dir.path());
        let fields: Vec<&str> = options.split(',').collect();
        for f in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(fields.contains(&f), "{f} missing in {options}");
        }
        let err = write.expect_err("read-only bind");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::EROFS as i32),
            "{err}"
        );
        assert!(!src.join("new").exists());
    }

    #[test]
    fn bind_leaves_submounts_out_rbind_takes_them() {
        need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("vol");
        let sub = src.join("sub");
        std::fs::create_dir_all(&sub).expect("sub");
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        std::fs::write(sub.join("in-submount"), "x").expect("file");
        let plain = dir.path().join("pod/mounts/0");
        let recursive = dir.path().join("pod/mounts/1");
        bind_volume(&src, &plain, &opts(&["bind"])).expect("bind");
        bind_volume(&src, &recursive, &opts(&["rbind"])).expect("rbind");
        let plain_sees = plain.join("sub/in-submount").exists();
        let recursive_sees = recursive.join("sub/in-submount").exists();
        detach_all(dir.path());
        assert!(!plain_sees, "bind is not recursive");
        assert!(recursive_sees, "rbind is");
    }

    #[test]
    fn a_pod_volume_is_bound_once_and_never_reused_for_another_source() {
        need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, other) = (dir.path().join("vol"), dir.path().join("other"));
        std::fs::create_dir(&src).expect("src");
        std::fs::create_dir(&other).expect("other");
        let target = dir.path().join("pod/.volumes/v");
        let staging = dir.path().join("pod/staging");
        std::fs::create_dir_all(&staging).expect("staging");
        share_volume(&src, &target, &opts(&["rbind", "rshared"]), &staging).expect("first");
        share_volume(&src, &target, &opts(&["rbind", "rslave"]), &staging).expect("second");
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let real = std::fs::canonicalize(&target).expect("real");
        let stacked = mount_points_under(&text, &real).len();
        let clash = share_volume(&other, &target, &opts(&["rbind"]), &staging);
        let staged_left = std::fs::read_dir(&staging).expect("staging").count();
        detach_all(dir.path());
        assert_eq!(stacked, 1, "the second container reuses the pod's bind");
        assert_eq!(staged_left, 0, "nothing stays in staging");
        assert!(
            matches!(clash, Err(MountError::VolumeClash { .. })),
            "{clash:?}"
        );
    }

    /// virtiofsd's view of the share is a slave copy of it (its namespace sandbox); stand in
    /// for it with a slave bind of the share. A later host mount below the source of an
    /// `rprivate` volume must reach neither the share nor that view; below an `rslave` one,
    /// both.
    #[test]
    fn propagation_holds_in_a_slave_view_of_the_share() {
        need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("real");
        let mk = |p: &Path| std::fs::create_dir_all(p).expect("dir");
        let self_bind = |p: &Path, propagation: MsFlags| {
            mount(Some(p), p, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
            mount(None::<&str>, p, None::<&str>, propagation, None::<&str>).expect("prop");
        };
        let (src, share, view, staging) = (
            base.join("src"),
            base.join("pod/shared"),
            base.join("view"),
            base.join("pod/staging"),
        );
        for d in [&src.join("sub"), &share, &view, &staging] {
            mk(d);
        }
        // Make the whole test tree private first, so nothing leaks to the host's mounts.
        self_bind(&base, MsFlags::MS_PRIVATE);
        self_bind(&src, MsFlags::MS_SHARED);
        self_bind(&share, MsFlags::MS_SHARED);
        self_bind(&staging, MsFlags::MS_PRIVATE);
        mount(
            Some(&share),
            &view,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("view");
        mount(
            None::<&str>,
            &view,
            None::<&str>,
            MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .expect("slave");
        let vols = share.join(".volumes");
        share_volume(
            &src,
            &vols.join("p"),
            &opts(&["rbind", "rprivate"]),
            &staging,
        )
        .expect("private volume");
        share_volume(&src, &vols.join("s"), &opts(&["rbind", "rslave"]), &staging)
            .expect("slave volume");
        mount(
            Some("tmpfs"),
            &src.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        std::fs::write(src.join("sub/marker"), "x").expect("marker");
        let seen = |p: &Path| p.join("sub/marker").exists();
        let views = [
            seen(&vols.join("p")),
            seen(&view.join(".volumes/p")),
            seen(&vols.join("s")),
            seen(&view.join(".volumes/s")),
        ];
        detach_all(&base);
        assert_eq!(
            views,
            [false, false, true, true],
            "[private in share, private in view, slave in share, slave in view]"
        );
    }

    #[test]
    fn a_rw_bind_stays_writable() {
        need_root("makes bind mounts");
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("vol");
        std::fs::create_dir(&src).expect("src");
        let target = dir.path().join("pod/mounts/0");
        bind_volume(&src, &target, &opts(&["rbind", "rprivate"])).expect("bind");
        let write = std::fs::write(target.join("new"), "x");
        detach_all(dir.path());
        write.expect("writable");
        assert!(src.join("new").exists());
    }
}
