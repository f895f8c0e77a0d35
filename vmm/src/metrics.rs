//! Counters exported by the control API's `metrics` command (as [`husk_vmm_api::Metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
    /// Control packets (RSTs) for the guest that vsock dropped because its bounded queue of
    /// packets waiting for guest rx buffers was full: a guest sending faster than it takes
    /// the answers. Not yet in the control API's reply (that type lives in `husk-vmm-api`).
    pub vsock_rx_dropped: AtomicU64,
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
            vsock_rx_dropped: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Copies the counters into the control API's `metrics` reply.
    pub fn snapshot(&self) -> husk_vmm_api::Metrics {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        husk_vmm_api::Metrics {
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vcpu_exits: husk_vmm_api::VcpuExits {
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
            vsock_rx_dropped: l(&self.vsock_rx_dropped),
        }
    }
}
