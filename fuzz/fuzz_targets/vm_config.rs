//! The VM configuration husk-vmm reads at start (`--config`): any JSON must either be
//! refused by serde or by `validate()`, never panic. A configuration that validates must
//! survive its own JSON round trip unchanged (the shim writes it, husk-vmm reads it).
#![no_main]

use husk_vmm_api::config::VmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = serde_json::from_slice::<VmConfig>(data) else {
        return;
    };
    let valid = cfg.validate().is_ok();
    let _ = cfg.virtio_device_count();
    let json = serde_json::to_vec(&cfg).expect("encode config");
    let back: VmConfig = serde_json::from_slice(&json).expect("decode own encoding");
    assert_eq!(back, cfg);
    assert_eq!(back.validate().is_ok(), valid);
});
