//! Running a command in the test host for the tests, the demo and the
//! benchmarks: what goes into it, and one attempt watched for emulation
//! faults, judged by the rules of [`crate::e2e_attempts`].

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_testhost::qemu::Error as HostError;
use husk_testhost::{HostFile, TestHost, TestHostConfig, TestHostImage, Watch};

use crate::artifacts::{self, Artifacts};
use crate::e2e_attempts::{self, script, Attempt, HostEnd, Next, Summary};

/// Paths inside the test host.
pub(crate) const HOST_BIN: &str = "/husk/bin";
pub(crate) const HOST_KERNEL: &str = "/husk/guest/vmlinux";
pub(crate) const HOST_INITRD: &str = "/husk/guest/initrd.img";
pub(crate) const HOST_TESTS: &str = "/husk/tests";
pub(crate) const HOST_WORK: &str = "/tmp/husk-e2e";
/// iptables' extensions, at the same path in the test host.
const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// How long a test host may go on after its own kernel showed a fault: long
/// enough for a test to meet its own timeouts and for the host to come out of
/// a soft lockup, short of the 20 minutes a hung host would take.
const FAULT_GRACE: Duration = Duration::from_secs(300);

/// The files the test host gets: the guest kernel and initramfs, the static
/// binaries, virtiofsd, Debian's containerd, runc, CNI loopback/static plugins and
/// iptables, and `tests` (name,
/// executable) under [`HOST_TESTS`].
pub(crate) fn files(a: &Artifacts, tests: &[&(String, std::path::PathBuf)]) -> Vec<HostFile> {
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
    // Debian's containerd, ctr and runc, for the shim's end-to-end tests; CNI's
    // loopback and static plugins, for the CRI tests' pod network namespaces; and
    // iptables (legacy and nft), which the CRI tests put into an image.
    for exe in [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/lib/cni/loopback",
        "/usr/lib/cni/static",
        "/usr/sbin/xtables-legacy-multi",
        "/usr/sbin/xtables-nft-multi",
    ] {
        if Path::new(exe).is_file() {
            files.push(HostFile::executable(exe, exe));
        }
    }
    // iptables' extensions (dlopen()ed by name; the ones the tests use need no
    // library beyond the binaries' own).
    for entry in std::fs::read_dir(XTABLES_EXTENSIONS)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            let target = path.to_string_lossy().into_owned();
            files.push(HostFile::new(path, target));
        }
    }
    for (name, exe) in tests {
        files.push(HostFile::new(exe, format!("{HOST_TESTS}/{name}")));
    }
    files
}

fn env() -> Vec<(String, String)> {
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

/// Boots a fresh test host for `command`, passing each console line to the
/// attempt and to `show`. A host that wedges, dies or is stopped after a
/// fault ends the attempt rather than the run, so that the caller can judge
/// it; other errors (no QEMU, no kernel) end the run.
pub(crate) fn attempt(
    files: Vec<HostFile>,
    command: String,
    show: &mut dyn FnMut(&str),
) -> Result<Attempt> {
    let host = TestHost::new(TestHostConfig::default()).context("prepare the test host")?;
    let image = TestHostImage {
        files,
        env: env(),
        command,
        kvm_amd_params: husk_testhost::kvm_amd_params(),
    };
    let mut attempt = Attempt::default();
    let result = host.run_watched(&image, |line| {
        attempt.observe(line);
        show(line);
        // Only a fault of the test host's own kernel may have broken the host.
        match attempt.faults.iter().any(|f| f.kind.breaks_the_host()) {
            true => Watch::EndWithin(FAULT_GRACE),
            false => Watch::Continue,
        }
    });
    let (end, message) = match result {
        Ok(outcome) => {
            eprintln!(
                "xtask: test host exited {} after {:.1} s",
                outcome.exit_code,
                outcome.wall.as_secs_f64()
            );
            (HostEnd::Exited(outcome.exit_code), String::new())
        }
        Err(e @ HostError::Wedged(_)) => (HostEnd::Wedged, e.to_string()),
        Err(e @ HostError::NoExitStatus { .. }) => (HostEnd::Died, e.to_string()),
        Err(e @ (HostError::Stopped(_) | HostError::Timeout(_))) if !attempt.faults.is_empty() => {
            (HostEnd::Stopped, e.to_string())
        }
        Err(e) => return Err(e.into()),
    };
    if !message.is_empty() {
        eprintln!("xtask: {message}");
    }
    attempt.finish(end, &message);
    Ok(attempt)
}

/// Tells what an attempt came to and, for a rerun, why.
pub(crate) fn report(attempt_no: usize, attempt: &Attempt, next: &Next, rerun: &str) {
    let mut text = format!(
        "xtask: attempt {attempt_no}: {} passed, {} failed",
        attempt.passed.len(),
        attempt.failed.len()
    );
    for t in &attempt.failed {
        text.push_str(&format!("\n  failed: {t}"));
    }
    if let Some(t) = attempt.cut() {
        text.push_str(&format!("\n  cut short: {t}"));
    }
    for f in &attempt.faults {
        let test = f
            .test
            .as_deref()
            .unwrap_or("no test (outside any test's output)");
        text.push_str(&format!(
            "\n  fault: {} in {test}: {}",
            f.kind.name(),
            f.line
        ));
    }
    eprintln!("{text}");
    let tainted: Vec<&str> = attempt.tainted_failures().map(String::as_str).collect();
    if !tainted.is_empty() {
        eprintln!(
            "xtask: failed after an earlier test's fault (the host may be left dirty), so run              again in a fresh test host: {}",
            tainted.join(", ")
        );
    }
    let real: Vec<&str> = attempt.real_failures().map(String::as_str).collect();
    if !real.is_empty() {
        eprintln!(
            "xtask: failed with no fault of its own, so not run again: {}",
            real.join(", ")
        );
    } else if *next == Next::Retry {
        eprintln!(
            "xtask: the faults above are of the nested virtualisation (QEMU TCG's SVM \
             emulation), not husk; {rerun} in a fresh test host"
        );
    }
}

/// Runs `command` as the one unit `name` in a fresh test host, and again
/// while emulation faults in its own output cut it short (at most
/// [`e2e_attempts::MAX_ATTEMPTS`] test hosts); `show` gets every console
/// line. Whether the command finally succeeded; the summary line says what
/// it took.
pub(crate) fn retry_on_fault(
    name: &str,
    files: Vec<HostFile>,
    command: &str,
    show: &mut dyn FnMut(&str),
) -> Result<bool> {
    let unit = format!("xtask::{name}");
    let mut attempts = Vec::new();
    let ok = loop {
        let attempt_no = attempts.len() + 1;
        let attempt = attempt(files.clone(), script::single(&unit, command), show)?;
        let next = e2e_attempts::next(attempt_no, &attempt);
        report(
            attempt_no,
            &attempt,
            &next,
            &format!("running {name} again"),
        );
        attempts.push(attempt);
        match next {
            Next::Passed => break true,
            Next::Failed => break false,
            Next::Retry => {}
        }
    };
    eprintln!("xtask: {name}: {}", Summary::new(&attempts, ok).line());
    Ok(ok)
}
