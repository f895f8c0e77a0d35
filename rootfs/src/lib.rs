//! Builds what a husk guest boots: the guest kernel (`vmlinux`, from Debian's
//! `linux-source-6.12` and our config fragment) and the initramfs that holds
//! `husk-agent` as `/init`.
//!
//! The kernel build is cached by the hash of (source package version, config
//! fragment), so only the first build pays the few minutes of compilation.

pub mod cache;
pub mod guest_image;
pub mod initramfs;
pub mod kconfig;
pub mod kernel;
pub mod lz4_legacy;
