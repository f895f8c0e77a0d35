//! The setup process: `husk-agent __husk_setup`, started by the agent for every container
//! process. Being a fresh, single-threaded process, it may fork and change namespaces
//! freely, which the multi-threaded agent may not.
//!
//! Stage 1 joins the cgroup and the namespaces, then clones stage 2 with `CLONE_PARENT`
//! (so the container process is the agent's child, reaped by the agent) and, for a new
//! container, `CLONE_NEWPID` (so stage 2 is PID 1 of the container). Stage 1 reports the pid
//! and exits. Stage 2 builds the root filesystem (create) or enters the container's root
//! (exec), applies the process settings, reports `Ready`, waits for the start byte and execs.

pub mod caps;
pub mod config;
pub mod console;
pub mod loopback;
pub mod mounts;
pub mod process;
pub mod propagation;
pub mod seccomp;
pub mod sysctl;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chroot, fchdir, sethostname};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use config::{LaunchConfig, LaunchMode, SyncMessage, CONFIG_FD, START_FD, SYNC_FD};

/// Errors inside the setup process; sent to the agent as text.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, Errno),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The spec asks for something impossible or unsupported.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, SetupError>;

fn send(msg: &SyncMessage) {
    if let Ok(mut line) = serde_json::to_vec(msg) {
        line.push(b'\n');
        // SAFETY: SYNC_FD was set up by the agent; ManuallyDrop keeps it open.
        let mut f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(SYNC_FD) });
        let _ = f.write_all(&line);
    }
}

fn report(err: SetupError) -> SyncMessage {
    match err {
        SetupError::Invalid(m) => SyncMessage::Invalid(m),
        other => SyncMessage::Error(other.to_string()),
    }
}

fn fail(err: SetupError) -> ! {
    send(&report(err));
    std::process::exit(1)
}

/// Restores what the agent changed for itself and container processes must not inherit:
/// ignored signals (Rust ignores SIGPIPE), the signal mask, stray descriptors.
fn sanitize_process() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: resetting a disposition to the default has no memory-safety impact.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    );
    for fd in [CONFIG_FD, SYNC_FD, START_FD] {
        // SAFETY: sets FD_CLOEXEC on our own descriptors; no memory is touched.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: closes descriptors above START_FD, which nothing in this process uses.
    unsafe { libc::syscall(libc::SYS_close_range, START_FD + 1, u32::MAX, 0) };
    // SAFETY: umask only sets the file creation mask.
    unsafe { libc::umask(0) };
}

fn read_config() -> Result<LaunchConfig> {
    // SAFETY: CONFIG_FD was set up by the agent and is used only here.
    let mut f = unsafe { File::from_raw_fd(CONFIG_FD) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| SetupError::Io("read config".into(), e))?;
    serde_json::from_slice(&buf).map_err(|e| SetupError::Invalid(format!("config: {e}")))
}

fn join_cgroup(cgroup: Option<&Path>) -> Result<()> {
    if let Some(dir) = cgroup {
        std::fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| SetupError::Io(format!("join cgroup {dir:?}"), e))?;
    }
    Ok(())
}

fn open(path: &Path) -> Result<OwnedFd> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| SetupError::Io(format!("open {path:?}"), e))
}

fn ns_flag(t: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::User => {
            return Err(SetupError::Invalid(
                "user namespaces are not supported".into(),
            ))
        }
        #[allow(unreachable_patterns)]
        other => return Err(SetupError::Invalid(format!("namespace {other:?}"))),
    })
}

/// Stage 1 of a new container: join/create namespaces; returns the clone flags for stage 2.
fn enter_create(spec: &Spec) -> Result<CloneFlags> {
    let mut new = CloneFlags::empty();
    let mut joins = Vec::new();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let flag = ns_flag(ns.typ())?;
        match ns.path() {
            Some(p) => joins.push((open(p)?, flag)),
            None => new |= flag,
        }
    }
    for (fd, flag) in &joins {
        setns(fd, *flag).map_err(|e| SetupError::Sys(format!("setns {flag:?}"), e))?;
    }
    let pid = new & CloneFlags::CLONE_NEWPID;
    unshare(new - pid).map_err(|e| SetupError::Sys("unshare".into(), e))?;
    if new.contains(CloneFlags::CLONE_NEWNET) {
        loopback::bring_up()?;
    }
    Ok(pid)
}

/// Stage 1 of an exec: enter every namespace and the root of the container's init.
fn enter_exec(init_pid: i32) -> Result<()> {
    let proc_dir = PathBuf::from(format!("/proc/{init_pid}"));
    let root = open(&proc_dir.join("root"))?;
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut fds = Vec::new();
    for (name, flag) in kinds {
        let theirs = proc_dir.join("ns").join(name);
        let ours = Path::new("/proc/self/ns").join(name);
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if !same {
            fds.push((open(&theirs)?, flag));
        }
    }
    for (fd, flag) in &fds {
        setns(fd, *flag).map_err(|e| SetupError::Sys(format!("setns {flag:?}"), e))?;
    }
    fchdir(&root).map_err(|e| SetupError::Sys("fchdir root".into(), e))?;
    chroot(".").map_err(|e| SetupError::Sys("chroot".into(), e))?;
    nix::unistd::chdir("/").map_err(|e| SetupError::Sys("chdir /".into(), e))
}

/// `clone(2)` without a new stack: returns twice like fork.
fn clone_parent(flags: CloneFlags) -> Result<i32> {
    let flags =
        (flags | CloneFlags::CLONE_PARENT).bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, stack pointer 0 = share the copied stack) of a
    // single-threaded process; the child continues on its own copy of the address space.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if rc < 0 {
        return Err(SetupError::Sys("clone".into(), Errno::last()));
    }
    i32::try_from(rc).map_err(|_| SetupError::Invalid("clone returned a bad pid".into()))
}

/// Stage 2: everything inside the container, up to the start byte and exec.
fn stage2(cfg: LaunchConfig) -> Result<()> {
    // The terminal's master stays open (close-on-exec) until the agent has taken it.
    let (prepared, console) = match &cfg.mode {
        LaunchMode::Create { spec, rootfs } => {
            let process = spec
                .process()
                .as_ref()
                .ok_or_else(|| SetupError::Invalid("spec has no process".into()))?;
            let console = mounts::setup_rootfs(spec, rootfs, process.terminal() == Some(true))?;
            if let Some(h) = &cfg.hostname {
                sethostname(h).map_err(|e| SetupError::Sys("sethostname".into(), e))?;
            }
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
            (process::prepare(process, seccomp)?, console)
        }
        LaunchMode::Exec {
            process, seccomp, ..
        } => {
            let console = if process.terminal() == Some(true) {
                console::attach(Path::new("/dev/pts"))?
            } else {
                None
            };
            (process::prepare(process, seccomp.as_ref())?, console)
        }
    };
    if let Some(master) = &console {
        send(&SyncMessage::Console(master.as_raw_fd()));
    }
    send(&SyncMessage::Ready);
    // SAFETY: START_FD was set up by the agent and is used only here.
    let mut start = unsafe { File::from_raw_fd(START_FD) };
    let mut byte = [0u8; 1];
    match start.read(&mut byte) {
        Ok(1) => {}
        // The agent dropped the container before starting it.
        _ => std::process::exit(1),
    }
    drop(start);
    // The agent reads the sync pipe until exec closes it (close-on-exec), so a start returns
    // only once the program runs, as runc's does; a failed exec is reported there instead.
    let err = prepared.exec();
    send(&report(err));
    std::process::exit(127)
}

/// Entry point of the setup process. Never returns.
pub fn main() -> ! {
    sanitize_process();
    let cfg = read_config().unwrap_or_else(|e| fail(e));
    let clone_flags = match &cfg.mode {
        LaunchMode::Create { spec, .. } => {
            join_cgroup(cfg.cgroup.as_deref()).unwrap_or_else(|e| fail(e));
            enter_create(spec).unwrap_or_else(|e| fail(e))
        }
        LaunchMode::Exec { init_pid, .. } => {
            join_cgroup(cfg.cgroup.as_deref()).unwrap_or_else(|e| fail(e));
            enter_exec(*init_pid).unwrap_or_else(|e| fail(e));
            CloneFlags::empty()
        }
    };
    match clone_parent(clone_flags) {
        Ok(0) => {
            if let Err(e) = stage2(cfg) {
                fail(e)
            }
            std::process::exit(127)
        }
        Ok(child) => {
            send(&SyncMessage::Pid(child));
            std::process::exit(0)
        }
        Err(e) => fail(e),
    }
}
