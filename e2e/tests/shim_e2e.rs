//! End-to-end tests of `containerd-shim-husk-v2` with Debian's real containerd.
//!
//! A private containerd (own config, root and state under HUSK_WORK_DIR, the native
//! snapshotter because the test host has no overlay module) runs busybox containers from an
//! OCI image built here from /bin/busybox, with `ctr run --runtime io.containerd.husk.v2`.
//! Each container gets its own husk VM. Run with `cargo xtask e2e shim`; without
//! HUSK_KERNEL or without containerd/ctr in PATH the tests are skipped with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

const RUNTIME: &str = "io.containerd.husk.v2";
const IMAGE: &str = "docker.io/library/busybox:husk";
const NAMESPACE: &str = "husk-e2e";
const STATE_DIR: &str = "/run/husk";
static SERIAL: Mutex<()> = Mutex::new(());

struct Env {
    bin_dir: PathBuf,
    work: PathBuf,
    config: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

struct Daemon {
    env: Env,
    sock: PathBuf,
    _child: Child,
}

/// Longest a single `ctr` command may take (nested VMs are slow).
const CTR_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `cmd` (stdin as configured), killing it after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum '{}'", path.display()))
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// Writes `bytes` as a blob of the OCI layout in `dir`; returns (digest, size).
fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, bytes).expect("blob");
    let digest = sha256(&tmp);
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&digest)).expect("rename");
    (format!("sha256:{digest}"), bytes.len())
}

/// An OCI image tarball with busybox and its applet links.
fn busybox_image(env: &Env) -> PathBuf {
    let dir = env.work.join("image");
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    for d in [rootfs.join("bin"), layout.join("blobs/sha256")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    let busybox = [env.bin_dir.join("busybox"), PathBuf::from("/bin/busybox")]
        .into_iter()
        .find(|p| p.is_file())
        .expect("busybox");
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "uname", "sleep", "true", "false", "ls", "head", "wc", "ps", "cut",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("pw");
    let layer = dir.join("layer.tar");
    sh(&format!(
        "cd '{}' && tar -cf '{}' .",
        rootfs.display(),
        layer.display()
    ));
    let layer_bytes = std::fs::read(&layer).expect("layer");
    let (layer_digest, layer_size) = blob(&layout, &layer_bytes);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE,
                            "org.opencontainers.image.ref.name": "husk"}
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let tarball = dir.join("busybox-oci.tar");
    sh(&format!(
        "cd '{}' && tar -cf '{}' oci-layout index.json blobs",
        layout.display(),
        tarball.display()
    ));
    tarball
}

fn write_husk_config(env: &Env, kernel: &Path) {
    let text = format!(
        "kernel = \"{}\"\ninitrd = \"{}\"\nstate_dir = \"{STATE_DIR}\"\nvcpus = 1\n\
         memory_mib = 256\nboot_timeout_secs = 180\nlifecycle_timeout_secs = 180\n\
         log_level = \"debug\"\ndebug_console = true\n",
        kernel.display(),
        env.initrd.display()
    );
    std::fs::write(&env.config, text).expect("husk config");
}

fn start_daemon() -> Option<Daemon> {
    let kernel = PathBuf::from(std::env::var_os("HUSK_KERNEL")?);
    let initrd = PathBuf::from(std::env::var_os("HUSK_INITRD")?);
    let bin_dir = PathBuf::from(std::env::var_os("HUSK_BIN_DIR")?);
    let containerd = which("containerd")?;
    which("ctr")?;
    let base = std::env::var_os("HUSK_WORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = base.join("shim");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let env = Env {
        config: work.join("husk.toml"),
        bin_dir,
        work,
        kernel,
        initrd,
    };
    write_husk_config(&env, &env.kernel);
    let sock = env.work.join("containerd.sock");
    let cfg = env.work.join("containerd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.overlayfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"#,
            root = env.work.join("root").display(),
            state = env.work.join("state").display(),
            sock = sock.display()
        ),
    )
    .expect("containerd config");
    let path = format!(
        "{}:{}",
        env.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::File::create(env.work.join("containerd.log")).expect("log");
    let child = Command::new(containerd)
        .arg("--config")
        .arg(&cfg)
        .env("PATH", path)
        .env("HUSK_CONFIG", &env.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = Daemon {
        env,
        sock,
        _child: child,
    };
    let image = busybox_image(&d.env);
    let out = d.ctr(&["images", "import", &image.display().to_string()]);
    assert!(out.status.success(), "import: {}", d.explain(&out));
    Some(d)
}

fn daemon() -> Option<(&'static Daemon, MutexGuard<'static, ()>)> {
    static D: OnceLock<Option<Daemon>> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    D.get_or_init(start_daemon).as_ref().map(|d| (d, guard))
}

macro_rules! need_daemon {
    () => {
        match daemon() {
            Some(d) => d,
            None => panic!("needs HUSK_KERNEL and containerd/ctr: run with `cargo xtask e2e shim`"),
        }
    };
}

impl Daemon {
    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", "native")
            .stdin(Stdio::null());
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = output_within(self.ctr_cmd(args), CTR_TIMEOUT);
        eprintln!(
            "[{:>6.1} s] ctr {} -> {:?}",
            started.elapsed().as_secs_f64(),
            args.join(" "),
            out.status.code()
        );
        if out.status.code().is_none() {
            eprintln!("ctr timed out:\n{}", self.explain(&out));
        }
        out
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", self.explain(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --rm` with husk.
    fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    fn explain(&self, out: &Output) -> String {
        let log = std::fs::read_to_string(self.env.work.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let consoles = sh(&format!(
            "for f in {STATE_DIR}/*/*/*.log; do [ -f \"$f\" ] && echo \"== $f\" && tail -c 1500 \"$f\"; done; \
             ps -o pid,args 2>/dev/null | grep -E 'husk|virtiofsd|shim|ctr' ; true"
        ));
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\ncontainerd log:\n{tail}\npod logs:\n{consoles}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until `ctr task ls` shows `id` in `status`.
    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ls = self.ctr_ok(&["task", "ls"]);
            if ls
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never {status}: {ls}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes whose name is one of husk's helpers.
fn helper_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if ["husk-vmm", "virtiofsd", "containerd-shim"]
            .iter()
            .any(|h| comm.starts_with(h))
        {
            found.push(format!("{} {comm}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Nothing of husk is left: no helper process, mount, socket or pod directory.
fn assert_nothing_left(d: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = helper_processes();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(STATE_DIR))
            .map(str::to_string)
            .collect();
        let dirs: Vec<String> = std::fs::read_dir(Path::new(STATE_DIR).join(NAMESPACE))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        let sockets: Vec<String> = std::fs::read_dir("/run/containerd/s")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        if procs.is_empty() && mounts.is_empty() && dirs.is_empty() && sockets.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: left behind: processes {procs:?} mounts {mounts:?} dirs {dirs:?} \
             sockets {sockets:?}\n{}",
            d.explain(&d.ctr(&["task", "ls"]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn shim_runs_containers_in_vms() {
    let (d, _g) = need_daemon!();

    // echo from a VM, timed against runc in the same test host.
    let t = Instant::now();
    let out = d.run("hello", &[], &["echo", "hello"]);
    let first = t.elapsed();
    assert!(out.status.success(), "echo: {}", d.explain(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_nothing_left(d, "after echo");

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
    let input = d.env.work.join("stdin.data");
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
    assert_nothing_left(d, "after runs");
}

#[test]
fn shim_task_commands() {
    let (d, _g) = need_daemon!();
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
    assert_nothing_left(d, "after kill");

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
    assert_nothing_left(d, "after a shim crash");
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
    let (d, _g) = need_daemon!();

    let out = d.run("badann", &["--annotation", "io.husk.vcpus=lots"], &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io.husk.vcpus"), "{}", d.explain(&out));
    let _ = d.ctr(&["container", "rm", "badann"]);
    assert_nothing_left(d, "after a bad annotation");

    let missing = d.env.work.join("no-such-rootfs");
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
    assert_nothing_left(d, "after a missing rootfs");

    write_husk_config(&d.env, Path::new("/nonexistent/vmlinux"));
    let out = d.run("nokernel", &[], &["true"]);
    write_husk_config(&d.env, &d.env.kernel);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vmlinux"), "{}", d.explain(&out));
    let _ = d.ctr(&["container", "rm", "nokernel"]);
    assert_nothing_left(d, "after a missing kernel");
}
