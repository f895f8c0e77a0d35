//! What a run of the `vsock_muxer` target does: packets from the guest and actions of host
//! programs on the muxer's sockets, in an order the fuzzer picks.

use arbitrary::Arbitrary;
use husk_vmm::devices::virtio::vsock::{op, VsockHeader, VsockPacket, VSOCK_HOST_CID};

/// The guest's CID in these runs.
pub const GUEST_CID: u64 = 3;
/// First port the muxer gives host-initiated connections (its `LOCAL_PORT_BASE`).
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
/// A guest port a host listener serves (`<socket>_<LISTEN_PORT>` exists).
pub const LISTEN_PORT: u32 = 5000;

/// A CID: mostly the right ones, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Cid {
    /// The guest's.
    Guest,
    /// The host's.
    Host,
    /// Any value.
    Other(u64),
}

impl Cid {
    fn value(self) -> u64 {
        match self {
            Cid::Guest => GUEST_CID,
            Cid::Host => VSOCK_HOST_CID,
            Cid::Other(v) => v,
        }
    }
}

/// A port, biased towards the ones the muxer knows about so that packets reach
/// connections instead of only being reset.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    /// The n-th port handed to a host-initiated connection.
    Local(u8),
    /// The port of the host listener.
    Listen,
    /// A small port, such as the ones host programs connect to.
    Small(u8),
    /// Any value.
    Other(u32),
}

impl Port {
    /// The port number.
    pub fn value(self) -> u32 {
        match self {
            Port::Local(n) => LOCAL_PORT_BASE + u32::from(n % 8),
            Port::Listen => LISTEN_PORT,
            Port::Small(n) => u32::from(n % 8),
            Port::Other(v) => v,
        }
    }
}

// `op % 9` spans every valid operation (1..=7) and a few invalid ones.
const _: () = assert!(op::REQUEST == 1 && op::CREDIT_REQUEST == 7);

/// A packet the guest sends.
#[derive(Arbitrary, Debug, Clone)]
pub struct GuestPacket {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: Port,
    dst_port: Port,
    /// Socket type: stream unless the fuzzer says otherwise.
    type_: Option<u16>,
    /// Operation, taken modulo 9 so that valid ones (1..=7) are common.
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

impl GuestPacket {
    /// The packet as the device hands it to the backend (`hdr.len` is the payload's).
    pub fn packet(&self) -> VsockPacket {
        let hdr = VsockHeader {
            src_cid: self.src_cid.value(),
            dst_cid: self.dst_cid.value(),
            src_port: self.src_port.value(),
            dst_port: self.dst_port.value(),
            len: self.data.len() as u32,
            type_: self.type_.unwrap_or(1),
            op: u16::from(self.op % 9),
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        };
        VsockPacket {
            hdr,
            data: self.data.clone(),
        }
    }
}

/// One step of a run.
#[derive(Arbitrary, Debug, Clone)]
pub enum Action {
    /// The guest sends a packet.
    Guest(GuestPacket),
    /// A host program connects and sends `CONNECT <port>\n`.
    HostConnect(Port),
    /// A host program connects and sends these bytes as its handshake.
    HostRaw(Vec<u8>),
    /// Host stream n writes.
    HostWrite(u8, Vec<u8>),
    /// Host stream n reads what it can.
    HostRead(u8),
    /// Host stream n shuts down its write side.
    HostShutdown(u8),
    /// Host stream n closes.
    HostClose(u8),
    /// The event loop reports the muxer's fd readable.
    Notify,
    /// The device takes a packet for the guest with room for this much payload.
    Recv(u16),
}
