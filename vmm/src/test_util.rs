//! Helpers for this crate's unit tests.

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Set when this test binary runs again as a child that confines itself (a seccomp filter,
/// a capability drop or a mount namespace cannot be undone, so each goes into a process of
/// its own).
const CHILD_ENV: &str = "HUSK_VMM_TEST_CHILD";

/// Whether this process is such a child.
pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs test `name` of module `module` (its `module_path!()`) again in a child process of
/// this test binary, with [`in_child`] true there; returns the child's output.
pub fn rerun_in_child(
    module: &str,
    name: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &format!("{module}::{name}"), "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the test binary again")
}

/// Runs test `name` of `module` in a child (with `envs` added to its environment) and
/// asserts that it passed.
pub fn child_passes(module: &str, name: &str, envs: &[(&str, &std::ffi::OsStr)]) {
    let out = rerun_in_child(module, name, envs);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child {name}: {}\n{text}", out.status);
    assert!(text.contains("1 passed"), "the child ran {name}: {text}");
}
