//! The guest initramfs: `husk-agent` as `/init` and the directories it
//! mounts onto.

use std::path::Path;

use crate::initramfs::{self, Compression, Initramfs};

/// Directories the agent expects to exist before it mounts anything.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("sbin", 0o755),
];

/// Builds the guest initramfs around the (static) agent binary at `agent`.
pub fn agent_initramfs(agent: &Path) -> initramfs::Result<Initramfs> {
    let mut fs = Initramfs::new();
    for (dir, perm) in MOUNT_POINTS {
        fs.dir(dir, *perm)?;
    }
    // The kernel opens /dev/console for init's stdio before anything is
    // mounted, so the node must be in the archive itself.
    fs.char_dev("dev/console", 5, 1, 0o600)?;
    fs.host_file("init", agent, 0o755)?;
    Ok(fs)
}

/// Writes the guest initramfs to `out` (gzip-compressed).
pub fn write_agent_initramfs(agent: &Path, out: &Path) -> initramfs::Result<()> {
    write_agent_initramfs_as(agent, out, Compression::Gzip)
}

/// Writes the guest initramfs to `out` with `compression`.
pub fn write_agent_initramfs_as(
    agent: &Path,
    out: &Path,
    compression: Compression,
) -> initramfs::Result<()> {
    agent_initramfs(agent)?.write_file(out, compression)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::{mode, read_maybe_gzip};

    #[test]
    fn image_has_init_console_and_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let out = dir.path().join("initrd.gz");
        write_agent_initramfs(&agent, &out).unwrap();
        let entries = read_maybe_gzip(&std::fs::read(&out).unwrap()).unwrap();
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        let init = find("init");
        assert_eq!(init.mode, mode::FILE | 0o755);
        assert_eq!(init.data, b"\x7fELF-agent");
        let console = find("dev/console");
        assert_eq!(console.mode & mode::TYPE_MASK, mode::CHAR_DEV);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        for (dir, perm) in MOUNT_POINTS {
            assert_eq!(find(dir).mode, mode::DIR | perm, "{dir}");
        }
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let err = agent_initramfs(Path::new("/nonexistent/agent")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent"), "{err}");
    }
}
