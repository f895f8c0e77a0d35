//! The shared-library closure of a dynamically linked executable, so that it
//! can run in the test host's busybox initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of resolving a closure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ldd` could not run.
    #[error("cannot run ldd on {path}: {source}")]
    Ldd {
        /// The executable.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A library the executable needs was not found.
    #[error("{path} needs {library}, which is not found")]
    NotFound {
        /// The executable.
        path: PathBuf,
        /// The missing library.
        library: String,
    },
}

/// Parses `ldd` output into the library paths it names.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                return Err(name.trim().to_string());
            }
            if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(PathBuf::from(path));
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            // The dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x...)".
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The libraries `executable` loads (empty for a static binary or a script).
pub fn libraries(executable: &Path) -> Result<Vec<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(executable)
        .output()
        .map_err(|source| Error::Ldd {
            path: executable.to_path_buf(),
            source,
        })?;
    // ldd exits 1 for static binaries ("not a dynamic executable").
    if !output.status.success() {
        return Ok(Vec::new());
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout)).map_err(|library| Error::NotFound {
        path: executable.to_path_buf(),
        library,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typical_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libseccomp.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn reports_missing_library() {
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1".to_string())
        );
    }

    #[test]
    fn real_dynamic_binary_has_libc() {
        let libs = libraries(Path::new("/bin/ls")).unwrap();
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }

    #[test]
    fn static_binary_has_none() {
        assert!(libraries(Path::new("/bin/busybox")).unwrap().is_empty());
    }
}
