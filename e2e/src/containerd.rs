//! A private containerd configured for husk, for end-to-end tests, the demo
//! and the benchmarks: its own config, root, state and socket under a work
//! directory, Debian's `containerd` and `ctr`, the native snapshotter (the
//! test host has no overlay module) and a local busybox image.

use husk_lock::MutexExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::cmd::{output_within, sh, which};
use crate::leftovers::Leftovers;
use crate::oci_image::{self, ImageSpec};
use crate::{wait_until, Artifacts};

/// husk's runtime type.
pub const HUSK_RUNTIME: &str = "io.containerd.husk.v2";
/// runc's runtime type, the anchor of comparisons.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The busybox image every harness imports.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:husk";
/// Where the shim keeps its pods (the `state_dir` of the husk config).
pub const HUSK_STATE_DIR: &str = "/run/husk";
/// Longest a single `ctr` command may take (nested VMs are slow).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(240);

/// How to set up the private containerd.
#[derive(Debug, Clone)]
pub struct Options {
    /// Work directory (wiped first).
    pub work: PathBuf,
    /// `ctr` namespace.
    pub namespace: String,
    /// Guest vCPUs per pod (husk config).
    pub vcpus: u32,
    /// Guest memory per pod in MiB (husk config).
    pub memory_mib: u32,
    /// husk's `log_level` and `debug_console`: verbose when true.
    pub debug: bool,
    /// Extra TOML appended to containerd's config (e.g. a CRI plugin section);
    /// the CRI plugin stays disabled when this does not mention it.
    pub extra_config: String,
}

impl Options {
    /// Defaults for tests: namespace `husk-e2e`, 1 vCPU, 256 MiB, verbose.
    pub fn new(work: PathBuf) -> Self {
        Self {
            work,
            namespace: "husk-e2e".into(),
            vcpus: 1,
            memory_mib: 256,
            debug: true,
            extra_config: String::new(),
        }
    }
}

/// Runs the tests of one test binary one after another (they share one containerd and
/// look at the whole host for leftovers).
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The test binary's private containerd, started by the first test that asks (work
/// directory `<HUSK_WORK_DIR>/<name>`, default [`Options`]), and the [`SERIAL`] guard.
pub fn shared(name: &str) -> (&'static Containerd, MutexGuard<'static, ()>) {
    static D: OnceLock<Containerd> = OnceLock::new();
    let guard = SERIAL.locked();
    let d = D.get_or_init(|| {
        let artifacts = Artifacts::from_env();
        let work = artifacts.work_dir.join(name);
        Containerd::start(artifacts, Options::new(work))
    });
    (d, guard)
}

/// A running private containerd; killed when dropped.
#[derive(Debug)]
pub struct Containerd {
    /// The options it was started with.
    pub opts: Options,
    /// The artifacts under test.
    pub artifacts: Artifacts,
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The husk config file (`HUSK_CONFIG` of the shims).
    pub husk_config: PathBuf,
    child: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the containerd daemon with config `cfg`, logging (appending) to `work`'s
/// containerd.log; the shims it starts find husk's binaries in `path` and read
/// `husk_config`.
fn spawn_daemon(
    containerd: &Path,
    cfg: &Path,
    path: &str,
    husk_config: &Path,
    work: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("containerd.log"))
        .expect("log");
    Command::new(containerd)
        .arg("--config")
        .arg(cfg)
        .env("PATH", path)
        .env("HUSK_CONFIG", husk_config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

fn containerd_toml(opts: &Options, socket: &Path) -> String {
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.overlayfs",
    ];
    if !opts.extra_config.contains("io.containerd.grpc.v1.cri") {
        disabled.push("io.containerd.grpc.v1.cri");
    }
    let disabled: Vec<String> = disabled.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [{disabled}]\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [debug]\n  level = \"{level}\"\n{extra}\n",
        root = opts.work.join("root").display(),
        state = opts.work.join("state").display(),
        disabled = disabled.join(", "),
        sock = socket.display(),
        level = if opts.debug { "debug" } else { "info" },
        extra = opts.extra_config,
    )
}

impl Containerd {
    /// Starts containerd with husk configured and imports the busybox image.
    /// Panics with the reason when something is missing.
    pub fn start(artifacts: Artifacts, opts: Options) -> Self {
        let containerd = which("containerd").expect("containerd is not in PATH");
        which("ctr").expect("ctr is not in PATH");
        let _ = std::fs::remove_dir_all(&opts.work);
        std::fs::create_dir_all(&opts.work).expect("work dir");
        let socket = opts.work.join("containerd.sock");
        let cfg = opts.work.join("containerd.toml");
        std::fs::write(&cfg, containerd_toml(&opts, &socket)).expect("containerd config");
        let husk_config = opts.work.join("husk.toml");
        let path = format!(
            "{}:{}",
            artifacts.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = spawn_daemon(&containerd, &cfg, &path, &husk_config, &opts.work);
        let d = Self {
            opts,
            artifacts,
            socket,
            husk_config,
            child,
        };
        d.write_husk_config(&d.artifacts.kernel.clone());
        d.wait_for_socket();
        let rootfs = d.opts.work.join("busybox/rootfs");
        let busybox = [d.artifacts.bin("busybox"), PathBuf::from("/bin/busybox")]
            .into_iter()
            .find(|p| p.is_file())
            .expect("no busybox binary");
        oci_image::busybox_rootfs(&rootfs, &busybox);
        d.import(&ImageSpec {
            name: BUSYBOX_IMAGE.into(),
            rootfs,
            entrypoint: vec![],
            cmd: vec!["sh".into()],
        });
        d
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd (SIGTERM, as `systemctl restart` does) and starts it again with
    /// the same configuration; the shims it started keep running meanwhile.
    pub fn restart(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let containerd = which("containerd").expect("containerd is not in PATH");
        let path = format!(
            "{}:{}",
            self.artifacts.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        self.child = spawn_daemon(
            &containerd,
            &self.opts.work.join("containerd.toml"),
            &path,
            &self.husk_config,
            &self.opts.work,
        );
        self.wait_for_socket();
    }

    /// (Re)writes the husk config the shims read, with `kernel` as the guest kernel.
    pub fn write_husk_config(&self, kernel: &Path) {
        let text = format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nstate_dir = \"{HUSK_STATE_DIR}\"\nvcpus = {}\n\
             memory_mib = {}\nboot_timeout_secs = 180\nlifecycle_timeout_secs = 180\n\
             log_level = \"{}\"\ndebug_console = {}\n",
            kernel.display(),
            self.artifacts.initrd.display(),
            self.opts.vcpus,
            self.opts.memory_mib,
            if self.opts.debug { "debug" } else { "info" },
            self.opts.debug,
        );
        std::fs::write(&self.husk_config, text).expect("husk config");
    }

    /// Builds the image of `spec` and imports it into this containerd's namespace.
    pub fn import(&self, spec: &ImageSpec) {
        let dir = self
            .opts
            .work
            .join("images")
            .join(spec.name.replace(['/', ':'], "_"));
        std::fs::create_dir_all(&dir).expect("image dir");
        let tarball = oci_image::build(spec, &dir);
        self.ctr_ok(&["images", "import", &tarball.display().to_string()]);
    }

    /// A `ctr` command against this containerd, in its namespace, stdin closed.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.opts.namespace])
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", "native")
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr args` with [`CTR_TIMEOUT`], logging its time and exit code.
    pub fn ctr(&self, args: &[&str]) -> Output {
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

    /// [`Self::ctr`] that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", self.explain(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --rm --runtime <husk> <extra> busybox <id> <cmd>`.
    pub fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--runtime", HUSK_RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `ctr run -d --runtime <husk> busybox <id> <cmd>`, then waits until the task runs.
    pub fn run_detached(&self, id: &str, cmd: &[&str]) {
        self.run_detached_with(id, &[], cmd);
    }

    /// [`Self::run_detached`] with more `ctr run` options (`--mount ...`, `--privileged`).
    pub fn run_detached_with(&self, id: &str, extra: &[&str], cmd: &[&str]) {
        let mut args = vec!["run", "-d", "--runtime", HUSK_RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr_ok(&args);
        self.wait_status(id, "RUNNING");
    }

    /// `(stdout, stderr, exit code)` of `ctr task exec --exec-id <exec_id> <id> <cmd>`.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> (String, String, Option<i32>) {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        let out = self.ctr(&args);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code(),
        )
    }

    /// A failed command's output with the end of containerd's log, the pods'
    /// console logs and husk's processes: what one needs to see why.
    pub fn explain(&self, out: &Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        )
    }

    /// The end of containerd's log, the pods' console logs and husk's processes.
    pub fn diagnostics(&self) -> String {
        let log =
            std::fs::read_to_string(self.opts.work.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let consoles = sh(&format!(
            "for f in {HUSK_STATE_DIR}/*/*/*.log; do [ -f \"$f\" ] && echo \"== $f\" && tail -c 1500 \"$f\"; done; \
             ps -o pid,args 2>/dev/null | grep -E 'husk|virtiofsd|shim|ctr' ; true"
        ));
        format!("containerd log:\n{tail}\npod logs:\n{consoles}")
    }

    /// Waits until `ctr task ls` shows `id` with `status` (e.g. `RUNNING`).
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ls = String::new();
        let reached = wait_until(deadline, || {
            ls = self.ctr_ok(&["task", "ls"]);
            ls.lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
        });
        assert!(reached, "{id} never {status}: {ls}");
    }

    /// Waits (up to 20 s) until nothing of husk is left on the host: no helper
    /// process, mount, pod directory or shim socket; panics with what is left.
    pub fn assert_nothing_left(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut left = Leftovers::scan(HUSK_STATE_DIR, &self.opts.namespace);
        let clean = wait_until(deadline, || {
            left = Leftovers::scan(HUSK_STATE_DIR, &self.opts.namespace);
            left.is_empty()
        });
        assert!(
            clean,
            "{what}: left behind: {left:?}\n{}",
            self.explain(&self.ctr(&["task", "ls"]))
        );
    }
}
