//! Running the end-to-end tests in the test host over several attempts, and
//! judging each attempt honestly.
//!
//! QEMU TCG's emulation of nested SVM sometimes faults (the test host's own
//! kernel oopses or locks up, the test host goes silent, or a guest
//! triple-faults in one boot and not the next). Such a fault says nothing
//! about husk, so the test it hit runs again in a fresh test host. Every
//! test runs as its own process between a start marker and a verdict marker,
//! so each fault is attributed to the test in whose output it appeared (or
//! that was running when the host wedged or died), and only those tests, and
//! the ones the dead host never reached, run again. A test that failed with no
//! fault of its own fails the run at once, unless an earlier test of the same
//! attempt faulted: a fault can leave the host in a state no later test
//! expects (a guest that triple-faulted mid-call leaves its pod behind), so
//! those run again in a fresh host too, and fail the run if they fail there.
//! A test that passed is kept, fault or not (the fault is still counted).

pub mod fault;
pub mod script;
pub mod summary;

use std::collections::BTreeSet;

use serde::{Serialize, Serializer};

pub use fault::{Fault, FaultKind};
pub use summary::Summary;

/// Marker the script prints before a test runs: `== <binary>::<test>`.
const START_MARKER: &str = "== ";
/// Marker printed after a test passed: `xtask-passed <binary>::<test>`.
const PASSED_MARKER: &str = "xtask-passed ";
/// Marker printed after a test failed: `xtask-failed <binary>::<test>`.
const FAILED_MARKER: &str = "xtask-failed ";
/// Marker before the script replays the kernel log after a failure: the
/// fault lines in that replay were already seen (and counted) as they came.
const KERNEL_LOG_MARKER: &str = "== test host kernel log (last 40 lines)";

/// Test-host runs allowed when the earlier ones were cut by emulation faults.
pub const MAX_ATTEMPTS: usize = 5;

/// How a test host run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEnd {
    /// The script ran to its end and exited with this status.
    Exited(i32),
    /// xtask stopped the host some time after a fault it had already seen.
    Stopped,
    /// The host went silent, even its heartbeat.
    Wedged,
    /// The host ended without the script's exit status.
    Died,
}

/// What one test-host run reported; also its part of the JSON summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Attempt {
    /// Tests (`binary::test`) that started, in order.
    #[serde(rename = "tests_run")]
    pub started: Vec<String>,
    /// Tests that passed.
    pub passed: BTreeSet<String>,
    /// Tests that failed.
    pub failed: BTreeSet<String>,
    /// The test whose output the console shows now; once the host ended,
    /// the one it cut short (see [`Attempt::cut`]).
    #[serde(rename = "cut")]
    running: Option<String>,
    /// How the host ended: in the JSON, the script's exit status, `null`
    /// where the host ended first.
    #[serde(rename = "exit", serialize_with = "exit_status")]
    pub end: Option<HostEnd>,
    /// Every fault seen, with the test it is attributed to and its console line.
    pub faults: Vec<Fault>,
    /// The console now replays the kernel log.
    #[serde(skip)]
    in_kernel_log: bool,
}

fn exit_status<S: Serializer>(end: &Option<HostEnd>, s: S) -> Result<S::Ok, S::Error> {
    match end {
        Some(HostEnd::Exited(code)) => s.serialize_some(code),
        _ => s.serialize_none(),
    }
}

impl Attempt {
    /// Takes in one console line of the test host.
    pub fn observe(&mut self, line: &str) {
        if line.trim() == KERNEL_LOG_MARKER {
            self.in_kernel_log = true;
        } else if let Some(test) = marker(line, START_MARKER) {
            self.started.push(test.clone());
            self.running = Some(test);
        } else if let Some(test) = marker(line, PASSED_MARKER) {
            self.passed.insert(test);
            self.running = None;
        } else if let Some(test) = marker(line, FAILED_MARKER) {
            self.failed.insert(test);
            self.running = None;
        } else if let Some(kind) = fault::classify(line).filter(|_| !self.in_kernel_log) {
            self.add_fault(kind, line.trim());
        }
    }

    /// Records how the host ended; `message` says why where it did not exit.
    /// A wedge is a fault of the test that was running; so is a host that
    /// died, unless a fault already seen in that test (or outside any test)
    /// explains it.
    pub fn finish(&mut self, end: HostEnd, message: &str) {
        self.end = Some(end);
        match end {
            HostEnd::Wedged => self.add_fault(FaultKind::Wedge, message),
            HostEnd::Died if self.faults_of(self.running.as_deref()).next().is_none() => {
                self.add_fault(FaultKind::HostDied, message)
            }
            HostEnd::Exited(_) | HostEnd::Stopped | HostEnd::Died => {}
        }
    }

    /// The test that was running when the host ended, with no verdict.
    pub fn cut(&self) -> Option<&str> {
        self.running.as_deref()
    }

    /// The faults attributed to `test` (`None`: to no test).
    pub fn faults_of<'a>(&'a self, test: Option<&'a str>) -> impl Iterator<Item = &'a Fault> {
        self.faults
            .iter()
            .filter(move |f| f.test.as_deref() == test)
    }

    /// Tests that failed with no fault of their own, before any test of this
    /// attempt faulted.
    pub fn real_failures(&self) -> impl Iterator<Item = &String> {
        let first_fault = self.first_faulted_test();
        self.failed.iter().filter(move |t| {
            self.faults_of(Some(t.as_str())).next().is_none()
                && first_fault.is_none_or(|at| self.started_at(t).is_some_and(|i| i < at))
        })
    }

    /// Tests that failed with no fault of their own after an earlier test of this
    /// attempt faulted: they run again in a fresh host.
    pub fn tainted_failures(&self) -> impl Iterator<Item = &String> {
        let real: BTreeSet<&String> = self.real_failures().collect();
        self.failed
            .iter()
            .filter(move |t| self.faults_of(Some(t.as_str())).next().is_none() && !real.contains(t))
    }

    /// Where in [`Attempt::started`] the first test with a fault of its own is.
    fn first_faulted_test(&self) -> Option<usize> {
        self.started
            .iter()
            .position(|t| self.faults_of(Some(t.as_str())).next().is_some())
    }

    fn started_at(&self, test: &str) -> Option<usize> {
        self.started.iter().position(|t| t == test)
    }

    fn add_fault(&mut self, kind: FaultKind, line: &str) {
        self.faults.push(Fault {
            kind,
            test: self.running.clone(),
            line: line.to_string(),
        });
    }
}

#[cfg(test)]
impl Attempt {
    /// An attempt whose console showed `lines` and whose host ended so
    /// (with the message `test host wedged`), for tests.
    pub fn seen(lines: &[&str], end: HostEnd) -> Self {
        let mut a = Attempt::default();
        for l in lines {
            a.observe(l);
        }
        a.finish(end, "test host wedged");
        a
    }
}

/// The test name after `prefix` on a marker line: one word, nothing else.
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
    /// A test failed without a fault of its own, the host failed with no
    /// fault at all, or no attempts are left.
    Failed,
}

/// Decides what follows `attempt` (1-based `attempt_no`), once finished.
pub fn next(attempt_no: usize, attempt: &Attempt) -> Next {
    if attempt.real_failures().next().is_some() {
        return Next::Failed;
    }
    if attempt.end == Some(HostEnd::Exited(0)) && attempt.failed.is_empty() {
        // The script went through every test, so a fault in a test that
        // passed (or between tests) needs no rerun.
        return Next::Passed;
    }
    // From here something did not pass: a test failed with a fault of its
    // own, or the host ended before the script did, which always records a
    // fault unless the script itself exited non-zero without a failed test.
    if attempt.faults.is_empty() {
        return Next::Failed;
    }
    if attempt_no < MAX_ATTEMPTS {
        Next::Retry
    } else {
        Next::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OOPS: &str = "[  88.838128] BUG: kernel NULL pointer dereference, address: 0";
    const TRIPLE: &str = "2026-11-21T11:15:09Z  WARN husk_vmm: vCPU 0: shutdown (triple fault)";

    fn attempt(lines: &[&str], end: HostEnd) -> Attempt {
        Attempt::seen(lines, end)
    }

    #[test]
    fn markers_record_each_test_once() {
        let a = attempt(
            &[
                "== shim_e2e::shim_runs_containers",
                "xtask-passed shim_e2e::shim_runs_containers",
                "== cri_e2e::cri_pod",
                "xtask-failed cri_e2e::cri_pod",
                "some output xtask-passed not::a_marker",
                "xtask-passed ",
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(
            a.started,
            ["shim_e2e::shim_runs_containers", "cri_e2e::cri_pod"]
        );
        assert_eq!(
            a.passed.iter().collect::<Vec<_>>(),
            ["shim_e2e::shim_runs_containers"]
        );
        assert_eq!(a.failed.iter().collect::<Vec<_>>(), ["cri_e2e::cri_pod"]);
        assert!(a.faults.is_empty());
    }

    #[test]
    fn a_fault_is_attributed_to_the_running_test_and_earns_it_a_rerun() {
        let a = attempt(
            &[
                "== vmm_e2e::boots",
                "booting",
                TRIPLE,
                "xtask-failed vmm_e2e::boots",
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(a.faults.len(), 1);
        assert_eq!(a.faults[0].kind, FaultKind::TripleFault);
        assert_eq!(a.faults[0].test.as_deref(), Some("vmm_e2e::boots"));
        assert_eq!(a.faults[0].line, TRIPLE);
        assert_eq!(next(1, &a), Next::Retry);
        assert_eq!(next(MAX_ATTEMPTS - 1, &a), Next::Retry);
        assert_eq!(next(MAX_ATTEMPTS, &a), Next::Failed);
    }

    #[test]
    fn a_failure_without_a_fault_of_its_own_fails_at_once() {
        let a = attempt(
            &["== shim_e2e::bad_input", "xtask-failed shim_e2e::bad_input"],
            HostEnd::Exited(1),
        );
        assert_eq!(next(1, &a), Next::Failed);
        // A later test's fault earns this one nothing.
        let b = attempt(
            &[
                "== shim_e2e::oom",
                "xtask-failed shim_e2e::oom",
                "== vmm_e2e::boots",
                OOPS,
                "xtask-failed vmm_e2e::boots",
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(b.real_failures().collect::<Vec<_>>(), ["shim_e2e::oom"]);
        assert_eq!(next(1, &b), Next::Failed);
    }

    #[test]
    fn a_failure_after_an_earlier_tests_fault_runs_again_one_before_it_does_not() {
        let after = attempt(
            &[
                "== b::first",
                "xtask-passed b::first",
                "== b::faulted",
                TRIPLE,
                "xtask-failed b::faulted",
                "== b::later",
                "xtask-failed b::later",
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(after.real_failures().count(), 0);
        assert_eq!(
            after.tainted_failures().collect::<Vec<_>>(),
            vec!["b::later"]
        );
        assert_eq!(next(1, &after), Next::Retry);
        let before = attempt(
            &[
                "== b::earlier",
                "xtask-failed b::earlier",
                "== b::faulted",
                TRIPLE,
                "xtask-failed b::faulted",
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(
            before.real_failures().collect::<Vec<_>>(),
            vec!["b::earlier"]
        );
        assert_eq!(next(1, &before), Next::Failed);
    }

    #[test]
    fn a_passed_test_with_a_fault_in_its_output_is_kept_and_the_fault_counted() {
        let a = attempt(
            &["== shim_e2e::runs", TRIPLE, "xtask-passed shim_e2e::runs"],
            HostEnd::Exited(0),
        );
        assert_eq!(a.faults.len(), 1);
        assert_eq!(a.faults[0].test.as_deref(), Some("shim_e2e::runs"));
        assert_eq!(next(1, &a), Next::Passed);
    }

    #[test]
    fn a_wedge_is_attributed_to_the_test_that_was_running() {
        let a = attempt(
            &[
                "== a::one",
                "xtask-passed a::one",
                "== a::two",
                "still going",
            ],
            HostEnd::Wedged,
        );
        assert_eq!(a.cut(), Some("a::two"));
        assert_eq!(a.faults.len(), 1);
        assert_eq!(a.faults[0].kind, FaultKind::Wedge);
        assert_eq!(a.faults[0].test.as_deref(), Some("a::two"));
        assert_eq!(next(1, &a), Next::Retry);
    }

    #[test]
    fn a_host_that_dies_is_a_fault_of_the_running_test_unless_one_explains_it() {
        let died = attempt(&["== a::one"], HostEnd::Died);
        assert_eq!(died.faults[0].kind, FaultKind::HostDied);
        assert_eq!(died.faults[0].test.as_deref(), Some("a::one"));
        assert_eq!(next(1, &died), Next::Retry);

        let panicked = attempt(&["== a::one", OOPS], HostEnd::Died);
        assert_eq!(panicked.faults.len(), 1);
        assert_eq!(panicked.faults[0].kind, FaultKind::KernelOops);

        // Stopped after the grace that an earlier fault started: nothing new.
        let stopped = attempt(
            &["== a::one", OOPS, "xtask-passed a::one", "== a::two"],
            HostEnd::Stopped,
        );
        assert_eq!(stopped.faults.len(), 1);
        assert_eq!(stopped.cut(), Some("a::two"));
        assert_eq!(next(1, &stopped), Next::Retry);
    }

    #[test]
    fn a_fault_outside_any_test_is_the_whole_attempts() {
        // Before any test: the not-yet-run tests run again.
        let before = attempt(&[OOPS], HostEnd::Died);
        assert_eq!(before.faults.len(), 1);
        assert_eq!(before.faults[0].test, None);
        assert_eq!(next(1, &before), Next::Retry);

        // Between tests, then the host wedges: the tests that passed stay passed.
        let between = attempt(&["== a::one", "xtask-passed a::one", OOPS], HostEnd::Wedged);
        assert!(between.faults.iter().all(|f| f.test.is_none()));
        assert_eq!(between.cut(), None);
        assert_eq!(next(1, &between), Next::Retry);

        // Between tests, and the script still ran to its end: nothing to rerun.
        let survived = attempt(
            &[
                "== a::one",
                "xtask-passed a::one",
                OOPS,
                "== a::two",
                "xtask-passed a::two",
            ],
            HostEnd::Exited(0),
        );
        assert_eq!(next(1, &survived), Next::Passed);
    }

    #[test]
    fn the_replayed_kernel_log_is_not_counted_again() {
        let a = attempt(
            &[
                "== a::one",
                OOPS,
                "xtask-failed a::one",
                KERNEL_LOG_MARKER,
                OOPS,
            ],
            HostEnd::Exited(1),
        );
        assert_eq!(a.faults.len(), 1);
    }

    #[test]
    fn a_script_that_fails_with_no_failed_test_and_no_fault_fails() {
        assert_eq!(next(1, &attempt(&[], HostEnd::Exited(2))), Next::Failed);
        assert_eq!(next(1, &attempt(&[], HostEnd::Exited(0))), Next::Passed);
    }
}
