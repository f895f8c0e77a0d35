//! `cargo xtask bench`: runs `husk-bench` where KVM is real and keeps its
//! JSON next to the build output.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use husk_rootfs::guest_image;
use husk_rootfs::initramfs::Compression;
use husk_testhost::HostFile;

use crate::artifacts;
use crate::test_host::{self, HOST_BIN, HOST_INITRD, HOST_KERNEL};

const JSON_PREFIX: &str = "HUSK-BENCH-JSON ";
/// QEMU's firmware for the microvm machine and its option ROMs.
const QEMU_DATA: &[&str] = &[
    "qboot.rom",
    "bios-microvm.bin",
    "pvh.bin",
    "linuxboot_dma.bin",
];

/// Initramfs variants booted next to the default one: `(name, compression,
/// agent stripped of its symbol table)`. Measured so far: lz4 touches more
/// guest RAM than gzip and boots no faster; a stripped agent saves 1.6 MiB (now
/// the default); an uncompressed image skips the guest's ~0.4 s wait for gzip
/// but touches 3 MiB more.
const INITRD_VARIANTS: &[(&str, Compression, bool)] = &[("none", Compression::None, false)];
/// Kernel parameter variants booted next to the default command line:
/// `(name, parameters)`. Measured so far and now in the shim's command line:
/// `rcupdate.rcu_expedited=1`, `i8042.nokbd`.
const CMDLINE_VARIANTS: &[(&str, &str)] = &[];

/// Writes the initramfs variants next to the default one; `(name, path)`.
fn initrd_variants(a: &artifacts::Artifacts) -> Result<Vec<(String, PathBuf)>> {
    if INITRD_VARIANTS.is_empty() {
        return Ok(Vec::new());
    }
    let agent = a.bin_dir.join("husk-agent");
    let stripped = a.root.join("target/husk/husk-agent.stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&agent)
        .status()
        .context("run strip")?;
    anyhow::ensure!(status.success(), "strip {} failed", agent.display());
    let mut out = Vec::new();
    for (name, compression, strip) in INITRD_VARIANTS {
        let path = a.root.join(format!("target/husk/initrd-{name}.img"));
        let agent = if *strip { &stripped } else { &agent };
        guest_image::write_agent_initramfs_as(agent, &path, *compression)
            .with_context(|| format!("write {}", path.display()))?;
        out.push((name.to_string(), path));
    }
    Ok(out)
}

/// What `cargo xtask bench` was asked for.
pub struct Options {
    /// Runs per figure.
    pub runs: usize,
    /// More guest kernels to boot, `NAME=PATH`.
    pub alt_kernels: Vec<String>,
    /// Only the boot figures.
    pub boot_only: bool,
}

/// The `NAME=PATH` of an extra kernel, checked.
fn alt_kernel(spec: &str) -> Result<(String, PathBuf)> {
    let (name, path) = spec
        .split_once('=')
        .with_context(|| format!("--alt-kernel {spec:?}: expected NAME=PATH"))?;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "--alt-kernel {spec:?}: the name takes letters, digits and '-'"
    );
    let path = PathBuf::from(path);
    anyhow::ensure!(path.is_file(), "--alt-kernel {spec:?}: no such file");
    Ok((name.to_string(), path))
}

/// Builds everything and runs the benchmarks as `opts` asks.
pub fn run(opts: &Options) -> Result<bool> {
    let runs = opts.runs;
    let kernels = opts
        .alt_kernels
        .iter()
        .map(|k| alt_kernel(k))
        .collect::<Result<Vec<_>>>()?;
    let a = artifacts::build_all()?;
    let variants = initrd_variants(&a)?;
    let json_out = a.root.join("target/husk/bench.json");
    if husk_testhost::hardware_kvm_available() {
        let mut cmd = Command::new(a.bin_dir.join("husk-bench"));
        for (name, path) in &variants {
            cmd.arg(format!("--alt-initrd={name}={}", path.display()));
        }
        for (name, params) in CMDLINE_VARIANTS {
            cmd.arg(format!("--alt-cmdline={name}={params}"));
        }
        for (name, path) in &kernels {
            cmd.arg(format!("--alt-kernel={name}={}", path.display()));
        }
        if opts.boot_only {
            cmd.arg("--boot-only");
        }
        let status = cmd
            .arg("--runs")
            .arg(runs.to_string())
            .arg("--json")
            .arg(&json_out)
            .env("HUSK_KERNEL", &a.kernel)
            .env("HUSK_INITRD", &a.initrd)
            .env("HUSK_BIN_DIR", &a.bin_dir)
            .status()
            .context("run husk-bench")?;
        return Ok(status.success());
    }
    eprintln!("xtask: no VT-x/AMD-V here: benchmarking inside the test host");
    let mut files = test_host::files(&a, &[]);
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    files.push(HostFile::executable(qemu, "/usr/bin/qemu-system-x86_64"));
    for name in QEMU_DATA {
        let path = Path::new("/usr/share/qemu").join(name);
        files.push(HostFile::new(&path, path.to_string_lossy().into_owned()));
    }
    // containerd finds the husk shim (and the shim husk-vmm, virtiofsd) in PATH.
    let mut alts = String::new();
    for (name, path) in &variants {
        let inside = format!("/husk/guest/initrd-{name}.img");
        files.push(HostFile::new(path, inside.clone()));
        alts.push_str(&format!(" --alt-initrd={name}={inside}"));
    }
    for (name, params) in CMDLINE_VARIANTS {
        alts.push_str(&format!(" '--alt-cmdline={name}={params}'"));
    }
    for (name, path) in &kernels {
        let inside = format!("/husk/guest/vmlinux-{name}");
        files.push(HostFile::new(path, inside.clone()));
        alts.push_str(&format!(" --alt-kernel={name}={inside}"));
    }
    if opts.boot_only {
        alts.push_str(" --boot-only");
    }
    let command = format!(
        "export PATH={HOST_BIN}:$PATH; \
         {HOST_BIN}/husk-bench --runs {runs} --boot-trace --kernel {HOST_KERNEL} --initrd {HOST_INITRD} --bin-dir {HOST_BIN}{alts}"
    );
    let mut json = None;
    let ok = test_host::retry_on_fault("bench", files, &command, &mut |line| match line
        .strip_prefix(JSON_PREFIX)
    {
        Some(j) => json = Some(j.to_string()),
        None => println!("{line}"),
    })?;
    if let Some(json) = json {
        std::fs::write(&json_out, json + "\n")?;
        eprintln!("xtask: figures written to {}", json_out.display());
    }
    Ok(ok)
}
