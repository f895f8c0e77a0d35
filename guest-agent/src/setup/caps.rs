//! Linux capabilities: names, the bounding set, capset(2) and the ambient set.

use std::collections::HashSet;

use nix::errno::Errno;
use oci_spec::runtime::{Capability, LinuxCapabilities};

/// Errors applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A capability name this runtime does not know.
    #[error("unknown capability {0}")]
    Unknown(String),
    /// A prctl or capset call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// The call.
        what: &'static str,
        /// Its errno.
        errno: Errno,
    },
}

/// Capability names in kernel order (index = capability number).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability given by its OCI name ("CAP_CHOWN").
pub fn number(name: &str) -> Option<u32> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

fn mask(set: Option<&HashSet<Capability>>) -> Result<u64, CapsError> {
    let mut bits = 0u64;
    for cap in set.into_iter().flatten() {
        let name = cap.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{}", name.to_uppercase())
        };
        let nr = number(&name).ok_or(CapsError::Unknown(name))?;
        bits |= 1 << nr;
    }
    Ok(bits)
}

/// The capability masks of a process, as bit sets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Masks {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

impl Masks {
    /// Masks from the OCI capabilities (absent sets are empty).
    pub fn from_spec(caps: Option<&LinuxCapabilities>) -> Result<Self, CapsError> {
        let Some(c) = caps else {
            return Ok(Masks::default());
        };
        Ok(Masks {
            bounding: mask(c.bounding().as_ref())?,
            effective: mask(c.effective().as_ref())?,
            permitted: mask(c.permitted().as_ref())?,
            inheritable: mask(c.inheritable().as_ref())?,
            ambient: mask(c.ambient().as_ref())?,
        })
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn prctl(what: &'static str, op: libc::c_int, arg2: libc::c_ulong) -> Result<(), CapsError> {
    // SAFETY: the prctl operations used here take integer arguments only.
    let rc = unsafe { libc::prctl(op, arg2, 0, 0, 0) };
    if rc < 0 {
        return Err(CapsError::Sys {
            what,
            errno: Errno::last(),
        });
    }
    Ok(())
}

/// Drops every capability outside `bounding` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding(bounding: u64) -> Result<(), CapsError> {
    for nr in 0..=last_cap().min(63) {
        if bounding & (1 << nr) == 0 {
            let r = prctl("PR_CAPBSET_DROP", libc::PR_CAPBSET_DROP, nr.into());
            // EINVAL: the kernel does not know this capability.
            if let Err(CapsError::Sys {
                errno: Errno::EINVAL,
                ..
            }) = r
            {
                continue;
            }
            r?;
        }
    }
    Ok(())
}

/// Keeps the permitted set across setuid (call before changing ids).
pub fn keep_caps(on: bool) -> Result<(), CapsError> {
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, u64::from(on))
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

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets the effective, permitted and inheritable sets, then the ambient set.
pub fn apply(masks: &Masks) -> Result<(), CapsError> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(masks.effective, hi),
        permitted: half(masks.permitted, hi),
        inheritable: half(masks.inheritable, hi),
    });
    // SAFETY: header and data are valid repr(C) structs of the layout capset(2) expects
    // for version 3 (one header, two data elements).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(CapsError::Sys {
            what: "capset",
            errno: Errno::last(),
        });
    }
    prctl(
        "PR_CAP_AMBIENT_CLEAR_ALL",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    for nr in 0..64u32 {
        if masks.ambient & (1 << nr) != 0 {
            // Raising fails unless the capability is permitted and inheritable; like runc,
            // such entries are skipped rather than failing the container.
            // SAFETY: integer-only prctl operation.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(nr),
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_BOGUS"), None);
    }

    #[test]
    fn masks_from_spec_json() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL"]}"#,
        )
        .expect("caps");
        let m = Masks::from_spec(Some(&caps)).expect("masks");
        assert_eq!(m.bounding, (1 << 5) | (1 << 10));
        assert_eq!(m.effective, 1 << 5);
        assert_eq!(m.permitted, 0);
    }
}
