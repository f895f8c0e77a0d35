//! Signals for a container init that is PID 1 of its own PID namespace.
//!
//! The kernel drops a signal sent from an ancestor namespace to a namespace's init when the
//! init has no handler for it (SIGKILL and SIGSTOP excepted): the default action of an init
//! is to ignore. A program installs its handlers only after its `execve`, so a stop signal
//! sent right after `Start` returned (the kubelet does so when a pod is deleted at once) can
//! land before the handler exists and be lost; the stop then waits out its whole grace
//! period and ends with SIGKILL. runc's containers have the same window, only it is as long
//! as a program's start on the host; in a VM it is as long as the program's start in the
//! guest. So a signal for a just-started init that would be dropped is held until the init
//! caught it (its handler is installed), ignored it explicitly, exited, or the
//! [`HANDLER_WINDOW`] after the start has passed, and then sent. A process that never
//! installs a handler ends up treated exactly as without the hold: the signal is dropped.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long after the start of a container a signal its init would drop is held.
pub const HANDLER_WINDOW: Duration = Duration::from_secs(2);

/// How often a held signal checks the init's handlers.
const POLL: Duration = Duration::from_millis(5);

/// What `/proc/<pid>/status` says about a process's signal handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalDisposition {
    /// Signals with a handler (`SigCgt`).
    caught: u64,
    /// Signals explicitly ignored (`SigIgn`).
    ignored: u64,
    /// Whether the process is PID 1 of a namespace below the agent's (`NSpid` ends in 1).
    namespace_init: bool,
}

impl SignalDisposition {
    /// Parses the text of `/proc/<pid>/status`; `None` when a field is missing.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        let nspid: Vec<&str> = field("NSpid")?.split_whitespace().collect();
        Some(SignalDisposition {
            caught: mask("SigCgt")?,
            ignored: mask("SigIgn")?,
            namespace_init: nspid.len() > 1 && nspid.last() == Some(&"1"),
        })
    }

    /// Whether the kernel would drop `sig` sent to this process right now, while a
    /// handler may still come: an init without a handler that has not chosen to ignore it.
    pub fn drops_for_now(&self, sig: Signal) -> bool {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) || !self.namespace_init {
            return false;
        }
        let bit = 1u64 << (sig as i32 - 1);
        self.caught & bit == 0 && self.ignored & bit == 0
    }
}

fn disposition(pid: i32) -> Option<SignalDisposition> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    SignalDisposition::parse(&text)
}

/// Sends `sig` to `pid`, a container init started at `started`: at once, unless it would
/// drop the signal for want of a handler within [`HANDLER_WINDOW`] of its start; then a
/// thread sends it when a handler is there (or the window ends), as long as `alive` says
/// the process has not exited (so a reused pid is never signalled).
pub fn send_to_init(
    pid: i32,
    sig: Signal,
    started: Instant,
    alive: impl Fn() -> bool + Send + 'static,
) -> nix::Result<()> {
    let deadline = started + HANDLER_WINDOW;
    let hold = Instant::now() < deadline && disposition(pid).is_some_and(|d| d.drops_for_now(sig));
    if !hold {
        return kill(Pid::from_raw(pid), sig);
    }
    let held_at = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("husk-held-signal".into())
        .spawn(move || {
            while Instant::now() < deadline
                && disposition(pid).is_some_and(|d| d.drops_for_now(sig))
            {
                std::thread::sleep(POLL);
            }
            if alive() {
                tracing::info!(
                    pid,
                    ?sig,
                    held_ms = held_at.elapsed().as_millis() as u64,
                    "sent a signal held until the namespace init could handle it"
                );
                let _ = kill(Pid::from_raw(pid), sig);
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        // No thread: send it now, as without the hold.
        Err(_) => kill(Pid::from_raw(pid), sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nspid: &str, cgt: &str, ign: &str) -> String {
        format!(
            "Name:\ttop\nPid:\t42\nNSpid:\t{nspid}\nSigQ:\t0/1\nSigPnd:\t0000000000000000\n\
             SigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n"
        )
    }

    #[test]
    fn an_init_without_a_handler_drops_sigterm_for_now() {
        let d = SignalDisposition::parse(&status("42\t1", "0000000000000000", "0000000000000000"))
            .expect("parse");
        assert!(d.drops_for_now(Signal::SIGTERM));
        assert!(!d.drops_for_now(Signal::SIGKILL), "SIGKILL always reaches");
    }

    #[test]
    fn a_handler_or_an_explicit_ignore_sends_at_once() {
        // SIGTERM is signal 15: bit 14 = 0x4000.
        let caught =
            SignalDisposition::parse(&status("42\t1", "0000000000004000", "0")).expect("parse");
        assert!(!caught.drops_for_now(Signal::SIGTERM));
        assert!(
            caught.drops_for_now(Signal::SIGINT),
            "only SIGTERM is caught"
        );
        let ignored =
            SignalDisposition::parse(&status("42\t1", "0", "0000000000004000")).expect("parse");
        assert!(!ignored.drops_for_now(Signal::SIGTERM));
    }

    #[test]
    fn a_process_that_is_not_a_namespace_init_gets_it_at_once() {
        for nspid in ["42", "42\t7"] {
            let d = SignalDisposition::parse(&status(nspid, "0", "0")).expect("parse");
            assert!(!d.drops_for_now(Signal::SIGTERM), "NSpid {nspid}");
        }
    }

    #[test]
    fn a_status_without_the_fields_is_not_parsed() {
        assert_eq!(SignalDisposition::parse("Name:\tx\n"), None);
    }

    /// The pid of `parent`'s first child, waiting for it to exist.
    fn first_child(parent: u32) -> i32 {
        let path = format!("/proc/{parent}/task/{parent}/children");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                return pid.parse().expect("pid");
            }
            assert!(Instant::now() < deadline, "{parent} has no child");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_sigterm_sent_before_the_init_has_its_handler_reaches_it_later() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test makes a PID namespace: needs root"
        );
        // PID 1 of a new PID namespace that installs its SIGTERM handler 300 ms after start.
        let mut unshare = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sh", "-c"])
            .arg("sleep 0.3; trap 'exit 7' TERM; while :; do sleep 0.01; done")
            .spawn()
            .expect("spawn unshare");
        let init = first_child(unshare.id());
        send_to_init(init, Signal::SIGTERM, Instant::now(), || true).expect("send");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = unshare.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = unshare.kill();
                panic!("the namespace init never got the SIGTERM sent before its handler");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.code(),
            Some(7),
            "{status:?}: the init's TERM trap ran"
        );
    }

    #[test]
    fn a_process_outside_the_window_is_signalled_at_once() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let long_ago = Instant::now() - HANDLER_WINDOW * 2;
        send_to_init(pid, Signal::SIGTERM, long_ago, || true).expect("kill");
        let st = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGTERM));
    }
}
