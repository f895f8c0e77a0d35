//! Private host files of a pod: directories 0700, files 0600, whatever the umask.
//!
//! The pod directory holds the VMM's control and vsock sockets, virtiofsd's socket, the
//! guest console and the logs: anyone who can reach them can drive the VM or read what the
//! guest wrote. Modes are set explicitly after creation, because the mode given at creation
//! is only an upper bound that the process umask may lower, and a file that already
//! existed keeps its old mode.
//!
//! Sockets are created by husk-vmm and virtiofsd, not by the shim: they are protected by
//! the 0700 pod directory around them (a socket cannot be connected to without search
//! permission on its directory), and the shim also narrows them to 0600 once they exist
//! ([`restrict_file`]).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the state directory and of every pod directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files of a pod (configuration, pid files, logs, sockets).
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and what is missing between `top` (the configured `state_dir`) and it,
/// each created directory 0700; `dir` itself is set to 0700 even if it existed. Existing
/// directories above `dir` keep their mode: `state_dir` may be configured to a directory
/// the administrator owns.
pub fn create_dir(top: &Path, dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    for p in dir.ancestors() {
        if p.exists() {
            break;
        }
        missing.push(p);
        if p == top {
            break;
        }
    }
    for p in missing.iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(p) {
            Ok(()) => std::fs::set_permissions(p, Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates (or truncates) `path` as a 0600 file, for a log a child process writes to.
pub fn create_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `contents` to `path` as a 0600 file.
pub fn write_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    create_file(path)?.write_all(contents)
}

/// Narrows an existing file or socket, made by another process, to 0600. Symlinks are
/// not followed: a link planted in the pod directory must not redirect the chmod.
pub fn restrict_file(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symlink",
            path.display()
        )));
    }
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    /// Set for the child process run by [`modes_hold_under_umask_0`].
    const CHILD_ENV: &str = "HUSK_PRIVATE_UMASK_CHILD";

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    /// The body of [`modes_hold_under_umask_0`]: run in a child process because the umask
    /// is process-wide and other tests run in parallel threads.
    #[test]
    #[ignore = "run by modes_hold_under_umask_0 in its own process"]
    fn umask_0_child() {
        let base = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
        // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
        unsafe { libc::umask(0) };
        let state = base.join("state");
        let pod = state.join("default/p1");
        create_dir(&state, &pod).expect("create");
        for d in [&state, &state.join("default"), &pod] {
            assert_eq!(mode(d), DIR_MODE, "{}", d.display());
        }
        write_file(&pod.join("vmm.pid"), b"1").expect("pid file");
        assert_eq!(mode(&pod.join("vmm.pid")), FILE_MODE);
        std::fs::write(pod.join("old.log"), b"").expect("old file");
        assert_eq!(mode(&pod.join("old.log")), 0o666, "umask 0 is in force");
        create_file(&pod.join("old.log")).expect("log");
        assert_eq!(
            mode(&pod.join("old.log")),
            FILE_MODE,
            "an existing file is narrowed"
        );
        let sock = std::os::unix::net::UnixListener::bind(pod.join("api.sock")).expect("sock");
        restrict_file(&pod.join("api.sock")).expect("restrict");
        assert_eq!(mode(&pod.join("api.sock")), FILE_MODE);
        drop(sock);
        std::os::unix::fs::symlink(pod.join("vmm.pid"), pod.join("link")).expect("symlink");
        assert!(
            restrict_file(&pod.join("link")).is_err(),
            "a symlink is refused"
        );
    }

    #[test]
    fn modes_hold_under_umask_0() {
        let base = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "private::tests::umask_0_child",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, base.path())
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
    }

    #[test]
    fn an_existing_state_dir_keeps_its_mode_the_pod_dir_does_not() {
        let base = tempfile::tempdir().expect("tempdir");
        let state = base.path().join("state");
        std::fs::create_dir(&state).expect("state");
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).expect("chmod");
        let pod = state.join("ns/p1");
        std::fs::create_dir_all(&pod).expect("pod");
        std::fs::set_permissions(&pod, Permissions::from_mode(0o755)).expect("chmod");
        create_dir(&state, &pod).expect("create");
        assert_eq!(mode(&state), 0o755);
        assert_eq!(mode(&pod), DIR_MODE);
    }
}
