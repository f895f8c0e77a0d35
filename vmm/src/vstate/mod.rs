//! KVM state: the VM (memory slots, irqchip, PIT) and its vCPUs.

pub mod control;
pub mod vcpu;
pub mod vm;
