//! Builds the guest `vmlinux` from Debian's `linux-source-6.12` package.
//!
//! Steps: unpack the source tarball once, `make tinyconfig`, merge our
//! fragment, `make olddefconfig`, check the result ([`crate::kconfig`]),
//! `make vmlinux`. The result is cached under
//! `<cache>/kernel/<key>/{vmlinux,config}` where the key hashes the source
//! package version and the fragment, so a second build returns at once.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cache, kconfig};

/// The Debian source package the kernel is built from.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// Errors of the kernel build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source package is not installed.
    #[error("{SOURCE_PACKAGE} is not installed ({0} missing): apt-get install {SOURCE_PACKAGE}")]
    SourceMissing(PathBuf),
    /// A command could not be started or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status or spawn error, and the tail of its output.
        detail: String,
    },
    /// The final configuration lacks required options.
    #[error("the kernel config misses required options:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A built (or cached) guest kernel.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    /// The ELF `vmlinux`.
    pub vmlinux: PathBuf,
    /// The final `.config` it was built with.
    pub config: PathBuf,
    /// True when it came from the cache.
    pub cached: bool,
}

/// Options of a kernel build.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// The source tarball.
    pub tarball: PathBuf,
    /// The source package version (part of the cache key).
    pub version: String,
    /// Cache root.
    pub cache_dir: PathBuf,
    /// `make -j` value.
    pub jobs: usize,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl KernelBuild {
    /// The defaults: the installed Debian package, the default cache, and
    /// one more job than there are cores.
    pub fn from_system() -> Result<Self> {
        let tarball = PathBuf::from(format!("/usr/src/{SOURCE_PACKAGE}.tar.xz"));
        if !tarball.exists() {
            return Err(Error::SourceMissing(tarball));
        }
        let version =
            run_capture(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))?;
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            + 1;
        Ok(Self {
            tarball,
            version: version.trim().to_string(),
            cache_dir: cache::root(),
            jobs,
        })
    }

    /// The cache key of this build.
    pub fn key(&self) -> String {
        cache::key(&[self.version.as_bytes(), kconfig::FRAGMENT.as_bytes()])
    }

    /// Where the result of this build lives.
    pub fn output_dir(&self) -> PathBuf {
        self.cache_dir.join("kernel").join(self.key())
    }

    /// Returns the cached kernel if present.
    pub fn cached(&self) -> Option<BuiltKernel> {
        let dir = self.output_dir();
        let vmlinux = dir.join("vmlinux");
        let config = dir.join("config");
        (vmlinux.is_file() && config.is_file()).then_some(BuiltKernel {
            vmlinux,
            config,
            cached: true,
        })
    }

    /// Builds the kernel, or returns the cached one. Progress goes to `log`.
    pub fn build(&self, log: &mut dyn Write) -> Result<BuiltKernel> {
        if let Some(hit) = self.cached() {
            return Ok(hit);
        }
        // One build at a time per cache: concurrent runs (two test suites,
        // two developers) share the unpacked tree.
        std::fs::create_dir_all(&self.cache_dir)
            .map_err(io_err("cannot create", &self.cache_dir))?;
        let lock_path = self.cache_dir.join("kernel-build.lock");
        let lock =
            std::fs::File::create(&lock_path).map_err(io_err("cannot create", &lock_path))?;
        if lock.try_lock().is_err() {
            let _ = writeln!(log, "kernel: another build is running, waiting for it");
            lock.lock().map_err(io_err("cannot lock", &lock_path))?;
        }
        if let Some(hit) = self.cached() {
            return Ok(hit);
        }
        let work = self.cache_dir.join("build");
        let tree = work.join(SOURCE_PACKAGE);
        let stamp = work.join(format!(".unpacked-{}", self.version));
        if !stamp.exists() {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work).map_err(io_err("cannot create", &work))?;
            let _ = writeln!(log, "kernel: unpacking {}", self.tarball.display());
            run(Command::new("tar")
                .arg("-xf")
                .arg(&self.tarball)
                .arg("-C")
                .arg(&work))?;
            std::fs::write(&stamp, b"").map_err(io_err("cannot write", &stamp))?;
        }
        let fragment = work.join("husk.config");
        std::fs::write(&fragment, kconfig::FRAGMENT).map_err(io_err("cannot write", &fragment))?;
        let _ = writeln!(log, "kernel: configuring (tinyconfig + husk fragment)");
        run(make(&tree).arg("tinyconfig"))?;
        run(Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(&tree)
            .args(["-m", ".config"])
            .arg(&fragment))?;
        run(make(&tree).arg("olddefconfig"))?;
        let dot_config = tree.join(".config");
        let text =
            std::fs::read_to_string(&dot_config).map_err(io_err("cannot read", &dot_config))?;
        let problems = kconfig::problems(&kconfig::parse(&text));
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let _ = writeln!(
            log,
            "kernel: building vmlinux with -j{} (a few minutes the first time)",
            self.jobs
        );
        make_with_progress(&tree, self.jobs, log)?;

        let out = self.output_dir();
        let staging = out.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
        for (from, to) in [("vmlinux", "vmlinux"), (".config", "config")] {
            let dst = staging.join(to);
            std::fs::copy(tree.join(from), &dst).map_err(io_err("cannot copy to", &dst))?;
        }
        let _ = std::fs::remove_dir_all(&out);
        std::fs::rename(&staging, &out).map_err(io_err("cannot publish", &out))?;
        Ok(BuiltKernel {
            vmlinux: out.join("vmlinux"),
            config: out.join("config"),
            cached: false,
        })
    }
}

fn make(tree: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(tree).arg("ARCH=x86_64");
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn run_capture(cmd: &mut Command) -> Result<String> {
    let output = cmd.output().map_err(|e| Error::Command {
        command: describe(cmd),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            detail: format!("{}: {}", output.status, tail(&output.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    run_capture(cmd).map(drop)
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs `make vmlinux`, printing a progress line every few seconds: how many
/// compilation units are done and the time so far.
fn make_with_progress(tree: &Path, jobs: usize, log: &mut dyn Write) -> Result<()> {
    let mut cmd = make(tree);
    cmd.arg(format!("-j{jobs}"))
        .arg("vmlinux")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = describe(&cmd);
    let mut child = cmd.spawn().map_err(|e| Error::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            lines.push(line);
        }
        lines
    });
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut compiled = 0usize;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
        if line.trim_start().starts_with("CC") || line.trim_start().starts_with("AS") {
            compiled += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let _ = writeln!(
                log,
                "kernel: {compiled} units compiled, {:.0} s, last: {}",
                started.elapsed().as_secs_f64(),
                line.trim()
            );
        }
    }
    let status = child.wait().map_err(|e| Error::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    let errors = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        let start = errors.len().saturating_sub(30);
        return Err(Error::Command {
            command,
            detail: format!("{status}: {}", errors[start..].join("\n")),
        });
    }
    let _ = writeln!(
        log,
        "kernel: built in {:.0} s ({compiled} units)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_in(dir: &Path, version: &str) -> KernelBuild {
        KernelBuild {
            tarball: dir.join("none.tar.xz"),
            version: version.into(),
            cache_dir: dir.to_path_buf(),
            jobs: 1,
        }
    }

    #[test]
    fn key_depends_on_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_ne!(
            build_in(dir.path(), "1").key(),
            build_in(dir.path(), "2").key()
        );
    }

    #[test]
    fn a_cached_kernel_is_returned_without_building() {
        let dir = tempfile::tempdir().unwrap();
        let build = build_in(dir.path(), "6.12.0-test");
        assert!(build.cached().is_none());
        let out = build.output_dir();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("vmlinux"), b"\x7fELF").unwrap();
        std::fs::write(out.join("config"), b"CONFIG_SMP=y\n").unwrap();
        // The tarball does not exist: any attempt to build would fail.
        let built = build.build(&mut std::io::sink()).unwrap();
        assert!(built.cached);
        assert_eq!(built.vmlinux, out.join("vmlinux"));
    }
}
