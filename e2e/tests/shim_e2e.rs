//! End-to-end tests of `containerd-shim-husk-v2` with Debian's real containerd.
//!
//! A private containerd (own config, root and state under HUSK_WORK_DIR, the native
//! snapshotter because the test host has no overlay module) runs busybox containers from an
//! OCI image built here from /bin/busybox, with `ctr run --runtime io.containerd.husk.v2`.
//! Each container gets its own husk VM. Run with `cargo xtask e2e shim`.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use husk_e2e::cmd::{output_within, sh, which};
use husk_e2e::containerd::{
    Containerd, BUSYBOX_IMAGE as IMAGE, CTR_TIMEOUT, HUSK_RUNTIME as RUNTIME,
};
use husk_e2e::wait_until;

fn daemon() -> (&'static Containerd, MutexGuard<'static, ()>) {
    husk_e2e::containerd::shared("shim")
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
    d.run_detached(
        id,
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 1; done",
        ],
    );

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
    // `ctr task exec` deleted e1 when it ended: the guest forgot it too, so the id is free.
    let out = d.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo again",
    ]);
    assert!(out.status.success(), "reused exec id: {}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");

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
    d.run_detached(id, &["sleep", "1000"]);
    d.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    d.wait_status(id, "STOPPED");
    d.ctr_ok(&["task", "rm", id]);
    d.ctr_ok(&["container", "rm", id]);
    d.assert_nothing_left("after kill");

    // kill --all: the init of a pid namespace ignores a SIGTERM it has no handler for,
    // its children do not; `wait` returns once they are gone and the shell exits 5. The
    // container runs in the foreground of a `ctr run` so that its exit status shows: 5
    // proves that init lived through the first SIGTERM (a death by it would be 143).
    let id = "family";
    let family = d.ctr_cmd(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sh",
        "-c",
        "sleep 1000 & sleep 1001 & wait; exit 5",
    ]);
    let family = std::thread::spawn(move || output_within(family, CTR_TIMEOUT));
    d.wait_status(id, "RUNNING");
    // init and both sleeps, under ctr's header line.
    let mut ps = String::new();
    let all_up = wait_until(Instant::now() + Duration::from_secs(60), || {
        ps = d.ctr_ok(&["task", "ps", id]);
        ps.lines().count() == 4
    });
    assert!(all_up, "the sleeps never started: {ps}");
    d.ctr_ok(&["task", "kill", "--signal", "SIGTERM", id]);
    let ps = d.ctr_ok(&["task", "ps", id]);
    assert_eq!(
        ps.lines().count(),
        4,
        "init ignored SIGTERM, all alive: {ps}"
    );
    d.ctr_ok(&["task", "kill", "--all", "--signal", "SIGTERM", id]);
    let out = family.join().expect("ctr run of family");
    assert_eq!(
        out.status.code(),
        Some(5),
        "init must survive the first SIGTERM and exit 5 once its children are gone: {}",
        d.explain(&out)
    );
    d.assert_nothing_left("after kill --all");

    // A shim that dies: its VM dies with it, and `shim delete` removes the rest.
    let id = "crash";
    d.run_detached(id, &["sleep", "1000"]);
    let shim = shim_pid(id).expect("shim process of the crash container");
    sh(&format!("kill -9 {shim}"));
    // containerd notices the dead shim: the task stops or disappears.
    let mut ls = String::new();
    let stopped = wait_until(Instant::now() + Duration::from_secs(60), || {
        ls = d.ctr_ok(&["task", "ls"]);
        let line = ls.lines().find(|l| l.split_whitespace().next() == Some(id));
        line.is_none_or(|l| l.contains("STOPPED"))
    });
    assert!(stopped, "task survived its shim: {ls}");
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

#[test]
fn shim_reports_oom_kills() {
    let (d, _g) = daemon();
    let id = "oom";
    // Every event containerd publishes while the container runs, line by line.
    let mut events = d.ctr_cmd(&["events"]);
    events.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut events = events.spawn().expect("spawn ctr events");
    let events_out = events.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(events_out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // `ctr events` says nothing once it has subscribed: publish events of our own (a
    // namespace made and removed) until one shows, so that the container's cannot be missed.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let probe = format!("husk-events-probe-{n}");
        d.ctr_ok(&["namespaces", "create", &probe]);
        d.ctr_ok(&["namespaces", "rm", &probe]);
        let within = Instant::now() + Duration::from_secs(2);
        if next_line_with(&lines, &mut seen, within, |l| l.contains(&probe)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ctr events never showed our own events:\n{}",
            seen.join("\n")
        );
    }

    // A shell string that doubles until the 16 MiB cgroup limit OOM-kills the shell.
    let out = d.run(
        id,
        &["--memory-limit", "16777216"],
        &[
            "sh",
            "-c",
            "x=0123456789abcdef; while true; do x=$x$x; done",
        ],
    );
    // The OOM event may follow the exit: wait for it.
    let quoted = format!("\"{id}\"");
    let within = Instant::now() + Duration::from_secs(30);
    let oom = next_line_with(&lines, &mut seen, within, |l| {
        l.contains("/tasks/oom") && l.contains(&quoted)
    });
    let _ = events.kill();
    let _ = events.wait();
    reader.join().expect("events reader");
    assert_eq!(
        out.status.code(),
        Some(137),
        "OOM kill: {}",
        d.explain(&out)
    );
    assert!(
        oom,
        "no /tasks/oom event for {id}; events:\n{}\n{}",
        seen.join("\n"),
        d.explain(&out)
    );
    d.assert_nothing_left("after an OOM kill");
}

/// Takes lines from `lines` into `seen` until one satisfies `want` (true) or `deadline`
/// passes (false).
fn next_line_with(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    deadline: Instant,
    want: impl Fn(&str) -> bool,
) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = want(&line);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// A pseudo terminal: (master, slave) with the given window size.
fn openpty(rows: u16, cols: u16) -> (std::fs::File, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out pointers are valid ints; name and termios may be null; ws lives
    // across the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(master)),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

#[test]
fn shim_runs_a_terminal_container() {
    let (d, _g) = daemon();
    // `ctr run -t` puts its own stdin into raw mode: it needs a terminal.
    let (mut master, slave) = openpty(24, 80);
    let mut cmd = d.ctr_cmd(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "term",
        "sh",
        "-c",
        // ctr sends the window size right after start: wait for it.
        "i=0; while [ \"$(stty size)\" = '0 0' ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         stty size; tty; echo done; exit 3",
    ]);
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup slave")))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ctr run -t");
    drop(cmd); // our copies of the slave: the master sees EOF (EIO) once ctr is gone
    let mut stderr = child.stderr.take().expect("piped");
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let output = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = [0u8; 4096];
        // A pty master reads EIO when no slave is left open.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + CTR_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = output.join().expect("output");
    let err = err.join().expect("stderr");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "ctr run -t: output {out:?} stderr {err}"
    );
    assert!(lines.contains(&"24 80"), "window size: {out:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "no tty: {out:?}"
    );
    assert!(lines.contains(&"done"), "{out:?}");
    d.assert_nothing_left("after a terminal container");
}
