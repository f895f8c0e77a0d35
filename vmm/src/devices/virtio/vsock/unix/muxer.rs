//! The hybrid-vsock multiplexer: a listener for host-initiated connections, outgoing
//! connections for guest-initiated ones, and one [`Connection`] per stream, all driven by a
//! private epoll set that the VMM's event loop watches through [`AsRawFd`].

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connect::connect_nonblocking;
use super::deadlines::{Deadlines, Opening};
use super::handshake::{parse_connect, MAX_HANDSHAKE_LEN};
use super::rxq::{ConnKey, RxItem, RxQueue};
use crate::devices::virtio::vsock::csm::{ConnState, Connection};
use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket};
use crate::devices::virtio::vsock::{
    op, VsockBackend, VsockChannel, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};
use crate::metrics::Metrics;

/// First host port handed to host-initiated connections.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Limit on streams that have connected but not yet sent `CONNECT`.
const MAX_HANDSHAKES: usize = 64;
/// Limit on live connections.
const MAX_CONNECTIONS: usize = 1024;
/// How long a host stream may take to send `CONNECT`, and the guest to answer
/// the connection request. Generous, because the vCPUs of a guest on an
/// overcommitted host can stall for seconds; a guest with nothing listening
/// answers at once (RST).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Listener,
    Timer,
    Handshake,
    Conn(ConnKey),
}

/// Errors creating the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Binding the host socket failed.
    #[error("binding {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    /// epoll setup failed.
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
}

/// The hybrid-vsock backend.
pub struct VsockMuxer {
    epoll: Epoll,
    host_sock: PathBuf,
    listener: UnixListener,
    guest_cid: u64,
    conns: HashMap<ConnKey, Connection>,
    handshakes: HashMap<RawFd, UnixStream>,
    owners: HashMap<RawFd, (Owner, EventSet)>,
    /// What waits for guest rx buffers; bounded, see [`RxQueue`].
    rxq: RxQueue,
    next_local_port: u32,
    metrics: Arc<Metrics>,
    timer: TimerFd,
    /// The deadline `timer` is set for.
    timer_due: Option<Instant>,
    deadlines: Deadlines,
    open_timeout: Duration,
}

impl std::fmt::Debug for VsockMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockMuxer")
            .field("host_sock", &self.host_sock)
            .field("conns", &self.conns.len())
            .finish()
    }
}

impl VsockMuxer {
    /// Binds `host_sock` (replacing a stale socket file) for guest `guest_cid`.
    pub fn new(
        host_sock: &Path,
        guest_cid: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MuxerError> {
        let _ = std::fs::remove_file(host_sock);
        let listener =
            UnixListener::bind(host_sock).map_err(|e| MuxerError::Bind(host_sock.into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(host_sock.into(), e))?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Epoll(e.into()))?;
        // Non-blocking, so that reading a timer that a reset disarmed after epoll reported it
        // returns EAGAIN instead of stalling the event loop.
        // SAFETY: fcntl on a descriptor we own, with flags that only change its blocking mode.
        let ret = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if ret < 0 {
            return Err(MuxerError::Epoll(std::io::Error::last_os_error()));
        }
        let mut m = Self {
            epoll,
            host_sock: host_sock.to_owned(),
            listener,
            guest_cid,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            owners: HashMap::new(),
            rxq: RxQueue::default(),
            next_local_port: LOCAL_PORT_BASE,
            metrics,
            timer,
            timer_due: None,
            deadlines: Deadlines::default(),
            open_timeout: OPEN_TIMEOUT,
        };
        let fd = m.listener.as_raw_fd();
        m.set_interest(fd, Owner::Listener, EventSet::IN)
            .map_err(MuxerError::Epoll)?;
        let fd = m.timer.as_raw_fd();
        m.set_interest(fd, Owner::Timer, EventSet::IN)
            .map_err(MuxerError::Epoll)?;
        Ok(m)
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Items waiting for guest rx buffers (at most [`MUXER_RXQ_SIZE`](super::MUXER_RXQ_SIZE)).
    pub fn pending_rx_len(&self) -> usize {
        self.rxq.len()
    }

    /// Control packets for the guest dropped because the rx queue was full.
    pub fn dropped_rx_count(&self) -> u64 {
        self.rxq.dropped()
    }

    /// Queues control packet `hdr` for the guest, or drops and counts it if the queue is full.
    fn queue_raw(&mut self, hdr: VsockHeader) {
        if !self.rxq.push_raw(hdr) {
            self.metrics
                .vsock_rx_dropped
                .fetch_add(1, Ordering::Relaxed);
            crate::guest_warn!(
                "vsock: the guest leaves its rx queue full; dropping an RST to its port {} \
                 ({} dropped so far)",
                hdr.dst_port,
                self.rxq.dropped()
            );
        }
    }

    /// Counts a packet the guest should not have sent.
    fn guest_error(&self, what: &str, h: &VsockHeader) {
        self.metrics.guest_errors.fetch_add(1, Ordering::Relaxed);
        crate::guest_warn!(
            "vsock: {what} (op {}, type {}, {}:{} -> {}:{})",
            h.op,
            h.type_,
            h.src_cid,
            h.src_port,
            h.dst_cid,
            h.dst_port
        );
    }

    /// Queues every connection with something to send that is not queued yet, as far as the
    /// queue has room; needed after a connection found the queue full.
    fn rescan(&mut self) {
        self.rxq.mark_synced();
        for (key, conn) in &mut self.conns {
            if conn.has_pending_rx() && !conn.in_rxq {
                if !self.rxq.push_conn(*key) {
                    return;
                }
                conn.in_rxq = true;
            }
        }
    }

    /// Registers, modifies or (for an empty set) removes `fd` in the private epoll.
    fn set_interest(&mut self, fd: RawFd, owner: Owner, ev: EventSet) -> std::io::Result<()> {
        let prev = self.owners.get(&fd).map(|(_, e)| *e);
        let op = match (prev, ev.is_empty()) {
            (None, true) => return Ok(()),
            (None, false) => ControlOperation::Add,
            (Some(p), false) if p == ev => return Ok(()),
            (Some(_), false) => ControlOperation::Modify,
            (Some(_), true) => ControlOperation::Delete,
        };
        self.epoll.ctl(op, fd, EpollEvent::new(ev, fd as u64))?;
        if ev.is_empty() {
            self.owners.remove(&fd);
        } else {
            self.owners.insert(fd, (owner, ev));
        }
        Ok(())
    }

    fn forget_fd(&mut self, fd: RawFd) {
        if self.owners.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// The RST answering guest packet `h`.
    fn rst_for(&self, h: &VsockHeader) -> VsockHeader {
        self.rst_to_guest(h.dst_port, h.src_port)
    }

    /// An RST from `host_port` to the guest's `guest_port`.
    fn rst_to_guest(&self, host_port: u32, guest_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            len: 0,
            type_: VSOCK_TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Re-evaluates a connection after anything happened to it.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        if conn.state() != ConnState::LocalInit || conn.is_done() {
            self.deadlines.finish(Opening::Connect(key.0, key.1));
        }
        if conn.is_done() {
            self.forget_fd(fd);
            self.conns.remove(&key);
            return;
        }
        if conn.has_pending_rx() && !conn.in_rxq && self.rxq.push_conn(key) {
            conn.in_rxq = true;
        }
        let ev = conn.interest();
        if let Err(e) = self.set_interest(fd, Owner::Conn(key), ev) {
            tracing::warn!("vsock: epoll update failed: {e}");
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(LOCAL_PORT_BASE);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES
                        || self.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: the client sees EOF
                    }
                    let fd = stream.as_raw_fd();
                    if self
                        .set_interest(fd, Owner::Handshake, EventSet::IN)
                        .is_ok()
                    {
                        self.handshakes.insert(fd, stream);
                        let due = Instant::now() + self.open_timeout;
                        self.deadlines.start(Opening::Handshake(fd), due);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    break;
                }
            }
        }
    }

    fn handle_handshake(&mut self, fd: RawFd) {
        let Some(stream) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut peek = [0u8; MAX_HANDSHAKE_LEN];
        // SAFETY: `fd` is the open socket owned by `stream`; `peek` is a valid buffer of the
        // given length.
        let n = unsafe {
            libc::recv(
                fd,
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                return;
            }
        }
        let outcome = if n <= 0 {
            Err("closed".to_string())
        } else {
            parse_connect(&peek[..n as usize]).map_err(|e| e.to_string())
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((port, consumed))) => {
                let mut line = vec![0u8; consumed];
                if stream.read_exact(&mut line).is_err() {
                    self.drop_handshake(fd);
                    return;
                }
                self.forget_fd(fd);
                self.deadlines.finish(Opening::Handshake(fd));
                let Some(stream) = self.handshakes.remove(&fd) else {
                    return;
                };
                let local = self.allocate_local_port();
                let conn = Connection::new_local(stream, local, port, self.guest_cid);
                self.metrics
                    .vsock_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.conns.insert((local, port), conn);
                let due = Instant::now() + self.open_timeout;
                self.deadlines.start(Opening::Connect(local, port), due);
                self.refresh((local, port));
            }
            Err(e) => {
                tracing::debug!("vsock: rejecting host connection: {e}");
                self.drop_handshake(fd);
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        self.forget_fd(fd);
        self.deadlines.finish(Opening::Handshake(fd));
        self.handshakes.remove(&fd);
    }

    /// Closes every stream that did not finish opening by `now`; the guest
    /// gets an RST for each request it left unanswered.
    fn expire(&mut self, now: Instant) {
        for what in self.deadlines.take_expired(now) {
            match what {
                Opening::Handshake(fd) => {
                    tracing::debug!("vsock: host stream sent no CONNECT in time; closing it");
                    self.forget_fd(fd);
                    self.handshakes.remove(&fd);
                }
                Opening::Connect(local, peer) => {
                    let key = (local, peer);
                    let Some(conn) = self.conns.get(&key) else {
                        continue;
                    };
                    if conn.state() != ConnState::LocalInit {
                        continue;
                    }
                    crate::guest_warn!(
                        "vsock: the guest did not answer a connection to port {peer} within {:?}",
                        self.open_timeout
                    );
                    let fd = conn.stream().as_raw_fd();
                    self.forget_fd(fd);
                    self.conns.remove(&key);
                    let rst = self.rst_to_guest(local, peer);
                    self.queue_raw(rst);
                }
            }
        }
    }

    /// Points the timer at the earliest deadline (or disarms it).
    fn arm_timer(&mut self) {
        let due = self.deadlines.next_due();
        if due == self.timer_due {
            return;
        }
        let result = match due {
            // A zero duration would disarm the timer; fire after 1 ms instead.
            Some(at) => self.timer.reset(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_due = due,
            Err(e) => tracing::warn!("vsock: timerfd: {e}"),
        }
    }

    fn guest_connect(&mut self, h: &VsockHeader) {
        let path = format!("{}_{}", self.host_sock.display(), h.dst_port);
        let stream = if self.conns.len() >= MAX_CONNECTIONS {
            None
        } else {
            // Never waits on the event loop; a full backlog is a refusal (RST).
            connect_nonblocking(Path::new(&path))
                .map_err(|e| crate::guest_debug!("vsock: guest connect to {path}: {e}"))
                .ok()
        };
        match stream {
            Some(s) => {
                let key = (h.dst_port, h.src_port);
                self.metrics
                    .vsock_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.conns.insert(key, Connection::new_peer(s, h));
                self.refresh(key);
            }
            None => {
                let rst = self.rst_for(h);
                self.queue_raw(rst);
            }
        }
    }
}

impl VsockChannel for VsockMuxer {
    fn recv_pkt(&mut self, max_payload: usize) -> Option<VsockPacket> {
        loop {
            if self.rxq.is_empty() && self.rxq.needs_rescan() {
                self.rescan();
            }
            let item = self.rxq.pop()?;
            match item {
                RxItem::Raw(hdr) => return Some(VsockPacket { hdr, data: vec![] }),
                RxItem::Conn(key) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    conn.in_rxq = false;
                    let pkt = conn.recv_pkt(max_payload);
                    self.refresh(key);
                    if let Some(p) = pkt {
                        self.metrics
                            .vsock_rx_bytes
                            .fetch_add(p.data.len() as u64, Ordering::Relaxed);
                        return Some(p);
                    }
                }
            }
        }
    }

    fn send_pkt(&mut self, pkt: VsockPacket) {
        let h = pkt.hdr;
        if h.dst_cid != VSOCK_HOST_CID || h.src_cid != self.guest_cid {
            self.guest_error("packet with wrong CIDs dropped", &h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != VSOCK_TYPE_STREAM {
            if h.op != op::RST {
                self.guest_error("packet of an unsupported socket type reset", &h);
                let rst = self.rst_for(&h);
                self.queue_raw(rst);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op) {
                // The connection resets itself on it; the count is ours.
                self.metrics.guest_errors.fetch_add(1, Ordering::Relaxed);
            }
            if h.op == op::REQUEST && conn.state() != ConnState::LocalInit {
                // A second REQUEST for a live connection: reset it.
                let rst = VsockPacket {
                    hdr: VsockHeader { op: op::RST, ..h },
                    data: vec![],
                };
                conn.send_pkt(rst);
                self.guest_error("second REQUEST for a live connection; reset it", &h);
                let rst = self.rst_for(&h);
                self.queue_raw(rst);
            } else {
                let f = conn.send_pkt(pkt);
                self.metrics
                    .vsock_tx_bytes
                    .fetch_add(f.tx_bytes as u64, Ordering::Relaxed);
            }
            self.refresh(key);
            return;
        }
        match h.op {
            op::REQUEST => self.guest_connect(&h),
            op::RST => {}
            o => {
                // Not counted as an error when the op is valid: the host may have closed the
                // connection while the guest was still sending on it.
                if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&o) {
                    self.guest_error("packet with an unknown op reset", &h);
                }
                let rst = self.rst_for(&h);
                self.queue_raw(rst);
            }
        }
    }

    fn has_pending_rx(&self) -> bool {
        // A pending rescan may find nothing; `recv_pkt` then returns `None`, which the
        // device handles.
        !self.rxq.is_empty() || self.rxq.needs_rescan()
    }
}

impl AsRawFd for VsockMuxer {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl VsockBackend for VsockMuxer {
    fn notify(&mut self, _evset: EventSet) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("vsock: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.fd();
            let Some((owner, _)) = self.owners.get(&fd).copied() else {
                continue;
            };
            match owner {
                Owner::Listener => self.accept_all(),
                Owner::Timer => {
                    // Reading clears the expiry (EAGAIN if it was already cleared);
                    // the deadlines decide what is due.
                    let _ = self.timer.wait();
                    self.timer_due = None;
                    self.expire(Instant::now());
                }
                Owner::Handshake => self.handle_handshake(fd),
                Owner::Conn(key) => {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.notify(ev.event_set());
                    }
                    self.refresh(key);
                }
            }
        }
        self.arm_timer();
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.host_sock);
    }
}

#[cfg(test)]
mod tests {
    use super::super::MUXER_RXQ_SIZE;
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    const CID: u64 = 3;

    fn muxer(dir: &Path) -> VsockMuxer {
        VsockMuxer::new(&dir.join("v.sock"), CID, Arc::new(Metrics::default())).unwrap()
    }

    fn guest(op: u16, src_port: u32, dst_port: u32, data: &[u8]) -> VsockPacket {
        VsockPacket {
            hdr: VsockHeader {
                src_cid: CID,
                dst_cid: VSOCK_HOST_CID,
                src_port,
                dst_port,
                len: data.len() as u32,
                type_: VSOCK_TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 65536,
                fwd_cnt: 0,
            },
            data: data.to_vec(),
        }
    }

    /// Polls the muxer until `f` holds (the epoll set is real, so events take a moment).
    fn pump_until(m: &mut VsockMuxer, mut f: impl FnMut(&mut VsockMuxer) -> bool) {
        for _ in 0..200 {
            m.notify(EventSet::IN);
            if f(m) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached");
    }

    #[test]
    fn host_initiated_connect_and_echo() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 1024\npayload").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let req = m.recv_pkt(4096).unwrap();
        assert_eq!(req.hdr.op, op::REQUEST);
        assert_eq!(req.hdr.dst_port, 1024);
        assert_eq!(req.hdr.dst_cid, CID);
        let host_port = req.hdr.src_port;
        assert!(host_port >= LOCAL_PORT_BASE);

        m.send_pkt(guest(op::RESPONSE, 1024, host_port, b""));
        assert!(
            m.deadlines.next_due().is_none(),
            "an answered connection is no longer timed"
        );
        let mut ok = vec![0u8; format!("OK {host_port}\n").len()];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {host_port}\n").as_bytes());

        // Bytes sent after the CONNECT line are not lost.
        pump_until(&mut m, |m| m.has_pending_rx());
        let d = m.recv_pkt(4096).unwrap();
        assert_eq!((d.hdr.op, &d.data[..]), (op::RW, &b"payload"[..]));

        m.send_pkt(guest(op::RW, 1024, host_port, b"echo"));
        let mut b = [0u8; 4];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"echo");
        assert_eq!(m.connection_count(), 1);

        // Guest refuses: RST closes the host stream.
        m.send_pkt(guest(op::RST, 1024, host_port, b""));
        assert_eq!(m.connection_count(), 0);
        let mut rest = vec![];
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    /// A muxer whose streams must open within 100 ms, and a client connected to it.
    fn muxer_with_short_open_timeout(dir: &Path) -> (VsockMuxer, UnixStream) {
        let mut m = muxer(dir);
        m.open_timeout = Duration::from_millis(100);
        let client = UnixStream::connect(dir.join("v.sock")).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (m, client)
    }

    #[test]
    fn unanswered_connect_is_reset_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, mut client) = muxer_with_short_open_timeout(dir.path());
        client.write_all(b"CONNECT 1024\n").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let req = m.recv_pkt(4096).unwrap();
        assert_eq!(req.hdr.op, op::REQUEST);
        let host_port = req.hdr.src_port;

        // The guest never answers: the timer fires through the muxer's epoll set.
        pump_until(&mut m, |m| m.connection_count() == 0);
        let rst = m.recv_pkt(4096).expect("an RST for the guest");
        assert_eq!(rst.hdr.op, op::RST);
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (host_port, 1024));
        assert_eq!(rst.hdr.dst_cid, CID);
        let mut rest = vec![];
        assert_eq!(
            client.read_to_end(&mut rest).unwrap(),
            0,
            "the client sees EOF"
        );
        assert!(m.deadlines.next_due().is_none());
        assert!(m
            .owners
            .values()
            .all(|(o, _)| matches!(o, Owner::Listener | Owner::Timer)));
    }

    #[test]
    fn silent_host_stream_is_closed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, mut client) = muxer_with_short_open_timeout(dir.path());
        pump_until(&mut m, |m| !m.handshakes.is_empty());
        pump_until(&mut m, |m| m.handshakes.is_empty());
        let mut rest = vec![];
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
        assert!(!m.has_pending_rx(), "the guest never heard of it");
    }

    #[test]
    fn bad_handshake_closes_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"HELLO\n").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        pump_until(&mut m, |m| {
            m.handshakes.is_empty() && !m.owners.values().any(|(o, _)| *o == Owner::Handshake)
        });
        // Closed by the muxer: EOF, or a reset because our bytes were never read.
        let mut buf = vec![];
        match client.read_to_end(&mut buf) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
        assert!(!m.has_pending_rx());
    }

    #[test]
    fn guest_initiated_to_listener_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        m.send_pkt(guest(op::REQUEST, 40000, 5000, b""));
        let resp = m.recv_pkt(4096).unwrap();
        assert_eq!(resp.hdr.op, op::RESPONSE);
        assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (5000, 40000));
        let (mut s, _) = listener.accept().unwrap();
        m.send_pkt(guest(op::RW, 40000, 5000, b"ping"));
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        s.write_all(b"pong").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(m.recv_pkt(4096).unwrap().data, b"pong");

        // No listener on port 6000: RST.
        m.send_pkt(guest(op::REQUEST, 40001, 6000, b""));
        let rst = m.recv_pkt(4096).unwrap();
        assert_eq!(
            (rst.hdr.op, rst.hdr.dst_port, rst.hdr.src_port),
            (op::RST, 40001, 6000)
        );
        // Data for an unknown connection: RST as well; a stray RST gets no answer.
        m.send_pkt(guest(op::RW, 40002, 7000, b"x"));
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        m.send_pkt(guest(op::RST, 40002, 7000, b""));
        assert!(m.recv_pkt(4096).is_none());
    }

    #[test]
    fn full_backlog_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let path = dir.path().join("v.sock_5000");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen on our own socket; a backlog of 0 admits one pending connection.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut pending = Vec::new();
        while let Ok(s) = connect_nonblocking(&path) {
            pending.push(s);
            assert!(pending.len() < 16, "the backlog never filled");
        }
        // Nobody accepts: the guest gets an RST instead of the event loop waiting.
        m.send_pkt(guest(op::REQUEST, 40000, 5000, b""));
        let rst = m.recv_pkt(4096).unwrap();
        assert_eq!((rst.hdr.op, rst.hdr.dst_port), (op::RST, 40000));
        assert_eq!(m.connection_count(), 0);
    }

    /// Host- and guest-initiated connections, data both ways, a refusal and an expired
    /// open, all with the event loop's seccomp filter loaded: the filter allows every call
    /// the muxer makes (a call outside it would kill the child with SIGSYS).
    #[test]
    fn runs_under_the_event_loop_filter() {
        use crate::seccomp::{ThreadFilters, ThreadKind};
        use crate::test_util::{child_passes, in_child};
        // The directory comes from the parent, which removes it: removing it takes calls
        // the filter does not allow.
        const DIR_ENV: &str = "HUSK_MUXER_TEST_DIR";
        if !in_child() {
            let dir = tempfile::tempdir().unwrap();
            let env = [(DIR_ENV, dir.path().as_os_str())];
            return child_passes(module_path!(), "runs_under_the_event_loop_filter", &env);
        }
        let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("set by the parent"));
        let (mut m, mut client) = muxer_with_short_open_timeout(&dir);
        let mut late = UnixStream::connect(dir.join("v.sock")).unwrap();
        let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
        ThreadFilters::compile()
            .unwrap()
            .load(ThreadKind::EventLoop)
            .unwrap();

        client.write_all(b"CONNECT 1024\n").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let host_port = m.recv_pkt(4096).unwrap().hdr.src_port;
        m.send_pkt(guest(op::RESPONSE, 1024, host_port, b""));
        let mut ok = vec![0u8; format!("OK {host_port}\n").len()];
        client.read_exact(&mut ok).unwrap();
        m.send_pkt(guest(op::RW, 1024, host_port, b"echo"));
        let mut b = [0u8; 4];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"echo");
        client.write_all(b"back").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(m.recv_pkt(4096).unwrap().data, b"back");

        m.send_pkt(guest(op::REQUEST, 40000, 5000, b""));
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RESPONSE);
        let (mut s, _) = listener.accept().unwrap();
        m.send_pkt(guest(op::RW, 40000, 5000, b"ping"));
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        m.send_pkt(guest(op::REQUEST, 40001, 6000, b""));
        pump_until(&mut m, |m| m.has_pending_rx());
        let mut ops = Vec::new();
        while let Some(p) = m.recv_pkt(4096) {
            ops.push((p.hdr.op, p.hdr.dst_port));
        }
        assert!(ops.contains(&(op::RST, 40001)), "{ops:?}");

        // An open the guest never answers expires through the timerfd.
        late.write_all(b"CONNECT 1025\n").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::REQUEST);
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        m.send_pkt(guest(op::RST, 1024, host_port, b""));
        drop(m);
    }

    #[test]
    fn wrong_cids_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut p = guest(op::REQUEST, 1, 2, b"");
        p.hdr.src_cid = 99;
        m.send_pkt(p);
        let mut p = guest(op::REQUEST, 1, 2, b"");
        p.hdr.dst_cid = 5;
        m.send_pkt(p);
        assert!(!m.has_pending_rx());
        assert_eq!(m.metrics.guest_errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn many_host_connections_get_distinct_ports() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let mut clients = vec![];
        for _ in 0..10 {
            let mut c = UnixStream::connect(dir.path().join("v.sock")).unwrap();
            c.write_all(b"CONNECT 1024\n").unwrap();
            clients.push(c);
        }
        let mut ports = std::collections::HashSet::new();
        pump_until(&mut m, |m| {
            while let Some(p) = m.recv_pkt(4096) {
                assert_eq!(p.hdr.op, op::REQUEST);
                ports.insert(p.hdr.src_port);
            }
            ports.len() == 10
        });
        assert_eq!(m.connection_count(), 10);
    }

    /// A hostile guest sends `n` packets that each deserve an RST (to unknown connections,
    /// unknown ports, of an unsupported type or op) and never gives an rx buffer back. The
    /// queue for the guest stays within its bound throughout, the drops are counted, and a
    /// well-formed connection works afterwards.
    fn flood_then_connect(n: u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        let capacity = m.rxq.capacity();
        let started = Instant::now();
        let mut errors = 0u64;
        for i in 0..n {
            let port = 10_000 + (i % 50_000) as u32;
            let pkt = match i % 5 {
                0 => guest(op::RW, port, 7000, b""),
                1 => guest(op::CREDIT_UPDATE, port, 5000, b""),
                2 => guest(op::SHUTDOWN, port, 5000, b""),
                3 => {
                    errors += 1;
                    let mut p = guest(op::REQUEST, port, 5000, b"");
                    p.hdr.type_ = 2; // SOCK_DGRAM
                    p
                }
                _ if i % 10_000 == 4 => guest(op::REQUEST, port, 6000, b""), // no listener
                _ => {
                    errors += 1;
                    guest(99, port, 7000, b"")
                }
            };
            m.send_pkt(pkt);
            assert!(m.pending_rx_len() <= MUXER_RXQ_SIZE, "packet {i}");
        }
        eprintln!("{n} bad packets in {:?}", started.elapsed());
        let bound = MUXER_RXQ_SIZE as u64;
        assert_eq!(m.pending_rx_len(), MUXER_RXQ_SIZE);
        assert_eq!(m.rxq.capacity(), capacity, "the queue never grew");
        assert_eq!(m.dropped_rx_count(), n - bound);
        assert_eq!(
            m.metrics.vsock_rx_dropped.load(Ordering::Relaxed),
            n - bound
        );
        assert_eq!(m.metrics.guest_errors.load(Ordering::Relaxed), errors);
        assert_eq!(m.connection_count(), 0);
        assert!(m.owners.len() <= 2, "only the listener and the timer");

        // The guest finally takes its answers: the first ones queued, all RSTs.
        for i in 0..MUXER_RXQ_SIZE as u32 {
            let rst = m.recv_pkt(4096).unwrap();
            assert_eq!((rst.hdr.op, rst.hdr.dst_port), (op::RST, 10_000 + i));
        }
        assert!(m.recv_pkt(4096).is_none());

        // A well-formed connection gets through.
        m.send_pkt(guest(op::REQUEST, 40000, 5000, b""));
        let resp = m.recv_pkt(4096).unwrap();
        assert_eq!(resp.hdr.op, op::RESPONSE);
        let (mut s, _) = listener.accept().unwrap();
        m.send_pkt(guest(op::RW, 40000, 5000, b"ping"));
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        s.write_all(b"pong").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(m.recv_pkt(4096).unwrap().data, b"pong");
        assert_eq!(m.dropped_rx_count(), n - bound, "nothing dropped since");
    }

    #[test]
    fn guest_flood_of_100k_bad_packets_stays_bounded() {
        flood_then_connect(100_000);
    }

    #[test]
    fn guest_flood_of_10m_bad_packets_stays_bounded() {
        flood_then_connect(10_000_000);
    }

    #[test]
    fn half_open_flood_stays_bounded_and_every_answer_arrives() {
        // More connections than the queue holds (but few enough for a 1024-descriptor limit,
        // both ends counted), none of whose answers the guest takes during the flood.
        const N: u32 = 400;
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        let acceptor = std::thread::spawn(move || {
            (0..N)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        for i in 0..N {
            m.send_pkt(guest(op::REQUEST, 20_000 + i, 5000, b""));
            assert!(m.pending_rx_len() <= MUXER_RXQ_SIZE);
        }
        assert_eq!(m.connection_count(), N as usize);
        assert_eq!(m.pending_rx_len(), MUXER_RXQ_SIZE);
        let _host_ends = acceptor.join().unwrap();
        // The guest takes its answers: one RESPONSE per connection, none lost or repeated.
        let mut answered = std::collections::HashSet::new();
        while let Some(p) = m.recv_pkt(4096) {
            assert_eq!(p.hdr.op, op::RESPONSE);
            assert!(answered.insert(p.hdr.dst_port), "one answer each");
        }
        assert_eq!(answered.len(), N as usize);
        assert_eq!(m.dropped_rx_count(), 0);
        assert!(!m.has_pending_rx());
    }

    #[test]
    fn connection_turned_away_by_a_full_queue_is_delivered_after_it_drains() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = muxer(dir.path());
        for i in 0..MUXER_RXQ_SIZE as u32 + 10 {
            m.send_pkt(guest(op::RW, 100 + i, 7000, b""));
        }
        assert_eq!(m.dropped_rx_count(), 10);
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        pump_until(&mut m, |m| m.connection_count() == 1);
        assert_eq!(m.pending_rx_len(), MUXER_RXQ_SIZE);
        assert!(m.rxq.needs_rescan(), "the connection did not fit");
        for _ in 0..MUXER_RXQ_SIZE {
            assert_eq!(m.recv_pkt(4096).unwrap().hdr.op, op::RST);
        }
        let req = m.recv_pkt(4096).expect("the request, found by the rescan");
        assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 1024));
        assert!(!m.has_pending_rx());
        assert_eq!(m.dropped_rx_count(), 10, "connections are never dropped");
    }

    #[test]
    fn socket_file_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let m = muxer(dir.path());
        assert!(dir.path().join("v.sock").exists());
        drop(m);
        assert!(!dir.path().join("v.sock").exists());
    }
}
