//! Telling a fault of the nested emulation from a console line, and naming
//! its kind, so that the summary says what went wrong how often.

use serde::Serialize;

/// The kinds of emulation fault xtask recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The test host's kernel reported a BUG, an Oops, a general protection
    /// fault or a panic.
    KernelOops,
    /// The test host's kernel watchdog saw a CPU stuck (soft lockup).
    SoftLockup,
    /// The test host stopped printing, even its heartbeat (`Error::Wedged`).
    Wedge,
    /// A guest triple-faulted: husk-vmm logs `vCPU N: shutdown (triple
    /// fault)` and exits with status 3; the same boot succeeds the next time.
    TripleFault,
    /// The test host ended without its command's exit status and without a
    /// fault line to explain it (QEMU itself died).
    HostDied,
}

impl FaultKind {
    /// The name used in the summary line and the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KernelOops => "kernel-oops",
            FaultKind::SoftLockup => "soft-lockup",
            FaultKind::Wedge => "wedge",
            FaultKind::TripleFault => "triple-fault",
            FaultKind::HostDied => "host-died",
        }
    }

    /// Whether the test host itself may be broken after such a fault (its
    /// own kernel faulted), rather than only the guest or test that saw it.
    pub fn breaks_the_host(self) -> bool {
        matches!(self, FaultKind::KernelOops | FaultKind::SoftLockup)
    }
}

/// One fault seen in a test-host run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// What kind of fault.
    pub kind: FaultKind,
    /// The test (`binary::test`) in whose output it appeared; `None` when no
    /// test was running (before the first test or between two).
    pub test: Option<String>,
    /// The console line that showed it (for a wedge or a dead host, what
    /// the test-host harness said).
    pub line: String,
}

/// The kind of emulation fault a console line shows, if any: the test host's
/// kernel reporting a fault of its own (timestamped kernel messages; the
/// guests' consoles carry no timestamps), or a guest that triple-faulted.
pub fn classify(line: &str) -> Option<FaultKind> {
    if line.contains("shutdown (triple fault)") {
        return Some(FaultKind::TripleFault);
    }
    // The kernel's message may follow a test's unfinished output on the same line.
    line.match_indices('[')
        .find_map(|(at, _)| kernel_fault(&line[at + 1..]))
}

/// Kernel messages that show a fault, by how they start, and their kind.
/// The soft lockup comes first: its message also starts with a `BUG:`.
const KERNEL_FAULTS: &[(&str, FaultKind)] = &[
    ("watchdog: BUG: soft lockup", FaultKind::SoftLockup),
    ("BUG: ", FaultKind::KernelOops),
    ("Oops: ", FaultKind::KernelOops),
    ("general protection fault", FaultKind::KernelOops),
    ("Kernel panic", FaultKind::KernelOops),
];

/// The kind of fault when `rest` (what follows a `[`) is a timestamped
/// kernel fault message.
fn kernel_fault(rest: &str) -> Option<FaultKind> {
    let (stamp, message) = rest.split_once(']')?;
    let stamp = stamp.trim();
    if stamp.is_empty() || !stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let message = message.trim_start();
    KERNEL_FAULTS
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map(|&(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_faults_are_told_from_other_lines_by_kind() {
        use FaultKind::*;
        for (line, kind) in [
            (
                "[   39.585231] BUG: TASK stack guard page was hit at 0000000018a741fb",
                KernelOops,
            ),
            (
                "[  108.250224] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [runc:666]",
                SoftLockup,
            ),
            (
                "[   39.586092] Kernel panic - not syncing: Fatal exception in interrupt",
                KernelOops,
            ),
            (
                "[   12.000001] general protection fault, probably for non-canonical address",
                KernelOops,
            ),
            ("[   12.000001] Oops: 0000 [#1] PREEMPT SMP NOPTI", KernelOops),
            (
                "2026-11-21T11:15:09Z  WARN husk_vmm::vstate::vcpu: vCPU 0: shutdown (triple fault)",
                TripleFault,
            ),
            (
                "test shim_runs_a_terminal_container ... [  125.777099] BUG: TASK stack guard page",
                KernelOops,
            ),
        ] {
            assert_eq!(classify(line), Some(kind), "{line}");
        }
        for line in [
            "BUG: in a guest console line",
            "[ok] [1.5] fine [2.0]",
            "[   39.586092] RIP: 0010:irqentry_enter+0x12/0x50",
            "test shim_runs_containers_in_vms ... ok",
            "[ctr] BUG: not a kernel line",
        ] {
            assert_eq!(classify(line), None, "{line}");
        }
    }

    #[test]
    fn kinds_have_kebab_case_names_in_json_too() {
        for kind in [
            FaultKind::KernelOops,
            FaultKind::SoftLockup,
            FaultKind::Wedge,
            FaultKind::TripleFault,
            FaultKind::HostDied,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.name())
            );
        }
    }
}
