//! End-to-end tests of `containerd-shim-husk-v2` with Debian's real containerd.
//!
//! A private containerd (own config, root and state under HUSK_WORK_DIR, the native
//! snapshotter because the test host has no overlay module) runs busybox containers from an
//! OCI image built here from /bin/busybox, with `ctr run --runtime io.containerd.husk.v2`.
//! Each container gets its own husk VM. Run with `cargo xtask e2e shim`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use husk_e2e::cmd::{output_within, sh, which};
use husk_e2e::containerd::{
    Containerd, Options, BUSYBOX_IMAGE as IMAGE, CTR_TIMEOUT, HUSK_RUNTIME as RUNTIME,
};
use husk_e2e::Artifacts;

static SERIAL: Mutex<()> = Mutex::new(());

/// The shared private containerd (started by the first test) and the lock
/// that runs the tests one after another.
fn daemon() -> (&'static Containerd, MutexGuard<'static, ()>) {
    static D: OnceLock<Containerd> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = D.get_or_init(|| {
        let artifacts = Artifacts::from_env();
        let work = artifacts.work_dir.join("shim");
        Containerd::start(artifacts, Options::new(work))
    });
    (d, guard)
}

#[test]
fn shim_runs_containers_in_vms() {
    let (d, _g) = daemon();

    // echo from a VM, timed against runc in the same test host.
    let t = Instant::now();
    let out = d.run("hello", &[], &["echo", "hello"]);
    let first = t.elapsed();
    assert!(out.status.success(), "echo: {}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    d.assert_nothing_left("after echo");

    // The process ran under the guest kernel, not the test host's.
    let out = d.run("uname", &[], &["uname", "-r"]);
    assert!(out.status.success(), "uname: {}", d.explain(&out));
    let guest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = sh("uname -r").trim().to_string();
    assert!(
        !guest.is_empty() && guest != host,
        "guest {guest:?} host {host:?}"
    );

    // Exit status.
    let out = d.run(
        "exit7",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "exit 7: {}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // Piped stdin, with output that must all arrive.
    let input = d.opts.work.join("stdin.data");
    std::fs::write(&input, vec![b'x'; 300_000]).expect("stdin data");
    let mut cmd = d.ctr_cmd(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "stdin",
        "wc",
        "-c",
    ]);
    cmd.stdin(std::fs::File::open(&input).expect("open stdin data"));
    let out = output_within(cmd, CTR_TIMEOUT);
    assert!(out.status.success(), "stdin: {}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300000");
    let out = d.run(
        "bulk",
        &[],
        &["sh", "-c", "head -c 1000000 /dev/zero | wc -c; echo last"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000000\nlast\n",
        "{}",
        d.explain(&out)
    );

    // Figures: `ctr run --rm ... true`, husk vs runc.
    let time = |runtime: &str, id: &str| {
        let t = Instant::now();
        let out = d.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, id, "true"]);
        let e = t.elapsed();
        assert!(out.status.success(), "{runtime} true: {}", d.explain(&out));
        e
    };
    let husk = time(RUNTIME, "true-husk");
    let runc = which("runc").map(|_| time("io.containerd.runc.v2", "true-runc"));
    eprintln!(
        "FIGURE ctr run --rm busybox true: husk {:.0} ms, runc {}; first husk echo {:.0} ms",
        husk.as_secs_f64() * 1e3,
        runc.map_or("n/a".to_string(), |r| format!(
            "{:.0} ms",
            r.as_secs_f64() * 1e3
        )),
        first.as_secs_f64() * 1e3
    );
    d.assert_nothing_left("after runs");
}

#[test]
fn shim_task_commands() {
    let (d, _g) = daemon();
    let id = "svc";
    d.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sh",
        "-c",
        "trap 'exit 143' TERM; while true; do sleep 1; done",
    ]);
    d.wait_status(id, "RUNNING");

    let out = d.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo exec; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec\n");
    let out = d.ctr(&["task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", d.explain(&out));

    let ps = d.ctr_ok(&["task", "ps", id]);
    assert!(ps.lines().count() >= 2, "ps: {ps}");

    let metrics = d.ctr_ok(&["task", "metrics", id]);
    assert!(metrics.contains("pids"), "metrics: {metrics}");

    d.ctr_ok(&["task", "pause", id]);
    d.wait_status(id, "PAUSED");
    d.ctr_ok(&["task", "resume", id]);
    d.wait_status(id, "RUNNING");

    d.ctr_ok(&["task", "kill", "--signal", "SIGTERM", id]);
    d.wait_status(id, "STOPPED");
    let ls = d.ctr_ok(&["task", "ls"]);
    d.ctr_ok(&["task", "rm", id]);
    d.ctr_ok(&["container", "rm", id]);
    assert!(ls.contains("STOPPED"), "{ls}");

    // SIGKILL
    let id = "victim";
    d.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    d.wait_status(id, "RUNNING");
    d.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    d.wait_status(id, "STOPPED");
    d.ctr_ok(&["task", "rm", id]);
    d.ctr_ok(&["container", "rm", id]);
    d.assert_nothing_left("after kill");

    // A shim that dies: its VM dies with it, and `shim delete` removes the rest.
    let id = "crash";
    d.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    d.wait_status(id, "RUNNING");
    let shim = shim_pid(id).expect("shim process of the crash container");
    sh(&format!("kill -9 {shim}"));
    // containerd notices the dead shim: the task stops or disappears.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = d.ctr_ok(&["task", "ls"]);
        let line = ls.lines().find(|l| l.split_whitespace().next() == Some(id));
        if line.is_none_or(|l| l.contains("STOPPED")) {
            break;
        }
        assert!(Instant::now() < deadline, "task survived its shim: {ls}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = d.ctr(&["task", "rm", id]);
    d.ctr_ok(&["container", "rm", id]);
    d.assert_nothing_left("after a shim crash");
}

/// The pid of the husk shim serving container `id`.
fn shim_pid(id: &str) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-husk-v2"));
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        let is_server = args.iter().any(|a| *a == b"-socket");
        (is_shim && serves && is_server).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[test]
fn shim_bad_input_is_refused_cleanly() {
    let (d, _g) = daemon();

    let out = d.run("badann", &["--annotation", "io.husk.vcpus=lots"], &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io.husk.vcpus"), "{}", d.explain(&out));
    let _ = d.ctr(&["container", "rm", "badann"]);
    d.assert_nothing_left("after a bad annotation");

    let missing = d.opts.work.join("no-such-rootfs");
    let out = d.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        &missing.display().to_string(),
        "norootfs",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-rootfs"), "{}", d.explain(&out));
    let _ = d.ctr(&["container", "rm", "norootfs"]);
    d.assert_nothing_left("after a missing rootfs");

    d.write_husk_config(Path::new("/nonexistent/vmlinux"));
    let out = d.run("nokernel", &[], &["true"]);
    d.write_husk_config(&d.artifacts.kernel);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vmlinux"), "{}", d.explain(&out));
    let _ = d.ctr(&["container", "rm", "nokernel"]);
    d.assert_nothing_left("after a missing kernel");
}
