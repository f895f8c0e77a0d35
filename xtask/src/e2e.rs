//! Running the tests and the demo, on this host when it has hardware KVM and
//! inside the nested-KVM test host otherwise.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::artifacts::{self, Artifacts};
use crate::e2e_attempts::{self, script, Next, Summary};
use crate::test_host::{self, HOST_BIN, HOST_TESTS, HOST_WORK};

/// `cargo test` for everything that runs on any host: the workspace's unit
/// and integration tests, and the husk-e2e library's and binaries' own unit
/// tests, but not husk-e2e's `tests/` (they need KVM and run in the test host).
pub fn unit_tests() -> Result<bool> {
    let mut ok = true;
    for args in [
        &["--workspace", "--exclude", "husk-e2e"][..],
        &["-p", "husk-e2e", "--lib", "--bins"][..],
    ] {
        let status = artifacts::cargo()
            .args(["test", "--no-fail-fast"])
            .args(args)
            .status()
            .context("run cargo test")?;
        ok &= status.success();
    }
    Ok(ok)
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
        return run_directly(&a, &selected, test_args);
    }
    eprintln!("xtask: no VT-x/AMD-V here: running the end-to-end tests in the test host");
    let files = test_host::files(&a, &selected);
    let mut passed = BTreeSet::new();
    let mut attempts = Vec::new();
    let ok = loop {
        let attempt_no = attempts.len() + 1;
        let command = script::tests(HOST_BIN, HOST_WORK, HOST_TESTS, test_args, &passed);
        let attempt = test_host::attempt(files.clone(), command, &mut |l| println!("{l}"))?;
        passed.extend(attempt.passed.iter().cloned());
        let next = e2e_attempts::next(attempt_no, &attempt);
        test_host::report(
            attempt_no,
            &attempt,
            &next,
            "the tests they hit and those not yet run run again",
        );
        attempts.push(attempt);
        match next {
            Next::Passed => break true,
            Next::Failed => break false,
            Next::Retry => {}
        }
    };
    let summary = Summary::new(&attempts, ok);
    let json = a.root.join("target/husk/e2e-summary.json");
    std::fs::create_dir_all(json.parent().expect("the summary has a folder"))?;
    std::fs::write(&json, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("write {}", json.display()))?;
    eprintln!("xtask: summary written to {}", json.display());
    for t in &summary.failed_tests {
        eprintln!("xtask: failed: {t}");
    }
    println!("{}", summary.line());
    // CI reads a closing `N passed, N failed`: it stands alone, last.
    println!("{}", summary.closing_line());
    Ok(ok)
}

/// Runs the selected test binaries on this host, which has hardware KVM.
fn run_directly(
    a: &Artifacts,
    selected: &[&(String, std::path::PathBuf)],
    test_args: &[String],
) -> Result<bool> {
    eprintln!("xtask: this host has hardware KVM: running the end-to-end tests directly");
    let work = a.root.join("target/husk/work");
    let mut ok = true;
    for (name, exe) in selected {
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
    Ok(ok)
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
    test_host::retry_on_fault("demo", test_host::files(&a, &[]), &command, &mut |l| {
        println!("{l}")
    })
}
