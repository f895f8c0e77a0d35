//! husk-pause: the pod sandbox ("pause") process of the locally built CRI sandbox image.
//!
//! It sits until SIGTERM or SIGINT and then exits 0, reaping any child that is
//! reparented to it meanwhile (it is PID 1 of its PID namespace). Signals are
//! taken synchronously with `sigwait`, so no handler runs.

use std::process::ExitCode;

/// Blocks TERM, INT and CHLD and returns the set.
fn blocked_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid;
    // sigprocmask with a null old-set pointer only changes this thread's mask (the only one).
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Reaps every child that has exited.
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

fn main() -> ExitCode {
    let set = blocked_signals();
    loop {
        let mut sig = 0;
        // SAFETY: `set` is initialised and `sig` is a valid local to write to.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            eprintln!("husk-pause: sigwait failed ({rc})");
            return ExitCode::FAILURE;
        }
        match sig {
            libc::SIGCHLD => reap(),
            _ => return ExitCode::SUCCESS,
        }
    }
}
