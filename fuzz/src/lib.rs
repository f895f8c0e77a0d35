//! Helpers shared by husk's fuzz targets (`fuzz_targets/`): stand-ins for what a target
//! does not exercise, and guest memory laid out from fuzz input.
//!
//! Each target is a libFuzzer binary built with sanitizer coverage by `run.sh`; this
//! library is plain Rust so that the helpers also build (and are checked) without it.

pub mod backend;
pub mod fs_like;
pub mod guest;
pub mod muxer_ops;
