//! Running the end-to-end tests in the test host over several attempts.
//!
//! QEMU TCG's emulation of nested SVM sometimes faults (the test host's own
//! kernel oopses or locks up, or a guest triple-faults in one boot and not the
//! next). Such a fault says nothing about husk, so the tests it interrupted
//! run again in a fresh test host, while the tests that passed are kept. Each
//! test runs as its own process and reports itself with a marker line, so a
//! test host that dies mid-run still tells which tests were done.

use std::collections::BTreeSet;

/// Marker printed after a test passed: `xtask-passed <binary>::<test>`.
const PASSED_MARKER: &str = "xtask-passed ";
/// Marker printed after a test failed: `xtask-failed <binary>::<test>`.
const FAILED_MARKER: &str = "xtask-failed ";

/// Test-host runs allowed when the earlier ones were cut by emulation faults.
pub const MAX_ATTEMPTS: usize = 5;

/// libtest flags that take no value and apply to running a test, not only to
/// listing it.
const RUN_FLAGS: &[&str] = &[
    "--nocapture",
    "--show-output",
    "--ignored",
    "--include-ignored",
];

/// What one test-host run reported.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Tests (`binary::test`) that passed.
    pub passed: BTreeSet<String>,
    /// Tests (`binary::test`) that failed.
    pub failed: BTreeSet<String>,
    /// The first console line that showed an emulation fault.
    pub fault: Option<String>,
}

impl Attempt {
    /// Takes in one console line of the test host.
    pub fn observe(&mut self, line: &str) {
        if let Some(test) = marker(line, PASSED_MARKER) {
            self.passed.insert(test);
        } else if let Some(test) = marker(line, FAILED_MARKER) {
            self.failed.insert(test);
        } else if self.fault.is_none() && is_emulation_fault(line) {
            self.fault = Some(line.trim().to_string());
        }
    }
}

fn marker(line: &str, prefix: &str) -> Option<String> {
    let rest = line.trim_end().strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains(char::is_whitespace)).then(|| rest.to_string())
}

/// What to do after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Every test ran and passed.
    Passed,
    /// Run the tests not yet passed once more in a fresh test host.
    Retry,
    /// A test failed without an emulation fault, or no attempts are left.
    Failed,
}

/// Decides what follows `attempt` (1-based), whose test host exited with
/// `exit` (`None` when it died without reporting one).
pub fn next(attempt_no: usize, attempt: &Attempt, exit: Option<i32>) -> Next {
    // A zero exit means the script went through every test, so a fault that
    // the tests survived (the shim booted the pod again) needs no rerun.
    if exit == Some(0) && attempt.failed.is_empty() {
        return Next::Passed;
    }
    if attempt.fault.is_some() && attempt_no < MAX_ATTEMPTS {
        return Next::Retry;
    }
    Next::Failed
}

/// The shell script the test host runs: every test of every binary under
/// `tests_dir` as its own process, except those in `skip`, each followed by
/// its marker line. `test_args` filter the listed tests; the run flags among
/// them also go to each test run.
pub fn script(
    bin_dir: &str,
    work_dir: &str,
    tests_dir: &str,
    test_args: &[String],
    skip: &BTreeSet<String>,
) -> String {
    let list_args = shell_words(test_args.iter().map(String::as_str));
    let run_flags = shell_words(
        test_args
            .iter()
            .map(String::as_str)
            .filter(|a| RUN_FLAGS.contains(a)),
    );
    // `''` never matches a `binary::test` name, so an empty skip list skips nothing.
    let skip_pattern = if skip.is_empty() {
        "''".to_string()
    } else {
        skip.iter().map(|s| quote(s)).collect::<Vec<_>>().join("|")
    };
    format!(
        "export PATH={bin_dir}:$PATH; mkdir -p {work_dir}; rc=0; \
         for t in {tests_dir}/*; do b=$(basename \"$t\"); \
           if ! list=$(\"$t\" --list --format terse {list_args}); then \
             printf '\\n{FAILED_MARKER}%s\\n' \"$b::--list\"; rc=1; continue; fi; \
           for name in $(echo \"$list\" | sed -n 's/: test$//p'); do \
             case \"$b::$name\" in {skip_pattern}) continue;; esac; \
             echo \"== $b::$name\"; \
             if \"$t\" --exact \"$name\" --test-threads=1 {run_flags}; \
             then printf '\\n{PASSED_MARKER}%s\\n' \"$b::$name\"; \
             else printf '\\n{FAILED_MARKER}%s\\n' \"$b::$name\"; rc=1; fi; \
           done; \
         done; \
         if [ $rc -ne 0 ]; then echo '== test host kernel log (last 40 lines)'; dmesg 2>/dev/null | tail -n 40; fi; \
         exit $rc"
    )
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn shell_words<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words.map(quote).collect::<Vec<_>>().join(" ")
}

/// Whether a console line shows a fault of the nested emulation rather than
/// of husk: the test host's kernel reporting a fault of its own (timestamped
/// kernel messages; the guests' consoles carry no timestamps), or a guest
/// that triple-faulted (husk-vmm logs it; the same boot succeeds the next
/// time, where a real bug would fail every attempt).
pub fn is_emulation_fault(line: &str) -> bool {
    if line.contains("shutdown (triple fault)") {
        return true;
    }
    // The kernel's message may follow a test's unfinished output on the same line.
    line.match_indices('[')
        .any(|(at, _)| is_kernel_fault_message(&line[at + 1..]))
}

/// Whether `rest` (what follows a `[`) is a timestamped kernel fault message.
fn is_kernel_fault_message(rest: &str) -> bool {
    let Some((stamp, message)) = rest.split_once(']') else {
        return false;
    };
    let stamp = stamp.trim();
    let is_stamp = !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_faults_are_told_from_other_lines() {
        assert!(is_emulation_fault(
            "[   39.585231] BUG: TASK stack guard page was hit at 0000000018a741fb"
        ));
        assert!(is_emulation_fault(
            "[  108.250224] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [runc:666]"
        ));
        assert!(is_emulation_fault(
            "[   39.586092] Kernel panic - not syncing: Fatal exception in interrupt"
        ));
        assert!(is_emulation_fault(
            "2026-11-21T11:15:09Z INFO husk_vmm::vstate::vcpu: vCPU 0: shutdown (triple fault)"
        ));
        assert!(is_emulation_fault(
            "test shim_runs_a_terminal_container ... [  125.777099] BUG: TASK stack guard page"
        ));
        assert!(!is_emulation_fault("BUG: in a guest console line"));
        assert!(!is_emulation_fault("[ok] [1.5] fine [2.0]"));
        assert!(!is_emulation_fault(
            "[   39.586092] RIP: 0010:irqentry_enter+0x12/0x50"
        ));
        assert!(!is_emulation_fault(
            "test shim_runs_containers_in_vms ... ok"
        ));
        assert!(!is_emulation_fault("[ctr] BUG: not a kernel line"));
    }

    #[test]
    fn markers_record_each_test_once() {
        let mut a = Attempt::default();
        for line in [
            "== shim_e2e::shim_runs_containers",
            "xtask-passed shim_e2e::shim_runs_containers",
            "xtask-failed cri_e2e::cri_pod",
            "xtask-passed shim_e2e::shim_runs_containers",
            "some output xtask-passed not::a_marker",
            "xtask-passed ",
        ] {
            a.observe(line);
        }
        assert_eq!(
            a.passed.iter().collect::<Vec<_>>(),
            ["shim_e2e::shim_runs_containers"]
        );
        assert_eq!(a.failed.iter().collect::<Vec<_>>(), ["cri_e2e::cri_pod"]);
        assert_eq!(a.fault, None);
    }

    #[test]
    fn only_emulation_faults_earn_another_attempt() {
        let clean_pass = Attempt::default();
        assert_eq!(next(1, &clean_pass, Some(0)), Next::Passed);

        let mut real_failure = Attempt::default();
        real_failure.observe("xtask-failed shim_e2e::bad_input");
        assert_eq!(next(1, &real_failure, Some(1)), Next::Failed);

        let mut faulted = Attempt::default();
        faulted.observe("[  88.838128] Kernel panic - not syncing: corrupted stack end");
        assert_eq!(next(1, &faulted, None), Next::Retry);
        assert_eq!(next(MAX_ATTEMPTS - 1, &faulted, None), Next::Retry);
        assert_eq!(next(MAX_ATTEMPTS, &faulted, None), Next::Failed);

        let mut survived = Attempt::default();
        survived.observe("vCPU 0: shutdown (triple fault)");
        survived.observe("xtask-passed shim_e2e::runs");
        assert_eq!(next(1, &survived, Some(0)), Next::Passed);
        survived.observe("xtask-failed shim_e2e::oom");
        assert_eq!(next(1, &survived, Some(1)), Next::Retry);

        // A host that died without a fault line and without an exit status failed.
        assert_eq!(next(1, &Attempt::default(), None), Next::Failed);
    }

    #[test]
    fn script_skips_passed_tests_and_passes_run_flags() {
        let skip: BTreeSet<String> = ["shim_e2e::a'b".to_string()].into();
        let s = script(
            "/husk/bin",
            "/tmp/w",
            "/husk/tests",
            &["cri".into(), "--nocapture".into()],
            &skip,
        );
        assert!(s.contains(r"in 'shim_e2e::a'\''b') continue;; esac"), "{s}");
        assert!(
            s.contains("--list --format terse 'cri' '--nocapture'"),
            "{s}"
        );
        assert!(s.contains("--test-threads=1 '--nocapture';"), "{s}");
        let none = script("/b", "/w", "/t", &[], &BTreeSet::new());
        assert!(none.contains("in '') continue;; esac"), "{none}");
    }
}
