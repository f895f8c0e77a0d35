//! Exactly which process a pid file means, for `shim delete` after a crash.
//!
//! A pid alone names whatever process has it now: after a crash and a reboot of the pid
//! counter it may be anyone's. So each helper is recorded with its pid, its start time
//! (field 22 of `/proc/<pid>/stat`, in clock ticks since boot: two processes that have the
//! same pid never have the same start time) and its argv. Crash cleanup opens a pidfd
//! first (which pins that one process), then checks start time and argv through `/proc`,
//! and signals through the pidfd: a process that exited in between is not replaced by
//! another with its pid.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pidfd::{PidFd, PidfdError};

/// Errors recording or reading an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A `/proc` file or the record could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `/proc/<pid>/stat` or the record is not in the expected form.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The process could not be opened or signalled.
    #[error(transparent)]
    Pidfd(#[from] PidfdError),
}

/// What identifies one process across pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (`starttime`, clock ticks after boot).
    pub start_time: u64,
    /// The program (`/proc/<pid>/exe`), for the log; not compared, since an upgrade
    /// replaces the binary under a running helper.
    pub exe: PathBuf,
    /// The arguments (`/proc/<pid>/cmdline`), compared exactly.
    pub argv: Vec<String>,
}

/// What [`kill_recorded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// The recorded process ran and was sent SIGKILL.
    Killed,
    /// Nothing with that identity runs (gone, or its pid is another process's now).
    NotRunning,
}

/// `starttime` out of the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after
/// its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; starttime is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The argv in `/proc/<pid>/cmdline` (NUL-terminated strings).
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join(name)
}

fn read(path: PathBuf) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(&path).map_err(|source| IdentityError::Io {
        what: "read",
        path,
        source,
    })
}

impl ProcessIdentity {
    /// The identity of the running process `pid`, read from `/proc`.
    pub fn of(pid: u32) -> Result<ProcessIdentity, IdentityError> {
        let stat_path = proc_file(pid, "stat");
        let stat = read(stat_path.clone())?;
        let start_time = parse_start_time(&String::from_utf8_lossy(&stat)).ok_or_else(|| {
            IdentityError::Malformed {
                path: stat_path,
                why: "no starttime field".into(),
            }
        })?;
        let argv = parse_cmdline(&read(proc_file(pid, "cmdline"))?);
        let exe = std::fs::read_link(proc_file(pid, "exe")).unwrap_or_default();
        Ok(ProcessIdentity {
            pid,
            start_time,
            exe,
            argv,
        })
    }

    /// Whether `other` (read now) is the same process as this record: same pid, same
    /// start time, same argv.
    pub fn same_process(&self, other: &ProcessIdentity) -> bool {
        self.pid == other.pid && self.start_time == other.start_time && self.argv == other.argv
    }

    /// Writes the record (0600) to `path`.
    pub fn record(&self, path: &Path) -> Result<(), IdentityError> {
        let json = serde_json::to_vec(self).map_err(|e| IdentityError::Malformed {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        crate::private::write_file(path, &json).map_err(|source| IdentityError::Io {
            what: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a record written by [`ProcessIdentity::record`].
    pub fn load(path: &Path) -> Result<ProcessIdentity, IdentityError> {
        let raw = read(path.to_path_buf())?;
        serde_json::from_slice(&raw).map_err(|e| IdentityError::Malformed {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }
}

/// How long [`ProcessIdentity::of_new`] waits for a new process's argv.
const ARGV_WAIT: Duration = Duration::from_secs(1);

impl ProcessIdentity {
    /// [`ProcessIdentity::of`] a process just spawned. `spawn` may return (vfork) before
    /// the kernel has set up the new program's argument area, and until then
    /// `/proc/<pid>/cmdline` reads empty; so an empty argv is read again, for a moment.
    pub fn of_new(pid: u32) -> Result<ProcessIdentity, IdentityError> {
        let deadline = Instant::now() + ARGV_WAIT;
        loop {
            let id = ProcessIdentity::of(pid)?;
            if !id.argv.is_empty() || Instant::now() >= deadline {
                return Ok(id);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Records the identity of the process `pid`, just spawned, at `path`; a failure is logged
/// (crash cleanup then relies on the host cgroup alone).
pub fn record_or_warn(pid: u32, path: &Path) {
    if let Err(e) = ProcessIdentity::of_new(pid).and_then(|id| id.record(path)) {
        tracing::warn!("record identity of pid {pid} in {}: {e}", path.display());
    }
}

/// SIGKILLs the process `expected` names if, and only if, it still runs: the pidfd is
/// opened first, so the process checked is the one signalled.
pub fn kill_identified(expected: &ProcessIdentity) -> Result<KillOutcome, IdentityError> {
    let fd = match PidFd::open(expected.pid) {
        Ok(fd) => fd,
        Err(PidfdError::Open { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            return Ok(KillOutcome::NotRunning)
        }
        Err(e) => return Err(e.into()),
    };
    let now = match ProcessIdentity::of(expected.pid) {
        Ok(now) => now,
        // Exited (and reaped) between the open and the read.
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(KillOutcome::NotRunning)
        }
        Err(e) => return Err(e),
    };
    if !expected.same_process(&now) {
        return Ok(KillOutcome::NotRunning);
    }
    match fd.send_signal(libc::SIGKILL) {
        Ok(()) => Ok(KillOutcome::Killed),
        Err(PidfdError::Signal { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            Ok(KillOutcome::NotRunning)
        }
        Err(e) => Err(e.into()),
    }
}

/// Crash cleanup of one helper: kills the process recorded at `path` if it is still that
/// process. A missing record means there is nothing to kill; an unreadable one (say, a pid
/// file of an older shim) is logged and left to the host cgroup's `cgroup.kill`.
pub fn kill_recorded(path: &Path) {
    let expected = match ProcessIdentity::load(path) {
        Ok(id) => id,
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("crash cleanup: {e}; leaving it to the host cgroup");
            return;
        }
    };
    match kill_identified(&expected) {
        Ok(KillOutcome::Killed) => tracing::info!(
            "crash cleanup: killed {} (pid {})",
            expected.exe.display(),
            expected.pid
        ),
        Ok(KillOutcome::NotRunning) => {}
        Err(e) => tracing::warn!("crash cleanup of pid {}: {e}", expected.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("300").spawn().expect("sleep")
    }

    fn still_runs(child: &mut Child) -> bool {
        crate::child::wait_timeout(child, Duration::from_millis(50)).is_none()
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let fields: Vec<String> = (3..=25).map(|i| i.to_string()).collect();
        let stat = format!("42 (a) b (c) {}", fields.join(" "));
        assert_eq!(parse_start_time(&stat), Some(22));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        assert_eq!(parse_start_time("no parens"), None);
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(
            parse_cmdline(b"husk-vmm\0--config\0/run/a b/vmm.json\0"),
            ["husk-vmm", "--config", "/run/a b/vmm.json"]
        );
    }

    #[test]
    fn a_record_round_trips_and_names_the_running_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = sleeper();
        let id = ProcessIdentity::of_new(child.id()).expect("identity");
        assert_eq!(id.argv, ["sleep", "300"]);
        assert!(id.start_time > 0);
        let path = dir.path().join("vmm.pid");
        id.record(&path).expect("record");
        assert_eq!(ProcessIdentity::load(&path).expect("load"), id);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_recorded_pid_with_another_start_time_is_not_killed_the_right_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("virtiofsd.pid");
        let mut child = sleeper();
        let real = ProcessIdentity::of_new(child.id()).expect("identity");

        // Same pid and argv, but another start time: a process that reused the pid.
        let reused = ProcessIdentity {
            start_time: real.start_time + 1,
            ..real.clone()
        };
        reused.record(&path).expect("record");
        kill_recorded(&path);
        assert!(
            still_runs(&mut child),
            "a process with another start time was killed"
        );

        // Same pid and start time, argv differing only in a suffix: not a substring match.
        let other_argv = ProcessIdentity {
            argv: vec!["sleep".into(), "3000".into()],
            ..real.clone()
        };
        assert_eq!(
            kill_identified(&other_argv).expect("check"),
            KillOutcome::NotRunning
        );
        assert!(
            still_runs(&mut child),
            "a process with other argv was killed"
        );

        real.record(&path).expect("record");
        kill_recorded(&path);
        assert!(
            crate::child::wait_timeout(&mut child, crate::testing::DEADLINE).is_some(),
            "the recorded process still runs"
        );
        assert_eq!(
            kill_identified(&real).expect("check"),
            KillOutcome::NotRunning
        );
    }

    #[test]
    fn a_missing_or_old_style_record_kills_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = sleeper();
        kill_recorded(&dir.path().join("none.pid"));
        let old = dir.path().join("old.pid");
        std::fs::write(&old, child.id().to_string()).expect("old pid file");
        kill_recorded(&old);
        assert!(still_runs(&mut child));
        let _ = child.kill();
        let _ = child.wait();
    }
}
