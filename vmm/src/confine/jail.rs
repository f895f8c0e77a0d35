//! The jail: a mount namespace of husk-vmm's own whose root is an empty, read-only tmpfs
//! holding only the directories husk-vmm still uses once the VM runs, each bind-mounted at
//! its own absolute path so that no path in the configuration changes.
//!
//! Everything else (the kernel and initrd, `/dev/kvm`, virtiofsd's socket) was opened while
//! building the VM and is reached through open descriptors; a guest that took over
//! husk-vmm finds no host file system to read or write.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A directory to keep could not be opened.
    #[error("opening {0}: {1}")]
    Open(PathBuf, io::Error),
    /// A directory to keep is not absolute or not clean (`..`).
    #[error("jail path {0} is not an absolute path without '..'")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, io::Error),
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |e| JailError::Sys(what, e)
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::BadPath(p.to_owned()))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let src = src.map(|p| c(p.as_os_str().as_bytes())).transpose()?;
    let target = c(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(|s| c(s.as_bytes())).transpose()?;
    let data = data.map(|s| c(s.as_bytes())).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives across the call.
    check(unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// The directories to keep: absolute, without `.`/`..`, no directory inside another
/// (binding the outer one brings the inner one along, unless it is a mount point of its
/// own: binds are not recursive), sorted.
pub fn normalize(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, JailError> {
    let mut clean = Vec::new();
    for d in dirs {
        if !d.is_absolute() || d.components().any(|c| c == Component::ParentDir) {
            return Err(JailError::BadPath(d.clone()));
        }
        clean.push(d.components().collect::<PathBuf>());
    }
    clean.sort();
    clean.dedup();
    let outer: Vec<PathBuf> = clean
        .iter()
        .filter(|d| !clean.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    Ok(outer)
}

/// The per-mount flags of the mount holding `dir`, as `mount` flags (a bind remount must
/// repeat them: it replaces them all).
fn mount_flags(dir: &File) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain data; zeroed is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor and `st` a valid out-pointer.
    check(unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) })?;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Moves the calling process into a new mount namespace whose root holds only `keep`
/// (directories, bound read-write as they are, plus nosuid, nodev, noexec) and returns
/// with the working directory at `/`.
///
/// Must run before the process starts a second thread: `unshare(CLONE_NEWNS)` moves only
/// the calling thread, and threads started afterwards inherit its namespace. Needs `CAP_SYS_ADMIN`; there is no fallback, since a jail that
/// quietly turns itself off protects nothing (husk-vmm's `--no-jail` is the explicit way
/// out, for debugging).
pub fn enter(keep: &[PathBuf]) -> Result<(), JailError> {
    let keep = normalize(keep)?;
    // SAFETY: unshare takes a flag word only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(sys("unshare(CLONE_NEWNS)"))?;
    // Nothing done from here on propagates back to the host's mounts.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(sys("making / private"))?;

    // Descriptors of the directories, opened in the new namespace (a bind's source must be
    // a mount of the caller's namespace): the tmpfs below is mounted over the first of
    // them, and the binds take their source through /proc/self/fd.
    let dirs = keep
        .iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(d)
                .map_err(|e| JailError::Open(d.clone(), e))
        })
        .collect::<Result<Vec<File>, _>>()?;
    let flags = dirs
        .iter()
        .map(|f| mount_flags(f).map_err(sys("fstatvfs")))
        .collect::<Result<Vec<_>, _>>()?;

    // The new root: a small tmpfs over a directory that surely exists (nothing of what it
    // hides is needed: what is kept is reached through `dirs`).
    let root = keep.first().cloned().unwrap_or_else(std::env::temp_dir);
    let root_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(Path::new("tmpfs")),
        &root,
        Some("tmpfs"),
        root_flags,
        Some("size=64k,mode=0755"),
    )
    .map_err(sys(format!(
        "mounting the jail's tmpfs on {}",
        root.display()
    )))?;

    for ((dir, file), flags) in keep.iter().zip(&dirs).zip(flags) {
        let target = root.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&target).map_err(sys(format!("mkdir {}", target.display())))?;
        let src = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // Not recursive: the tmpfs now mounted on the first directory would come along.
        mount(Some(&src), &target, None, libc::MS_BIND, None)
            .map_err(sys(format!("binding {}", dir.display())))?;
        mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | flags | root_flags,
            None,
        )
        .map_err(sys(format!(
            "remounting {} nosuid,nodev,noexec",
            dir.display()
        )))?;
    }
    drop(dirs);
    mount(
        None,
        &root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | root_flags,
        Some("size=64k,mode=0755"),
    )
    .map_err(sys("remounting the jail's root read-only"))?;

    // pivot_root(".", "."): the old root ends up stacked on the new one, and detaching it
    // leaves the new one. No directory for the old root is needed in the (read-only) tmpfs.
    std::env::set_current_dir(&root).map_err(sys(format!("chdir {}", root.display())))?;
    let dot = cstr(Path::new("."))?;
    // SAFETY: both arguments are the NUL-terminated string ".".
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)
        .map_err(sys("pivot_root"))?;
    // SAFETY: "." is a NUL-terminated string; MNT_DETACH is a valid flag.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(sys("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(sys("chdir /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{child_passes, in_child};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn normalize_keeps_outer_directories_and_refuses_relative_ones() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            normalize(&[
                p("/run/husk/pod/logs"),
                p("/run/husk/pod/"),
                p("/var/x"),
                p("/run/husk/pod")
            ])
            .unwrap(),
            vec![p("/run/husk/pod"), p("/var/x")]
        );
        // A sibling with a common prefix is not inside.
        assert_eq!(
            normalize(&[p("/run/a"), p("/run/ab")]).unwrap(),
            vec![p("/run/a"), p("/run/ab")]
        );
        assert!(matches!(
            normalize(&[p("run/a")]),
            Err(JailError::BadPath(_))
        ));
        assert!(matches!(
            normalize(&[p("/run/a/../../etc")]),
            Err(JailError::BadPath(_))
        ));
    }

    /// Where the child test finds its directory (made by the parent, which cleans it up).
    const DIR_ENV: &str = "HUSK_JAIL_TEST_DIR";

    #[test]
    fn jail_holds_only_the_kept_directory() {
        if !in_child() {
            let dir = tempfile::tempdir().unwrap();
            child_passes(
                module_path!(),
                "jail_holds_only_the_kept_directory",
                &[(DIR_ENV, dir.path().as_os_str())],
            );
            // The child wrote through its bind into the real directory.
            let pod = dir.path().join("pod");
            assert_eq!(std::fs::read(pod.join("from-jail")).unwrap(), b"written");
            return;
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test makes a mount namespace: needs root");
        let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("the parent sets the dir"));
        let pod = dir.join("pod");
        std::fs::create_dir(&pod).unwrap();
        std::fs::write(pod.join("before"), b"hello").unwrap();
        // A host-side listener bound before the jail, connected to from inside it, like the
        // vsock muxer's `<socket>_<port>` connections.
        let listener = UnixListener::bind(pod.join("v.sock_1024")).unwrap();
        assert!(Path::new("/etc/passwd").exists());

        enter(std::slice::from_ref(&pod)).unwrap();

        assert!(
            !Path::new("/etc/passwd").exists(),
            "the host's /etc is gone"
        );
        assert!(!Path::new("/proc/self").exists(), "no /proc");
        let top: Vec<_> = std::fs::read_dir("/")
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let first = pod.components().nth(1).unwrap().as_os_str().to_owned();
        assert_eq!(
            top,
            vec![first],
            "the root holds only the way to the pod dir"
        );
        assert_eq!(std::fs::read(pod.join("before")).unwrap(), b"hello");
        // The way to the pod dir is the read-only tmpfs; the pod dir itself is writable.
        std::fs::write(dir.join("from-jail"), b"written").unwrap_err();
        std::fs::write(pod.join("from-jail"), b"written").unwrap();

        let mut c = UnixStream::connect(pod.join("v.sock_1024")).unwrap();
        c.write_all(b"ping").unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
}
