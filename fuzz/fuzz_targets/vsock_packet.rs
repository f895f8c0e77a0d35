//! The 44-byte vsock header is the first thing the device reads from every guest tx chain.
//! Decoding must accept any bytes, and encoding what was decoded must give them back
//! (nothing is lost or reordered between guest and backend).
#![no_main]

use husk_vmm::devices::virtio::vsock::packet::HDR_SIZE;
use husk_vmm::devices::virtio::vsock::VsockHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..HDR_SIZE) else {
        return;
    };
    let bytes: &[u8; HDR_SIZE] = bytes.try_into().expect("slice of HDR_SIZE");
    let hdr = VsockHeader::from_bytes(bytes);
    assert_eq!(&hdr.to_bytes(), bytes);
    assert_eq!(VsockHeader::from_bytes(&hdr.to_bytes()), hdr);
});
