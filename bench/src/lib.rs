//! husk's benchmarks. They run where KVM is real (inside the test host on a
//! host without VT-x/AMD-V: `cargo xtask bench`) and print a table plus the
//! same figures as JSON. They are not tests: nothing here passes or fails on
//! a threshold.

pub mod boot;
pub mod containers;
pub mod ctr;
pub mod podmem;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod virtiofsd;
