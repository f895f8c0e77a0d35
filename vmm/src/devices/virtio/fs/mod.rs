//! virtio-fs as a vhost-user frontend: the data path lives in the backend (virtiofsd),
//! which maps guest memory from the memfd and uses our ioeventfds and irqfd directly.

mod device;

pub use device::{FsDevice, FsError};
