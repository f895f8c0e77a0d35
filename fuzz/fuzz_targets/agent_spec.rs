//! What the guest agent does with a Create request before anything runs: the container id
//! check and the spec checks and conversions that need no system call (capabilities,
//! mount options, rootfs propagation, seccomp compilation, sysctl paths, namespaces).
//! The shim sends these bytes, and a compromised or buggy shim may send anything. Input:
//! the id, a newline, then the spec JSON.
#![no_main]

use std::path::{Component, Path};

use husk_agent::container::spec::{check_id, has_namespace, load};
use husk_agent::setup::caps::Masks;
use husk_agent::setup::mounts::parse_options;
use husk_agent::setup::propagation::root_flags;
use husk_agent::setup::seccomp::Filter;
use husk_agent::setup::sysctl::path_of;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// An id that passes the check names exactly one entry of a directory.
fn id_is_one_name(id: &str) {
    let mut c = Path::new(id).components();
    assert!(
        matches!((c.next(), c.next()), (Some(Component::Normal(n)), None) if n == id),
        "id {id:?} is not a single file name"
    );
}

fn spec_checks(spec: &Spec) {
    let process = spec.process().as_ref().expect("load checked the process");
    let _ = Masks::from_spec(process.capabilities().as_ref());
    for m in spec.mounts().iter().flatten() {
        let _ = parse_options(m.options().as_deref().unwrap_or_default());
    }
    let Some(linux) = spec.linux() else {
        return;
    };
    let _ = root_flags(linux.rootfs_propagation().as_deref());
    if let Some(seccomp) = linux.seccomp() {
        let _ = Filter::compile(seccomp, true);
    }
    for key in linux.sysctl().iter().flat_map(|s| s.keys()) {
        if let Ok(path) = path_of(key) {
            // A sysctl is written below /proc/sys and nowhere else.
            let rest = path.strip_prefix("/proc/sys").expect("below /proc/sys");
            assert!(
                rest.components().next().is_some()
                    && rest.components().all(|c| matches!(c, Component::Normal(_))),
                "sysctl {key:?} maps to {path:?}"
            );
        }
    }
    for t in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::User,
    ] {
        let _ = has_namespace(spec, t);
    }
}

fuzz_target!(|data: &[u8]| {
    let (id, json) = match data.iter().position(|b| *b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(id) = std::str::from_utf8(id) {
        if check_id("id", id).is_ok() {
            id_is_one_name(id);
        }
    }
    // An empty spec makes the agent read config.json from the share: not a pure path.
    if json.is_empty() {
        return;
    }
    if let Ok(spec) = load(Path::new("/nonexistent-share"), "c", json) {
        spec_checks(&spec);
    }
});
