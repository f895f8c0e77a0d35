//! The shim's reading of a container's annotations: the pod role from the CRI ones and the
//! VM size from husk's, under the config's allow-list and caps. Annotations come from pod
//! manifests, so from users. Whatever is accepted must respect the caps.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use husk_shim::annotations::{
    check_allowed, PodRole, VmSize, CRI_CONTAINER_TYPE, CRI_SANDBOX_ID, HUSK_MEMORY_MIB, HUSK_VCPUS,
};
use husk_shim::config::Config;
use libfuzzer_sys::fuzz_target;

/// An annotation key: usually one husk or the CRI reads, sometimes any.
#[derive(Arbitrary, Debug)]
enum Key {
    ContainerType,
    SandboxId,
    Vcpus,
    MemoryMib,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    annotations: Vec<(Key, String)>,
    /// The config's `enable_annotations`.
    allowed: Vec<String>,
    max_vcpus: u32,
    max_memory_mib: u64,
}

fuzz_target!(|input: Input| {
    let a: HashMap<String, String> = input
        .annotations
        .into_iter()
        .map(|(k, v)| {
            let k = match k {
                Key::ContainerType => CRI_CONTAINER_TYPE.to_string(),
                Key::SandboxId => CRI_SANDBOX_ID.to_string(),
                Key::Vcpus => HUSK_VCPUS.to_string(),
                Key::MemoryMib => HUSK_MEMORY_MIB.to_string(),
                Key::Other(s) => s,
            };
            (k, v)
        })
        .collect();
    if let Ok(PodRole::Member { sandbox_id }) = PodRole::from_annotations(&a) {
        assert!(!sandbox_id.is_empty());
    }
    let mut config = Config {
        enable_annotations: input.allowed,
        ..Config::default()
    };
    if config.validate().is_err() {
        return;
    }
    let _ = check_allowed(&config, &a);
    config.max_vcpus = input.max_vcpus;
    config.max_memory_mib = input.max_memory_mib;
    if config.validate().is_err() {
        return;
    }
    if let Ok(size) = VmSize::from_annotations(&config, &a) {
        if a.contains_key(HUSK_VCPUS) {
            assert!(size.vcpus >= 1 && size.vcpus <= config.vcpu_cap());
        }
        if a.contains_key(HUSK_MEMORY_MIB) {
            assert!(size.memory_mib <= config.max_memory_mib);
        }
    }
});
