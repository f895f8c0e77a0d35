//! A writer (and reader, for tests) of newc cpio archives, the format the
//! Linux kernel unpacks into its initial root filesystem.
//!
//! The archive is built in memory from explicit entries rather than from a
//! directory walk, so the result does not depend on the build host's file
//! ownership or timestamps: every entry is owned by root with mtime 0, which
//! also makes the output reproducible.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;

use crate::lz4_legacy;

/// Errors of building or reading an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadHostFile {
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write the initramfs: {0}")]
    Write(#[source] io::Error),
    /// An entry path is empty, absolute after normalisation or contains `..`.
    #[error("invalid archive path {0:?}")]
    InvalidPath(String),
    /// The archive being read is malformed.
    #[error("malformed newc archive at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset of the bad header.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// File type bits of `st_mode`.
pub mod mode {
    /// Directory.
    pub const DIR: u32 = 0o040000;
    /// Regular file.
    pub const FILE: u32 = 0o100000;
    /// Symbolic link.
    pub const SYMLINK: u32 = 0o120000;
    /// Character device.
    pub const CHAR_DEV: u32 = 0o020000;
    /// Mask of the type bits.
    pub const TYPE_MASK: u32 = 0o170000;
}

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain cpio: the fastest to write and to unpack, the largest.
    None,
    /// gzip, which every kernel with `RD_GZIP` unpacks.
    Gzip,
    /// LZ4 legacy frame (`RD_LZ4`): a little larger than gzip, much faster
    /// to unpack.
    Lz4,
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub path: String,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device major number (character devices only).
    pub rdev_major: u32,
    /// Device minor number (character devices only).
    pub rdev_minor: u32,
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

/// An initramfs under construction.
///
/// Parent directories are added implicitly with mode 0755, so callers only
/// name what they care about.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
}

fn normalise(path: &str) -> Result<String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::InvalidPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if self.dirs.insert(prefix.clone()) {
                self.entries.push(Entry {
                    path: prefix.clone(),
                    mode: mode::DIR | 0o755,
                    rdev_major: 0,
                    rdev_minor: 0,
                    data: Vec::new(),
                });
            }
        }
    }

    fn push(
        &mut self,
        path: &str,
        mode: u32,
        data: Vec<u8>,
        rdev: (u32, u32),
    ) -> Result<&mut Self> {
        let path = normalise(path)?;
        self.ensure_parents(&path);
        if mode & mode::TYPE_MASK == mode::DIR {
            if !self.dirs.insert(path.clone()) {
                // Already present (made implicitly): update its permissions.
                if let Some(e) = self.entries.iter_mut().find(|e| e.path == path) {
                    e.mode = mode;
                }
                return Ok(self);
            }
        } else {
            self.entries.retain(|e| e.path != path);
        }
        self.entries.push(Entry {
            path,
            mode,
            rdev_major: rdev.0,
            rdev_minor: rdev.1,
            data,
        });
        Ok(self)
    }

    /// Adds a directory with permission bits `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self> {
        self.push(path, mode::DIR | (perm & 0o7777), Vec::new(), (0, 0))
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, perm: u32) -> Result<&mut Self> {
        self.push(path, mode::FILE | (perm & 0o7777), data.into(), (0, 0))
    }

    /// Adds a regular file whose contents are read from `host_path`.
    pub fn host_file(&mut self, path: &str, host_path: &Path, perm: u32) -> Result<&mut Self> {
        let data = std::fs::read(host_path).map_err(|source| Error::ReadHostFile {
            path: host_path.to_path_buf(),
            source,
        })?;
        self.file(path, data, perm)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.push(
            path,
            mode::SYMLINK | 0o777,
            target.as_bytes().to_vec(),
            (0, 0),
        )
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32, perm: u32) -> Result<&mut Self> {
        self.push(
            path,
            mode::CHAR_DEV | (perm & 0o7777),
            Vec::new(),
            (major, minor),
        )
    }

    /// The entries in archive order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Writes the archive, compressed as asked.
    pub fn write_to<W: Write>(&self, writer: W, compression: Compression) -> Result<()> {
        match compression {
            Compression::None => {
                let mut w = io::BufWriter::new(writer);
                self.write_newc(&mut w).map_err(Error::Write)?;
                w.flush().map_err(Error::Write)
            }
            Compression::Gzip => {
                let mut gz =
                    GzEncoder::new(io::BufWriter::new(writer), flate2::Compression::fast());
                self.write_newc(&mut gz).map_err(Error::Write)?;
                gz.finish()
                    .and_then(|mut w| w.flush())
                    .map_err(Error::Write)
            }
            Compression::Lz4 => {
                let mut plain = Vec::new();
                self.write_newc(&mut plain).map_err(Error::Write)?;
                let mut w = io::BufWriter::new(writer);
                w.write_all(&lz4_legacy::compress(&plain))
                    .and_then(|()| w.flush())
                    .map_err(Error::Write)
            }
        }
    }

    /// Writes the archive to a file.
    pub fn write_file(&self, path: &Path, compression: Compression) -> Result<()> {
        let file = std::fs::File::create(path).map_err(Error::Write)?;
        self.write_to(file, compression)
    }

    fn write_newc<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let mut written = 0usize;
        for (index, entry) in self.entries.iter().enumerate() {
            let nlink = if entry.mode & mode::TYPE_MASK == mode::DIR {
                2
            } else {
                1
            };
            // Inode numbers only need to be unique; 0 would mark hard links.
            let ino = index as u32 + 1;
            written += write_record(w, ino, entry.mode, nlink, entry, &entry.path)?;
        }
        let trailer = Entry {
            path: String::new(),
            mode: 0,
            rdev_major: 0,
            rdev_minor: 0,
            data: Vec::new(),
        };
        written += write_record(w, 0, 0, 1, &trailer, TRAILER)?;
        // The kernel does not need it, but block-aligned archives are the convention.
        let pad = (512 - written % 512) % 512;
        w.write_all(&vec![0; pad])
    }
}

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn write_record<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    entry: &Entry,
    name: &str,
) -> io::Result<usize> {
    let name_len = name.len() + 1;
    let fields: [u32; 13] = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        entry.data.len() as u32,
        0, // dev major
        0, // dev minor
        entry.rdev_major,
        entry.rdev_minor,
        name_len as u32,
        0, // check
    ];
    let mut header = Vec::with_capacity(HEADER_LEN + name_len + 4);
    header.extend_from_slice(MAGIC);
    for field in fields {
        header.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    header.extend(std::iter::repeat_n(0u8, pad4(HEADER_LEN + name_len)));
    w.write_all(&header)?;
    w.write_all(&entry.data)?;
    w.write_all(&[0; 3][..pad4(entry.data.len())])?;
    Ok(header.len() + entry.data.len() + pad4(entry.data.len()))
}

fn parse_hex(bytes: &[u8], offset: usize) -> Result<u32> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed {
        offset,
        reason: "non-ASCII header field",
    })?;
    u32::from_str_radix(text, 16).map_err(|_| Error::Malformed {
        offset,
        reason: "non-hex header field",
    })
}

/// Reads an uncompressed newc archive back into its entries (trailer excluded).
pub fn read_newc(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or(Error::Malformed {
                offset,
                reason: "truncated header",
            })?;
        if &header[..6] != MAGIC {
            return Err(Error::Malformed {
                offset,
                reason: "bad magic",
            });
        }
        let field = |i: usize| parse_hex(&header[6 + i * 8..14 + i * 8], offset);
        let mode = field(1)?;
        let file_size = field(6)? as usize;
        let rdev_major = field(9)?;
        let rdev_minor = field(10)?;
        let name_len = field(11)? as usize;
        let name_start = offset + HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + name_len)
            .filter(|n| n.last() == Some(&0))
            .ok_or(Error::Malformed {
                offset,
                reason: "bad name",
            })?;
        let name = String::from_utf8_lossy(&name[..name_len - 1]).into_owned();
        let data_start = name_start + name_len + pad4(HEADER_LEN + name_len);
        let data = bytes
            .get(data_start..data_start + file_size)
            .ok_or(Error::Malformed {
                offset,
                reason: "truncated data",
            })?;
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            path: name,
            mode,
            rdev_major,
            rdev_minor,
            data: data.to_vec(),
        });
        offset = data_start + file_size + pad4(file_size);
    }
}

/// Reads an archive that may be gzip- or LZ4-compressed.
pub fn read_maybe_gzip(bytes: &[u8]) -> Result<Vec<Entry>> {
    if bytes.starts_with(&lz4_legacy::MAGIC.to_le_bytes()) {
        let plain = lz4_legacy::decompress(bytes).map_err(|_| Error::Malformed {
            offset: 0,
            reason: "bad LZ4 stream",
        })?;
        read_newc(&plain)
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut plain).map_err(
            |_| Error::Malformed {
                offset: 0,
                reason: "bad gzip stream",
            },
        )?;
        read_newc(&plain)
    } else {
        read_newc(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Initramfs {
        let mut fs = Initramfs::new();
        fs.dir("proc", 0o555).unwrap();
        fs.file("/init", b"#!/bin/sh\n".to_vec(), 0o755).unwrap();
        fs.file("etc/deep/nested/file", vec![7u8; 5], 0o644)
            .unwrap();
        fs.symlink("bin/sh", "busybox").unwrap();
        fs.char_dev("dev/console", 5, 1, 0o600).unwrap();
        fs
    }

    #[test]
    fn round_trip_keeps_entries_and_modes() {
        let fs = sample();
        let mut out = Vec::new();
        fs.write_to(&mut out, Compression::None).unwrap();
        assert_eq!(out.len() % 512, 0);
        let entries = read_newc(&out).unwrap();
        assert_eq!(entries, fs.entries());
        let init = entries.iter().find(|e| e.path == "init").unwrap();
        assert_eq!(init.mode, mode::FILE | 0o755);
        let console = entries.iter().find(|e| e.path == "dev/console").unwrap();
        assert_eq!(
            (
                console.mode & mode::TYPE_MASK,
                console.rdev_major,
                console.rdev_minor
            ),
            (mode::CHAR_DEV, 5, 1)
        );
        let link = entries.iter().find(|e| e.path == "bin/sh").unwrap();
        assert_eq!(link.data, b"busybox");
    }

    #[test]
    fn parents_come_before_children() {
        let fs = sample();
        let paths: Vec<&str> = fs.entries().iter().map(|e| e.path.as_str()).collect();
        let pos = |p: &str| paths.iter().position(|x| *x == p).unwrap();
        assert!(pos("etc") < pos("etc/deep"));
        assert!(pos("etc/deep/nested") < pos("etc/deep/nested/file"));
        assert!(pos("dev") < pos("dev/console"));
    }

    #[test]
    fn gzip_round_trip() {
        let fs = sample();
        let mut out = Vec::new();
        fs.write_to(&mut out, Compression::Gzip).unwrap();
        assert_eq!(&out[..2], &[0x1f, 0x8b]);
        assert_eq!(read_maybe_gzip(&out).unwrap(), fs.entries());
    }

    #[test]
    fn lz4_round_trip() {
        let fs = sample();
        let mut out = Vec::new();
        fs.write_to(&mut out, Compression::Lz4).unwrap();
        assert_eq!(&out[..4], &lz4_legacy::MAGIC.to_le_bytes());
        assert_eq!(read_maybe_gzip(&out).unwrap(), fs.entries());
    }

    #[test]
    fn replacing_a_file_keeps_one_entry() {
        let mut fs = Initramfs::new();
        fs.file("a", b"1".to_vec(), 0o644).unwrap();
        fs.file("a", b"22".to_vec(), 0o600).unwrap();
        assert_eq!(fs.entries().len(), 1);
        assert_eq!(fs.entries()[0].data, b"22");
    }

    #[test]
    fn rejects_bad_paths() {
        let mut fs = Initramfs::new();
        assert!(matches!(
            fs.file("", vec![], 0o644),
            Err(Error::InvalidPath(_))
        ));
        assert!(matches!(
            fs.file("a/../b", vec![], 0o644),
            Err(Error::InvalidPath(_))
        ));
        assert!(matches!(
            fs.file("a//b", vec![], 0o644),
            Err(Error::InvalidPath(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(read_newc(b"not an archive at all").is_err());
        let mut out = Vec::new();
        sample().write_to(&mut out, Compression::None).unwrap();
        assert!(read_newc(&out[..200]).is_err());
        assert!(read_maybe_gzip(&[0x1f, 0x8b, 0, 0]).is_err());
    }

    #[test]
    fn output_is_reproducible() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        sample().write_to(&mut a, Compression::Gzip).unwrap();
        sample().write_to(&mut b, Compression::Gzip).unwrap();
        assert_eq!(a, b);
    }
}
