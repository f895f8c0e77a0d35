//! A small epoll loop that dispatches readable fds to subscribers.

use std::collections::HashMap;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Something that owns fds and reacts when they become readable.
pub trait Subscriber: Send {
    /// The fds to watch (level triggered, EPOLLIN).
    fn fds(&self) -> Vec<RawFd>;
    /// Called for each ready fd.
    fn handle(&mut self, fd: RawFd, ev: EventSet);
}

/// The loop: fds -> subscriber index.
pub struct EventLoop {
    epoll: Epoll,
    subscribers: Vec<Box<dyn Subscriber>>,
    owners: HashMap<RawFd, usize>,
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            subscribers: Vec::new(),
            owners: HashMap::new(),
        })
    }

    /// Registers all fds of `sub`.
    pub fn add(&mut self, sub: Box<dyn Subscriber>) -> std::io::Result<()> {
        let idx = self.subscribers.len();
        for fd in sub.fds() {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
            self.owners.insert(fd, idx);
        }
        self.subscribers.push(sub);
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and dispatches; returns the number of events.
    pub fn run_once(&mut self, timeout_ms: i32) -> std::io::Result<usize> {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let fd = ev.fd();
            if let Some(&i) = self.owners.get(&fd) {
                self.subscribers[i].handle(fd, ev.event_set());
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    struct Counter(EventFd, Arc<AtomicUsize>);
    impl Subscriber for Counter {
        fn fds(&self) -> Vec<RawFd> {
            vec![self.0.as_raw_fd()]
        }
        fn handle(&mut self, _fd: RawFd, _ev: EventSet) {
            let _ = self.0.read();
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn dispatches_ready_fds() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let mut l = EventLoop::new().unwrap();
        l.add(Box::new(Counter(evt.try_clone().unwrap(), hits.clone())))
            .unwrap();
        assert_eq!(l.run_once(0).unwrap(), 0);
        evt.write(1).unwrap();
        assert_eq!(l.run_once(100).unwrap(), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
