//! Where a pod's host cgroup goes, as pure functions over strings: the spec's
//! `linux.cgroupsPath` in its two forms, validated, and the placement without one.

use std::path::{Component, Path, PathBuf};

use super::CgroupError;

/// The sandbox spec's `linux.cgroupsPath`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// A cgroupfs path (`/kubepods/besteffort/pod123/abc`): absolute from the cgroup root,
    /// or relative to where husk puts pods without a path (`default_parent`).
    Cgroupfs(PathBuf),
    /// systemd's `slice:prefix:name` (containerd's CRI plugin with `SystemdCgroup = true`).
    Systemd {
        /// The slice, e.g. `kubepods-besteffort-pod123.slice` (empty: `system.slice`).
        slice: String,
        /// The scope's prefix, e.g. `cri-containerd`.
        prefix: String,
        /// The scope's name (the container id).
        name: String,
    },
}

fn invalid(path: &str, why: &str) -> CgroupError {
    CgroupError::InvalidPath {
        path: path.to_string(),
        why: why.to_string(),
    }
}

/// Parses `linux.cgroupsPath`; `None` for an empty one. The systemd form is recognised by
/// its shape (not absolute, exactly two colons), as the path itself says which driver made
/// it and containerd does not tell the shim.
pub fn parse(text: &str) -> Result<Option<CgroupsPath>, CgroupError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.contains('\0') {
        return Err(invalid(text, "contains a NUL byte"));
    }
    let parts: Vec<&str> = text.split(':').collect();
    if !text.starts_with('/') && parts.len() == 3 {
        let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
        if !slice.is_empty() {
            expand_slice(slice).map_err(|why| invalid(text, &why))?;
        }
        for (what, v) in [("prefix", prefix), ("name", name)] {
            if v.is_empty() || v.contains('/') || v == "." || v == ".." {
                return Err(invalid(text, &format!("bad systemd scope {what} {v:?}")));
            }
        }
        return Ok(Some(CgroupsPath::Systemd {
            slice: slice.to_string(),
            prefix: prefix.to_string(),
            name: name.to_string(),
        }));
    }
    let names = text.strip_prefix('/').unwrap_or(text);
    if names.is_empty() {
        return Err(invalid(text, "names no cgroup below the root"));
    }
    for name in names.split('/') {
        match name {
            "" => return Err(invalid(text, "empty name (a '//' or a trailing '/')")),
            "." | ".." => return Err(invalid(text, "'.' and '..' are not allowed")),
            _ => {}
        }
    }
    let path = PathBuf::from(text);
    Ok(Some(CgroupsPath::Cgroupfs(path)))
}

/// systemd's slice nesting: `a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`;
/// `-.slice` is the root. Errors say what is wrong with the name.
pub fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("slice {slice:?} does not end in .slice"));
    };
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return Err(format!("bad slice name {slice:?}"));
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

/// The shim's own cgroup from `/proc/self/cgroup` text (its cgroup v2 line, `0::/path`).
pub fn own_cgroup(proc_self_cgroup: &str) -> Result<PathBuf, CgroupError> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| p.is_absolute())
        .ok_or(CgroupError::NoOwnCgroup)
}

/// Where husk puts pods whose spec names no cgroup: the shim's own cgroup if it is the
/// root, else its parent. Not below the shim's own cgroup: that one holds processes (the
/// shim, and containerd when the shim runs in containerd's cgroup), and cgroup v2 lets a
/// cgroup with processes enable no controller for its children ("no internal processes"),
/// so limits there would be impossible. Its parent holds no process once it has children
/// with controllers, which is how systemd and the kubelet lay out theirs.
pub fn default_parent(own: &Path) -> PathBuf {
    own.parent()
        .map_or_else(|| own.to_path_buf(), Path::to_path_buf)
}

/// The cgroup of a pod without `cgroupsPath`: `husk-<namespace>-<pod id>` (the namespace
/// too, as containerd allows one id in two namespaces).
pub fn default_name(namespace: &str, pod_id: &str) -> String {
    format!("husk-{namespace}-{pod_id}")
}

/// The pod's cgroup relative to the cgroup root, and the part of it that must exist
/// already (a systemd slice is made by systemd, never by husk; cgroupfs parents are made
/// as `mkdir -p` would, as runc does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The pod's cgroup, relative to the cgroup root.
    pub dir: PathBuf,
    /// The ancestor that must exist, relative to the root (empty: the root).
    pub must_exist: PathBuf,
}

/// Resolves the pod's cgroup: `path` when the spec has one, else
/// `<default parent>/husk-<namespace>-<pod id>`. `own` is the shim's own cgroup.
pub fn placement(
    path: Option<&CgroupsPath>,
    own: &Path,
    namespace: &str,
    pod_id: &str,
) -> Result<Placement, CgroupError> {
    let base = relative(&default_parent(own));
    let p = match path {
        None => {
            let name = default_name(namespace, pod_id);
            if name.contains('/') {
                return Err(invalid(&name, "a pod id may not contain '/'"));
            }
            Placement {
                dir: base.join(name),
                must_exist: base,
            }
        }
        Some(CgroupsPath::Cgroupfs(p)) if p.is_absolute() => Placement {
            dir: relative(p),
            must_exist: PathBuf::new(),
        },
        Some(CgroupsPath::Cgroupfs(p)) => Placement {
            dir: base.join(p),
            must_exist: base,
        },
        Some(CgroupsPath::Systemd {
            slice,
            prefix,
            name,
        }) => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let slice_dir = expand_slice(slice).map_err(|why| invalid(slice, &why))?;
            Placement {
                dir: slice_dir.join(format!("{prefix}-{name}.scope")),
                must_exist: slice_dir,
            }
        }
    };
    Ok(p)
}

/// `path` without its leading `/`.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn slices_nest_by_dash() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod123.slice"),
            Ok(p(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice"
            ))
        );
        assert_eq!(expand_slice("system.slice"), Ok(p("system.slice")));
        assert_eq!(expand_slice("-.slice"), Ok(p("")));
        for bad in [
            "kubepods",
            "-a.slice",
            "a-.slice",
            "a--b.slice",
            ".slice",
            "a/b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_forms_parse_and_bad_ones_are_refused() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("/kubepods/besteffort/pod123/abc"),
            Ok(Some(CgroupsPath::Cgroupfs(p(
                "/kubepods/besteffort/pod123/abc"
            ))))
        );
        assert_eq!(
            parse("kubepods-besteffort-pod123.slice:cri-containerd:abc"),
            Ok(Some(CgroupsPath::Systemd {
                slice: "kubepods-besteffort-pod123.slice".into(),
                prefix: "cri-containerd".into(),
                name: "abc".into(),
            }))
        );
        for bad in [
            "/kubepods/../../etc",
            "../escape",
            "a/./b",
            "/",
            "//",
            "x.slice:cri:../../y",
            "x.slice::abc",
            "bad:cri:abc",
            "a\0b",
        ] {
            assert!(
                matches!(parse(bad), Err(CgroupError::InvalidPath { .. })),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let hybrid = "4:memory:/x\n1:name=systemd:/y\n0::/system.slice/containerd.service\n";
        assert_eq!(
            own_cgroup(hybrid),
            Ok(p("/system.slice/containerd.service"))
        );
        assert_eq!(own_cgroup("0::/\n"), Ok(p("/")));
        assert_eq!(own_cgroup("4:memory:/x\n"), Err(CgroupError::NoOwnCgroup));
    }

    #[test]
    fn placements() {
        let containerd = p("/system.slice/containerd.service");
        // No path: a sibling of the shim's cgroup, or below the root when the shim is there.
        assert_eq!(
            placement(None, &containerd, "default", "c1"),
            Ok(Placement {
                dir: p("system.slice/husk-default-c1"),
                must_exist: p("system.slice"),
            })
        );
        assert_eq!(
            placement(None, &p("/"), "k8s.io", "c1").map(|x| x.dir),
            Ok(p("husk-k8s.io-c1"))
        );
        let cgroupfs = parse("/kubepods/besteffort/pod123/abc").expect("parse");
        assert_eq!(
            placement(cgroupfs.as_ref(), &containerd, "k8s.io", "abc"),
            Ok(Placement {
                dir: p("kubepods/besteffort/pod123/abc"),
                must_exist: p(""),
            })
        );
        let relative = parse("pods/abc").expect("parse");
        assert_eq!(
            placement(relative.as_ref(), &containerd, "k8s.io", "abc").map(|x| x.dir),
            Ok(p("system.slice/pods/abc"))
        );
        let systemd = parse("kubepods-besteffort-pod123.slice:cri-containerd:abc").expect("parse");
        assert_eq!(
            placement(systemd.as_ref(), &containerd, "k8s.io", "abc"),
            Ok(Placement {
                dir: p("kubepods.slice/kubepods-besteffort.slice/\
                        kubepods-besteffort-pod123.slice/cri-containerd-abc.scope"),
                must_exist: p("kubepods.slice/kubepods-besteffort.slice/\
                               kubepods-besteffort-pod123.slice"),
            })
        );
        let no_slice = parse(":cri-containerd:abc").expect("parse");
        assert_eq!(
            placement(no_slice.as_ref(), &containerd, "k8s.io", "abc").map(|x| x.dir),
            Ok(p("system.slice/cri-containerd-abc.scope"))
        );
    }
}
