//! Legacy PC devices: 8250 UART and i8042 (reset only).

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialDevice};
