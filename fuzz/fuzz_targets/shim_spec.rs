//! The shim's conversion of a bundle's OCI spec into the spec the guest runs. The spec
//! comes from containerd, written from whatever a user or a Kubernetes manifest asked for.
//! Input: a role byte, then the spec JSON. A converted spec must name its root as
//! `rootfs`, and every host bind must come from an absolute path and land in the share's
//! volumes directory under a plain file name.
#![no_main]

use std::path::Component;

use husk_shim::annotations::PodRole;
use husk_shim::spec::{cgroups_path, guest_spec};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;

fuzz_target!(|data: &[u8]| {
    let Some((role, json)) = data.split_first() else {
        return;
    };
    let Ok(spec) = serde_json::from_slice::<Spec>(json) else {
        return;
    };
    let role = match role % 3 {
        0 => PodRole::Standalone,
        1 => PodRole::Sandbox,
        _ => PodRole::Member {
            sandbox_id: "sandbox".into(),
        },
    };
    let _ = cgroups_path(&spec);
    let Ok(g) = guest_spec(spec, &role) else {
        return;
    };
    let root = g.spec.root().as_ref().expect("converted spec has a root");
    assert_eq!(root.path().as_os_str(), "rootfs");
    for b in &g.binds {
        assert!(b.source.is_absolute(), "bind from {:?}", b.source);
        let mut c = std::path::Path::new(&b.name).components();
        assert!(
            matches!((c.next(), c.next()), (Some(Component::Normal(_)), None)),
            "volume name {:?}",
            b.name
        );
    }
});
