//! virtiofsd, the vhost-user backend that exports the pod's shared directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child;
use crate::host_cgroup::CgroupProcs;

/// Errors starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// The process could not be started.
    #[error("start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited or never created its socket.
    #[error("virtiofsd did not create {socket} within {timeout:?}{detail}")]
    NoSocket {
        /// The socket.
        socket: PathBuf,
        /// How long it was given.
        timeout: Duration,
        /// Exit status and log, when known.
        detail: String,
    },
}

/// virtiofsd's arguments for exporting `shared` on `socket`.
pub fn args(socket: &Path, shared: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", shared.display()),
        "--sandbox=none".into(),
        "--cache=auto".into(),
        // Container rootfs directories are mounts below the shared directory. Classic
        // O_PATH inode tracking and no guest-side submounts make them plain directories
        // to the guest (file handles + announced submounts gave the guest ESTALE on them).
        "--inode-file-handles=never".into(),
        "--no-announce-submounts".into(),
    ]
}

/// Starts virtiofsd and waits until its socket exists.
pub fn start(
    binary: &Path,
    socket: &Path,
    shared: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Child, VirtiofsdError> {
    let mut proc = spawn(binary, socket, shared, log, None)?;
    wait_socket(&mut proc, socket, log, timeout)?;
    Ok(proc)
}

/// Starts virtiofsd without waiting for its socket, so that the VMM can start
/// meanwhile (it retries connecting); [`wait_socket`] checks on it later. It runs in
/// `cgroup` when given (the pod's host cgroup).
pub fn spawn(
    binary: &Path,
    socket: &Path,
    shared: &Path,
    log: &Path,
    cgroup: Option<&CgroupProcs>,
) -> Result<Child, VirtiofsdError> {
    let spawn_err = |source| VirtiofsdError::Spawn {
        binary: binary.to_path_buf(),
        source,
    };
    let out = crate::private::create_file(log).map_err(spawn_err)?;
    let err = out.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(binary);
    cmd.args(args(socket, shared))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    child::spawn_tied_in(cmd, cgroup).map_err(spawn_err)
}

/// Waits until virtiofsd (`proc`, logging to `log`) has created `socket`; on
/// failure stops it and reports its exit status and log.
pub fn wait_socket(
    proc: &mut Child,
    socket: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(), VirtiofsdError> {
    let deadline = Instant::now() + timeout;
    loop {
        if socket.exists() {
            return Ok(());
        }
        let exited = matches!(proc.try_wait(), Ok(Some(_)));
        if exited || Instant::now() >= deadline {
            let status = proc.try_wait().ok().flatten();
            child::stop(proc, Duration::from_millis(200));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(VirtiofsdError::NoSocket {
                socket: socket.to_path_buf(),
                timeout,
                detail: match status {
                    Some(st) => format!(" (exited: {st}; log: {})", text.trim()),
                    None => String::new(),
                },
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_export_the_share_without_sandbox() {
        let a = args(Path::new("/s/fs.sock"), Path::new("/s/shared"));
        assert!(a.contains(&"--socket-path=/s/fs.sock".to_string()));
        assert!(a.contains(&"--shared-dir=/s/shared".to_string()));
        assert!(a.contains(&"--sandbox=none".to_string()));
        assert!(a.contains(&"--no-announce-submounts".to_string()));
    }

    #[test]
    fn a_backend_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = start(
            Path::new("false"),
            &dir.path().join("fs.sock"),
            dir.path(),
            &dir.path().join("log"),
            Duration::from_secs(10),
        )
        .expect_err("false exits");
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
