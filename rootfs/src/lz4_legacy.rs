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

/// Decompresses a legacy stream the way the kernel's unpacker reads one, so
/// that the same decoder serves our initramfs and Debian's `vmlinuz` payload:
/// a magic word between blocks starts another frame, and a last lone 32-bit
/// word is the uncompressed size the kernel build appends (`size_append`),
/// which the `lz4` tool chokes on.
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, Lz4Error> {
    let rest = frame
        .strip_prefix(&MAGIC.to_le_bytes())
        .ok_or(Lz4Error::NoMagic)?;
    let mut out = Vec::new();
    let mut buf = vec![0; BLOCK];
    let mut at = 0;
    // Exactly four bytes left: the appended size word, not a block.
    while rest.len() - at > 4 {
        let len = u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        if len == MAGIC {
            at += 4;
            continue;
        }
        let len = len as usize;
        let block = rest
            .get(at + 4..at + 4 + len)
            .ok_or(Lz4Error::Truncated(at))?;
        let n = lz4_flex::block::decompress_into(block, &mut buf)
            .map_err(|_| Lz4Error::BadBlock(at))?;
        out.extend_from_slice(&buf[..n]);
        at += 4 + len;
    }
    if rest.len() > at && rest.len() - at < 4 {
        return Err(Lz4Error::Truncated(at));
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

    #[test]
    fn reads_kernel_payloads_with_size_word_and_concatenated_frames() {
        let a = vec![1u8; 100_000];
        let b: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        // Two frames back to back, then the size word the kernel build appends.
        let mut stream = compress(&a);
        stream.extend_from_slice(&compress(&b));
        stream.extend_from_slice(&((a.len() + b.len()) as u32).to_le_bytes());
        assert_eq!(decompress(&stream).unwrap(), [a, b].concat());
    }

    #[test]
    fn rejects_a_corrupt_block() {
        let mut frame = compress(&[7u8; 1000]);
        frame[9] ^= 0xff;
        frame[10] ^= 0xff;
        let r = decompress(&frame);
        assert!(r.is_err() || r.unwrap() != vec![7u8; 1000]);
    }
}
