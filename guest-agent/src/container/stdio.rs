//! The standard streams of one container process, as the agent holds them: pipes, or the
//! master side of a pseudo terminal.

use husk_lock::MutexExt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::error::{Error, Result};

/// The VEOF character (^D): end of input on a terminal in canonical mode.
const VEOF: u8 = 0x04;

/// Default read chunk when the caller gives none.
const DEFAULT_CHUNK: usize = 64 * 1024;

/// The agent's ends of a process's streams.
pub enum ProcessIo {
    /// Three pipes; stdout and stderr stay apart.
    Pipes {
        /// Write end of stdin; `None` once closed.
        stdin: Mutex<Option<File>>,
        /// Read end of stdout.
        stdout: File,
        /// Read end of stderr.
        stderr: File,
    },
    /// A pseudo terminal: input and output both go through the master.
    Terminal {
        /// The master side.
        master: File,
    },
}

/// The child's ends: what becomes its fds 0, 1 and 2.
pub type ChildStdio = [OwnedFd; 3];

fn pipe() -> Result<(File, File)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::errno("pipe2", e))?;
    Ok((File::from(r), File::from(w)))
}

fn dup(f: &OwnedFd) -> Result<OwnedFd> {
    f.try_clone().map_err(|e| Error::io("dup", e))
}

impl ProcessIo {
    /// Creates the streams; returns the agent's side and the child's side.
    pub fn new(terminal: bool) -> Result<(ProcessIo, ChildStdio)> {
        if terminal {
            let pty = nix::pty::openpty(None, None).map_err(|e| Error::errno("openpty", e))?;
            for fd in [&pty.master, &pty.slave] {
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                )
                .map_err(|e| Error::errno("cloexec pty", e))?;
            }
            let slave = pty.slave;
            let child = [dup(&slave)?, dup(&slave)?, slave];
            Ok((
                ProcessIo::Terminal {
                    master: File::from(pty.master),
                },
                child,
            ))
        } else {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            Ok((
                ProcessIo::Pipes {
                    stdin: Mutex::new(Some(in_w)),
                    stdout: out_r,
                    stderr: err_r,
                },
                [in_r.into(), out_w.into(), err_w.into()],
            ))
        }
    }

    /// The terminal whose master is `console` (made by the process in its container's
    /// devpts) instead of these streams; unchanged without one.
    pub fn with_console(self, console: Option<OwnedFd>) -> ProcessIo {
        match console {
            Some(master) => ProcessIo::Terminal {
                master: File::from(master),
            },
            None => self,
        }
    }

    /// Writes some of `data` to stdin; returns how much was taken.
    pub fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        match self {
            ProcessIo::Pipes { stdin, .. } => {
                let mut guard = stdin.locked();
                let Some(w) = guard.as_mut() else {
                    return Err(Error::FailedPrecondition("stdin is closed".into()));
                };
                w.write(data).map_err(|e| Error::io("write stdin", e))
            }
            ProcessIo::Terminal { master } => (&*master)
                .write(data)
                .map_err(|e| Error::io("write terminal", e)),
        }
    }

    /// Ends stdin: closes the pipe, or sends VEOF to the terminal.
    pub fn close_stdin(&self) -> Result<()> {
        match self {
            ProcessIo::Pipes { stdin, .. } => {
                stdin.locked().take();
                Ok(())
            }
            ProcessIo::Terminal { master } => (&*master)
                .write_all(&[VEOF])
                .map_err(|e| Error::io("write VEOF", e)),
        }
    }

    fn read_from(mut f: &File, max: usize) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; if max == 0 { DEFAULT_CHUNK } else { max }];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A pty master reads EIO once every slave fd is closed.
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => return Ok(None),
                Err(e) => return Err(Error::io("read stream", e)),
            }
        }
    }

    /// Reads stdout (the terminal's output for a terminal process); `None` at EOF.
    pub fn read_stdout(&self, max: usize) -> Result<Option<Vec<u8>>> {
        match self {
            ProcessIo::Pipes { stdout, .. } => Self::read_from(stdout, max),
            ProcessIo::Terminal { master } => Self::read_from(master, max),
        }
    }

    /// Reads stderr; a terminal process has none (immediate EOF).
    pub fn read_stderr(&self, max: usize) -> Result<Option<Vec<u8>>> {
        match self {
            ProcessIo::Pipes { stderr, .. } => Self::read_from(stderr, max),
            ProcessIo::Terminal { .. } => Ok(None),
        }
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let ProcessIo::Terminal { master } = self else {
            return Err(Error::FailedPrecondition("process has no terminal".into()));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that lives across the call; fd is the master.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::errno("TIOCSWINSZ", Errno::last()));
        }
        Ok(())
    }
}
