//! Dropping every capability and setting no_new_privs, once husk-vmm has done everything
//! that needs privilege (opening `/dev/kvm`, binding sockets, building the jail).
//!
//! husk-vmm keeps uid 0: the pod directory (0700) and the sockets in it (0600) are owned by
//! root, and the vsock muxer connects to the host-side sockets `<vsock socket>_<port>` for
//! as long as the VM runs. A process of uid 0 with no capabilities still passes the owner
//! checks on root's own files, but nothing beyond them (no `CAP_DAC_OVERRIDE`, no
//! `CAP_SYS_ADMIN`, ...). Running as an unprivileged user is therefore not practical here;
//! an empty capability set, no_new_privs, the seccomp filters and the jail take its place.
//!
//! Plain `capset`/`prctl` through `libc` (already a dependency) rather than a crate: the
//! whole job is a few calls.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SETPCAP`: needed to shrink the bounding set.
const CAP_SETPCAP: u32 = 8;
/// Capability numbers are below 64 (two 32-bit words).
const CAP_MAX: u32 = 64;

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A `prctl` failed.
    #[error("prctl({0}): {1}")]
    Prctl(&'static str, io::Error),
    /// `capget`/`capset` failed.
    #[error("{0}: {1}")]
    Capset(&'static str, io::Error),
    /// A capability set was not empty after the drop.
    #[error("capabilities left after dropping them: effective {0:#x}, permitted {1:#x}")]
    Left(u64, u64),
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets.
pub fn current() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are valid for capget's version 3 layout (one header, two
    // data words), and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

fn prctl(what: &'static str, op: libc::c_int, arg: libc::c_ulong) -> Result<i32, CapsError> {
    // SAFETY: the prctl operations used here take integer arguments only.
    let rc = unsafe { libc::prctl(op, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        return Err(CapsError::Prctl(what, io::Error::last_os_error()));
    }
    Ok(rc)
}

/// Empties the bounding set, if this process may (it holds `CAP_SETPCAP`). Without it, the
/// process holds nothing that the bounding set could keep it from regaining: with
/// no_new_privs set, `execve` grants no capabilities.
fn drop_bounding_set(effective: u64) -> Result<(), CapsError> {
    if effective & (1 << CAP_SETPCAP) == 0 {
        return Ok(());
    }
    for cap in 0..CAP_MAX {
        // SAFETY: PR_CAPBSET_READ takes an integer and reads nothing else.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if held < 0 {
            // EINVAL: past the last capability this kernel knows.
            break;
        }
        if held == 1 {
            prctl(
                "PR_CAPBSET_DROP",
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
            )?;
        }
    }
    Ok(())
}

/// Drops every capability of the calling thread (effective, permitted, inheritable,
/// ambient and, when allowed, the bounding set) and sets no_new_privs. Threads created
/// afterwards inherit both, so this runs on the main thread before any other starts.
pub fn drop_all() -> Result<(), CapsError> {
    let (effective, _, _) = current().map_err(|e| CapsError::Capset("capget", e))?;
    drop_bounding_set(effective)?;
    prctl(
        "PR_CAP_AMBIENT_CLEAR_ALL",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data have capset's version 3 layout and live across the call; the
    // kernel only reads data.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(CapsError::Capset("capset", io::Error::last_os_error()));
    }
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    let (effective, permitted, _) = current().map_err(|e| CapsError::Capset("capget", e))?;
    if effective != 0 || permitted != 0 {
        return Err(CapsError::Left(effective, permitted));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{child_passes, in_child};

    /// The `<field>:` line of a /proc status file.
    fn status_field(status: &str, field: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{field} missing from the status file"))
            .trim()
            .to_string()
    }

    #[test]
    fn drop_all_leaves_no_capability_and_sets_no_new_privs() {
        if !in_child() {
            return child_passes(
                module_path!(),
                "drop_all_leaves_no_capability_and_sets_no_new_privs",
                &[],
            );
        }
        let euid = unsafe_geteuid();
        assert_eq!(
            euid, 0,
            "this test drops the capabilities of root: needs root"
        );
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        let ours = dir.path().join("ours");
        for f in [&theirs, &ours] {
            std::fs::write(f, b"x").unwrap();
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_ne!(status_field(&before, "CapEff"), "0000000000000000");
        assert_eq!(std::fs::read(&theirs).unwrap(), b"x", "root reads any file");

        // Capabilities are per-thread: this (test) thread drops them, and reads its own.
        drop_all().unwrap();
        let after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(&after, field), "0000000000000000", "{field}");
        }
        assert_eq!(status_field(&after, "NoNewPrivs"), "1");
        // Still uid 0, but without CAP_DAC_OVERRIDE: another owner's 0600 file is closed,
        // root's own stays open (what the vsock muxer relies on).
        let err = std::fs::read(&theirs).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        assert_eq!(std::fs::read(&ours).unwrap(), b"x");
    }

    fn unsafe_geteuid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }
}
