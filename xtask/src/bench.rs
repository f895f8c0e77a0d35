//! `cargo xtask bench`: runs `husk-bench` where KVM is real and keeps its
//! JSON next to the build output.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use husk_testhost::HostFile;

use crate::artifacts;
use crate::e2e::{self, HOST_BIN, HOST_INITRD, HOST_KERNEL};

const JSON_PREFIX: &str = "HUSK-BENCH-JSON ";
/// QEMU's firmware for the microvm machine and its option ROMs.
const QEMU_DATA: &[&str] = &[
    "qboot.rom",
    "bios-microvm.bin",
    "pvh.bin",
    "linuxboot_dma.bin",
];

/// Builds everything and runs the benchmarks with `runs` runs per figure.
pub fn run(runs: usize) -> Result<bool> {
    let a = artifacts::build_all()?;
    let json_out = a.root.join("target/husk/bench.json");
    if husk_testhost::hardware_kvm_available() {
        let status = Command::new(a.bin_dir.join("husk-bench"))
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
    let mut files = e2e::test_host_files(&a, &[]);
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    files.push(HostFile::executable(qemu, "/usr/bin/qemu-system-x86_64"));
    for name in QEMU_DATA {
        let path = Path::new("/usr/share/qemu").join(name);
        files.push(HostFile::new(&path, path.to_string_lossy().into_owned()));
    }
    let command = format!(
        "{HOST_BIN}/husk-bench --runs {runs} --kernel {HOST_KERNEL} --initrd {HOST_INITRD} --bin-dir {HOST_BIN}"
    );
    let mut json = None;
    let code = e2e::boot_test_host(
        files,
        command,
        &mut |line| match line.strip_prefix(JSON_PREFIX) {
            Some(j) => json = Some(j.to_string()),
            None => println!("{line}"),
        },
    )?;
    if let Some(json) = json {
        std::fs::write(&json_out, json + "\n")?;
        eprintln!("xtask: figures written to {}", json_out.display());
    }
    Ok(code == 0)
}
