//! The container's mount namespace: the spec's mounts, /dev, the root switch (pivot_root,
//! or MS_MOVE + chroot where pivot_root is refused), masked and read-only paths.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, chroot, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::SetupError;

type Result<T> = std::result::Result<T, SetupError>;

fn sys<T>(what: impl FnOnce() -> String, r: nix::Result<T>) -> Result<T> {
    r.map_err(|e| SetupError::Sys(what(), e))
}

/// Mount flags and the leftover data string of an OCI options list.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Propagation flags, applied in a second call.
    pub propagation: MsFlags,
    /// Filesystem-specific options.
    pub data: Vec<String>,
}

/// Parses OCI mount options (`ro`, `nosuid`, `rbind`, `rprivate`, `size=...`).
pub fn parse_options(options: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear, prop) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
        o.propagation.insert(prop);
    }
    o
}

/// Joins `dest` (absolute inside the container) onto `rootfs`, refusing `..`.
pub fn join_inside(rootfs: &Path, dest: &Path) -> Result<PathBuf> {
    let mut out = rootfs.to_path_buf();
    for c in dest.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(SetupError::Invalid(format!(
                    "path {dest:?} leaves the root"
                )))
            }
        }
    }
    Ok(out)
}

/// Makes sure `path` (already joined) did not escape `rootfs` through a symlink.
fn check_inside(rootfs: &Path, path: &Path) -> Result<()> {
    let real = fs::canonicalize(path).map_err(|e| SetupError::Io(format!("{path:?}"), e))?;
    if real.starts_with(rootfs) {
        Ok(())
    } else {
        Err(SetupError::Invalid(format!(
            "{path:?} resolves to {real:?} outside the container root"
        )))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |e| SetupError::Io(what, e)
}

fn create_target(target: &Path, file: bool) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    if file {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(format!("mkdir {parent:?}")))?;
        }
        fs::File::create(target).map_err(io(format!("create {target:?}")))?;
    } else {
        fs::create_dir_all(target).map_err(io(format!("mkdir {target:?}")))?;
    }
    Ok(())
}

/// Mounts one OCI mount below `rootfs`.
fn mount_one(rootfs: &Path, m: &Mount) -> Result<()> {
    let target = join_inside(rootfs, m.destination())?;
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("none");
    let bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let is_file = bind && source.exists() && !source.is_dir();
    create_target(&target, is_file)?;
    check_inside(rootfs, &target)?;
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if bind {
        let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys(
            || format!("bind {source:?} on {target:?}"),
            mount(Some(&source), &target, None::<&str>, flags, None::<&str>),
        )?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            sys(
                || format!("remount {target:?}"),
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None::<&str>,
                ),
            )?;
        }
    } else {
        let fstype = if typ == "cgroup" { "cgroup2" } else { typ };
        sys(
            || format!("mount {fstype} on {target:?}"),
            mount(Some(&source), &target, Some(fstype), opts.flags, data),
        )?;
    }
    if !opts.propagation.is_empty() {
        sys(
            || format!("propagation of {target:?}"),
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                opts.propagation,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

/// The devices every container gets in a fresh /dev: (name, major, minor).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn make_node(path: &Path, kind: SFlag, major: u64, minor: u64, mode: u32) -> Result<()> {
    let _ = fs::remove_file(path);
    sys(
        || format!("mknod {path:?}"),
        mknod(
            path,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        ),
    )?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(format!("{path:?}")))
}

fn spec_device(rootfs: &Path, d: &LinuxDevice) -> Result<()> {
    let path = join_inside(rootfs, d.path())?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io(format!("mkdir {parent:?}")))?;
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => return Err(SetupError::Invalid("device type 'a'".into())),
    };
    let major = u64::try_from(d.major()).unwrap_or(0);
    let minor = u64::try_from(d.minor()).unwrap_or(0);
    make_node(&path, kind, major, minor, d.file_mode().unwrap_or(0o666))?;
    sys(
        || format!("chown {path:?}"),
        chown(
            &path,
            d.uid().map(Uid::from_raw),
            d.gid().map(Gid::from_raw),
        ),
    )
}

fn populate_dev(rootfs: &Path, spec: &Spec, terminal: bool) -> Result<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in DEFAULT_DEVICES {
        make_node(&dev.join(name), SFlag::S_IFCHR, major, minor, 0o666)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(target, dev.join(link));
    }
    if dev.join("pts/ptmx").exists() && !dev.join("ptmx").exists() {
        let _ = symlink("pts/ptmx", dev.join("ptmx"));
    }
    if terminal {
        // The console is the process's terminal, as runc does.
        if let Ok(pty) = fs::read_link("/proc/self/fd/0") {
            let console = dev.join("console");
            create_target(&console, true)?;
            sys(
                || "bind console".into(),
                mount(
                    Some(&pty),
                    &console,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
            )?;
        }
    }
    let linux = spec.linux().as_ref();
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        spec_device(rootfs, d)?;
    }
    Ok(())
}

/// Switches the root to `rootfs`: pivot_root, or MS_MOVE + chroot when the current root
/// cannot be pivoted (it is the initramfs, design §5).
fn switch_root(rootfs: &Path) -> Result<()> {
    super::propagation::unshare_old_root()?;
    // After pivot_root(".", ".") the old root sits on top of the new one, but "." and "/"
    // still name the new root: only a descriptor of the old root reaches it, to make it a
    // slave (so its unmount does not propagate) and detach it without touching the new
    // root's mounts (their propagation is the spec's).
    let old_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::Sys("open old root".into(), e))?;
    sys(|| format!("chdir {rootfs:?}"), chdir(rootfs))?;
    match pivot_root(".", ".") {
        Ok(()) => {
            sys(|| "fchdir old root".into(), nix::unistd::fchdir(&old_root))?;
            sys(
                || "make old root rslave".into(),
                mount(
                    None::<&str>,
                    ".",
                    None::<&str>,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None::<&str>,
                ),
            )?;
            sys(
                || "detach old root".into(),
                umount2(".", MntFlags::MNT_DETACH),
            )?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            sys(
                || "move rootfs to /".into(),
                mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
            )?;
            sys(|| "chroot".into(), chroot("."))?;
        }
        Err(e) => return Err(SetupError::Sys("pivot_root".into(), e)),
    }
    drop(old_root);
    sys(|| "chdir /".into(), chdir("/"))
}

fn mask_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    let r = if p.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else if p.exists() {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    } else {
        return Ok(());
    };
    sys(|| format!("mask {path}"), r)
}

fn readonly_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(());
    }
    sys(
        || format!("bind {path}"),
        mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    sys(
        || format!("remount {path} ro"),
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        ),
    )
}

fn remount_root_readonly() -> Result<()> {
    let st = nix::sys::statvfs::statvfs("/").map_err(|e| SetupError::Sys("statvfs /".into(), e))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if st.flags().contains(f) {
            flags |= m;
        }
    }
    sys(
        || "remount / ro".into(),
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
    )
}

/// Builds the container's filesystem view and enters it. Runs in the container's new
/// mount namespace (and new pid namespace, so /proc is the container's). With `terminal`,
/// returns the master of the terminal made in the container's devpts, if it has one.
pub fn setup_rootfs(spec: &Spec, rootfs: &Path, terminal: bool) -> Result<Option<OwnedFd>> {
    let linux = spec.linux().as_ref();
    super::propagation::prepare_root(
        linux.and_then(|l| l.rootfs_propagation().as_deref()),
        rootfs,
    )?;
    sys(
        || format!("bind rootfs {rootfs:?}"),
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    let mut dev_mounted = false;
    for m in spec.mounts().iter().flatten() {
        mount_one(rootfs, m)?;
        dev_mounted |= m.destination() == Path::new("/dev");
    }
    // Before /dev/console is bound to the terminal.
    let console = if terminal {
        super::console::attach(&rootfs.join("dev/pts"))?
    } else {
        None
    };
    if dev_mounted {
        populate_dev(rootfs, spec, terminal)?;
    }
    switch_root(rootfs)?;
    // Before the read-only paths, which usually include /proc/sys.
    super::sysctl::apply(spec)?;
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask_path(p)?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(p)?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_root_readonly()?;
    }
    Ok(console)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Options {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = opts(&["nosuid", "rbind", "ro", "rprivate", "mode=755", "size=64k"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=64k"]);
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
    }

    #[test]
    fn join_refuses_dotdot() {
        let root = Path::new("/r");
        assert_eq!(
            join_inside(root, Path::new("/a/./b")).expect("join"),
            PathBuf::from("/r/a/b")
        );
        assert!(join_inside(root, Path::new("/a/../../etc")).is_err());
    }
}
