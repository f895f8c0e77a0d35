//! Starting a setup process (`husk-agent __husk_setup`) from the multi-threaded agent and
//! following its report until the container process is ready.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};

use super::stdio::ChildStdio;
use crate::error::{Error, Result};
use crate::reaper::Reaper;
use crate::setup::config::{LaunchConfig, SyncMessage, SETUP_ARG};

/// A container process that reported `Ready` and waits for its start byte.
pub struct Launched {
    /// Its pid.
    pub pid: i32,
    /// Lets it exec; dropping it makes the process exit.
    pub start: Starter,
    /// The master of the terminal the process made in its container's devpts, if any.
    pub console: Option<OwnedFd>,
}

/// The two ends the agent holds of a process waiting to exec.
pub struct Starter {
    /// Writing one byte here lets the process exec.
    start: File,
    /// The rest of its report: EOF once `execve` succeeded (the write end is close-on-exec),
    /// or a failure line.
    sync: BufReader<File>,
}

impl Starter {
    /// Lets the process exec and returns once it has: only then is the program in charge of
    /// its signals. A container's init is PID 1 of its pid namespace, and the kernel drops a
    /// signal to it for which it has no handler, so a SIGTERM sent while the process is
    /// still the setup code (default dispositions) would be lost. runc's `start` also
    /// returns only after the exec (its exec fifo is close-on-exec).
    pub fn start(mut self) -> Result<()> {
        self.start
            .write_all(&[1])
            .map_err(|e| Error::io("start process", e))?;
        drop(self.start);
        let mut failure = None;
        for line in self.sync.lines() {
            let Ok(line) = line else { break };
            failure = Some(match serde_json::from_str::<SyncMessage>(&line) {
                Ok(SyncMessage::Invalid(m)) => Error::InvalidArgument(m),
                Ok(SyncMessage::Error(m)) => Error::Setup(m),
                Ok(other) => Error::Setup(format!("unexpected report after start: {other:?}")),
                Err(e) => Error::Setup(format!("bad report {line:?}: {e}")),
            });
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Copies descriptor `fd` of process `pid` into this process (`pidfd_getfd(2)`).
fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(Error::errno("pidfd_open", nix::errno::Errno::last()));
    }
    // SAFETY: pidfd is a new descriptor nothing else owns (it fits an int).
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags by value and
    // returns a new close-on-exec descriptor.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(Error::errno(
            "pidfd_getfd (terminal)",
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// Descriptor numbers in the setup process, in the order of [`spawn_setup`]'s `fds`.
const TARGETS: [RawFd; 6] = [0, 1, 2, 3, 4, 5];

/// Lowest descriptor used while shuffling (above every target).
const SHUFFLE_BASE: RawFd = 10;

/// forks and execs `/proc/self/exe __husk_setup` with `fds` as its descriptors 0..=5.
fn spawn_setup(fds: [RawFd; 6]) -> Result<i32> {
    let exe = CString::new("/proc/self/exe").map_err(|_| Error::Setup("exe path".into()))?;
    let arg0 = CString::new("husk-agent").map_err(|_| Error::Setup("argv".into()))?;
    let arg1 = CString::new(SETUP_ARG).map_err(|_| Error::Setup("argv".into()))?;
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    // SAFETY: the agent is multi-threaded, so the child may only make async-signal-safe
    // calls: it does fcntl, dup2, execv and _exit on data prepared before the fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::errno("fork", e))? {
        nix::unistd::ForkResult::Child => {
            let mut moved = [0; 6];
            for (i, fd) in fds.iter().enumerate() {
                // SAFETY: async-signal-safe fcntl on an fd the parent owns.
                moved[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, SHUFFLE_BASE) };
                if moved[i] < 0 {
                    // SAFETY: _exit is async-signal-safe.
                    unsafe { libc::_exit(126) };
                }
            }
            for (src, dst) in moved.iter().zip(TARGETS) {
                // SAFETY: async-signal-safe dup2; the target loses O_CLOEXEC.
                if unsafe { libc::dup2(*src, dst) } < 0 {
                    // SAFETY: _exit is async-signal-safe.
                    unsafe { libc::_exit(126) };
                }
            }
            // SAFETY: exe and argv are valid NUL-terminated strings / a NULL-terminated array
            // built before the fork; execv and _exit are async-signal-safe.
            unsafe {
                libc::execv(exe.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::errno("pipe2", e))
}

/// Runs a setup process for `cfg` with `stdio` as the container's fds 0-2 and waits until
/// the container process is ready (or failed, in which case nothing of it is left).
pub fn launch(cfg: &LaunchConfig, stdio: ChildStdio, reaper: &Reaper) -> Result<Launched> {
    let config = serde_json::to_vec(cfg).map_err(|e| Error::Setup(format!("config: {e}")))?;
    let (cfg_r, cfg_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (start_r, start_w) = pipe()?;
    let helper = spawn_setup([
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
        cfg_r.as_raw_fd(),
        sync_w.as_raw_fd(),
        start_r.as_raw_fd(),
    ])?;
    reaper.watch(helper);
    reaper.child_spawned();
    drop((stdio, cfg_r, sync_w, start_r));
    let mut cfg_w = File::from(cfg_w);
    // The helper reads the config to EOF before anything else.
    let write_result = cfg_w.write_all(&config);
    drop(cfg_w);

    // Stage 1 (Pid) and stage 2 (Ready) write independently: either may come first.
    let mut pid = None;
    let mut console = None;
    let mut ready = false;
    let mut failure = None;
    let mut sync = BufReader::new(File::from(sync_r));
    let mut line = String::new();
    loop {
        line.clear();
        // Not `lines()`: the reader is kept for the report after the start byte.
        match sync.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end();
        match serde_json::from_str::<SyncMessage>(line) {
            Ok(SyncMessage::Pid(p)) => {
                reaper.watch(p);
                pid = Some(p);
            }
            Ok(SyncMessage::Console(fd)) => console = Some(fd),
            Ok(SyncMessage::Ready) => ready = true,
            Ok(SyncMessage::Invalid(m)) => failure = Some(Error::InvalidArgument(m)),
            Ok(SyncMessage::Error(m)) => failure = Some(Error::Setup(m)),
            Err(e) => failure = Some(Error::Setup(format!("bad report {line:?}: {e}"))),
        }
        if failure.is_some() || (ready && pid.is_some()) {
            break;
        }
    }
    let mut outcome = match failure {
        Some(e) => Err(e),
        None if ready => Ok(()),
        None => Err(Error::Setup("setup process exited without a report".into())),
    };
    // Stage 1 exits right after reporting the pid.
    let _ = reaper.wait(helper, Some(Duration::from_secs(10)));
    reaper.forget(helper);
    if let Err(e) = write_result {
        if outcome.is_ok() {
            outcome = Err(Error::io("write setup config", e));
        }
    }
    // The process waits for its start byte, so its master is still open.
    let console = match (&outcome, pid, console) {
        (Ok(()), Some(p), Some(fd)) => match take_fd(p, fd) {
            Ok(master) => Some(master),
            Err(e) => {
                outcome = Err(e);
                None
            }
        },
        _ => None,
    };
    match (outcome, pid) {
        (Ok(()), Some(pid)) => Ok(Launched {
            pid,
            start: Starter {
                start: File::from(start_w),
                sync,
            },
            console,
        }),
        (Ok(()), None) => Err(Error::Setup("setup reported ready without a pid".into())),
        (Err(e), pid) => {
            if let Some(p) = pid {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                let _ = reaper.wait(p, Some(Duration::from_secs(10)));
                reaper.forget(p);
            }
            Err(e)
        }
    }
}
