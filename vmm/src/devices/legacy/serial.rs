//! COM1: a vm-superio 8250 whose output goes to a file, stdout or nowhere.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::metrics::Metrics;

/// Raises an interrupt (or another event) by writing an eventfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Writer that counts the bytes it forwards.
struct Counting {
    out: Box<dyn Write + Send>,
    metrics: Arc<Metrics>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.metrics
            .serial_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let n = self.out.write(buf)?;
        // The guest console is line oriented; flush on newline so logs appear promptly.
        if buf.contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The 8250 UART on the I/O bus.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, NoEvents, Counting>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Serial::new(EventFdTrigger(irq), Counting { out, metrics }),
        }
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) {
        let _ = self.inner.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.inner.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_the_output_and_are_counted() {
        let out = Shared::default();
        let metrics = Arc::new(Metrics::default());
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(evt, Box::new(out.clone()), metrics.clone());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        // Multi-byte or out-of-range accesses are ignored rather than panicking.
        s.write(0, &[1, 2]);
        s.write(100, &[1]);
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\n");
        assert_eq!(metrics.serial_bytes.load(Ordering::Relaxed), 3);
    }
}
