//! Running the tests and the demo, on this host when it has hardware KVM and
//! inside the nested-KVM test host otherwise.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_testhost::{HostFile, TestHost, TestHostConfig, TestHostImage, Watch};

use crate::artifacts::{self, Artifacts};
use crate::e2e_attempts::{self, Attempt, Next};

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

fn boot_test_host(
    files: Vec<HostFile>,
    command: String,
    on_line: &mut dyn FnMut(&str) -> Watch,
) -> Result<i32> {
    let host = TestHost::new(TestHostConfig::default()).context("prepare the test host")?;
    let image = TestHostImage {
        files,
        env: test_host_env(),
        command,
        kvm_amd_params: husk_testhost::kvm_amd_params(),
    };
    let outcome = host.run_watched(&image, on_line)?;
    eprintln!(
        "xtask: test host exited {} after {:.1} s",
        outcome.exit_code,
        outcome.wall.as_secs_f64()
    );
    Ok(outcome.exit_code)
}

/// How long a test host may go on after its console showed an emulation
/// fault: long enough for a test to meet its own timeouts and for the host to
/// come out of a soft lockup, short of the 20 minutes a hung host would take.
const FAULT_GRACE: Duration = Duration::from_secs(300);

/// Boots a test host for `command`, watching its console for test markers and
/// emulation faults. A test host that dies or is stopped after a fault gives
/// no exit status rather than an error, so that the caller can try again.
fn watched_test_host_run(
    files: Vec<HostFile>,
    command: String,
    show: &mut dyn FnMut(&str),
) -> Result<(Attempt, Option<i32>)> {
    let mut attempt = Attempt::default();
    let exit = boot_test_host(files, command, &mut |l| {
        attempt.observe(l);
        show(l);
        match attempt.fault {
            Some(_) => Watch::EndWithin(FAULT_GRACE),
            None => Watch::Continue,
        }
    });
    match exit {
        Ok(code) => Ok((attempt, Some(code))),
        Err(e) if is_wedged(&e) => {
            // A test host that stops answering altogether is the same emulation trouble.
            eprintln!("xtask: {e:#}");
            attempt.fault.get_or_insert_with(|| e.to_string());
            Ok((attempt, None))
        }
        Err(e) if attempt.fault.is_some() => {
            eprintln!("xtask: {e:#}");
            Ok((attempt, None))
        }
        Err(e) => Err(e),
    }
}

fn is_wedged(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<husk_testhost::qemu::Error>(),
        Some(husk_testhost::qemu::Error::Wedged(_))
    )
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
    let files = test_host_files(&a, &selected);
    let mut passed = BTreeSet::new();
    for attempt_no in 1..=e2e_attempts::MAX_ATTEMPTS {
        let command = e2e_attempts::script(HOST_BIN, HOST_WORK, HOST_TESTS, test_args, &passed);
        let (attempt, exit) =
            watched_test_host_run(files.clone(), command, &mut |l| println!("{l}"))?;
        passed.extend(attempt.passed.iter().cloned());
        eprintln!(
            "xtask: attempt {attempt_no}: {} passed, {} failed{}",
            attempt.passed.len(),
            attempt.failed.len(),
            attempt
                .failed
                .iter()
                .map(|t| format!("\n  failed: {t}"))
                .collect::<String>()
        );
        match e2e_attempts::next(attempt_no, &attempt, exit) {
            Next::Passed => {
                eprintln!("xtask: all {} end-to-end tests passed", passed.len());
                return Ok(true);
            }
            Next::Failed => return Ok(false),
            Next::Retry => eprintln!(
                "xtask: a fault of the nested virtualisation ({:?}): QEMU TCG's SVM emulation, \
                 not husk; the tests not yet passed run again in a fresh test host",
                attempt.fault.as_deref().unwrap_or_default()
            ),
        }
    }
    Ok(false)
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
    retry_on_fault("the demo", test_host_files(&a, &[]), &command, &mut |l| {
        println!("{l}")
    })
}

/// Runs `command` in a fresh test host, and again while emulation faults cut
/// the runs short (at most [`e2e_attempts::MAX_ATTEMPTS`] test hosts); `show`
/// gets every console line. Whether the command finally succeeded.
pub(crate) fn retry_on_fault(
    what: &str,
    files: Vec<HostFile>,
    command: &str,
    show: &mut dyn FnMut(&str),
) -> Result<bool> {
    for attempt_no in 1..=e2e_attempts::MAX_ATTEMPTS {
        let (attempt, exit) = watched_test_host_run(files.clone(), command.to_string(), show)?;
        match e2e_attempts::next(attempt_no, &attempt, exit) {
            Next::Passed => return Ok(true),
            Next::Failed => return Ok(false),
            Next::Retry => eprintln!(
                "xtask: a fault of the nested virtualisation ({:?}): QEMU TCG's SVM emulation, \
                 not husk; running {what} again in a fresh test host",
                attempt.fault.as_deref().unwrap_or_default()
            ),
        }
    }
    Ok(false)
}
