//! Loading and checking a container's OCI spec before anything runs.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Longest container or exec id accepted.
const MAX_ID_LEN: usize = 128;

/// Checks that an id is usable as a file name: `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("bad {what} {id:?}")))
    }
}

/// Parses the spec JSON, or reads `<share>/<id>/config.json` when it is empty.
pub fn load(share: &Path, id: &str, json: &[u8]) -> Result<Spec> {
    let owned;
    let bytes = if json.is_empty() {
        let path = share.join(id).join("config.json");
        owned = std::fs::read(&path)
            .map_err(|e| Error::InvalidArgument(format!("read {path:?}: {e}")))?;
        &owned[..]
    } else {
        json
    };
    let spec: Spec =
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("spec: {e}")))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("spec has no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidArgument("spec process has no args".into()));
    }
    Ok(spec)
}

/// The absolute root filesystem of the container, which must lie inside the share.
pub fn resolve_rootfs(share: &Path, id: &str, spec: &Spec) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("spec has no root".into()))?;
    let path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        share.join(id).join(root.path())
    };
    let share = share
        .canonicalize()
        .map_err(|e| Error::Unavailable(format!("share {share:?}: {e}")))?;
    let real = path
        .canonicalize()
        .map_err(|e| Error::InvalidArgument(format!("rootfs {path:?}: {e}")))?;
    if !real.starts_with(&share) || real == share {
        return Err(Error::InvalidArgument(format!(
            "rootfs {real:?} is outside the share {share:?}"
        )));
    }
    if !real.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "rootfs {real:?} is not a directory"
        )));
    }
    Ok(real)
}

/// Whether the spec lists a namespace of this type (new, or joined through a path), i.e. the
/// container does not stay in the agent's.
pub fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|n| n.typ() == typ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("id", "abc-1.2_x").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b"] {
            assert!(
                matches!(check_id("id", bad), Err(Error::InvalidArgument(m)) if m == format!("bad id {bad:?}")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spec_without_process_is_invalid() {
        let err = load(Path::new("/nonexistent"), "x", br#"{"ociVersion":"1.0.2"}"#)
            .expect_err("no process");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "spec has no process"),
            "{err}"
        );
    }

    #[test]
    fn rootfs_outside_share_is_refused() {
        let share = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(share.path().join("c1/rootfs")).expect("mkdir");
        let spec = |root: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"{root}"}},"process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}}}}}}"#
            ))
            .expect("spec")
        };
        let ok = resolve_rootfs(share.path(), "c1", &spec("rootfs")).expect("inside");
        assert!(ok.ends_with("c1/rootfs"));
        let out = outside.path().display().to_string();
        for root in [out.as_str(), "../../.."] {
            let err = resolve_rootfs(share.path(), "c1", &spec(root)).expect_err(root);
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("is outside the share")),
                "{root}: {err}"
            );
        }
    }
}
