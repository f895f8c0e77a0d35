//! `ctr` commands against the private containerd, timed: run a container to
//! its exit, start an idle one, exec into one, remove them.

use std::time::{Duration, Instant};

use husk_e2e::cmd::output_within;
use husk_e2e::containerd::{Containerd, BUSYBOX_IMAGE, HUSK_RUNTIME, RUNC_RUNTIME};

/// Longest one `ctr` command may take before it counts as hung.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of a `ctr` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ctr` failed or timed out (no exit code).
    #[error("ctr {args}: exit {code:?}: {stderr}")]
    Ctr {
        /// The arguments.
        args: String,
        /// Its exit code; `None` when it was killed after the timeout.
        code: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// A container runtime under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// Short name for the table.
    pub name: &'static str,
    /// containerd runtime type.
    pub runtime: &'static str,
    /// The shim's program name (one shim process per pod).
    pub shim: &'static str,
}

/// husk.
pub const HUSK: Runtime = Runtime {
    name: "husk",
    runtime: HUSK_RUNTIME,
    shim: "containerd-shim-husk-v2",
};

/// runc, the anchor.
pub const RUNC: Runtime = Runtime {
    name: "runc",
    runtime: RUNC_RUNTIME,
    shim: "containerd-shim-runc-v2",
};

/// The command an idle container runs.
const IDLE: &[&str] = &["sleep", "1000000"];

/// Runs `ctr args`, returning its wall time when it succeeded; logs each
/// command, and what the pods show when one times out.
pub fn timed(d: &Containerd, args: &[&str]) -> Result<Duration, Error> {
    let started = Instant::now();
    let out = output_within(d.ctr_cmd(args), TIMEOUT);
    let took = started.elapsed();
    eprintln!(
        "husk-bench: [{:>7.1} s] ctr {} -> {:?}",
        took.as_secs_f64(),
        args.join(" "),
        out.status.code()
    );
    if out.status.code().is_none() {
        eprintln!("husk-bench: ctr timed out:\n{}", d.explain(&out));
    } else if !out.status.success() {
        eprintln!(
            "husk-bench: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.status.success() {
        Ok(took)
    } else {
        Err(Error::Ctr {
            args: args.join(" "),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ctr run --rm` of busybox `true`: start to exit.
pub fn run_true(d: &Containerd, rt: Runtime, id: &str) -> Result<Duration, Error> {
    timed(
        d,
        &[
            "run",
            "--rm",
            "--runtime",
            rt.runtime,
            BUSYBOX_IMAGE,
            id,
            "true",
        ],
    )
}

/// `ctr run -d` of an idle busybox container: start until its task runs.
pub fn start_idle(d: &Containerd, rt: Runtime, id: &str) -> Result<Duration, Error> {
    let mut args = vec!["run", "-d", "--runtime", rt.runtime, BUSYBOX_IMAGE, id];
    args.extend_from_slice(IDLE);
    timed(d, &args)
}

/// Starts one idle container per id, all at once; the wall time until the
/// last `ctr` returned.
pub fn start_idle_parallel(d: &Containerd, rt: Runtime, ids: &[String]) -> Result<Duration, Error> {
    let started = Instant::now();
    let results: Vec<Result<Duration, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(move || start_idle(d, rt, id)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(Duration::ZERO)))
            .collect()
    });
    let took = started.elapsed();
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(took)
}

/// `ctr task exec` of `true` in running container `id`.
pub fn exec_true(d: &Containerd, id: &str, exec_id: &str) -> Result<Duration, Error> {
    timed(d, &["task", "exec", "--exec-id", exec_id, id, "true"])
}

/// Kills and deletes container `id` (task and container).
pub fn remove(d: &Containerd, id: &str) -> Result<(), Error> {
    let task = timed(d, &["task", "rm", "-f", id]);
    timed(d, &["container", "rm", id])?;
    task.map(|_| ())
}

/// [`remove`] for every id, in parallel; the first error.
pub fn remove_all(d: &Containerd, ids: &[String]) -> Result<(), Error> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(move || remove(d, id)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(())))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(())
}
