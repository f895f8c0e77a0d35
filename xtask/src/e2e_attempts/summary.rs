//! What a run of attempts comes to: how many tests passed at once or after a
//! rerun, which failed, and every fault by kind and by test, for the closing
//! lines and for `target/husk/e2e-summary.json`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Attempt, FaultKind};

/// The outcome of all the attempts of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Tests that passed in the first attempt that ran them.
    pub passed: usize,
    /// Tests that passed in an attempt after one that had started them
    /// (disjoint from `passed`).
    pub passed_after_rerun: usize,
    /// Tests that failed for good (`failed_tests.len()`).
    pub failed: usize,
    /// The failed tests; the test host itself where it failed with none.
    pub failed_tests: Vec<String>,
    /// Faults of all attempts, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Each attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl Summary {
    /// Sums up `attempts`; `ok` is the verdict on the last one.
    pub fn new(attempts: &[Attempt], ok: bool) -> Self {
        let mut started_before = BTreeSet::new();
        let (mut passed, mut passed_after_rerun) = (0, 0);
        for a in attempts {
            for t in &a.passed {
                match started_before.contains(t) {
                    true => passed_after_rerun += 1,
                    false => passed += 1,
                }
            }
            started_before.extend(a.started.iter().cloned());
        }
        let mut failed_tests: Vec<String> = match (ok, attempts.last()) {
            (false, Some(last)) => last
                .failed
                .iter()
                .cloned()
                .chain(last.cut().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !ok && failed_tests.is_empty() {
            failed_tests.push("(test host)".to_string());
        }
        let mut faults = BTreeMap::new();
        for f in attempts.iter().flat_map(|a| &a.faults) {
            *faults.entry(f.kind).or_insert(0) += 1;
        }
        Self {
            passed,
            passed_after_rerun,
            failed: failed_tests.len(),
            failed_tests,
            faults,
            attempts: attempts.to_vec(),
        }
    }

    /// `N passed, M passed after a rerun, faults: K (kind: n, kind: n)`.
    /// It carries no failure count, so that it cannot be read as the run's
    /// closing `passed, failed` line.
    pub fn line(&self) -> String {
        let total: usize = self.faults.values().sum();
        let kinds = self
            .faults
            .iter()
            .map(|(kind, n)| format!("{}: {n}", kind.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let kinds = match kinds.is_empty() {
            true => String::new(),
            false => format!(" ({kinds})"),
        };
        format!(
            "{} passed, {} passed after a rerun, faults: {total}{kinds}",
            self.passed, self.passed_after_rerun
        )
    }

    /// The run's closing line: `e2e: T passed, F failed`, where T counts
    /// the tests passed at once and after a rerun.
    pub fn closing_line(&self) -> String {
        format!(
            "e2e: {} passed, {} failed",
            self.passed + self.passed_after_rerun,
            self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::e2e_attempts::{Fault, HostEnd};

    fn attempt(lines: &[&str], end: HostEnd) -> Attempt {
        Attempt::seen(lines, end)
    }

    const OOPS: &str = "[  88.838128] BUG: unable to handle page fault";

    fn recovered_run() -> Vec<Attempt> {
        vec![
            attempt(
                &[
                    "== a::one",
                    OOPS,
                    "xtask-passed a::one",
                    "== a::two",
                    "xtask-failed a::two",
                    "== a::three",
                ],
                HostEnd::Wedged,
            ),
            attempt(&["== a::four", "xtask-passed a::four"], HostEnd::Exited(0)),
        ]
    }

    #[test]
    fn counts_passes_reruns_and_faults() {
        let mut run = recovered_run();
        // a::two failed in attempt 1 with a fault of its own.
        run[0].faults.push(Fault {
            kind: FaultKind::TripleFault,
            test: Some("a::two".into()),
            line: "vCPU 0: shutdown (triple fault)".into(),
        });
        run[1].observe("== a::two");
        run[1].observe("xtask-passed a::two");
        run[1].observe("== a::three");
        run[1].observe("xtask-passed a::three");
        let s = Summary::new(&run, true);
        // a::four never ran before, so it passed at once; a::two and a::three were rerun.
        assert_eq!((s.passed, s.passed_after_rerun, s.failed), (2, 2, 0));
        assert_eq!(
            s.line(),
            "2 passed, 2 passed after a rerun, faults: 3 (kernel-oops: 1, wedge: 1, triple-fault: 1)"
        );
        assert_eq!(s.closing_line(), "e2e: 4 passed, 0 failed");
    }

    #[test]
    fn a_clean_run_says_no_faults() {
        let run = [attempt(
            &["== a::one", "xtask-passed a::one"],
            HostEnd::Exited(0),
        )];
        let s = Summary::new(&run, true);
        assert_eq!(s.line(), "1 passed, 0 passed after a rerun, faults: 0");
    }

    #[test]
    fn failures_count_the_last_attempts_failed_and_cut_tests() {
        let run = recovered_run();
        let s = Summary::new(&run[..1], false);
        assert_eq!(s.failed_tests, ["a::two", "a::three"]);
        assert_eq!(s.closing_line(), "e2e: 1 passed, 2 failed");
        let broken = [attempt(&[], HostEnd::Exited(2))];
        assert_eq!(Summary::new(&broken, false).failed, 1);
    }

    #[test]
    fn json_shape() {
        let s = Summary::new(&recovered_run(), true);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "passed": 2,
                "passed_after_rerun": 0,
                "failed": 0,
                "failed_tests": [],
                "faults": {"kernel-oops": 1, "wedge": 1},
                "attempts": [
                    {
                        "tests_run": ["a::one", "a::two", "a::three"],
                        "passed": ["a::one"],
                        "failed": ["a::two"],
                        "cut": "a::three",
                        "exit": null,
                        "faults": [
                            {"kind": "kernel-oops", "test": "a::one", "line": OOPS},
                            {"kind": "wedge", "test": "a::three", "line": "test host wedged"},
                        ],
                    },
                    {
                        "tests_run": ["a::four"],
                        "passed": ["a::four"],
                        "failed": [],
                        "cut": null,
                        "exit": 0,
                        "faults": [],
                    },
                ],
            })
        );
    }
}
