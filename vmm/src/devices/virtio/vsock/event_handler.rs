//! Glue between the VMM event loop and a [`VsockDevice`]: which fds to watch and what to do
//! when each becomes readable.

use husk_lock::MutexExt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use super::{VsockBackend, VsockDevice, EVQ, RXQ, TXQ};
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::Subscriber;

/// Event-loop subscriber for one vsock device.
pub struct VsockEventHandler<B: VsockBackend> {
    device: Arc<Mutex<VsockDevice<B>>>,
    fds: [RawFd; 5],
}

impl<B: VsockBackend> VsockEventHandler<B> {
    /// Watches the device's queue eventfds, activation eventfd and backend fd.
    pub fn new(device: Arc<Mutex<VsockDevice<B>>>) -> Self {
        let fds = {
            let d = device.locked();
            let q = d.queue_events();
            [
                q[RXQ].as_raw_fd(),
                q[TXQ].as_raw_fd(),
                q[EVQ].as_raw_fd(),
                d.activate_evt().as_raw_fd(),
                d.backend().as_raw_fd(),
            ]
        };
        Self { device, fds }
    }
}

impl<B: VsockBackend> Subscriber for VsockEventHandler<B> {
    fn fds(&self) -> Vec<RawFd> {
        self.fds.to_vec()
    }

    fn handle(&mut self, fd: RawFd, ev: EventSet) {
        let mut d = self.device.locked();
        match self.fds.iter().position(|f| *f == fd) {
            Some(0) => d.handle_rxq_event(),
            Some(1) => d.handle_txq_event(),
            Some(2) => d.handle_evq_event(),
            Some(3) => d.handle_activate_event(),
            Some(4) => d.handle_backend_event(ev),
            _ => {}
        }
    }
}
