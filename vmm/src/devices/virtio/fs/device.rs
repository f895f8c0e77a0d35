//! The virtio-fs device: configuration space and vhost-user session with the backend.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use husk_vmm_api::limits::FS_TAG_MAX;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks vhost-user protocol extensions.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Guest-visible features we pass through when the backend has them.
const PASSTHROUGH_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// Errors talking to the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Could not connect to the backend socket.
    #[error("connecting to vhost-user socket {0}: {1}")]
    Connect(String, vhost::Error),
    /// A vhost-user request failed.
    #[error("vhost-user {0}: {1}")]
    Request(&'static str, vhost::Error),
    /// eventfd creation failed.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio-fs device backed by a vhost-user daemon.
pub struct FsDevice {
    frontend: Frontend,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    backend_features: u64,
    acked_features: u64,
    protocol_features: Option<VhostUserProtocolFeatures>,
    active: bool,
}

impl FsDevice {
    /// Connects to the backend at `socket` (retrying for up to `connect_timeout`, since the
    /// daemon may still be starting) and negotiates the device-independent features.
    pub fn new(
        socket: &Path,
        tag: &str,
        num_request_queues: u16,
        queue_size: u16,
        connect_timeout: Duration,
    ) -> Result<Self, FsError> {
        let num_queues = usize::from(num_request_queues) + 1;
        let deadline = Instant::now() + connect_timeout;
        let mut frontend = loop {
            match Frontend::connect(socket, num_queues as u64) {
                Ok(f) => break f,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("virtio-fs: waiting for {}: {e}", socket.display());
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(FsError::Connect(socket.display().to_string(), e)),
            }
        };
        frontend
            .set_owner()
            .map_err(|e| FsError::Request("SET_OWNER", e))?;
        let backend_features = frontend
            .get_features()
            .map_err(|e| FsError::Request("GET_FEATURES", e))?;
        let protocol_features = if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // Set the feature bit first so GET_PROTOCOL_FEATURES is allowed.
            frontend
                .set_features(VHOST_USER_F_PROTOCOL_FEATURES)
                .map_err(|e| FsError::Request("SET_FEATURES", e))?;
            let offered = frontend
                .get_protocol_features()
                .map_err(|e| FsError::Request("GET_PROTOCOL_FEATURES", e))?;
            let wanted = offered & VhostUserProtocolFeatures::MQ;
            frontend
                .set_protocol_features(wanted)
                .map_err(|e| FsError::Request("SET_PROTOCOL_FEATURES", e))?;
            Some(wanted)
        } else {
            None
        };
        let queue_evts = (0..num_queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::EventFd)?;
        Ok(Self {
            frontend,
            config: fs_config(tag, num_request_queues),
            queue_sizes: vec![queue_size; num_queues],
            queue_evts,
            backend_features,
            acked_features: 0,
            protocol_features,
            active: false,
        })
    }

    fn setup_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        interrupt: &Interrupt,
    ) -> Result<(), FsError> {
        let protocol_bit = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        self.frontend
            .set_features(self.acked_features | protocol_bit)
            .map_err(|e| FsError::Request("SET_FEATURES", e))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FsError::Request("memory region", e))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| FsError::Request("SET_MEM_TABLE", e))?;
        for (i, q) in queues.iter().enumerate() {
            let hva = |a: u64| -> Result<u64, FsError> {
                mem.get_host_address(GuestAddress(a))
                    .map(|p| p as u64)
                    .map_err(|_| {
                        FsError::Request("vring address", vhost::Error::InvalidGuestMemory)
                    })
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(|e| FsError::Request("SET_VRING_NUM", e))?;
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(q.desc_table())?,
                used_ring_addr: hva(q.used_ring())?,
                avail_ring_addr: hva(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(|e| FsError::Request("SET_VRING_ADDR", e))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(|e| FsError::Request("SET_VRING_BASE", e))?;
            self.frontend
                .set_vring_call(i, interrupt.eventfd())
                .map_err(|e| FsError::Request("SET_VRING_CALL", e))?;
            self.frontend
                .set_vring_kick(i, &self.queue_evts[i])
                .map_err(|e| FsError::Request("SET_VRING_KICK", e))?;
        }
        if self.protocol_features.is_some() {
            for i in 0..queues.len() {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| FsError::Request("SET_VRING_ENABLE", e))?;
            }
        }
        Ok(())
    }
}

/// Config space: 36-byte NUL-padded tag, then the number of request queues (LE u32).
pub fn fs_config(tag: &str, num_request_queues: u16) -> Vec<u8> {
    let mut c = vec![0u8; FS_TAG_MAX + 4];
    let t = tag.as_bytes();
    let n = t.len().min(FS_TAG_MAX);
    c[..n].copy_from_slice(&t[..n]);
    c[FS_TAG_MAX..].copy_from_slice(&u32::from(num_request_queues).to_le_bytes());
    c
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        device_type::FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        self.backend_features & PASSTHROUGH_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn sticky_vring_interrupt(&self) -> bool {
        true
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if let Some(i) = queues.iter().position(|q| !q.ready() || !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.setup_backend(&mem, &queues, &interrupt)
            .map_err(|e| ActivateError::Vhost(e.to_string()))?;
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        if self.active && self.protocol_features.is_some() {
            for i in 0..self.queue_sizes.len() {
                let _ = self.frontend.set_vring_enable(i, false);
            }
        }
        self.active = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout() {
        let c = fs_config("myfs", 1);
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..4], b"myfs");
        assert!(c[4..36].iter().all(|b| *b == 0));
        assert_eq!(&c[36..], &1u32.to_le_bytes());
        let long = "x".repeat(36);
        assert_eq!(&fs_config(&long, 2)[..36], long.as_bytes());
    }

    #[test]
    fn missing_backend_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = FsDevice::new(
            &dir.path().join("none.sock"),
            "t",
            1,
            256,
            Duration::from_millis(30),
        );
        assert!(matches!(r, Err(FsError::Connect(..))));
    }
}
