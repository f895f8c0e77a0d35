//! virtiofsd's start: from spawning it to its vhost-user socket, the time the
//! shim used to wait before starting the VMM (now overlapped with it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of one measurement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// virtiofsd could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited or did not create its socket in time.
    #[error("virtiofsd created no socket within {0:?}")]
    NoSocket(Duration),
}

/// Starts `binary` exporting `dir` (as the shim does) and returns the time
/// until its socket exists; stops it afterwards.
pub fn start_to_socket(binary: &Path, dir: &Path, timeout: Duration) -> Result<Duration, Error> {
    let socket = dir.join("fs.sock");
    let shared = dir.join("shared");
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir_all(&shared).map_err(|e| Error::Spawn(shared.display().to_string(), e))?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .args(["--sandbox=none", "--cache=auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Spawn(binary.display().to_string(), e))?;
    let result = loop {
        if socket.exists() {
            break Ok(started.elapsed());
        }
        if started.elapsed() > timeout || matches!(child.try_wait(), Ok(Some(_))) {
            break Err(Error::NoSocket(timeout));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
    result
}
