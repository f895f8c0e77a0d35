//! Copying a process's standard streams between containerd's FIFOs and the agent.
//!
//! - stdout/stderr: a thread per stream calls `ReadStdout`/`ReadStderr` until the agent
//!   reports EOF and writes each chunk to the FIFO. The agent keeps its pipe until read to
//!   EOF, so everything written before exit arrives; the exit is reported only after the
//!   copy finished ([`IoRelay::wait_output`]). Without a FIFO the output is drained and
//!   dropped, so the process never blocks on a full pipe.
//! - stdin: a thread polls the FIFO and forwards with `WriteStdin`; EOF on the FIFO, or
//!   `CloseIO`, becomes `CloseStdin`. Without a stdin FIFO, stdin is closed at once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::{AgentApi, AgentError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::convert::StdioPaths;

/// How often the stdin thread checks for `CloseIO` and the end of the process.
const STDIN_POLL: Duration = Duration::from_millis(100);
/// Largest stdin chunk forwarded at once.
const STDIN_CHUNK: usize = 64 * 1024;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The copy threads of one process.
pub struct IoRelay {
    outputs_left: usize,
    done: Receiver<()>,
    close_stdin: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

struct Target {
    agent: Arc<dyn AgentApi>,
    id: String,
    exec_id: String,
}

impl Target {
    fn read(&self, s: Stream) -> Result<Option<Vec<u8>>, AgentError> {
        match s {
            Stream::Stdout => self.agent.read_stdout(&self.id, &self.exec_id, 0),
            Stream::Stderr => self.agent.read_stderr(&self.id, &self.exec_id, 0),
        }
    }
}

impl IoRelay {
    /// Starts copying for process `exec_id` (empty: init) of container `id`.
    pub fn start(agent: Arc<dyn AgentApi>, id: &str, exec_id: &str, paths: &StdioPaths) -> Self {
        let target = Arc::new(Target {
            agent,
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let (tx, done) = channel();
        let mut outputs = vec![(Stream::Stdout, paths.stdout.clone())];
        if !paths.terminal {
            outputs.push((Stream::Stderr, paths.stderr.clone()));
        }
        let outputs_left = outputs.len();
        for (stream, fifo) in outputs {
            let t = Arc::clone(&target);
            let tx = tx.clone();
            std::thread::spawn(move || {
                copy_out(&t, stream, fifo.as_deref());
                let _ = tx.send(());
            });
        }
        let close_stdin = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        match paths.stdin.clone() {
            Some(fifo) => {
                let (t, close, stop) = (Arc::clone(&target), close_stdin.clone(), stop.clone());
                std::thread::spawn(move || copy_in(&t, &fifo, &close, &stop));
            }
            None => {
                let _ = target.agent.close_stdin(&target.id, &target.exec_id);
            }
        }
        IoRelay {
            outputs_left,
            done,
            close_stdin,
            stop,
        }
    }

    /// `CloseIO`: forward what the stdin FIFO holds, then close the process's stdin.
    pub fn close_stdin(&self) {
        self.close_stdin.store(true, Ordering::SeqCst);
    }

    /// Waits up to `timeout` for stdout and stderr to be copied to EOF; true if they were.
    pub fn wait_output(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.outputs_left > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return false;
            }
            self.outputs_left -= 1;
        }
        true
    }

    /// Stops the stdin thread (the process is gone).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for IoRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn copy_out(t: &Target, stream: Stream, fifo: Option<&Path>) {
    // Opening a FIFO for writing blocks until containerd has its read end open.
    let mut out: Option<File> = fifo.and_then(|p| match OpenOptions::new().write(true).open(p) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("open {}: {e}", p.display());
            None
        }
    });
    loop {
        match t.read(stream) {
            Ok(Some(data)) => {
                if let Some(f) = out.as_mut() {
                    if let Err(e) = f.write_all(&data) {
                        tracing::warn!("{stream:?} of {}/{}: {e}", t.id, t.exec_id);
                        out = None;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("{stream:?} of {}/{} ends: {e}", t.id, t.exec_id);
                return;
            }
        }
    }
}

fn forward(t: &Target, mut data: &[u8], stop: &AtomicBool) -> Result<(), AgentError> {
    while !data.is_empty() && !stop.load(Ordering::SeqCst) {
        let n = t.agent.write_stdin(&t.id, &t.exec_id, data)?;
        if n == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        data = &data[n.min(data.len())..];
    }
    Ok(())
}

fn copy_in(t: &Target, fifo: &PathBuf, close: &AtomicBool, stop: &AtomicBool) {
    // Non-blocking open of the read end succeeds before any writer exists; poll then waits
    // for data, and reports hang-up only after a writer came and went.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("open {}: {e}", fifo.display());
            let _ = t.agent.close_stdin(&t.id, &t.exec_id);
            return;
        }
    };
    let mut buf = vec![0u8; STDIN_CHUNK];
    let timeout = PollTimeout::try_from(STDIN_POLL.as_millis()).unwrap_or(PollTimeout::MAX);
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let closing = close.load(Ordering::SeqCst);
        let ready = {
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            let wait = if closing { PollTimeout::ZERO } else { timeout };
            poll(&mut fds, wait).unwrap_or(0) > 0
        };
        if !ready {
            if closing {
                break;
            }
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if forward(t, &buf[..n], stop).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if closing {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = t.agent.close_stdin(&t.id, &t.exec_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{wait_until, FakeAgent};

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    }

    #[test]
    fn every_output_chunk_reaches_the_fifo_before_wait_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        mkfifo(&out);
        let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000]).collect();
        let agent = FakeAgent::new();
        for c in &chunks {
            agent.push_stdout(c.clone());
        }
        let reader = {
            let out = out.clone();
            std::thread::spawn(move || std::fs::read(out).expect("read fifo"))
        };
        let paths = StdioPaths {
            stdout: Some(out),
            ..Default::default()
        };
        let mut relay = IoRelay::start(agent.clone(), "c1", "", &paths);
        assert!(relay.wait_output(Duration::from_secs(10)));
        assert!(agent.stdin_closed(), "no stdin FIFO: closed");
        drop(relay);
        let got = reader.join().expect("reader");
        assert_eq!(got, chunks.concat());
    }

    #[test]
    fn stdin_is_forwarded_then_closed_on_eof() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let agent = FakeAgent::new();
        let paths = StdioPaths {
            stdin: Some(fifo.clone()),
            ..Default::default()
        };
        let mut relay = IoRelay::start(agent.clone(), "c1", "", &paths);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open fifo")
            .write_all(&data)
            .expect("write");
        wait_until("stdin closed", || agent.stdin_closed());
        assert!(agent.stdin() == data);
        assert!(relay.wait_output(Duration::from_secs(5)));
    }

    #[test]
    fn close_io_closes_stdin_while_the_writer_stays_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let agent = FakeAgent::new();
        let paths = StdioPaths {
            stdin: Some(fifo.clone()),
            ..Default::default()
        };
        let relay = IoRelay::start(agent.clone(), "c1", "", &paths);
        let mut w = OpenOptions::new().write(true).open(&fifo).expect("open");
        w.write_all(b"abc").expect("write");
        relay.close_stdin();
        wait_until("CloseIO to close stdin", || agent.stdin_closed());
        assert_eq!(agent.stdin(), b"abc");
    }
}
