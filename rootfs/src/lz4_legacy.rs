//! The LZ4 "legacy" frame the kernel's `RD_LZ4` unpacker reads: the magic
//! `0x184C2102`, then blocks of at most 8 MiB of input, each a little-endian
//! `u32` compressed length followed by a raw LZ4 block. LZ4 trades a little
//! size against gzip for several times faster unpacking in the guest.

/// Magic number at the start of a legacy frame (little-endian on disk).
pub const MAGIC: u32 = 0x184C_2102;
/// Uncompressed size of every block but the last (the kernel's chunk size).
pub const BLOCK: usize = 8 << 20;

/// Errors of reading a legacy frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    /// The input does not start with [`MAGIC`].
    #[error("not an LZ4 legacy frame")]
    NoMagic,
    /// A block header or block is cut short.
    #[error("truncated LZ4 block at offset {0}")]
    Truncated(usize),
    /// A block does not decode.
    #[error("bad LZ4 block at offset {0}")]
    BadBlock(usize),
}

/// Compresses `data` into one legacy frame.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(BLOCK) {
        let block = lz4_flex::block::compress(chunk);
        // A block is at most a little larger than its 8 MiB input: it fits a u32.
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// Decompresses one legacy frame (for tests and tools).
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, Lz4Error> {
    let rest = frame
        .strip_prefix(&MAGIC.to_le_bytes())
        .ok_or(Lz4Error::NoMagic)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < rest.len() {
        let len = rest
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(Lz4Error::Truncated(at))?;
        let block = rest
            .get(at + 4..at + 4 + len)
            .ok_or(Lz4Error::Truncated(at))?;
        let mut buf = vec![0; BLOCK];
        let n = lz4_flex::block::decompress_into(block, &mut buf)
            .map_err(|_| Lz4Error::BadBlock(at))?;
        out.extend_from_slice(&buf[..n]);
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_blocks() {
        let data: Vec<u8> = (0..BLOCK + 12345).map(|i| (i % 251) as u8).collect();
        let frame = compress(&data);
        assert_eq!(&frame[..4], &[0x02, 0x21, 0x4c, 0x18]);
        assert!(frame.len() < data.len() / 10);
        assert_eq!(decompress(&frame).unwrap(), data);
    }

    #[test]
    fn rejects_foreign_and_cut_input() {
        assert_eq!(decompress(b"\x1f\x8b"), Err(Lz4Error::NoMagic));
        let frame = compress(b"hello hello hello hello");
        assert_eq!(
            decompress(&frame[..frame.len() - 3]),
            Err(Lz4Error::Truncated(0))
        );
    }
}
