//! The guest console in a file of bounded size.
//!
//! Everything the guest writes to its serial port is guest-controlled: a hostile or looping
//! guest can print without end. [`CappedFile`] keeps the console file below a size limit by
//! rotating it once: at the limit the file becomes `<file>.1` (replacing an older one) and a
//! new file is started, so the newest output is always there and the console never costs
//! more than about twice the limit on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A console file that rotates at `max` bytes.
pub struct CappedFile {
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl CappedFile {
    /// Appends to `path` (created 0600 if missing), counting what it already holds.
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            max: max.max(1),
        })
    }

    /// Where the older half goes: `<file>.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = open_append(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.max {
            self.rotate()?;
        }
        // Never write past the limit in one go, so the file stays within it.
        let room = usize::try_from(self.max - self.written).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_flood_keeps_the_newest_output_within_twice_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"from before\n").unwrap();
        let mut f = CappedFile::open(&path, 1024).unwrap();
        for i in 0..10_000u32 {
            writeln!(f, "line {i}").unwrap();
        }
        f.flush().unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(CappedFile::rotated_path(&path)).unwrap();
        assert!(now.len() <= 1024, "{}", now.len());
        assert_eq!(older.len(), 1024);
        assert!(now.ends_with("line 9999\n"), "{now:?}");
        assert!(!older.contains("from before"), "rotated more than once");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// The console is written on vCPU threads: rotating it (rename, reopen) must pass their
    /// seccomp filter, or a chatty guest would kill husk-vmm.
    #[test]
    fn rotates_under_the_vcpu_filter() {
        use crate::seccomp::{ThreadFilters, ThreadKind};
        use crate::test_util::{child_passes, in_child};
        const DIR_ENV: &str = "HUSK_CONSOLE_TEST_DIR";
        if !in_child() {
            let dir = tempfile::tempdir().unwrap();
            let env = [(DIR_ENV, dir.path().as_os_str())];
            child_passes(module_path!(), "rotates_under_the_vcpu_filter", &env);
            let path = dir.path().join("console.log");
            assert_eq!(std::fs::read(&path).unwrap(), b"34");
            assert_eq!(
                std::fs::read(CappedFile::rotated_path(&path)).unwrap(),
                b"12"
            );
            return;
        }
        let dir = std::path::PathBuf::from(std::env::var_os(DIR_ENV).expect("set by the parent"));
        let mut f = CappedFile::open(&dir.join("console.log"), 2).unwrap();
        ThreadFilters::compile()
            .unwrap()
            .load(ThreadKind::Vcpu)
            .unwrap();
        f.write_all(b"1234").unwrap();
        f.flush().unwrap();
    }

    #[test]
    fn output_below_the_limit_is_appended_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = CappedFile::open(&path, 4096).unwrap();
        f.write_all(b"hello ").unwrap();
        f.write_all(b"guest\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello guest\n");
        assert!(!CappedFile::rotated_path(&path).exists());
    }
}
