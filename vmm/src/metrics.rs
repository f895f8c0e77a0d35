//! Counters exported by the control API's `metrics` command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Process-wide counters; all fields are updated with relaxed atomics.
#[derive(Debug)]
pub struct Metrics {
    /// When the VMM started.
    pub started: Instant,
    /// vCPU exits for port I/O.
    pub exits_io: AtomicU64,
    /// vCPU exits for MMIO.
    pub exits_mmio: AtomicU64,
    /// vCPU exits for HLT (only without in-kernel irqchip halt handling).
    pub exits_hlt: AtomicU64,
    /// vCPU exits because of a signal (pause, shutdown).
    pub exits_intr: AtomicU64,
    /// Other vCPU exits.
    pub exits_other: AtomicU64,
    /// Bytes the guest wrote to the serial console.
    pub serial_bytes: AtomicU64,
    /// Payload bytes vsock delivered to the guest.
    pub vsock_rx_bytes: AtomicU64,
    /// Payload bytes vsock received from the guest.
    pub vsock_tx_bytes: AtomicU64,
    /// vsock connections opened (either direction).
    pub vsock_connections: AtomicU64,
    /// Malformed requests from the guest that devices rejected.
    pub guest_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            exits_io: AtomicU64::new(0),
            exits_mmio: AtomicU64::new(0),
            exits_hlt: AtomicU64::new(0),
            exits_intr: AtomicU64::new(0),
            exits_other: AtomicU64::new(0),
            serial_bytes: AtomicU64::new(0),
            vsock_rx_bytes: AtomicU64::new(0),
            vsock_tx_bytes: AtomicU64::new(0),
            vsock_connections: AtomicU64::new(0),
            guest_errors: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of [`Metrics`], serialized by the control API.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, Clone)]
pub struct MetricsSnapshot {
    /// Milliseconds since the VMM started.
    pub uptime_ms: u64,
    /// vCPU exits by reason.
    pub vcpu_exits: VcpuExits,
    /// Device byte counters.
    pub serial_bytes: u64,
    /// vsock bytes host -> guest.
    pub vsock_rx_bytes: u64,
    /// vsock bytes guest -> host.
    pub vsock_tx_bytes: u64,
    /// vsock connections opened.
    pub vsock_connections: u64,
    /// Rejected malformed guest requests.
    pub guest_errors: u64,
}

/// vCPU exit counters.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, Clone)]
pub struct VcpuExits {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Signal-induced exits.
    pub intr: u64,
    /// Everything else.
    pub other: u64,
}

impl Metrics {
    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vcpu_exits: VcpuExits {
                io: l(&self.exits_io),
                mmio: l(&self.exits_mmio),
                hlt: l(&self.exits_hlt),
                intr: l(&self.exits_intr),
                other: l(&self.exits_other),
            },
            serial_bytes: l(&self.serial_bytes),
            vsock_rx_bytes: l(&self.vsock_rx_bytes),
            vsock_tx_bytes: l(&self.vsock_tx_bytes),
            vsock_connections: l(&self.vsock_connections),
            guest_errors: l(&self.guest_errors),
        }
    }
}
