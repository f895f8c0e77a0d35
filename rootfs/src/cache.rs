//! Where built artifacts are kept between runs, and under which key.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Environment variable that overrides the cache root.
pub const CACHE_ENV: &str = "HUSK_CACHE_DIR";

/// Default cache root: outside the checkout, so a fresh clone (as in CI)
/// still finds a kernel built by an earlier run on the same machine.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/husk";

/// The cache root directory.
pub fn root() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// A short, stable hex key of the given parts.
pub fn key(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_sensitive_to_every_part() {
        let a = key(&[b"6.12.1", b"CONFIG_A=y"]);
        assert_eq!(a, key(&[b"6.12.1", b"CONFIG_A=y"]));
        assert_eq!(a.len(), 16);
        assert_ne!(a, key(&[b"6.12.2", b"CONFIG_A=y"]));
        assert_ne!(a, key(&[b"6.12.1", b"CONFIG_A=n"]));
        // Part boundaries matter: ("ab","c") is not ("a","bc").
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }
}
