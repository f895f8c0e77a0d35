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
        // Its own mount, pid and net namespaces, rooted at the share (pivot_root): a
        // guest that subverts it sees only the share. Mounts made below the share later
        // reach it because the share is a shared mount ([`crate::share`]).
        "--sandbox=namespace".into(),
        // Any syscall outside virtiofsd's allow-list kills it.
        "--seccomp=kill".into(),
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
    fn args_export_the_share_in_a_namespace_sandbox_with_seccomp() {
        let a = args(Path::new("/s/fs.sock"), Path::new("/s/shared"));
        assert!(a.contains(&"--socket-path=/s/fs.sock".to_string()));
        assert!(a.contains(&"--shared-dir=/s/shared".to_string()));
        assert!(a.contains(&"--sandbox=namespace".to_string()));
        assert!(a.contains(&"--seccomp=kill".to_string()));
        assert!(!a.iter().any(|x| x == "--sandbox=none"));
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

#[cfg(test)]
mod root_tests {
    use super::*;
    use crate::testing::need_root;
    use nix::mount::{mount, MsFlags};

    #[test]
    fn a_mount_made_after_start_is_seen_in_virtiofsds_namespace() {
        need_root("mounts and runs virtiofsd in namespaces");
        let binary = child::find_helper(Path::new(""), "virtiofsd")
            .or_else(|| Some(PathBuf::from("/root/.cargo/bin/virtiofsd")).filter(|p| p.is_file()))
            .expect("virtiofsd installed (scripts/install-deps.sh)");
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("pod");
        let shared = pod.join("shared");
        std::fs::create_dir_all(&shared).expect("shared");
        crate::share::make_shared(&shared).expect("make shared");
        let socket = pod.join("fs.sock");
        let log = pod.join("virtiofsd.log");
        let mut proc = start(&binary, &socket, &shared, &log, Duration::from_secs(10))
            .expect("virtiofsd starts in its namespace sandbox");

        // As a later container of the pod: its rootfs is mounted after virtiofsd started.
        let rootfs = shared.join("c2/rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs dir");
        let mounted = mount(
            Some("tmpfs"),
            &rootfs,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        );
        let seen = || {
            let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", proc.id()))
                .unwrap_or_default();
            info.lines().any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| p.ends_with("/c2/rootfs"))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut visible = false;
        while mounted.is_ok() && !visible && Instant::now() < deadline {
            visible = seen();
            std::thread::sleep(Duration::from_millis(10));
        }
        let own_ns = std::fs::read_link("/proc/self/ns/mnt").ok();
        let its_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", proc.id())).ok();
        child::stop(&mut proc, Duration::from_secs(2));
        crate::mounts::remove_tree_or_warn(&pod);
        mounted.expect("mount tmpfs");
        assert_ne!(
            own_ns, its_ns,
            "virtiofsd runs in a mount namespace of its own"
        );
        assert!(visible, "the mount reached virtiofsd's namespace");
        assert!(!pod.exists(), "cleanup unmounted and removed everything");
    }
}
