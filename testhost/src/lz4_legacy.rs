//! Decoder for the LZ4 "legacy" frame format that Debian uses for the
//! payload of its x86 `vmlinuz`. The `lz4` tool decodes it too but exits
//! non-zero on the size word the kernel build appends, so we decode the
//! blocks ourselves with `lz4_flex`.

/// Errors of decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data does not start with the legacy magic.
    #[error("not an LZ4 legacy stream")]
    BadMagic,
    /// A block is corrupt.
    #[error("corrupt LZ4 block at offset {0}")]
    CorruptBlock(usize),
}

const MAGIC: u32 = 0x184C_2102;
/// Every legacy block decompresses to at most 8 MiB.
const MAX_BLOCK: usize = 8 << 20;

/// Decompresses a legacy LZ4 stream, ignoring a trailing size word.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, Error> {
    let word = |at: usize| -> Option<u32> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0) != Some(MAGIC) {
        return Err(Error::BadMagic);
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; MAX_BLOCK];
    let mut offset = 4;
    while let Some(len) = word(offset) {
        if len == MAGIC {
            offset += 4;
            continue;
        }
        let start = offset + 4;
        let Some(input) = data.get(start..start + len as usize) else {
            // Not a block: the appended uncompressed-size word (or garbage).
            break;
        };
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|_| Error::CorruptBlock(offset))?;
        out.extend_from_slice(&block[..n]);
        offset = start + len as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_stream(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = MAGIC.to_le_bytes().to_vec();
        let mut total = 0u32;
        for chunk in chunks {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
            total += chunk.len() as u32;
        }
        out.extend_from_slice(&total.to_le_bytes());
        out
    }

    #[test]
    fn decodes_blocks_and_ignores_size_word() {
        let a = vec![1u8; 100_000];
        let b: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let stream = legacy_stream(&[&a, &b]);
        let mut expected = a.clone();
        expected.extend_from_slice(&b);
        assert_eq!(decompress(&stream).unwrap(), expected);
    }

    #[test]
    fn rejects_other_data() {
        assert!(matches!(
            decompress(b"\x1f\x8b\x08\x00"),
            Err(Error::BadMagic)
        ));
        let mut stream = legacy_stream(&[&[7u8; 1000]]);
        stream[9] ^= 0xff;
        stream[10] ^= 0xff;
        let r = decompress(&stream);
        assert!(r.is_err() || r.unwrap() != vec![7u8; 1000]);
    }
}
