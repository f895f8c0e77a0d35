//! OCI annotations the shim reads: the CRI pod identity and husk's per-pod overrides.
//!
//! A pod's annotations come from whoever creates it, not from the node's admin, so husk's
//! own (`io.husk.*`) are refused unless the config's `enable_annotations` allows them, and
//! a size above the admin caps (`max_vcpus`, `max_memory_mib`) is refused rather than
//! clamped: the pod's author learns at once why the pod does not get what it asked for.

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
/// Prefix of husk's annotations; each one a pod sets must be allowed by the config.
pub const HUSK_PREFIX: &str = "io.husk.";

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
    /// A size is above the admin's cap.
    #[error("annotation {key}={value:?} is above the cap of {cap} (config key {config_key})")]
    AboveCap {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// The cap.
        cap: u64,
        /// The config key setting the cap.
        config_key: &'static str,
    },
    /// A husk annotation the config's `enable_annotations` does not allow.
    #[error("annotation {key}={value:?} is not allowed (config enable_annotations = {allowed:?})")]
    NotAllowed {
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
        /// What the config allows.
        allowed: Vec<String>,
    },
}

/// Whether `key` matches an `enable_annotations` entry: the key itself, or a prefix of it
/// ending in `*`.
pub fn allowed_by(key: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == a,
    })
}

/// Refuses any husk annotation (`io.husk.*`) the config does not allow; other annotations
/// are not husk's to judge.
pub fn check_allowed(config: &Config, a: &HashMap<String, String>) -> Result<(), AnnotationError> {
    let mut keys: Vec<&String> = a.keys().filter(|k| k.starts_with(HUSK_PREFIX)).collect();
    keys.sort();
    match keys
        .into_iter()
        .find(|k| !allowed_by(k, &config.enable_annotations))
    {
        Some(key) => Err(AnnotationError::NotAllowed {
            key: key.clone(),
            value: a[key].clone(),
            allowed: config.enable_annotations.clone(),
        }),
        None => Ok(()),
    }
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
    /// The configured size, overridden by `io.husk.vcpus` and `io.husk.memory_mib`, once
    /// every husk annotation is allowed and within the caps.
    pub fn from_annotations(
        config: &Config,
        a: &HashMap<String, String>,
    ) -> Result<VmSize, AnnotationError> {
        check_allowed(config, a)?;
        let vcpus = parse_in(a, HUSK_VCPUS, 1..=MAX_VCPUS)?;
        let memory_mib = parse_in(a, HUSK_MEMORY_MIB, MIN_MEMORY_MIB..=MAX_MEMORY_MIB)?;
        let cap = |key: &'static str, n: u64, cap: u64, config_key| {
            if n > cap {
                return Err(AnnotationError::AboveCap {
                    key,
                    value: a[key].clone(),
                    cap,
                    config_key,
                });
            }
            Ok(())
        };
        if let Some(n) = vcpus {
            cap(HUSK_VCPUS, n.into(), config.vcpu_cap().into(), "max_vcpus")?;
        }
        if let Some(n) = memory_mib {
            cap(HUSK_MEMORY_MIB, n, config.max_memory_mib, "max_memory_mib")?;
        }
        Ok(VmSize {
            vcpus: vcpus.unwrap_or(config.vcpus),
            memory_mib: memory_mib.unwrap_or(config.memory_mib),
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
        // The vCPU cap set, so that the test does not depend on the host's CPU count.
        let c = Config {
            max_vcpus: MAX_VCPUS,
            ..Config::default()
        };
        let s = VmSize::from_annotations(&c, &map(&[])).expect("defaults");
        assert_eq!((s.vcpus, s.memory_mib), (c.vcpus, c.memory_mib));
        let s = VmSize::from_annotations(&c, &map(&[(HUSK_VCPUS, "2"), (HUSK_MEMORY_MIB, "512")]))
            .expect("overrides");
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
    }

    #[test]
    fn sizes_above_the_caps_are_refused_with_key_value_and_cap() {
        let c = Config {
            max_vcpus: 2,
            max_memory_mib: 1024,
            ..Config::default()
        };
        let err = VmSize::from_annotations(&c, &map(&[(HUSK_VCPUS, "3")])).expect_err("3 > 2");
        assert_eq!(
            err,
            AnnotationError::AboveCap {
                key: HUSK_VCPUS,
                value: "3".into(),
                cap: 2,
                config_key: "max_vcpus",
            }
        );
        let text = err.to_string();
        assert!(text.contains("io.husk.vcpus") && text.contains("\"3\"") && text.contains('2'));
        let err = VmSize::from_annotations(&c, &map(&[(HUSK_MEMORY_MIB, "2048")]))
            .expect_err("2048 > 1024");
        assert_eq!(
            err,
            AnnotationError::AboveCap {
                key: HUSK_MEMORY_MIB,
                value: "2048".into(),
                cap: 1024,
                config_key: "max_memory_mib",
            }
        );
        let at_cap = map(&[(HUSK_VCPUS, "2"), (HUSK_MEMORY_MIB, "1024")]);
        let s = VmSize::from_annotations(&c, &at_cap).expect("at the caps");
        assert_eq!((s.vcpus, s.memory_mib), (2, 1024));
    }

    #[test]
    fn husk_annotations_need_the_allow_list() {
        let c = Config::default();
        // A typo or an annotation husk does not allow by default.
        let err = VmSize::from_annotations(&c, &map(&[("io.husk.vcpu", "2")])).expect_err("typo");
        assert_eq!(
            err,
            AnnotationError::NotAllowed {
                key: "io.husk.vcpu".into(),
                value: "2".into(),
                allowed: c.enable_annotations.clone(),
            }
        );
        assert!(err.to_string().contains("io.husk.vcpu"), "{err}");
        // Annotations that are not husk's pass untouched.
        VmSize::from_annotations(&c, &map(&[("io.kubernetes.cri.sandbox-name", "p")]))
            .expect("not husk's");
        // Sizing refused by an empty allow-list; a prefix allows all below it.
        let none = Config {
            enable_annotations: Vec::new(),
            ..Config::default()
        };
        assert!(matches!(
            VmSize::from_annotations(&none, &map(&[(HUSK_VCPUS, "1")])),
            Err(AnnotationError::NotAllowed { ref key, .. }) if key == HUSK_VCPUS
        ));
        let all = Config {
            enable_annotations: vec!["io.husk.*".into()],
            ..Config::default()
        };
        VmSize::from_annotations(&all, &map(&[(HUSK_VCPUS, "1"), ("io.husk.x", "y")]))
            .expect("prefix");
    }

    #[test]
    fn bad_sizes_are_named_in_the_error() {
        let c = Config {
            max_vcpus: MAX_VCPUS,
            ..Config::default()
        };
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
