//! Running the tests and the demo, on this host when it has hardware KVM and
//! inside the nested-KVM test host otherwise.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use husk_testhost::{HostFile, TestHost, TestHostConfig, TestHostImage};

use crate::artifacts::{self, Artifacts};

/// Paths inside the test host.
pub(crate) const HOST_BIN: &str = "/husk/bin";
pub(crate) const HOST_KERNEL: &str = "/husk/guest/vmlinux";
pub(crate) const HOST_INITRD: &str = "/husk/guest/initrd.img";
const HOST_TESTS: &str = "/husk/tests";
const HOST_WORK: &str = "/tmp/husk-e2e";

/// `cargo test` for everything that runs on any host.
pub fn unit_tests() -> Result<bool> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(artifacts::workspace_root())
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--exclude",
            "husk-e2e",
        ])
        .status()
        .context("run cargo test")?;
    Ok(status.success())
}

pub(crate) fn test_host_files(
    a: &Artifacts,
    tests: &[&(String, std::path::PathBuf)],
) -> Vec<HostFile> {
    let mut files = vec![
        HostFile::new(&a.kernel, HOST_KERNEL),
        HostFile::new(&a.initrd, HOST_INITRD),
    ];
    for entry in std::fs::read_dir(&a.bin_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push(HostFile::new(entry.path(), format!("{HOST_BIN}/{name}")));
    }
    if let Some(virtiofsd) = artifacts::virtiofsd() {
        files.push(HostFile::executable(
            virtiofsd,
            format!("{HOST_BIN}/virtiofsd"),
        ));
    }
    // Debian's containerd, ctr and runc, for the shim's end-to-end tests.
    for exe in [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
    ] {
        if Path::new(exe).is_file() {
            files.push(HostFile::executable(exe, exe));
        }
    }
    for (name, exe) in tests {
        files.push(HostFile::new(exe, format!("{HOST_TESTS}/{name}")));
    }
    files
}

fn test_host_env() -> Vec<(String, String)> {
    [
        ("HUSK_KERNEL", HOST_KERNEL),
        ("HUSK_INITRD", HOST_INITRD),
        ("HUSK_BIN_DIR", HOST_BIN),
        ("HUSK_WORK_DIR", HOST_WORK),
        ("RUST_BACKTRACE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn boot_test_host(
    files: Vec<HostFile>,
    command: String,
    on_line: &mut dyn FnMut(&str),
) -> Result<i32> {
    let host = TestHost::new(TestHostConfig::default()).context("prepare the test host")?;
    let image = TestHostImage {
        files,
        env: test_host_env(),
        command,
        kvm_amd_params: husk_testhost::kvm_amd_params(),
    };
    let outcome = host.run(&image, on_line)?;
    eprintln!(
        "xtask: test host exited {} after {:.1} s",
        outcome.exit_code,
        outcome.wall.as_secs_f64()
    );
    Ok(outcome.exit_code)
}

/// Builds everything and runs the e2e test binaries whose name starts with
/// `filter`, passing `test_args` to each.
pub fn run(filter: Option<&str>, test_args: &[String]) -> Result<bool> {
    let a = artifacts::build_all()?;
    let selected: Vec<&(String, std::path::PathBuf)> = a
        .tests
        .iter()
        .filter(|(name, _)| filter.is_none_or(|f| name.starts_with(f)))
        .collect();
    if selected.is_empty() {
        anyhow::bail!("no end-to-end test binary matches {filter:?}");
    }
    if husk_testhost::hardware_kvm_available() {
        eprintln!("xtask: this host has hardware KVM: running the end-to-end tests directly");
        let work = a.root.join("target/husk/work");
        let mut ok = true;
        for (name, exe) in &selected {
            eprintln!("xtask: == {name}");
            let status = Command::new(exe)
                .args(["--test-threads=1"])
                .args(test_args)
                .env("HUSK_KERNEL", &a.kernel)
                .env("HUSK_INITRD", &a.initrd)
                .env("HUSK_BIN_DIR", &a.bin_dir)
                .env("HUSK_WORK_DIR", &work)
                .status()
                .with_context(|| format!("run {}", exe.display()))?;
            ok &= status.success();
        }
        return Ok(ok);
    }
    eprintln!("xtask: no VT-x/AMD-V here: running the end-to-end tests in the test host");
    let args = shell_words(test_args);
    let command = format!(
        "export PATH={HOST_BIN}:$PATH; mkdir -p {HOST_WORK}; rc=0; \
         for t in {HOST_TESTS}/*; do echo \"== $(basename $t)\"; \"$t\" --test-threads=1 {args} || rc=1; done; \
         if [ $rc -ne 0 ]; then echo '== test host kernel log (last 40 lines)'; dmesg 2>/dev/null | tail -n 40; fi; \
         exit $rc"
    );
    for attempt in 1..=2 {
        let mut fault = None;
        let result = boot_test_host(test_host_files(&a, &selected), command.clone(), &mut |l| {
            if fault.is_none() && is_test_host_kernel_fault(l) {
                fault = Some(l.to_string());
            }
            println!("{l}")
        });
        match (result, fault) {
            (Ok(0), _) => return Ok(true),
            (result, Some(fault)) if attempt == 1 => {
                eprintln!(
                    "xtask: a fault of the test host's nested virtualisation ({fault:?}; result {result:?}): \
                     QEMU TCG's SVM emulation, not husk; running the end-to-end tests once \
                     more in a fresh test host"
                );
            }
            (Ok(_), _) => return Ok(false),
            (Err(e), _) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether a console line is the test host's kernel reporting a fault of its
/// own (timestamped kernel messages; the guests' consoles carry no timestamps).
fn is_test_host_kernel_fault(line: &str) -> bool {
    // A guest that triple-faults in one boot and not in the next is the same emulation
    // fault seen from inside (husk-vmm logs it; a real bug would fail every attempt).
    if line.contains("shutdown (triple fault)") {
        return true;
    }
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    let Some((stamp, message)) = rest.split_once(']') else {
        return false;
    };
    let is_stamp =
        !stamp.trim().is_empty() && stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.');
    let message = message.trim_start();
    is_stamp
        && [
            "BUG: ",
            "watchdog: BUG: soft lockup",
            "Kernel panic",
            "general protection fault",
            "Oops: ",
        ]
        .iter()
        .any(|p| message.starts_with(p))
}

/// The main job: build everything, start a private containerd configured
/// for husk, import a local busybox image and run a container in a husk VM
/// (`husk-demo`), inside the test host where this host lacks VT-x/AMD-V.
pub fn demo() -> Result<bool> {
    let a = artifacts::build_all()?;
    if husk_testhost::hardware_kvm_available() {
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        path.insert(0, a.bin_dir.clone());
        if let Some(dir) = artifacts::virtiofsd().and_then(|v| v.parent().map(Path::to_path_buf)) {
            path.push(dir);
        }
        let status = Command::new(a.bin_dir.join("husk-demo"))
            .env("PATH", std::env::join_paths(path)?)
            .env("HUSK_KERNEL", &a.kernel)
            .env("HUSK_INITRD", &a.initrd)
            .env("HUSK_BIN_DIR", &a.bin_dir)
            .env("HUSK_WORK_DIR", a.root.join("target/husk/work"))
            .status()
            .context("run husk-demo")?;
        return Ok(status.success());
    }
    eprintln!("xtask: no VT-x/AMD-V here: running the demo inside the test host");
    let command =
        format!("export PATH={HOST_BIN}:$PATH; mkdir -p {HOST_WORK}; {HOST_BIN}/husk-demo");
    Ok(boot_test_host(test_host_files(&a, &[]), command, &mut |l| println!("{l}"))? == 0)
}

#[cfg(test)]
mod tests {
    use super::is_test_host_kernel_fault;

    #[test]
    fn kernel_faults_are_told_from_other_lines() {
        assert!(is_test_host_kernel_fault(
            "[   39.585231] BUG: TASK stack guard page was hit at 0000000018a741fb"
        ));
        assert!(is_test_host_kernel_fault(
            "[  108.250224] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [runc:666]"
        ));
        assert!(is_test_host_kernel_fault(
            "[   39.586092] Kernel panic - not syncing: Fatal exception in interrupt"
        ));
        assert!(is_test_host_kernel_fault(
            "2026-11-21T11:15:09Z INFO husk_vmm::vstate::vcpu: vCPU 0: shutdown (triple fault)"
        ));
        assert!(!is_test_host_kernel_fault("BUG: in a guest console line"));
        assert!(!is_test_host_kernel_fault(
            "[   39.586092] RIP: 0010:irqentry_enter+0x12/0x50"
        ));
        assert!(!is_test_host_kernel_fault(
            "test shim_runs_containers_in_vms ... ok"
        ));
        assert!(!is_test_host_kernel_fault("[ctr] BUG: not a kernel line"));
    }
}
