//! The spec's sysctls, written through the container's own /proc/sys.

use std::path::PathBuf;

use oci_spec::runtime::Spec;

use super::SetupError;

/// The /proc/sys path of a sysctl key ("net.ipv4.ip_forward"), refusing path tricks.
pub fn path_of(key: &str) -> Result<PathBuf, SetupError> {
    if key.is_empty() || key.contains("..") || key.contains('/') {
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
}
