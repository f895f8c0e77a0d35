//! The vsock packet header (44 bytes, little endian) and descriptor-chain I/O.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemory;

use super::MAX_PKT_PAYLOAD;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;

/// `struct virtio_vsock_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet with its payload copied out of (or into) guest memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsockPacket {
    /// Header; `hdr.len` equals `data.len()`.
    pub hdr: VsockHeader,
    /// Payload.
    pub data: Vec<u8>,
}

/// Why a descriptor chain was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain's buffers are outside guest memory or malformed.
    #[error("bad descriptor chain")]
    BadChain,
    /// The readable part is shorter than a header.
    #[error("descriptor chain shorter than a vsock header")]
    ShortHeader,
    /// `len` exceeds the payload present in the chain or the size limit.
    #[error("payload length {0} exceeds the buffer or the limit")]
    BadLength(u32),
    /// The writable part cannot hold a header.
    #[error("rx buffer too small")]
    SmallRxBuffer,
}

/// Reads a packet sent by the guest from a tx descriptor chain.
pub fn read_from_chain<M>(mem: &M, chain: DescriptorChain<&M>) -> Result<VsockPacket, PacketError>
where
    M: GuestMemory,
{
    let mut r = Reader::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    if r.available_bytes() < HDR_SIZE {
        return Err(PacketError::ShortHeader);
    }
    let mut h = [0u8; HDR_SIZE];
    r.read_exact(&mut h).map_err(|_| PacketError::BadChain)?;
    let hdr = VsockHeader::from_bytes(&h);
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD || len > r.available_bytes() {
        return Err(PacketError::BadLength(hdr.len));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).map_err(|_| PacketError::BadChain)?;
    Ok(VsockPacket { hdr, data })
}

/// Room for payload in an rx chain, or an error when the chain is unusable.
pub fn rx_capacity<M>(mem: &M, chain: DescriptorChain<&M>) -> Result<usize, PacketError>
where
    M: GuestMemory,
{
    let w = Writer::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    w.available_bytes()
        .checked_sub(HDR_SIZE)
        .ok_or(PacketError::SmallRxBuffer)
}

/// Writes `pkt` into an rx chain; returns the number of bytes written.
pub fn write_to_chain<M>(
    mem: &M,
    chain: DescriptorChain<&M>,
    pkt: &VsockPacket,
) -> Result<u32, PacketError>
where
    M: GuestMemory,
{
    let mut w = Writer::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    if w.available_bytes() < HDR_SIZE + pkt.data.len() {
        return Err(PacketError::SmallRxBuffer);
    }
    w.write_all(&pkt.hdr.to_bytes())
        .and_then(|_| w.write_all(&pkt.data))
        .map_err(|_| PacketError::BadChain)?;
    Ok((HDR_SIZE + pkt.data.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 7,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 99,
        };
        let b = h.to_bytes();
        assert_eq!(VsockHeader::from_bytes(&b), h);
        // Field offsets per the spec.
        assert_eq!(&b[16..20], &1234u32.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &99u32.to_le_bytes());
    }
}
