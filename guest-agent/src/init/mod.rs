//! PID 1 duties in the guest: the root switch, the basic mounts, the console, the
//! hostname, and ending the VM ([`end_vm`]: the guest kernel runs with `reboot=k`, so a
//! reboot resets the VM through the i8042 and husk-vmm exits). Orphans are reaped by
//! [`crate::reaper`].

pub mod switch_root;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Errors of init duties; fatal in PID 1.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, Errno),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Hostname until the sandbox sets one.
pub const DEFAULT_HOSTNAME: &str = "husk";

/// One filesystem the guest needs: (source, target, type, flags, data).
type MountEntry = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    Option<&'static str>,
);

fn base_mounts() -> [MountEntry; 7] {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    [
        ("proc", "/proc", "proc", nosuid_noexec_nodev, None),
        ("sysfs", "/sys", "sysfs", nosuid_noexec_nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_noexec_nodev,
            None,
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ]
}

fn mount_base() -> Result<(), InitError> {
    for (src, target, fstype, flags, data) in base_mounts() {
        fs::create_dir_all(target).map_err(|e| InitError::Io(format!("mkdir {target}"), e))?;
        match mount(Some(src), target, Some(fstype), flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(InitError::Sys(format!("mount {fstype} on {target}"), e)),
        }
    }
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    Ok(())
}

/// Points fds 0-2 at /dev/console (the kernel leaves them closed when the initramfs has
/// no /dev/console).
fn attach_console() {
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Environment variable carrying the boot-clock time at which /init first started (kept
/// for a re-exec; set on the first call of [`init_t0`]).
pub const INIT_T0_ENV: &str = "HUSK_INIT_T0_NS";

/// Time since boot (CLOCK_BOOTTIME).
pub fn boottime() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, owned `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// When /init first started (boot clock): from [`INIT_T0_ENV`], or now (and recorded
/// there for the re-exec).
pub fn init_t0() -> std::time::Duration {
    if let Some(ns) = std::env::var(INIT_T0_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return std::time::Duration::from_nanos(ns);
    }
    let now = boottime();
    std::env::set_var(INIT_T0_ENV, now.as_nanos().to_string());
    now
}

/// Writes a line on the console and ends the VM: `reboot(RB_AUTOBOOT)`, which with the
/// guest kernel's `reboot=k` resets the VM through the i8042, and husk-vmm exits on a guest
/// reset. Never returns.
pub fn end_vm(message: &str) -> ! {
    eprintln!("husk-agent: {message}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot only returns on error; there is nothing left to do but wait.
    loop {
        std::thread::park();
    }
}

/// Makes a panic anywhere end the VM ([`end_vm`]) with its message instead of leaving a
/// guest without an agent.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        end_vm(&format!("fatal: {info}"));
    }));
}

/// Everything PID 1 does before serving. When `/` is still the initramfs it first moves the
/// root to a tmpfs.
pub fn setup() -> Result<(), InitError> {
    fs::create_dir_all("/proc").map_err(|e| InitError::Io("mkdir /proc".into(), e))?;
    match mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(e) => return Err(InitError::Sys("mount /proc".into(), e)),
    }
    if switch_root::root_is_initramfs() {
        let exe = fs::read_link("/proc/self/exe")
            .map_err(|e| InitError::Io("readlink /proc/self/exe".into(), e))?;
        nix::mount::umount("/proc").map_err(|e| InitError::Sys("umount /proc".into(), e))?;
        switch_root::move_root_to_tmpfs(&exe)?;
    }
    mount_base()?;
    // Shared, as on a host with systemd: containers then get the guest's mounts under a
    // bind source (`rslave`, the default root propagation) and, with `rshared`, give theirs
    // back, as under runc. Mounts made later (the share) are shared too.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| InitError::Sys("make / rshared".into(), e))?;
    attach_console();
    let t0 = init_t0();
    println!(
        "husk-agent: init mounts done ({:.1} ms after /init start)",
        boottime().saturating_sub(t0).as_secs_f64() * 1000.0
    );
    nix::unistd::sethostname(DEFAULT_HOSTNAME)
        .map_err(|e| InitError::Sys("sethostname".into(), e))?;
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let controllers =
            fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        for c in controllers.split_whitespace() {
            let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", format!("+{c}"));
        }
    }
    Ok(())
}
