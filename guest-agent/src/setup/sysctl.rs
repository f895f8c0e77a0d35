//! The spec's sysctls, written through the container's own /proc/sys.

use std::path::PathBuf;

use oci_spec::runtime::Spec;

use super::SetupError;

/// The /proc/sys path of a sysctl key ("net.ipv4.ip_forward"), refusing path tricks.
///
/// Every dot-separated part must be a plain, non-empty name: a leading dot would make the
/// path absolute (`".etc.passwd"` is `/etc/passwd`, which `join` puts in place of
/// /proc/sys), and a trailing one would name a directory.
pub fn path_of(key: &str) -> Result<PathBuf, SetupError> {
    let plain = |part: &str| !part.is_empty() && !part.contains(['/', '\0']);
    if !key.split('.').all(plain) {
        return Err(SetupError::Invalid(format!("sysctl {key:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Writes every sysctl of the spec (the container's /proc must be mounted).
pub fn apply(spec: &Spec) -> Result<(), SetupError> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    for (key, value) in sysctls.into_iter().flatten() {
        std::fs::write(path_of(key)?, value)
            .map_err(|e| SetupError::Io(format!("sysctl {key}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").expect("path"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        for bad in ["../../etc/passwd", "kernel/x", ""] {
            let err = path_of(bad).expect_err(bad);
            assert!(
                matches!(&err, SetupError::Invalid(m) if *m == format!("sysctl {bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    /// A key with a leading dot mapped outside /proc/sys (`join` of an absolute path replaces
    /// the base); the `agent_spec` fuzz target checks the property for any key.
    #[test]
    fn keys_with_empty_parts_are_refused() {
        for bad in [".etc.passwd", ".", "kernel.", "kernel..x", "net.ipv4\0.x"] {
            assert!(
                matches!(path_of(bad), Err(SetupError::Invalid(_))),
                "{bad:?} maps to {:?}",
                path_of(bad)
            );
        }
    }
}
