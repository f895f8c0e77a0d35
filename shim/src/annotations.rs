//! OCI annotations the shim reads: the CRI pod identity and husk's per-pod overrides.

use std::collections::HashMap;

use crate::config::{Config, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

/// CRI: `sandbox` for the pod's pause container, `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: id of the pod's sandbox container.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// husk: vCPUs of the pod's VM.
pub const HUSK_VCPUS: &str = "io.husk.vcpus";
/// husk: memory of the pod's VM in MiB.
pub const HUSK_MEMORY_MIB: &str = "io.husk.memory_mib";

/// Errors in annotations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    /// A value does not parse or is out of range.
    #[error("annotation {key}={value:?}: {message}")]
    Invalid {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

/// Which VM a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// Not part of a CRI pod: the container gets its own VM.
    Standalone,
    /// A CRI pod's sandbox (pause) container: creates the pod's VM.
    Sandbox,
    /// A CRI pod's workload container: joins the VM of `sandbox_id`.
    Member {
        /// The pod's sandbox container id.
        sandbox_id: String,
    },
}

impl PodRole {
    /// Reads the CRI annotations.
    pub fn from_annotations(a: &HashMap<String, String>) -> Result<PodRole, AnnotationError> {
        match a.get(CRI_CONTAINER_TYPE).map(String::as_str) {
            None => Ok(PodRole::Standalone),
            Some("sandbox") => Ok(PodRole::Sandbox),
            Some("container") => match a.get(CRI_SANDBOX_ID) {
                Some(id) if !id.is_empty() => Ok(PodRole::Member {
                    sandbox_id: id.clone(),
                }),
                _ => Err(AnnotationError::Invalid {
                    key: CRI_SANDBOX_ID,
                    value: String::new(),
                    message: "a CRI container needs its sandbox id".into(),
                }),
            },
            Some(other) => Err(AnnotationError::Invalid {
                key: CRI_CONTAINER_TYPE,
                value: other.to_string(),
                message: "expected \"sandbox\" or \"container\"".into(),
            }),
        }
    }

    /// The id of the pod (the VM) a container `id` with this role belongs to; shims are
    /// grouped by it.
    pub fn pod_id<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            PodRole::Standalone | PodRole::Sandbox => id,
            PodRole::Member { sandbox_id } => sandbox_id,
        }
    }
}

/// The VM size of a pod after annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

fn parse_in<T>(
    a: &HashMap<String, String>,
    key: &'static str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, AnnotationError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(value) = a.get(key) else {
        return Ok(None);
    };
    let invalid = |message: String| AnnotationError::Invalid {
        key,
        value: value.clone(),
        message,
    };
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| invalid("not a number".into()))?;
    if !range.contains(&n) {
        return Err(invalid(format!(
            "must be in {}..={}",
            range.start(),
            range.end()
        )));
    }
    Ok(Some(n))
}

impl VmSize {
    /// The configured size, overridden by `io.husk.vcpus` and `io.husk.memory_mib`.
    pub fn from_annotations(
        config: &Config,
        a: &HashMap<String, String>,
    ) -> Result<VmSize, AnnotationError> {
        Ok(VmSize {
            vcpus: parse_in(a, HUSK_VCPUS, 1..=MAX_VCPUS)?.unwrap_or(config.vcpus),
            memory_mib: parse_in(a, HUSK_MEMORY_MIB, MIN_MEMORY_MIB..=MAX_MEMORY_MIB)?
                .unwrap_or(config.memory_mib),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn roles_from_cri_annotations() {
        assert_eq!(
            PodRole::from_annotations(&map(&[])).expect("none"),
            PodRole::Standalone
        );
        assert_eq!(
            PodRole::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "sandbox")])).expect("sb"),
            PodRole::Sandbox
        );
        let member = PodRole::from_annotations(&map(&[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_SANDBOX_ID, "pod1"),
        ]))
        .expect("member");
        assert_eq!(member.pod_id("c1"), "pod1");
        assert_eq!(PodRole::Sandbox.pod_id("pod1"), "pod1");
        assert_eq!(
            PodRole::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "container")])),
            Err(AnnotationError::Invalid {
                key: CRI_SANDBOX_ID,
                value: String::new(),
                message: "a CRI container needs its sandbox id".into(),
            })
        );
        assert!(matches!(
            PodRole::from_annotations(&map(&[(CRI_CONTAINER_TYPE, "vm")])),
            Err(AnnotationError::Invalid { key: CRI_CONTAINER_TYPE, ref value, .. })
                if value == "vm"
        ));
    }

    #[test]
    fn size_defaults_and_overrides() {
        let c = Config::default();
        let s = VmSize::from_annotations(&c, &map(&[])).expect("defaults");
        assert_eq!((s.vcpus, s.memory_mib), (c.vcpus, c.memory_mib));
        let s = VmSize::from_annotations(&c, &map(&[(HUSK_VCPUS, "2"), (HUSK_MEMORY_MIB, "512")]))
            .expect("overrides");
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
    }

    #[test]
    fn bad_sizes_are_named_in_the_error() {
        let c = Config::default();
        let range = |lo: &dyn std::fmt::Display, hi: &dyn std::fmt::Display| {
            format!("must be in {lo}..={hi}")
        };
        let vcpus = range(&1, &MAX_VCPUS);
        let memory = range(&MIN_MEMORY_MIB, &MAX_MEMORY_MIB);
        for (k, v, why) in [
            (HUSK_VCPUS, "0", vcpus.as_str()),
            (HUSK_VCPUS, "lots", "not a number"),
            (HUSK_VCPUS, "65", vcpus.as_str()),
            (HUSK_MEMORY_MIB, "1", memory.as_str()),
            (HUSK_MEMORY_MIB, "-5", "not a number"),
        ] {
            let err = VmSize::from_annotations(&c, &map(&[(k, v)])).expect_err(v);
            let text = err.to_string();
            assert!(text.contains(k) && text.contains(v), "{text}");
            assert_eq!(
                err,
                AnnotationError::Invalid {
                    key: k,
                    value: v.to_string(),
                    message: why.to_string(),
                },
                "{k}={v}"
            );
        }
    }
}
