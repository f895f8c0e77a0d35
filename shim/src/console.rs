//! The guest console on the host: what the guest writes there is guest-controlled, so the
//! shim keeps only what it needs unless `debug_console` asks for the whole console.
//!
//! husk-vmm appends the console to `<pod>/console.log` (`SerialOutput::File`). The shim
//! needs it during boot only, to say why a boot failed; so after a successful boot without
//! `debug_console` it empties the file ([`after_boot`]), and it never reads more than the
//! tail of it ([`tail`]).
//!
//! While the VM runs the file is bounded by husk-vmm itself: the shim passes
//! `console_log_max_kib` as `serial_max_bytes` in `vmm.json`, and husk-vmm rotates the file
//! to `console.log.1` at that size, so a guest printing without end costs at most about
//! twice the limit on disk, debug console or not.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Reads at most the last `max` bytes of `path` (lossy UTF-8); empty if it cannot be read.
/// Only the tail is read, so a huge console costs no host memory.
pub fn tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let want = u64::try_from(max).unwrap_or(u64::MAX).min(len);
    if f.seek(SeekFrom::Start(len - want)).is_err() {
        return String::new();
    }
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    let _ = f.take(want).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// After a successful boot: without `debug_console`, empties the console log (husk-vmm
/// appends, so its next writes start again at the beginning). With it, the log is kept.
pub fn after_boot(path: &Path, debug_console: bool) -> std::io::Result<()> {
    if debug_console {
        return Ok(());
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    match std::fs::remove_file(&rotated) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f.set_len(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_only_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let mut text = "a".repeat(10_000);
        text.push_str("the end");
        std::fs::write(&p, &text).expect("write");
        assert_eq!(tail(&p, 7), "the end");
        assert_eq!(tail(&p, 100_000), text, "a short file is read whole");
        assert_eq!(tail(&dir.path().join("missing"), 10), "");
    }

    #[test]
    fn console_is_emptied_after_boot_unless_debugging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let rotated = dir.path().join("console.log.1");
        std::fs::write(&p, "boot messages").expect("write");
        std::fs::write(&rotated, "older boot messages").expect("write");
        after_boot(&p, true).expect("debug");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "boot messages");
        assert!(rotated.exists(), "debug keeps the rotated half");
        after_boot(&p, false).expect("no debug");
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 0);
        assert!(!rotated.exists(), "the rotated half goes too");
        after_boot(&dir.path().join("missing"), false).expect("a missing log is fine");
    }

    #[test]
    fn an_appending_writer_restarts_at_the_beginning_after_emptying() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let mut vmm = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .expect("open");
        vmm.write_all(&[b'x'; 4096]).expect("boot output");
        after_boot(&p, false).expect("empty");
        vmm.write_all(b"later").expect("later output");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "later");
    }
}
