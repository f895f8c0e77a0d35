//! OOM kills in container cgroups, for the `GetOomEvent` long poll.
//!
//! The kernel counts OOM kills of a cgroup v2 in `memory.events` (`oom_kill N`) and
//! reports every change of that file as a modification to inotify. One watcher thread
//! blocks on an inotify descriptor with a watch per container; when a container's file
//! changes it rereads the counter and, if it grew, queues the container's id. Without
//! inotify the thread rereads every watched file once per [`POLL_INTERVAL`] instead.

use husk_lock::{CondvarExt, MutexExt};
use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often memory.events files are reread when inotify is not available.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Most OOM events kept for a shim that does not ask (older ones are dropped).
const MAX_PENDING: usize = 1024;

/// The name of the counter of OOM kills in `memory.events`.
const OOM_KILL_KEY: &str = "oom_kill";

/// Errors of the OOM watcher.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    /// A path with a NUL byte cannot be watched.
    #[error("path {0:?} has a NUL byte")]
    BadPath(PathBuf),
    /// An inotify call failed.
    #[error("{what}: {source}")]
    Inotify {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
}

/// The `oom_kill` counter of a `memory.events` text (`None` when it has none).
pub fn oom_kills(memory_events: &str) -> Option<u64> {
    memory_events.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == OOM_KILL_KEY).then(|| words.next()?.parse().ok())?
    })
}

/// Size of `struct inotify_event` without its name.
const EVENT_HEADER: usize = 16;

/// The watch descriptors of the events in a buffer read from an inotify descriptor
/// (`struct inotify_event` records: wd, mask, cookie, len, then `len` name bytes).
/// A truncated record ends the list.
pub fn event_watches(buf: &[u8]) -> Vec<i32> {
    let mut wds = Vec::new();
    let mut rest = buf;
    while rest.len() >= EVENT_HEADER {
        let word = |i: usize| [rest[i], rest[i + 1], rest[i + 2], rest[i + 3]];
        let wd = i32::from_ne_bytes(word(0));
        let name_len = u32::from_ne_bytes(word(12)) as usize;
        let Some(next) = EVENT_HEADER.checked_add(name_len) else {
            break;
        };
        if next > rest.len() {
            break;
        }
        wds.push(wd);
        rest = &rest[next..];
    }
    wds
}

/// An inotify descriptor watching files for modification.
struct Inotify {
    file: File,
}

impl Inotify {
    fn new() -> Result<Self, OomError> {
        // SAFETY: plain syscall with flags; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(OomError::Inotify {
                what: "inotify_init1",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Inotify {
            file: File::from(fd),
        })
    }

    fn add(&self, path: &Path) -> Result<i32, OomError> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| OomError::BadPath(path.to_path_buf()))?;
        // SAFETY: c is a valid NUL-terminated string living across the call.
        let wd =
            unsafe { libc::inotify_add_watch(self.file.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(OomError::Inotify {
                what: "inotify_add_watch",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(wd)
    }

    fn remove(&self, wd: i32) {
        // SAFETY: plain syscall; an already gone watch (its cgroup removed) gives EINVAL,
        // which is ignored.
        unsafe { libc::inotify_rm_watch(self.file.as_raw_fd(), wd) };
    }

    /// Blocks until events arrive; returns their watch descriptors.
    fn read(&self) -> std::io::Result<Vec<i32>> {
        let mut buf = vec![0u8; 4096];
        let n = (&self.file).read(&mut buf)?;
        Ok(event_watches(&buf[..n]))
    }
}

/// One watched container.
struct Watch {
    id: String,
    path: PathBuf,
    wd: Option<i32>,
    kills: u64,
}

#[derive(Default)]
struct State {
    watches: Vec<Watch>,
    pending: VecDeque<String>,
}

impl State {
    /// Rereads the counter of the watch at `index`; queues an event if it grew.
    fn check(&mut self, index: usize) {
        let Some(w) = self.watches.get_mut(index) else {
            return;
        };
        let Some(kills) = std::fs::read_to_string(&w.path)
            .ok()
            .and_then(|t| oom_kills(&t))
        else {
            return;
        };
        if kills > w.kills {
            w.kills = kills;
            tracing::info!(id = w.id, kills, "OOM kill in container");
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(w.id.clone());
        }
    }
}

struct Inner {
    inotify: Option<Inotify>,
    state: Mutex<State>,
    ready: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    fn check_all(&self, wds: Option<&[i32]>) {
        let mut state = self.lock();
        let before = state.pending.len();
        for i in 0..state.watches.len() {
            let hit = match (wds, state.watches[i].wd) {
                (Some(wds), Some(wd)) => wds.contains(&wd),
                _ => true,
            };
            if hit {
                state.check(i);
            }
        }
        if state.pending.len() != before {
            self.ready.notify_all();
        }
    }

    fn run(&self) {
        let mut inotify = self.inotify.as_ref();
        loop {
            match inotify {
                Some(ino) => match ino.read() {
                    Ok(wds) => self.check_all(Some(&wds)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("inotify read: {e}; polling memory.events instead");
                        inotify = None;
                    }
                },
                None => {
                    std::thread::sleep(POLL_INTERVAL);
                    self.check_all(None);
                }
            }
        }
    }
}

/// Watches the `memory.events` files of containers and queues their OOM kills.
#[derive(Clone)]
pub struct OomWatcher {
    inner: Arc<Inner>,
}

impl OomWatcher {
    /// Starts the watcher thread (inotify, or polling where inotify is missing).
    pub fn start() -> std::io::Result<Self> {
        let inotify = Inotify::new()
            .map_err(|e| tracing::warn!("{e}: polling memory.events"))
            .ok();
        Self::start_with(inotify)
    }

    fn start_with(inotify: Option<Inotify>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            inotify,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        });
        let thread = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("oom-watch".into())
            .spawn(move || thread.run())?;
        Ok(OomWatcher { inner })
    }

    /// Watches `memory_events` (a container cgroup's `memory.events`) for container `id`;
    /// kills counted before this call are not reported.
    pub fn watch(&self, id: &str, memory_events: &Path) -> Result<(), OomError> {
        let new_wd = match &self.inner.inotify {
            Some(ino) => Some(ino.add(memory_events)?),
            None => None,
        };
        let kills = std::fs::read_to_string(memory_events)
            .ok()
            .and_then(|t| oom_kills(&t))
            .unwrap_or(0);
        let mut state = self.inner.lock();
        if let Some(i) = state.watches.iter().position(|w| w.id == id) {
            let old = state.watches.remove(i);
            if let (Some(ino), Some(wd)) = (&self.inner.inotify, old.wd) {
                // The same file gives the same descriptor: keep it.
                if Some(wd) != new_wd {
                    ino.remove(wd);
                }
            }
        }
        state.watches.push(Watch {
            id: id.to_string(),
            path: memory_events.to_path_buf(),
            wd: new_wd,
            kills,
        });
        Ok(())
    }

    /// Stops watching container `id` (its queued events stay).
    pub fn unwatch(&self, id: &str) {
        let mut state = self.inner.lock();
        // A last look, so a kill just before removal is not lost.
        if let Some(i) = state.watches.iter().position(|w| w.id == id) {
            state.check(i);
            let w = state.watches.remove(i);
            if let (Some(ino), Some(wd)) = (&self.inner.inotify, w.wd) {
                ino.remove(wd);
            }
        }
        if !state.pending.is_empty() {
            self.inner.ready.notify_all();
        }
    }

    /// The id of the next container with an OOM kill, waiting up to `wait` for one.
    pub fn next(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut state = self.inner.lock();
        loop {
            if let Some(id) = state.pending.pop_front() {
                return Some(id);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.inner.ready.wait_timeout_recovering(state, left).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn parses_the_oom_kill_counter() {
        assert_eq!(oom_kills(EVENTS), Some(1));
        assert_eq!(oom_kills("oom 3\n"), None);
        assert_eq!(oom_kills("oom_kill x\n"), None);
        assert_eq!(oom_kills("oom_kill 18446744073709551615"), Some(u64::MAX));
    }

    fn record(wd: i32, name: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&2u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        v.extend_from_slice(name);
        v
    }

    #[test]
    fn splits_inotify_records_and_stops_at_a_truncated_one() {
        let mut buf = record(3, b"");
        buf.extend(record(7, b"name\0\0\0\0"));
        assert_eq!(event_watches(&buf), vec![3, 7]);
        let mut cut = buf.clone();
        cut.extend(record(9, b"long-name"));
        cut.truncate(cut.len() - 2);
        assert_eq!(event_watches(&cut), vec![3, 7]);
        assert!(event_watches(&buf[..10]).is_empty());
    }

    fn write(path: &Path, oom_kill: u64, high: u64) {
        std::fs::write(
            path,
            format!("low 0\nhigh {high}\nmax 0\noom 0\noom_kill {oom_kill}\n"),
        )
        .expect("write memory.events");
    }

    #[test]
    fn reports_a_growing_counter_once_per_change_and_nothing_else() {
        let inotify = Inotify::new().expect("inotify");
        scenario(&OomWatcher::start_with(Some(inotify)).expect("start"));
    }

    #[test]
    fn polling_without_inotify_reports_the_same() {
        scenario(&OomWatcher::start_with(None).expect("start"));
    }

    fn scenario(w: &OomWatcher) {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.events");
        let b = dir.path().join("b.events");
        write(&a, 4, 0);
        write(&b, 0, 0);
        w.watch("a", &a).expect("watch a");
        w.watch("b", &b).expect("watch b");
        // Old kills and other counters are not OOM events.
        write(&b, 0, 5);
        write(&a, 4, 1);
        assert_eq!(w.next(POLL_INTERVAL * 2), None);
        write(&b, 2, 5);
        assert_eq!(w.next(Duration::from_secs(5)).as_deref(), Some("b"));
        assert_eq!(w.next(POLL_INTERVAL * 2), None);
        write(&a, 5, 1);
        assert_eq!(w.next(Duration::from_secs(5)).as_deref(), Some("a"));
        // A kill right before unwatch is still reported; afterwards nothing is.
        write(&b, 3, 5);
        w.unwatch("b");
        assert_eq!(w.next(Duration::from_secs(5)).as_deref(), Some("b"));
        write(&b, 4, 5);
        assert_eq!(w.next(POLL_INTERVAL * 2), None);
    }
}
