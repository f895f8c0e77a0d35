//! End-to-end fault injection (design §9): every part of a pod may die, and containerd
//! must see the task stop with a status, `ctr task delete` and `ctr container rm` must
//! work, and nothing of the pod may be left (processes, mounts, sockets, files, cgroups).
//! Real containerd, shim, husk-vmm, virtiofsd and guest kernel, in the test host; run with
//! `cargo xtask e2e faults`.

use husk_lock::MutexExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_e2e::containerd::{Containerd, Options, BUSYBOX_IMAGE, HUSK_RUNTIME};
use husk_e2e::pods::{pod_dir, processes_of};
use husk_e2e::{wait_until, Artifacts};
use husk_vmm_api::{ApiClient, Request};

/// The exit status the shim gives every task of a pod whose VM or helper died.
const LOST: i64 = 255;

/// How long the shim may take to notice a fault: a dead process at once, a silent guest
/// after its health checks missed (2 × (5 s + 5 s) by default); generous for the nested
/// test host.
const NOTICED_WITHIN: Duration = Duration::from_secs(90);

fn daemon() -> (&'static Containerd, MutexGuard<'static, ()>) {
    husk_e2e::containerd::shared("faults")
}

fn artifacts_work(name: &str) -> std::path::PathBuf {
    Artifacts::from_env().work_dir.join(name)
}

/// A container whose init exits 0 on SIGTERM, so only a fault can end it otherwise.
const SLEEPER: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

/// The status `ctr task ls` shows for `id`, `None` once containerd has no such task.
fn task_status(d: &Containerd, id: &str) -> Option<String> {
    d.ctr_ok(&["task", "ls"]).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(id)).then(|| f.nth(1).unwrap_or_default().to_string())
    })
}

/// containerd's task events (`ctr events`), collected from before a fault on.
struct Events {
    child: std::process::Child,
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Events {
    fn start(d: &Containerd) -> Self {
        use std::io::BufRead;
        let mut cmd = d.ctr_cmd(&["events"]);
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("ctr events");
        let out = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.locked().push(line);
            }
        });
        let events = Events { child, lines };
        // `ctr events` shows only what happens after it subscribed: label the image (an
        // `/images/update` event) until the stream shows it, so no fault comes earlier.
        let subscribed = wait_until(Instant::now() + Duration::from_secs(60), || {
            d.ctr_ok(&["images", "label", BUSYBOX_IMAGE, "husk.e2e/events=1"]);
            let seen = events
                .lines
                .locked()
                .iter()
                .any(|l| l.contains("/images/update"));
            seen
        });
        assert!(
            subscribed,
            "ctr events never showed an /images/update event"
        );
        events
    }

    /// The exit status of `id`'s init in its `/tasks/exit` event (containerd omits a 0).
    fn exit_status(&self, id: &str) -> Option<i64> {
        let want = format!("\"container_id\":\"{id}\"");
        let mut status = None;
        let seen = wait_until(Instant::now() + Duration::from_secs(30), || {
            status = self.lines.locked().iter().find_map(|l| {
                let json = l.split_once("/tasks/exit ")?.1;
                if !json.contains(&want) {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                (v["id"] == v["container_id"]).then(|| v["exit_status"].as_i64().unwrap_or(0))
            });
            status.is_some()
        });
        assert!(
            seen,
            "no /tasks/exit event for {id}: {:?}",
            self.lines.locked()
        );
        status
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until containerd sees `id` stopped (or gone, after a shim crash), then deletes
/// the task and the container and checks nothing is left; returns the exit status of the
/// task's `/tasks/exit` event.
fn expect_stopped_and_clean(d: &Containerd, events: &Events, id: &str, fault: &str) -> Option<i64> {
    let t = Instant::now();
    let mut status = None;
    let stopped = wait_until(Instant::now() + NOTICED_WITHIN, || {
        status = task_status(d, id);
        status.as_deref() != Some("RUNNING")
    });
    assert!(
        stopped,
        "{fault}: the task still RUNNING after {NOTICED_WITHIN:?}\n{}",
        d.diagnostics()
    );
    eprintln!(
        "FIGURE {fault}: task {} after {:.1} s",
        status.as_deref().unwrap_or("gone"),
        t.elapsed().as_secs_f64()
    );
    let code = events.exit_status(id);
    if status.is_some() {
        let out = d.ctr(&["task", "delete", id]);
        assert!(
            out.status.success(),
            "{fault}: task delete: {}",
            d.explain(&out)
        );
    }
    let out = d.ctr(&["container", "rm", id]);
    assert!(
        out.status.success(),
        "{fault}: container rm: {}",
        d.explain(&out)
    );
    d.assert_nothing_left(&format!("after {fault}"));
    let cgroup = Path::new("/sys/fs/cgroup").join(&d.opts.namespace).join(id);
    assert!(!cgroup.exists(), "{fault}: {} left", cgroup.display());
    code
}

/// The one pid of `binary` serving the pod of `id`.
fn helper(d: &Containerd, id: &str, binary: &str) -> u32 {
    let pids = processes_of(binary, &pod_dir(d, id));
    assert!(!pids.is_empty(), "no {binary} for {id}");
    pids[0]
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid read from /proc.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// kill -9 of the pod's husk-vmm: the task exits with 255.
#[test]
fn faults_husk_vmm_killed() {
    let (d, _g) = daemon();
    let id = "vmmkill";
    d.run_detached(id, SLEEPER);
    let events = Events::start(d);
    kill9(helper(d, id, "husk-vmm"));
    assert_eq!(
        expect_stopped_and_clean(d, &events, id, "husk-vmm killed"),
        Some(LOST)
    );
}

/// kill -9 of the pod's virtiofsd: the task exits with 255 (its processes would otherwise
/// block on file requests nobody answers).
#[test]
fn faults_virtiofsd_killed() {
    let (d, _g) = daemon();
    let id = "fskill";
    d.run_detached(id, SLEEPER);
    let events = Events::start(d);
    kill9(helper(d, id, "virtiofsd"));
    assert_eq!(
        expect_stopped_and_clean(d, &events, id, "virtiofsd killed"),
        Some(LOST)
    );
}

/// kill -9 of the shim: containerd runs `shim delete`, which finds the pod's VMM and
/// virtiofsd by pid, start time and argv and cleans up the pod.
#[test]
fn faults_shim_killed() {
    let (d, _g) = daemon();
    let id = "shimkill";
    d.run_detached(id, SLEEPER);
    let shim = processes_of("containerd-shim-husk-v2", Path::new(id));
    let shim = shim
        .into_iter()
        .find(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            cmdline
                .split(|b| *b == 0)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        })
        .expect("the shim serving the task");
    let events = Events::start(d);
    kill9(shim);
    expect_stopped_and_clean(d, &events, id, "shim killed");
}

/// The VM paused behind containerd's back (husk-vmm's control API): the agent stops
/// answering its health call, and the shim tears the pod down.
#[test]
fn faults_vm_paused_behind_containerds_back() {
    let (d, _g) = daemon();
    let id = "paused";
    d.run_detached(id, SLEEPER);
    let api = pod_dir(d, id).join("api.sock");
    let mut client = ApiClient::connect(&api, Duration::from_secs(10)).expect("control API");
    let events = Events::start(d);
    client.call(Request::Pause).expect("pause");
    assert_eq!(
        expect_stopped_and_clean(d, &events, id, "VM paused"),
        Some(LOST),
        "a paused guest is a lost one"
    );
}

/// The guest kernel panics (a privileged container writes `c` to /proc/sysrq-trigger).
#[test]
fn faults_guest_kernel_panic() {
    let (d, _g) = daemon();
    let id = "panic";
    d.run_detached_with(id, &["--privileged"], SLEEPER);
    let events = Events::start(d);
    // The exec dies with the guest: its own result says nothing.
    let _ = d.exec(id, "crash", &["sh", "-c", "echo c > /proc/sysrq-trigger"]);
    assert_eq!(
        expect_stopped_and_clean(d, &events, id, "guest panic"),
        Some(LOST)
    );
}

/// kill -9 of husk-vmm while the container is being created: `ctr run` fails and nothing
/// is left.
///
/// Known gap (issue 14 stays open): the pod's files, mounts and helpers are gone, but the
/// shim process and its socket stayed for more than 20 s after the failed create.
#[test]
#[ignore = "husk: the shim outlives a create whose VMM was killed (its files are cleaned)"]
fn faults_husk_vmm_killed_during_create() {
    let (d, _g) = daemon();
    let id = "vmmkillcreate";
    let pod = pod_dir(d, id);
    let events = Events::start(d);
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            let mut args = vec!["run", "-d", "--runtime", HUSK_RUNTIME, BUSYBOX_IMAGE, id];
            args.extend_from_slice(SLEEPER);
            d.ctr(&args)
        });
        let mut pids = Vec::new();
        let seen = wait_until(Instant::now() + Duration::from_secs(120), || {
            pids = processes_of("husk-vmm", &pod);
            !pids.is_empty()
        });
        assert!(seen, "husk-vmm never started for {id}");
        kill9(pids[0]);
        let out = run.join().expect("ctr run thread");
        // `ctr run -d` may have returned before the kill (the task then stops with 255);
        // if not, it fails. Either way nothing may be left once it is removed.
        if out.status.success() {
            expect_stopped_and_clean(d, &events, id, "husk-vmm killed during create");
        } else {
            let _ = d.ctr(&["container", "rm", id]);
            d.assert_nothing_left("after husk-vmm killed during create");
        }
    });
}

/// containerd restarted while a husk task runs: afterwards the task is still RUNNING and
/// exec, kill and delete work (the shim kept serving on its socket).
#[test]
fn faults_containerd_restarted() {
    let _g = husk_e2e::containerd::SERIAL.locked();
    let mut d = Containerd::start(
        Artifacts::from_env(),
        Options::new(artifacts_work("faults-restart")),
    );
    let id = "survivor";
    d.run_detached(id, SLEEPER);
    d.restart();
    assert_eq!(task_status(&d, id).as_deref(), Some("RUNNING"));
    let (out, err, code) = d.exec(id, "after", &["echo", "still here"]);
    assert_eq!((out.as_str(), code), ("still here\n", Some(0)), "{err}");
    d.ctr_ok(&["task", "kill", id]);
    d.wait_status(id, "STOPPED");
    let out = d.ctr(&["task", "delete", id]);
    assert!(out.status.success(), "task delete: {}", d.explain(&out));
    d.ctr_ok(&["container", "rm", id]);
    d.assert_nothing_left("after a containerd restart");
}
