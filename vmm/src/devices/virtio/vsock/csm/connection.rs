//! One vsock connection between a guest socket and a host unix stream.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::{TxBuf, CONN_TX_BUF_SIZE, CREDIT_UPDATE_THRESHOLD};
use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket};
use crate::devices::virtio::vsock::{
    op, SHUTDOWN_RCV, SHUTDOWN_SEND, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated; REQUEST sent (or queued), waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows both ways.
    Established,
    /// Finished; the muxer drops it once no packet is owed to the guest.
    Killed,
}

/// Control packets owed to the guest.
#[derive(Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    rst: bool,
    shutdown: u32,
    credit_update: bool,
}

/// A connection: the host stream plus credit accounting both ways.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: ConnState,
    local_port: u32,
    peer_port: u32,
    peer_cid: u64,
    pending: Pending,
    /// The host stream is readable and not yet drained.
    data_ready: bool,
    host_eof: bool,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    /// Guest -> host bytes waiting for the host stream.
    txbuf: TxBuf,
    /// Guest -> host bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Host -> guest bytes sent.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Already queued in the muxer's rx queue.
    pub in_rxq: bool,
}

/// Outcome of feeding host bytes into the connection, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Guest bytes accepted from this packet.
    pub tx_bytes: usize,
}

impl Connection {
    fn new(
        stream: UnixStream,
        state: ConnState,
        local_port: u32,
        peer_port: u32,
        peer_cid: u64,
    ) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_cid,
            pending: Pending::default(),
            data_ready: false,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            txbuf: TxBuf::new(CONN_TX_BUF_SIZE as usize),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            in_rxq: false,
        }
    }

    /// A host-initiated connection: a REQUEST to `peer_port` is owed to the guest.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32, peer_cid: u64) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::LocalInit,
            local_port,
            peer_port,
            peer_cid,
        );
        c.pending.request = true;
        c
    }

    /// A guest-initiated connection that the host accepted: a RESPONSE is owed.
    pub fn new_peer(stream: UnixStream, req: &VsockHeader) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::Established,
            req.dst_port,
            req.src_port,
            req.src_cid,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending.response = true;
        c
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host stream (for epoll registration).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Bytes the guest can still receive.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && self.data_ready
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// Whether `recv_pkt` would produce a packet.
    pub fn has_pending_rx(&self) -> bool {
        let p = &self.pending;
        p.rst
            || p.request
            || p.response
            || p.shutdown != 0
            || p.credit_update
            || self.can_send_data()
    }

    /// Whether the connection is finished and owes the guest nothing.
    pub fn is_done(&self) -> bool {
        self.state == ConnState::Killed && !self.pending.rst
    }

    /// The epoll events wanted on the host stream now.
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established
            && !self.data_ready
            && !self.host_eof
            && !self.peer_shut_rcv
        {
            ev |= EventSet::IN;
        }
        if !self.txbuf.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn kill_with_rst(&mut self) {
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.state = ConnState::Killed;
        self.data_ready = false;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Produces the next packet owed to the guest, with at most `max_payload` data bytes.
    pub fn recv_pkt(&mut self, max_payload: usize) -> Option<VsockPacket> {
        if self.pending.rst {
            self.pending.rst = false;
            let hdr = self.header(op::RST, 0, 0);
            return Some(VsockPacket { hdr, data: vec![] });
        }
        if self.pending.request {
            self.pending.request = false;
            let hdr = self.header(op::REQUEST, 0, 0);
            return Some(VsockPacket { hdr, data: vec![] });
        }
        if self.pending.response {
            self.pending.response = false;
            let hdr = self.header(op::RESPONSE, 0, 0);
            return Some(VsockPacket { hdr, data: vec![] });
        }
        if self.can_send_data() {
            if let Some(pkt) = self.read_data(max_payload) {
                return Some(pkt);
            }
        }
        if self.pending.shutdown != 0 {
            let flags = std::mem::take(&mut self.pending.shutdown);
            let hdr = self.header(op::SHUTDOWN, 0, flags);
            return Some(VsockPacket { hdr, data: vec![] });
        }
        if self.pending.credit_update {
            self.pending.credit_update = false;
            let hdr = self.header(op::CREDIT_UPDATE, 0, 0);
            return Some(VsockPacket { hdr, data: vec![] });
        }
        None
    }

    fn read_data(&mut self, max_payload: usize) -> Option<VsockPacket> {
        let want = max_payload
            .min(self.peer_credit() as usize)
            .min(crate::devices::virtio::vsock::MAX_PKT_PAYLOAD);
        if want == 0 {
            return None;
        }
        let mut buf = vec![0u8; want];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.data_ready = false;
                    self.host_eof = true;
                    self.pending.shutdown |= SHUTDOWN_SEND;
                    return None;
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.rx_cnt += Wrapping(n as u32);
                    self.pending.credit_update = false;
                    let hdr = self.header(op::RW, n as u32, 0);
                    return Some(VsockPacket { hdr, data: buf });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.data_ready = false;
                    return None;
                }
                Err(e) => {
                    tracing::debug!("vsock: host stream read: {e}");
                    self.kill_with_rst();
                    return None;
                }
            }
        }
    }

    fn flush_txbuf(&mut self) {
        match self.txbuf.flush_to(&mut self.stream) {
            Ok(n) => {
                self.fwd_cnt += Wrapping(n as u32);
                if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
                    self.pending.credit_update = true;
                }
                if self.txbuf.is_empty() && self.peer_shut_send {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    if self.peer_shut_rcv {
                        self.kill_with_rst();
                    }
                }
            }
            Err(e) => {
                tracing::debug!("vsock: host stream write: {e}");
                self.kill_with_rst();
            }
        }
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn send_pkt(&mut self, pkt: VsockPacket) -> Forwarded {
        let h = pkt.hdr;
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        let mut fwd = Forwarded::default();
        match (self.state, h.op) {
            (_, op::RST) => {
                self.state = ConnState::Killed;
                self.pending = Pending::default();
                self.data_ready = false;
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            (ConnState::LocalInit, op::RESPONSE) => {
                let ack = format!("OK {}\n", self.local_port);
                match self.stream.write(ack.as_bytes()) {
                    Ok(n) if n == ack.len() => self.state = ConnState::Established,
                    _ => self.kill_with_rst(),
                }
            }
            (ConnState::Established, op::RW) => {
                if self.peer_shut_send || !self.txbuf.push(&pkt.data) {
                    // The guest ignored our credit or sent after SHUTDOWN.
                    self.kill_with_rst();
                } else {
                    fwd.tx_bytes = pkt.data.len();
                    self.flush_txbuf();
                }
            }
            (ConnState::Established, op::SHUTDOWN) => {
                self.peer_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv {
                    self.data_ready = false;
                }
                if self.txbuf.is_empty() {
                    if self.peer_shut_send {
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                    if self.peer_shut_send && self.peer_shut_rcv {
                        self.kill_with_rst();
                    }
                }
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => self.pending.credit_update = true,
            (ConnState::Killed, _) => {}
            _ => self.kill_with_rst(),
        }
        fwd
    }

    /// Handles epoll events on the host stream.
    pub fn notify(&mut self, ev: EventSet) {
        if ev
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
            && self.state == ConnState::Established
            && !self.host_eof
        {
            self.data_ready = true;
        }
        if ev.contains(EventSet::OUT) && !self.txbuf.is_empty() {
            self.flush_txbuf();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::VSOCK_HOST_CID;

    fn guest_hdr(op: u16, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: VSOCK_HOST_CID,
            src_port: 5000,
            dst_port: 1024,
            len,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new_peer(a, &guest_hdr(op::REQUEST, 0)), b)
    }

    #[test]
    fn guest_initiated_response_then_data_both_ways() {
        let (mut c, mut host) = pair();
        let r = c.recv_pkt(4096).unwrap();
        assert_eq!(r.hdr.op, op::RESPONSE);
        assert_eq!((r.hdr.src_port, r.hdr.dst_port), (1024, 5000));
        assert!(c.recv_pkt(4096).is_none());

        let f = c.send_pkt(VsockPacket {
            hdr: guest_hdr(op::RW, 5),
            data: b"hello".to_vec(),
        });
        assert_eq!(f.tx_bytes, 5);
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        host.write_all(b"world!").unwrap();
        c.notify(EventSet::IN);
        assert!(c.has_pending_rx());
        let d = c.recv_pkt(4).unwrap();
        assert_eq!((d.hdr.op, &d.data[..]), (op::RW, &b"worl"[..]));
        assert_eq!(d.hdr.fwd_cnt, 5);
        let d = c.recv_pkt(4096).unwrap();
        assert_eq!(&d.data[..], b"d!");
        assert!(c.recv_pkt(4096).is_none());
        assert!(!c.has_pending_rx());
        assert!(c.interest().contains(EventSet::IN));
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let (mut c, mut host) = pair();
        c.recv_pkt(4096);
        host.write_all(&[7u8; 6000]).unwrap();
        c.notify(EventSet::IN);
        let d = c.recv_pkt(65536).unwrap();
        assert_eq!(d.data.len(), 4096); // buf_alloc of the guest
        assert!(!c.has_pending_rx());
        // Not readable again until credit arrives: no busy loop.
        assert!(!c.interest().contains(EventSet::IN));
        let mut h = guest_hdr(op::CREDIT_UPDATE, 0);
        h.fwd_cnt = 4096;
        c.send_pkt(VsockPacket {
            hdr: h,
            data: vec![],
        });
        assert!(c.has_pending_rx());
        assert_eq!(c.recv_pkt(65536).unwrap().data.len(), 6000 - 4096);
    }

    #[test]
    fn host_eof_sends_shutdown_and_guest_close_gets_rst() {
        let (mut c, host) = pair();
        c.recv_pkt(4096);
        drop(host);
        c.notify(EventSet::IN | EventSet::HANG_UP);
        let p = c.recv_pkt(4096).unwrap();
        assert_eq!((p.hdr.op, p.hdr.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
        let mut h = guest_hdr(op::SHUTDOWN, 0);
        h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        c.send_pkt(VsockPacket {
            hdr: h,
            data: vec![],
        });
        assert_eq!(c.recv_pkt(4096).unwrap().hdr.op, op::RST);
        assert!(c.is_done());
    }

    #[test]
    fn credit_violation_and_bad_ops_reset() {
        let (mut c, _host) = pair();
        c.recv_pkt(4096);
        let big = vec![0u8; CONN_TX_BUF_SIZE as usize + 1];
        c.send_pkt(VsockPacket {
            hdr: guest_hdr(op::RW, big.len() as u32),
            data: big,
        });
        assert_eq!(c.recv_pkt(4096).unwrap().hdr.op, op::RST);
        assert!(c.is_done());

        let (mut c, _host) = pair();
        c.recv_pkt(4096);
        c.send_pkt(VsockPacket {
            hdr: guest_hdr(op::RESPONSE, 0),
            data: vec![],
        });
        assert_eq!(c.recv_pkt(4096).unwrap().hdr.op, op::RST);
    }

    #[test]
    fn host_initiated_handshake_ack() {
        let (a, mut host) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new_local(a, 1 << 30, 1024, 3);
        let r = c.recv_pkt(4096).unwrap();
        assert_eq!(
            (r.hdr.op, r.hdr.dst_port, r.hdr.src_port),
            (op::REQUEST, 1024, 1 << 30)
        );
        assert_eq!(c.interest(), EventSet::empty());
        let mut h = guest_hdr(op::RESPONSE, 0);
        h.src_port = 1024;
        h.dst_port = 1 << 30;
        c.send_pkt(VsockPacket {
            hdr: h,
            data: vec![],
        });
        assert_eq!(c.state(), ConnState::Established);
        let mut buf = [0u8; 14];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"OK 1073741824\n");
    }

    #[test]
    fn credit_request_gets_update() {
        let (mut c, _host) = pair();
        c.recv_pkt(4096);
        c.send_pkt(VsockPacket {
            hdr: guest_hdr(op::CREDIT_REQUEST, 0),
            data: vec![],
        });
        let p = c.recv_pkt(4096).unwrap();
        assert_eq!(
            (p.hdr.op, p.hdr.buf_alloc),
            (op::CREDIT_UPDATE, CONN_TX_BUF_SIZE)
        );
    }
}
