//! Test harness: a host-mode agent on a unix socket and busybox bundles in its share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use husk_protocol::{AgentApi, AgentClient, Timeouts};
use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running host-mode agent and its scratch space.
pub struct Agent {
    pub client: AgentClient,
    pub dir: tempfile::TempDir,
    pub share: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    child: Child,
}

/// The cgroup v2 mount of this host, if any (pure v2, or the hybrid "unified" tree).
pub fn cgroup2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

impl Agent {
    /// Starts a host-mode agent. These tests make namespaces, mounts and cgroups: they need
    /// root, and fail without it.
    pub fn start() -> Agent {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the native agent tests need root (namespaces, mounts, cgroups); euid is {euid}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).expect("share");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup_root =
            cgroup2_mount().map(|m| m.join(format!("husk-test-{}-{n}", std::process::id())));
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk-agent"));
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--share")
            .arg(&share)
            .arg("--cgroup-root")
            .arg(cgroup_root.as_deref().unwrap_or(Path::new("none")))
            .stdout(Stdio::null());
        let child = cmd.spawn().expect("spawn husk-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket file appears at bind(), a moment before listen(): retry
        // a refused connection until the deadline.
        let client = loop {
            match AgentClient::connect_unix(&socket, Timeouts::default()) {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "agent did not start listening: {e:?}"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        client.handshake().expect("handshake");
        Agent {
            client,
            dir,
            share,
            cgroup_root,
            child,
        }
    }

    /// Creates `<share>/<id>/rootfs` with busybox and returns the bundle directory.
    pub fn bundle(&self, id: &str) -> PathBuf {
        make_rootfs(&self.share.join(id))
    }

    /// Creates and starts a container; returns its init pid.
    pub fn run(&self, id: &str, spec: &Value) -> u32 {
        self.bundle(id);
        let pid = self
            .client
            .create_container(id, spec.to_string().as_bytes(), None)
            .expect("create");
        self.client.start_container(id).expect("start");
        pid
    }

    /// Runs a container to its end: (exit status, stdout, stderr).
    pub fn run_to_end(&self, id: &str, spec: &Value) -> (i32, Vec<u8>, Vec<u8>) {
        self.run(id, spec);
        let (out, err) = self.drain(id, "");
        let st = self
            .client
            .wait_process(id, "", Some(Duration::from_secs(30)))
            .expect("wait");
        self.client.remove_container(id).expect("remove");
        (st.exit_status, out, err)
    }

    /// Reads stdout and stderr of a process to EOF (in parallel).
    pub fn drain(&self, id: &str, exec_id: &str) -> (Vec<u8>, Vec<u8>) {
        std::thread::scope(|s| {
            let out = s.spawn(|| read_all(&self.client, id, exec_id, false));
            let err = read_all(&self.client, id, exec_id, true);
            (out.join().expect("stdout reader"), err)
        })
    }
}

impl Agent {
    /// The agent's cgroup root; fails the test when this host has no cgroup v2.
    pub fn cgroup(&self) -> &Path {
        self.cgroup_root.as_deref().unwrap_or_else(|| {
            panic!(
                "this test needs cgroup v2: no cgroup.controllers in /sys/fs/cgroup or \
                 /sys/fs/cgroup/unified"
            )
        })
    }

    /// Pid of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Pids whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) {
            found.push(pid);
        }
    }
    found
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = &self.cgroup_root {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

pub fn read_all(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let chunk = if stderr {
            client.read_stderr(id, exec_id, 0)
        } else {
            client.read_stdout(id, exec_id, 0)
        };
        match chunk.expect("read stream") {
            Some(data) => all.extend_from_slice(&data),
            None => return all,
        }
    }
}

/// A bundle directory with a busybox rootfs (applets as symlinks).
pub fn make_rootfs(bundle: &Path) -> PathBuf {
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "data"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "cat", "echo", "id", "sleep", "pwd", "hostname", "touch", "mkdir", "stty", "grep",
        "head", "ls", "test", "true", "false", "wc", "top", "ps", "ipcs", "ipcrm", "mount",
        "umount", "readlink", "stat", "sysctl",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    std::fs::write(rootfs.join("marker"), "from the rootfs\n").expect("marker");
    bundle.to_path_buf()
}

/// An OCI spec like `runc spec` makes, running `args` with a relative root "rootfs".
pub fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "husky",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// Processes on this host whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Runs the bundle with Debian's runc: (exit status, stdout, stderr). Fails the test when
/// runc is not installed.
pub fn runc_run(bundle: &Path, id: &str, spec: &Value) -> (i32, Vec<u8>, Vec<u8>) {
    let runc = Path::new("/usr/sbin/runc");
    assert!(
        runc.is_file(),
        "this test compares with runc: {} is missing (apt-get install runc)",
        runc.display()
    );
    std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
    let state = bundle.join("runc-state");
    let out = Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .expect("runc run");
    let _ = Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", id])
        .output();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// Debian's runc, driven step by step (create, start, kill) like containerd drives it.
pub struct Runc {
    state: PathBuf,
    bundle: PathBuf,
    id: String,
}

impl Runc {
    /// `runc create` of `spec` in `bundle` (stdio to /dev/null). Fails the test when runc is
    /// not installed or refuses.
    pub fn create(bundle: &Path, id: &str, spec: &Value) -> Runc {
        let r = Runc {
            state: bundle.join("runc-state"),
            bundle: bundle.to_path_buf(),
            id: id.to_string(),
        };
        std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
        // The container inherits runc create's stdio: a pipe would stay open while it runs.
        let log = bundle.join("runc-create.log");
        let status = Command::new(Self::runc())
            .arg("--root")
            .arg(&r.state)
            .args(["create", "--bundle"])
            .arg(&r.bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("runc log"))
            .status()
            .expect("runc create");
        assert!(
            status.success(),
            "runc create: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        r
    }

    fn runc() -> &'static Path {
        let runc = Path::new("/usr/sbin/runc");
        assert!(
            runc.is_file(),
            "this test compares with runc: {} is missing (apt-get install runc)",
            runc.display()
        );
        runc
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(Self::runc())
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("runc")
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "runc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `runc start`.
    pub fn start(&self) {
        self.ok(&["start", &self.id]);
    }

    /// `runc kill <sig>` to the init process.
    pub fn kill(&self, sig: &str) {
        self.ok(&["kill", &self.id, sig]);
    }

    fn state(&self) -> Value {
        let out = self.cmd(&["state", &self.id]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The status `runc state` reports ("created", "running", "stopped").
    pub fn status(&self) -> String {
        self.state()["status"].as_str().unwrap_or("").to_string()
    }

    /// Pid of the container's init process.
    pub fn pid(&self) -> u32 {
        let v = self.state();
        v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("runc state has no pid: {v}"))
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self.cmd(&["delete", "-f", &self.id]);
    }
}
