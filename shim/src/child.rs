//! Helper processes (husk-vmm, virtiofsd) that die with the shim.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)`. The kernel sends that signal when the *thread*
//! that forked the child exits, not the process, and ttrpc's worker threads come and go; so
//! every child is forked by one spawner thread that lives as long as the shim.

use husk_lock::MutexExt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use crate::host_cgroup::CgroupProcs;

type SpawnJob = (Command, Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<Sender<SpawnJob>>> = OnceLock::new();

fn spawner() -> io::Result<Sender<SpawnJob>> {
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx.locked().clone());
    }
    let (tx, rx) = channel::<SpawnJob>();
    std::thread::Builder::new()
        .name("husk-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
    let stored = SPAWNER.get_or_init(|| Mutex::new(tx));
    Ok(stored.locked().clone())
}

/// Spawns `cmd` from the spawner thread; the child is SIGKILLed when the shim dies.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    spawn_tied_in(cmd, None)
}

/// [`spawn_tied`], the child first moving itself into `cgroup` (writing `0` to its
/// `cgroup.procs`), so that it runs nothing, and allocates nothing of its own, outside it.
pub fn spawn_tied_in(mut cmd: Command, cgroup: Option<&CgroupProcs>) -> io::Result<Child> {
    if let Some(procs) = cgroup {
        let file = Arc::clone(&procs.file);
        // SAFETY: the closure runs in the forked child before exec; it calls only write(2),
        // which is async-signal-safe, on a descriptor opened before the fork, and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let n = libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl and
    // getppid, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let (tx, rx) = channel();
    spawner()?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Waits up to `timeout` for the child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps the child.
pub fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if wait_timeout(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGKILL at once and reap: for a helper whose pod is torn down because it, or its
/// guest, is gone or hung.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Finds a helper binary: the configured path, else next to the running shim, else `$PATH`.
pub fn find_helper(configured: &Path, name: &str) -> Option<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return Some(configured.to_path_buf());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_child_is_reaped_by_stop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_tied(cmd).expect("spawn sleep");
        assert!(wait_timeout(&mut child, Duration::from_millis(50)).is_none());
        stop(&mut child, Duration::from_secs(5));
        assert!(matches!(child.try_wait(), Ok(Some(_))));
    }

    #[test]
    fn helpers_are_found_by_config_then_path() {
        assert_eq!(
            find_helper(Path::new("/opt/x/husk-vmm"), "husk-vmm"),
            Some(PathBuf::from("/opt/x/husk-vmm"))
        );
        assert!(find_helper(Path::new(""), "sh").is_some());
        assert!(find_helper(Path::new(""), "no-such-helper-binary-xyz").is_none());
    }
}
