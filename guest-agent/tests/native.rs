//! Container semantics of a host-mode agent, through the ttrpc client, on busybox bundles.
//! Needs root (as the agent does in the guest); the cgroup tests need cgroup v2 and
//! `same_output_and_exit_code_as_runc` needs runc. A test missing any of them fails.

mod common;

use std::time::{Duration, Instant};

use common::{spec, wait_until, Agent};
use husk_protocol::{AgentApi, ErrorKind};
use serde_json::json;

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exit_code_and_output() {
    let agent = Agent::start();
    let (code, out, err) = agent.run_to_end("exit", &spec(&["sh", "-c", "echo hello; exit 3"]));
    assert_eq!(code, 3);
    assert_eq!(out, b"hello\n");
    assert!(err.is_empty(), "{}", text(&err));
}

#[test]
fn stderr_is_apart_from_stdout() {
    let agent = Agent::start();
    let (code, out, err) = agent.run_to_end(
        "streams",
        &spec(&["sh", "-c", "echo out; echo err >&2; echo out2"]),
    );
    assert_eq!(code, 0);
    assert_eq!(text(&out), "out\nout2\n");
    assert_eq!(text(&err), "err\n");
}

#[test]
fn env_and_cwd() {
    let agent = Agent::start();
    let mut s = spec(&["sh", "-c", "echo $FOO; pwd"]);
    s["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    s["process"]["cwd"] = json!("/tmp");
    let (code, out, _) = agent.run_to_end("envcwd", &s);
    assert_eq!(code, 0);
    assert_eq!(text(&out), "bar baz\n/tmp\n");
}

#[test]
fn uid_gid_and_additional_groups() {
    let agent = Agent::start();
    let mut s = spec(&["sh", "-c", "id -u; id -g; id -G"]);
    s["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001]});
    let (code, out, err) = agent.run_to_end("ids", &s);
    assert_eq!(code, 0, "{}", text(&err));
    let out = text(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1001");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(
        groups.contains(&"2000") && groups.contains(&"2001"),
        "{out}"
    );
}

#[test]
fn sigterm_and_sigkill() {
    let agent = Agent::start();
    // PID 1 of a pid namespace only gets signals it handles: trap TERM.
    agent.run(
        "term",
        &spec(&[
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ]),
    );
    let ready = agent.client.read_stdout("term", "", 0).expect("read");
    assert_eq!(ready.as_deref(), Some(&b"ready\n"[..]));
    agent
        .client
        .signal_process("term", "", 15, false)
        .expect("SIGTERM");
    let st = agent.client.wait_process("term", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 7);
    agent.client.remove_container("term").expect("remove");

    agent.run("kill", &spec(&["sleep", "1000"]));
    agent
        .client
        .signal_process("kill", "", 9, false)
        .expect("SIGKILL");
    let st = agent.client.wait_process("kill", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 128 + 9);
    agent.client.remove_container("kill").expect("remove");
}

#[test]
fn stdin_to_stdout_one_mib_byte_exact() {
    let agent = Agent::start();
    agent.run("cat", &spec(&["cat"]));
    let mut data = vec![0u8; 1 << 20];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let received = std::thread::scope(|s| {
        let reader = s.spawn(|| common::read_all(&agent.client, "cat", "", false));
        let mut off = 0;
        while off < data.len() {
            let end = (off + 100_000).min(data.len());
            off += agent
                .client
                .write_stdin("cat", "", &data[off..end])
                .expect("write stdin");
        }
        agent.client.close_stdin("cat", "").expect("close stdin");
        reader.join().expect("reader")
    });
    assert_eq!(received.len(), data.len());
    assert!(received == data, "bytes differ");
    let st = agent.client.wait_process("cat", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 0);
    agent.client.remove_container("cat").expect("remove");
}

#[test]
fn output_written_right_before_exit_is_not_lost() {
    let agent = Agent::start();
    // Less than a pipe holds, so the process exits before anybody reads.
    agent.run(
        "burst",
        &spec(&["sh", "-c", "head -c 60000 /dev/zero; echo tail >&2; exit 4"]),
    );
    let st = agent.client.wait_process("burst", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 4);
    let (out, err) = agent.drain("burst", "");
    assert_eq!(out.len(), 60_000);
    assert_eq!(text(&err), "tail\n");
    agent.client.remove_container("burst").expect("remove");

    // More than a pipe holds: read while it runs, all of it arrives.
    agent.run(
        "big",
        &spec(&["sh", "-c", "head -c 3000000 /dev/zero; exit 2"]),
    );
    let (out, _) = agent.drain("big", "");
    assert_eq!(out.len(), 3_000_000);
    let st = agent.client.wait_process("big", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 2);
    agent.client.remove_container("big").expect("remove");
}

#[test]
fn terminal_process_with_resize() {
    let agent = Agent::start();
    let mut s = spec(&[
        "sh",
        "-c",
        "test -t 0 && echo is-a-tty; tty; stty size; read x; stty size",
    ]);
    s["process"]["terminal"] = json!(true);
    s["process"]["consoleSize"] = json!({"height": 24, "width": 80});
    agent.run("tty", &s);
    let mut out = Vec::new();
    while !text(&out).contains("24 80") {
        let chunk = agent.client.read_stdout("tty", "", 0).expect("read");
        out.extend(chunk.expect("no EOF yet"));
    }
    assert!(text(&out).contains("is-a-tty"), "{}", text(&out));
    // The terminal lives in the container's own devpts, as with runc.
    assert!(
        text(&out).lines().any(|l| l.starts_with("/dev/pts/")),
        "{}",
        text(&out)
    );
    assert!(agent
        .client
        .read_stderr("tty", "", 0)
        .expect("stderr")
        .is_none());
    agent
        .client
        .resize_terminal("tty", "", 30, 100)
        .expect("resize");
    agent.client.write_stdin("tty", "", b"go\n").expect("stdin");
    out.extend(common::read_all(&agent.client, "tty", "", false));
    assert!(text(&out).contains("30 100"), "{}", text(&out));
    let st = agent.client.wait_process("tty", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 0);
    agent.client.remove_container("tty").expect("remove");
}

#[test]
fn exec_into_running_container() {
    let agent = Agent::start();
    let init = agent.run("exec", &spec(&["sleep", "1000"]));
    let process = json!({
        "args": ["sh", "-c", "hostname; cat /marker; echo $$; echo bad >&2; exit 9"],
        "env": ["PATH=/bin"],
        "cwd": "/tmp",
        "user": {"uid": 0, "gid": 0}
    });
    let pid = agent
        .client
        .exec_process("exec", "e1", process.to_string().as_bytes())
        .expect("exec");
    assert_ne!(pid, init);
    let (out, err) = agent.drain("exec", "e1");
    let st = agent
        .client
        .wait_process("exec", "e1", WAIT)
        .expect("wait exec");
    assert_eq!(st.exit_status, 9);
    let out = text(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "husky", "the container's hostname");
    assert_eq!(lines[1], "from the rootfs");
    assert_ne!(lines[2], "1", "not the container's PID 1");
    assert_eq!(text(&err), "bad\n");
    // The same exec id twice is refused; the container still runs.
    let again = agent
        .client
        .exec_process("exec", "e1", process.to_string().as_bytes())
        .expect_err("duplicate exec id");
    assert_eq!(again.kind(), Some(ErrorKind::AlreadyExists));
    assert_eq!(
        agent
            .client
            .list_processes("exec")
            .map(|p| p.is_empty())
            .ok(),
        Some(false)
    );
    // Once removed, the exec id is free again.
    agent
        .client
        .remove_process("exec", "e1")
        .expect("remove e1");
    let gone = agent
        .client
        .wait_process("exec", "e1", WAIT)
        .expect_err("e1 is forgotten");
    assert_eq!(gone.kind(), Some(ErrorKind::NotFound));
    let quick =
        json!({"args": ["true"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    agent
        .client
        .exec_process("exec", "e1", quick.to_string().as_bytes())
        .expect("exec id reused");
    let st = agent.client.wait_process("exec", "e1", WAIT).expect("wait");
    assert_eq!(st.exit_status, 0);
    // A running exec is killed when removed; the init process cannot be removed this way.
    let sleeper = json!({"args": ["sleep", "1000"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let pid = agent
        .client
        .exec_process("exec", "e2", sleeper.to_string().as_bytes())
        .expect("exec e2");
    agent
        .client
        .remove_process("exec", "e2")
        .expect("remove e2");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "removed exec still runs"
    );
    let init_rm = agent.client.remove_process("exec", "").expect_err("init");
    assert_eq!(init_rm.kind(), Some(ErrorKind::InvalidArgument));
    let unknown = agent
        .client
        .remove_process("exec", "nope")
        .expect_err("nope");
    assert_eq!(unknown.kind(), Some(ErrorKind::NotFound));
    agent.client.remove_container("exec").expect("remove");
}

#[test]
fn terminal_exec_sits_in_the_container_devpts() {
    let agent = Agent::start();
    agent.run("ttyexec", &spec(&["sleep", "1000"]));
    let process = json!({
        "args": ["sh", "-c", "tty; test -t 1 && echo out-is-a-tty"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "terminal": true
    });
    agent
        .client
        .exec_process("ttyexec", "t1", process.to_string().as_bytes())
        .expect("exec");
    let out = text(&common::read_all(&agent.client, "ttyexec", "t1", false));
    let st = agent
        .client
        .wait_process("ttyexec", "t1", WAIT)
        .expect("wait");
    assert_eq!(st.exit_status, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[1], "out-is-a-tty", "{out:?}");
    agent.client.remove_container("ttyexec").expect("remove");
}

fn usage(agent: &Agent, id: &str) -> u64 {
    let stats = agent.client.container_stats(id).expect("stats");
    stats.cpu.usage_usec
}

/// Whether the container's CPU usage grows by `delta` µs within a few seconds (the build
/// machines are shared, so a busy loop may get little CPU at a time).
fn usage_grows(agent: &Agent, id: &str, from: u64, delta: u64) -> bool {
    wait_until(Instant::now() + Duration::from_secs(10), || {
        usage(agent, id) > from + delta
    })
}

#[test]
fn stats_move_and_pause_resume() {
    let agent = Agent::start();
    let cgroup = agent.cgroup().join("busy");
    agent.run("busy", &spec(&["sh", "-c", "while :; do :; done"]));
    let before = usage(&agent, "busy");
    assert!(
        usage_grows(&agent, "busy", before, 50_000),
        "cpu usage did not move"
    );

    agent.client.pause_container("busy").expect("pause");
    // The kernel's word that every task of the cgroup is frozen, not only asked to be.
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).expect("cgroup.events");
    assert!(
        events.lines().any(|l| l.trim() == "frozen 1"),
        "paused, but not frozen: {events}"
    );
    // That nothing runs needs a span of time to be seen: watch the whole span (the busy
    // loop, were it running, adds about its length in CPU time).
    let p1 = usage(&agent, "busy");
    let span = Instant::now() + Duration::from_millis(300);
    let moved = wait_until(span, || usage(&agent, "busy") > p1 + 5_000);
    let p2 = usage(&agent, "busy");
    assert!(!moved, "usage moved while paused: {p1} -> {p2}");
    agent.client.resume_container("busy").expect("resume");
    assert!(
        usage_grows(&agent, "busy", p2, 50_000),
        "usage did not move after resume"
    );
    agent.client.remove_container("busy").expect("remove");
}

#[test]
fn readonly_root_refuses_a_write() {
    let agent = Agent::start();
    let mut s = spec(&["sh", "-c", "touch /newfile && echo wrote; touch /tmp/x"]);
    s["root"]["readonly"] = json!(true);
    let (code, out, err) = agent.run_to_end("ro", &s);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(
        text(&err).contains("Read-only file system"),
        "{}",
        text(&err)
    );
}

#[test]
fn bind_mount_is_visible() {
    let agent = Agent::start();
    let data = agent.dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("hello"), "bound\n").expect("write");
    let mut s = spec(&["sh", "-c", "cat /data/hello; touch /data/nope"]);
    s["mounts"].as_array_mut().expect("mounts").push(json!({
        "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"]
    }));
    let (code, out, err) = agent.run_to_end("bind", &s);
    assert_eq!(text(&out), "bound\n");
    assert_ne!(code, 0, "a ro bind mount must refuse writes");
    assert!(text(&err).contains("Read-only"), "{}", text(&err));
}

#[test]
fn seccomp_profile_is_enforced() {
    let agent = Agent::start();
    let mut s = spec(&["sh", "-c", "mkdir /tmp/d && echo made"]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    let (code, out, err) = agent.run_to_end("seccomp", &s);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(
        text(&err).contains("Operation not permitted"),
        "{}",
        text(&err)
    );
}

#[test]
fn remove_leaves_no_process_mount_or_cgroup() {
    let agent = Agent::start();
    let marker = "husk-remove-marker-4711";
    let init = agent.run(
        "rm",
        &spec(&["sh", "-c", &format!("sleep 1000; echo {marker}")]),
    );
    let process = json!({"args": ["sleep", "999"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let exec = agent
        .client
        .exec_process("rm", "x", process.to_string().as_bytes())
        .expect("exec");
    let rootfs = agent.share.join("rm/rootfs");
    agent.client.remove_container("rm").expect("remove");
    for pid in [init, exec] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left"
        );
    }
    assert!(common::processes_with(marker).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(rootfs.to_str().expect("utf8")),
        "mount left"
    );
    assert!(!agent.cgroup().join("rm").exists(), "cgroup left");
    let err = agent.client.start_container("rm").expect_err("gone");
    assert_eq!(err.kind(), Some(ErrorKind::NotFound));
}

#[test]
fn bad_input_gives_typed_errors_and_leaves_nothing() {
    let agent = Agent::start();
    let kind = |r: Result<u32, husk_protocol::AgentError>| r.expect_err("must fail").kind();

    assert_eq!(
        agent
            .client
            .start_container("nope")
            .expect_err("unknown")
            .kind(),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        agent
            .client
            .wait_process("nope", "", WAIT)
            .expect_err("unknown")
            .kind(),
        Some(ErrorKind::NotFound)
    );

    agent.bundle("noproc");
    let mut s = spec(&["true"]);
    s.as_object_mut().expect("obj").remove("process");
    assert_eq!(
        kind(
            agent
                .client
                .create_container("noproc", s.to_string().as_bytes(), None)
        ),
        Some(ErrorKind::InvalidArgument)
    );

    agent.bundle("outside");
    let elsewhere = common::make_rootfs(&agent.dir.path().join("elsewhere"));
    let mut s = spec(&["true"]);
    s["root"]["path"] = json!(elsewhere.join("rootfs"));
    assert_eq!(
        kind(
            agent
                .client
                .create_container("outside", s.to_string().as_bytes(), None)
        ),
        Some(ErrorKind::InvalidArgument)
    );

    agent.bundle("noexe");
    assert_eq!(
        kind(agent.client.create_container(
            "noexe",
            spec(&["no-such-binary"]).to_string().as_bytes(),
            None
        )),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        kind(
            agent
                .client
                .create_container("../x", spec(&["true"]).to_string().as_bytes(), None)
        ),
        Some(ErrorKind::InvalidArgument)
    );

    agent.run("twice", &spec(&["sleep", "1000"]));
    let again = agent
        .client
        .start_container("twice")
        .expect_err("second start");
    assert_eq!(again.kind(), Some(ErrorKind::FailedPrecondition));
    assert_eq!(
        kind(
            agent
                .client
                .create_container("twice", spec(&["true"]).to_string().as_bytes(), None)
        ),
        Some(ErrorKind::AlreadyExists)
    );
    agent.client.remove_container("twice").expect("remove");

    // Nothing of the failed creates is left: no setup process, no cgroup. The removed
    // container's processes are reaped a moment after the call returns: wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        wait_until(deadline, || common::children_of(agent.pid()).is_empty()),
        "processes left: {:?}",
        common::children_of(agent.pid())
    );
    let left: Vec<_> = std::fs::read_dir(agent.cgroup())
        .expect("cgroup root")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[test]
fn created_container_can_be_removed_before_start() {
    let agent = Agent::start();
    agent.bundle("unstarted");
    let pid = agent
        .client
        .create_container(
            "unstarted",
            spec(&["sleep", "1000"]).to_string().as_bytes(),
            None,
        )
        .expect("create");
    agent.client.remove_container("unstarted").expect("remove");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn same_output_and_exit_code_as_runc() {
    let agent = Agent::start();
    let script = "echo hi; id -u; id -G; pwd; echo $FOO; hostname; \
                  grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
                  grep NoNewPrivs /proc/self/status; ulimit -n; \
                  ls /dev | sort; cat /marker; exit 5";
    let mut s = spec(&["sh", "-c", script]);
    s["process"]["env"] = json!(["PATH=/bin", "FOO=foo"]);
    s["process"]["cwd"] = json!("/tmp");
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [3000]});
    let started = Instant::now();
    let (code, out, err) = agent.run_to_end("same", &s);
    let husk_time = started.elapsed();
    assert!(err.is_empty(), "{}", text(&err));
    let bundle = common::make_rootfs(&agent.dir.path().join("runc-bundle"));
    let started = Instant::now();
    let (rcode, rout, rerr) = common::runc_run(&bundle, "husk-cmp", &s);
    let runc_time = started.elapsed();
    eprintln!("husk-agent {husk_time:?}, runc {runc_time:?}");
    assert_eq!(
        text(&out),
        text(&rout),
        "stdout differs; runc stderr: {}",
        text(&rerr)
    );
    assert_eq!(code, rcode);
}

#[test]
fn sysctls_masked_and_readonly_paths() {
    let agent = Agent::start();
    let script = "cat /proc/sys/net/ipv4/ip_forward; wc -c < /proc/timer_list; \
                  echo 0 > /proc/sys/net/ipv4/ip_forward && echo writable; exit 0";
    let mut s = spec(&["sh", "-c", script]);
    s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    let (code, out, err) = agent.run_to_end("sysctl", &s);
    assert_eq!(code, 0);
    assert_eq!(text(&out), "1\n0\n", "stderr: {}", text(&err));
    assert!(
        text(&err).contains("Read-only file system"),
        "{}",
        text(&err)
    );
}

#[test]
fn exec_into_paused_container_is_refused_and_update_applies() {
    let agent = Agent::start();
    let cg = agent.cgroup().join("paused");
    agent.run("paused", &spec(&["sleep", "1000"]));
    agent.client.pause_container("paused").expect("pause");
    let process = json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let err = agent
        .client
        .exec_process("paused", "p1", process.to_string().as_bytes())
        .expect_err("exec while paused");
    assert_eq!(err.kind(), Some(ErrorKind::FailedPrecondition));
    agent.client.resume_container("paused").expect("resume");
    // Resources through the unified map: a file every cgroup v2 has.
    let res = json!({"unified": {"cgroup.max.descendants": "5"}});
    agent
        .client
        .update_container("paused", res.to_string().as_bytes())
        .expect("update");
    let v = std::fs::read_to_string(cg.join("cgroup.max.descendants")).expect("read");
    assert_eq!(v.trim(), "5");
    let bad = json!({"unified": {"../escape": "1"}});
    let err = agent
        .client
        .update_container("paused", bad.to_string().as_bytes())
        .expect_err("bad key");
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument));
    agent.client.remove_container("paused").expect("remove");
}

#[test]
fn parallel_execs_each_get_their_own_output_and_status() {
    let agent = Agent::start();
    agent.run("par", &spec(&["sleep", "1000"]));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let agent = &agent;
                s.spawn(move || {
                    let exec_id = format!("e{i}");
                    let process = json!({
                        "args": ["sh", "-c", format!("echo exec {i}; exit {i}")],
                        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
                    });
                    agent
                        .client
                        .exec_process("par", &exec_id, process.to_string().as_bytes())
                        .expect("exec");
                    let (out, _) = agent.drain("par", &exec_id);
                    let st = agent
                        .client
                        .wait_process("par", &exec_id, WAIT)
                        .expect("wait");
                    (i, text(&out), st.exit_status)
                })
            })
            .collect();
        for h in handles {
            let (i, out, code) = h.join().expect("exec thread");
            assert_eq!(out, format!("exec {i}\n"));
            assert_eq!(code, i);
        }
    });
    agent.client.remove_container("par").expect("remove");
}

/// How long a SIGTERM'd `top` may take to end, and its handler to appear (both take a few
/// ms: the deadline is there so that a lost signal fails the test instead of hanging it).
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// The program name of a process (`/proc/<pid>/comm`), empty once it is gone.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether the process catches SIGTERM (bit 14 of `SigCgt` in `/proc/<pid>/status`).
fn catches_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (15 - 1)) != 0)
}

/// `top` as its container's PID 1: when start returns, the program already runs (not the
/// setup code, whose default dispositions make the kernel drop a SIGTERM to a namespace
/// init), as when runc's start returns; the only time left before a SIGTERM counts is the
/// program's own (installing its handler, measured), and then SIGTERM ends it through
/// that handler (exit 143), not through a SIGKILL after a grace period.
#[test]
fn start_returns_after_exec_so_sigterm_stops_top_as_under_runc() {
    let agent = Agent::start();
    let s = spec(&["top", "-b", "-d", "1"]);
    for round in 0..5 {
        let id = format!("top{round}");
        agent.bundle(&id);
        let pid = agent
            .client
            .create_container(&id, s.to_string().as_bytes(), None)
            .expect("create");
        agent.client.start_container(&id).expect("start");
        let started = Instant::now();
        assert_eq!(
            comm(pid),
            "top",
            "round {round}: start returned before the exec"
        );
        let handled = wait_until(started + STOP_DEADLINE, || catches_sigterm(pid));
        let handler_after = started.elapsed();
        assert!(handled, "round {round}: top never caught SIGTERM");
        agent
            .client
            .signal_process(&id, "", 15, false)
            .expect("SIGTERM");
        let st = agent
            .client
            .wait_process(&id, "", Some(STOP_DEADLINE))
            .unwrap_or_else(|e| panic!("round {round}: SIGTERM ignored: {e:?}"));
        eprintln!(
            "husk round {round}: handler {handler_after:?} after start returned, ended {:?} \
             after start returned",
            started.elapsed()
        );
        assert_eq!(st.exit_status, 128 + 15, "round {round}");
        agent.client.remove_container(&id).expect("remove");
    }

    let bundle = common::make_rootfs(&agent.dir.path().join("runc-top"));
    for round in 0..3 {
        let runc = common::Runc::create(&bundle, &format!("husk-top{round}"), &s);
        let pid = runc.pid();
        runc.start();
        let started = Instant::now();
        let name = comm(pid);
        eprintln!("runc round {round}: pid {pid} is {name:?} when start returned");
        // runc's start returns once its init was told to go (the exec fifo), which can be
        // before the exec: runc's own init (Go) catches SIGTERM too, so wait for `top`.
        let exec = wait_until(started + STOP_DEADLINE, || comm(pid) == "top");
        assert!(exec, "runc round {round}: top never ran");
        let handled = wait_until(started + STOP_DEADLINE, || catches_sigterm(pid));
        let handler_after = started.elapsed();
        assert!(handled, "runc round {round}: top never caught SIGTERM");
        runc.kill("TERM");
        let stopped = wait_until(started + STOP_DEADLINE, || runc.status() == "stopped");
        eprintln!(
            "runc round {round}: handler {handler_after:?} after start returned, stopped {:?} \
             after start returned",
            started.elapsed()
        );
        assert!(stopped, "runc round {round}: top did not stop");
    }
}

fn pod(sandbox: &str, types: &[&str]) -> husk_protocol::agent::PodNamespaces {
    husk_protocol::agent::PodNamespaces {
        sandbox_id: sandbox.to_string(),
        types: types.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

/// The `type:[inode]` link of a namespace of a process, as seen from here.
fn ns_link(pid: u32, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap_or_else(|e| panic!("ns {name} of {pid}: {e}"))
        .display()
        .to_string()
}

/// Runs a member container of the pod to its end: (exit status, stdout, stderr).
fn run_member(
    agent: &Agent,
    id: &str,
    s: &serde_json::Value,
    p: &husk_protocol::agent::PodNamespaces,
) -> (i32, String, String) {
    agent.bundle(id);
    agent
        .client
        .create_container(id, s.to_string().as_bytes(), Some(p))
        .expect("create member");
    agent.client.start_container(id).expect("start member");
    let (out, err) = agent.drain(id, "");
    let st = agent.client.wait_process(id, "", WAIT).expect("wait");
    agent.client.remove_container(id).expect("remove");
    (st.exit_status, text(&out), text(&err))
}

/// The value printed after `key=` in a member's output.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {out}"))
}

const MEMBER_SCRIPT: &str =
    "for n in net ipc uts pid mnt; do echo $n=$(readlink /proc/self/ns/$n); done; \
     echo hostname=$(hostname); echo self=$$; echo init=$(cat /proc/1/comm); \
     echo rmid=$(cat /proc/sys/kernel/shm_rmid_forced); \
     echo msgmax=$(cat /proc/sys/fs/mqueue/msg_max); echo mq=$(ls /dev/mqueue)";

/// A CRI pod in the guest: a member container joins the network, IPC, UTS and pid
/// namespaces of the sandbox container's init (same namespace inodes, the sandbox's
/// hostname and IPC sysctls and POSIX queues, the sandbox's process as its PID 1), keeps
/// its own mount namespace; a member without pod pid/uts sharing has its own. The spec may
/// list a pod type without a path or not at all.
#[test]
fn pod_member_joins_the_sandbox_namespaces() {
    let agent = Agent::start();
    let mut sb = spec(&["sleep", "1000"]);
    sb["hostname"] = json!("pod-host");
    sb["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "21"});
    let sb_pid = agent.run("sb", &sb);
    let queue =
        json!({"args": ["touch", "/dev/mqueue/podq"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    agent
        .client
        .exec_process("sb", "mq", queue.to_string().as_bytes())
        .expect("exec");
    let st = agent.client.wait_process("sb", "mq", WAIT).expect("wait");
    assert_eq!(
        st.exit_status, 0,
        "mq_open through /dev/mqueue in the sandbox"
    );

    // ipc listed without a path; network, uts, pid not listed; no hostname of its own.
    let mut member = spec(&["sh", "-c", MEMBER_SCRIPT]);
    member["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "ipc"}]);
    member.as_object_mut().expect("obj").remove("hostname");
    let all = pod("sb", &["network", "ipc", "uts", "pid"]);
    let (code, out, err) = run_member(&agent, "m1", &member, &all);
    assert_eq!(code, 0, "{err}");
    for n in ["net", "ipc", "uts", "pid"] {
        assert_eq!(field(&out, n), ns_link(sb_pid, n), "{n}: {out}");
    }
    assert_ne!(field(&out, "mnt"), ns_link(sb_pid, "mnt"), "{out}");
    assert_eq!(field(&out, "hostname"), "pod-host", "{out}");
    assert_ne!(field(&out, "self"), "1", "{out}");
    assert_eq!(field(&out, "init"), "sleep", "the sandbox is PID 1: {out}");
    assert_eq!(field(&out, "rmid"), "1", "{out}");
    assert_eq!(field(&out, "msgmax"), "21", "{out}");
    assert_eq!(field(&out, "mq"), "podq", "{out}");

    // Network and IPC only (CONTAINER pid sharing): its own pid and UTS namespaces.
    let mut own = spec(&["sh", "-c", MEMBER_SCRIPT]);
    own["hostname"] = json!("member");
    let some = pod("sb", &["network", "ipc"]);
    let (code, out, err) = run_member(&agent, "m2", &own, &some);
    assert_eq!(code, 0, "{err}");
    for n in ["net", "ipc"] {
        assert_eq!(field(&out, n), ns_link(sb_pid, n), "{n}: {out}");
    }
    for n in ["uts", "pid", "mnt"] {
        assert_ne!(field(&out, n), ns_link(sb_pid, n), "{n}: {out}");
    }
    assert_eq!(field(&out, "hostname"), "member", "{out}");
    assert_eq!(field(&out, "self"), "1", "{out}");
    assert_eq!(field(&out, "init"), "sh", "{out}");
    // The pod's hostname is untouched by a member with a UTS namespace of its own.
    let (_, out, _) = run_member(&agent, "m3", &member, &all);
    assert_eq!(field(&out, "hostname"), "pod-host", "{out}");
    agent.client.remove_container("sb").expect("remove sandbox");
}

/// Pod namespaces that cannot be joined give typed errors and leave nothing behind.
#[test]
fn pod_namespace_errors_are_typed() {
    let agent = Agent::start();
    let kind = |id: &str, p: &husk_protocol::agent::PodNamespaces| {
        agent.bundle(id);
        agent
            .client
            .create_container(id, spec(&["true"]).to_string().as_bytes(), Some(p))
            .expect_err("must fail")
    };
    let e = kind("a", &pod("nosuch", &["network"]));
    assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e:?}");
    assert!(format!("{e:?}").contains("nosuch"), "{e:?}");

    agent.run("sb", &spec(&["sleep", "1000"]));
    for bad in ["mount", "user", "bogus"] {
        let e = kind("b", &pod("sb", &["network", bad]));
        assert_eq!(e.kind(), Some(ErrorKind::InvalidArgument), "{bad}: {e:?}");
    }

    // Created but not started, then exited: not running.
    agent.bundle("idle");
    agent
        .client
        .create_container("idle", spec(&["true"]).to_string().as_bytes(), None)
        .expect("create");
    let e = kind("c", &pod("idle", &["ipc"]));
    assert_eq!(e.kind(), Some(ErrorKind::FailedPrecondition), "{e:?}");
    agent.client.start_container("idle").expect("start");
    agent.client.wait_process("idle", "", WAIT).expect("wait");
    let e = kind("d", &pod("idle", &["ipc"]));
    assert_eq!(e.kind(), Some(ErrorKind::FailedPrecondition), "{e:?}");
    for id in ["idle", "sb"] {
        agent.client.remove_container(id).expect("remove");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        wait_until(deadline, || common::children_of(agent.pid()).is_empty()),
        "processes left: {:?}",
        common::children_of(agent.pid())
    );
}

/// Mounts made by a test on this host, undone (lazily, innermost first) however it ends.
struct HostMounts(Vec<std::path::PathBuf>);

impl HostMounts {
    fn tmpfs(&mut self, at: &std::path::Path) {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(at).expect("mkdir");
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {at:?}: {e}"));
        self.0.push(at.to_path_buf());
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for at in self.0.iter().rev() {
            let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Reads a process's stdout until it holds `want`; returns all read.
fn read_until(agent: &Agent, id: &str, want: &str) -> String {
    let mut out = Vec::new();
    while !text(&out).contains(want) {
        match agent.client.read_stdout(id, "", 0).expect("read") {
            Some(chunk) => out.extend(chunk),
            None => panic!("EOF before {want:?}: {}", text(&out)),
        }
    }
    text(&out)
}

/// One bind mount with propagation `prop` (root propagation `root` as containerd sets it)
/// of a shared source on this host (the guest's mounts are shared): whether a tmpfs
/// mounted under the source after start shows inside, and whether one mounted inside shows
/// under the source.
fn propagation_case(prop: &str, root: Option<&str>) -> (bool, bool) {
    use nix::mount::{mount, MsFlags};
    let agent = Agent::start();
    let src = agent.dir.path().join("src");
    let mut mounts = HostMounts(Vec::new());
    mounts.tmpfs(&src);
    mount(
        None::<&str>,
        &src,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .expect("make the source shared");
    let script = "grep -E ' /data ' /proc/self/mountinfo; echo up; read x; test -e /data/sub/outer && echo in-seen || echo in-unseen; \
                  mkdir /data/inner && mount -t tmpfs none /data/inner && \
                  touch /data/inner/imark && echo mounted; read y";
    let mut s = spec(&["sh", "-c", script]);
    for set in ["bounding", "effective", "permitted"] {
        s["process"]["capabilities"][set] = json!(["CAP_SYS_ADMIN"]);
    }
    s["process"]["capabilities"]["ambient"] = json!([]);
    if let Some(r) = root {
        s["linux"]["rootfsPropagation"] = json!(r);
    }
    s["mounts"].as_array_mut().expect("mounts").push(json!({
        "destination": "/data", "type": "bind", "source": src, "options": ["rbind", prop]
    }));
    agent.run("prop", &s);
    read_until(&agent, "prop", "up");
    let sub = src.join("sub");
    mounts.tmpfs(&sub);
    std::fs::write(sub.join("outer"), "x").expect("marker");
    agent
        .client
        .write_stdin("prop", "", b"go\n")
        .expect("stdin");
    let out = read_until(&agent, "prop", "mounted");
    let inside = out.contains("in-seen");
    assert!(inside || out.contains("in-unseen"), "{out}");
    let inner = src.join("inner");
    let outside = inner.join("imark").exists();
    if outside {
        mounts.0.push(inner);
    }
    agent
        .client
        .write_stdin("prop", "", b"end\n")
        .expect("stdin");
    let st = agent.client.wait_process("prop", "", WAIT).expect("wait");
    assert_eq!(st.exit_status, 0);
    agent.client.remove_container("prop").expect("remove");
    (inside, outside)
}

/// `rprivate`: neither way.
#[test]
fn bind_propagation_rprivate() {
    assert_eq!(propagation_case("rprivate", None), (false, false));
}

/// `rslave` (containerd's HostToContainer): the host's mounts reach the container only.
#[test]
fn bind_propagation_rslave() {
    assert_eq!(propagation_case("rslave", Some("rslave")), (true, false));
    assert_eq!(propagation_case("rslave", None), (true, false));
}

/// `rshared` (containerd's Bidirectional, which sets the root `rshared`): both ways; this
/// used to fail the root switch.
#[test]
fn bind_propagation_rshared() {
    assert_eq!(propagation_case("rshared", Some("rshared")), (true, true));
}

#[test]
fn a_new_network_namespace_has_lo_up() {
    let agent = Agent::start();
    let (code, out, err) = agent.run_to_end(
        "lo",
        &spec(&["sh", "-c", "cat /sys/class/net/lo/flags; ls /sys/class/net"]),
    );
    assert_eq!(code, 0, "{}", text(&err));
    let out = text(&out);
    let flags = out.lines().next().unwrap_or_default();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"));
    assert_eq!(
        flags & libc::IFF_UP as u32,
        libc::IFF_UP as u32,
        "lo is down: {out}"
    );
    // A namespace of its own: the host's other interfaces are not there.
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["lo"], "{out}");
}
