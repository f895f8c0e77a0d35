//! What the control API's `metrics` command returns: husk-vmm serializes it and the shim,
//! benchmarks and tests read the same type.

use serde::{Deserialize, Serialize};

/// A point-in-time copy of husk-vmm's counters. Unknown fields are accepted here (unlike in
/// the configuration): a counter added to husk-vmm must not break an older reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Milliseconds since husk-vmm started.
    pub uptime_ms: u64,
    /// vCPU exits by reason.
    pub vcpu_exits: VcpuExits,
    /// Bytes the guest wrote to the serial console.
    pub serial_bytes: u64,
    /// vsock payload bytes host -> guest.
    pub vsock_rx_bytes: u64,
    /// vsock payload bytes guest -> host.
    pub vsock_tx_bytes: u64,
    /// vsock connections opened (either direction).
    pub vsock_connections: u64,
    /// Malformed requests from the guest that devices rejected.
    pub guest_errors: u64,
    /// Control packets for the guest (RSTs) dropped because the guest did not take them
    /// and the bounded queue was full.
    #[serde(default)]
    pub vsock_rx_dropped: u64,
}

/// vCPU exit counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuExits {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// HLT exits (only without in-kernel irqchip halt handling).
    pub hlt: u64,
    /// Exits because of a signal (pause, shutdown).
    pub intr: u64,
    /// Everything else.
    pub other: u64,
}
