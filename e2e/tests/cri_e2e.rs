//! End-to-end tests of husk under containerd's CRI plugin, as the kubelet drives it.
//!
//! A private containerd runs with the CRI plugin and two runtime handlers in
//! the same containerd: `husk` (`io.containerd.husk.v2`) and `runc`
//! (`io.containerd.runc.v2`), with a pause image built here (no registry is
//! reachable). Every pod gets its own network namespace from CNI: the conf
//! dir holds one network list, Debian's `loopback` plugin and then `static`,
//! which only reports an address (192.0.2.2, TEST-NET-1) for `eth0` and
//! touches no interface. containerd 1.6 refuses a pod whose CNI result has no
//! address on `eth0` ("failed to find network info for sandbox"), and a
//! loopback-only list gives none; so the pod's namespace holds `lo` (brought
//! up by the CRI plugin's own loopback network and by the list's) and nothing
//! else. The plugins are found in `/usr/lib/cni` (package
//! `containernetworking-plugins`; xtask packs them into the test host).
//!
//! `cri_pod_of_two_containers_shares_one_vm` runs a pod of two busybox
//! containers under husk, which must share one VM, execs into them, stops and
//! removes the pod, and checks that nothing is left. The other tests each
//! check one way in which "a pod behaves as it does under runc": the same
//! assertions run for both handlers, one pod after the other, each message
//! naming its handler, so that a difference shows as a failing pair. Run with
//! `cargo xtask e2e cri`.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_e2e::containerd::{Containerd, Options, BUSYBOX_IMAGE};
use husk_e2e::cri::api::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ImageSpec as CriImage,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use husk_e2e::cri::setup::{
    self, cri_config, ensure_node_files, import_pause_image, write_cni_config, PAUSE_IMAGE,
};
use husk_e2e::cri::{CriClient, CriError};
use husk_e2e::oci_image::{self, ImageSpec};
use husk_e2e::{wait_until, TestEnv};

/// The CRI runtime handler of husk.
const HANDLER: &str = "husk";
/// The handlers every comparison runs under: husk, and runc as the reference.
const HANDLERS: [&str; 2] = [HANDLER, "runc"];
/// A busybox image with Debian's iptables (legacy and nft) added.
const IPTABLES_IMAGE: &str = "docker.io/library/husk-iptables:husk";
/// Longest one CRI call may take (nested VMs under TCG are slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(240);
/// Time limit of an ExecSync inside the runtime.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for what it expects to see inside a container.
const SEEN_WITHIN: Duration = Duration::from_secs(120);
/// The pod's hostname, which CRI binds into the containers as /etc/hostname.
const POD_HOSTNAME: &str = "husk-pod";
/// Guest memory the pod asks for with `io.husk.memory_mib` (the husk default is 256).
const POD_MEMORY_MIB: u64 = 320;
/// Waits until the CRI plugin knows image `reference` (it learns imports by events).
fn wait_for_image(d: &Containerd, cri: &CriClient, reference: &str) {
    if let Err(e) = setup::wait_for_image(cri, reference, Duration::from_secs(60)) {
        panic!("{e}\n{}", why(d));
    }
}

/// containerd's warnings and errors and the pods' logs: why a step failed.
fn why(d: &Containerd) -> String {
    let log = std::fs::read_to_string(d.opts.work.join("containerd.log")).unwrap_or_default();
    let noted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn") || l.contains("husk"))
        .collect();
    format!(
        "containerd warnings, errors and husk lines:\n{}\n{}",
        noted[noted.len().saturating_sub(60)..].join("\n"),
        d.diagnostics()
    )
}

/// containerd's (and the shims') warning and error lines.
fn problems(d: &Containerd) -> Vec<String> {
    let log = std::fs::read_to_string(d.opts.work.join("containerd.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .map(str::to_string)
        .collect()
}

/// Pids of host processes whose command name is `comm`.
fn pids_of(comm: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `cmd` in container `id` with ExecSync; returns (exit code, stdout, stderr).
fn exec(d: &Containerd, cri: &CriClient, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = cri
        .exec_sync(id, cmd, EXEC_TIMEOUT)
        .unwrap_or_else(|e| panic!("exec {cmd:?} in {id}: {e}\n{}", why(d)));
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// ExecSync that must exit 0; returns its trimmed stdout.
fn exec_ok(d: &Containerd, cri: &CriClient, id: &str, cmd: &[&str]) -> String {
    let (code, out, err) = exec(d, cri, id, cmd);
    assert_eq!(
        code, 0,
        "exec {cmd:?} in {id}: stdout {out:?} stderr {err:?}"
    );
    out.trim().to_string()
}

fn millis(t: Instant) -> String {
    format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3)
}

/// A private containerd with the CRI plugin, both handlers, CNI and the
/// images, and a connected CRI client. When a test panics, its pods are
/// stopped and removed (best effort), so that the next test of the binary
/// starts from a clean host.
struct Cri {
    d: Containerd,
    cri: CriClient,
    work: PathBuf,
    env: TestEnv,
}

/// A pod run by [`Cri::run_pod`].
struct Pod {
    handler: &'static str,
    id: String,
    config: PodSandboxConfig,
}

impl Cri {
    /// Starts containerd for test `name` and waits until CRI has the images.
    fn start(name: &str) -> Self {
        let env = TestEnv::new(name);
        ensure_node_files();
        let work = env.work.clone();
        write_cni_config(&work);
        // containerd starts with its work directory emptied: the CNI config lives beside it.
        let mut opts = Options::new(work.join("containerd"));
        opts.namespace = "k8s.io".into();
        opts.extra_config = cri_config(&work);
        let d = Containerd::start(env.artifacts.clone(), opts);
        import_pause_image(&d);
        let cri = CriClient::connect(&d.socket, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
        let version = cri.version().unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
        assert_eq!(version.runtime_name, "containerd", "{version:?}");
        wait_for_image(&d, &cri, PAUSE_IMAGE);
        wait_for_image(&d, &cri, BUSYBOX_IMAGE);
        Self { d, cri, work, env }
    }

    fn why(&self) -> String {
        why(&self.d)
    }

    /// Builds and imports [`IPTABLES_IMAGE`] from this host's iptables.
    fn import_iptables_image(&self) {
        let rootfs = self.work.join("xtables/rootfs");
        oci_image::xtables_rootfs(&rootfs, &self.env.busybox());
        self.d.import(&ImageSpec {
            name: IPTABLES_IMAGE.into(),
            rootfs,
            entrypoint: vec![],
            cmd: vec!["sh".into()],
        });
        wait_for_image(&self.d, &self.cri, IPTABLES_IMAGE);
    }

    /// `RunPodSandbox` of `config` with `handler`, which must succeed.
    fn run_pod(&self, handler: &'static str, config: PodSandboxConfig) -> Pod {
        let id = self
            .cri
            .run_pod_sandbox(&config, handler)
            .unwrap_or_else(|e| panic!("[{handler}] RunPodSandbox: {e}\n{}", self.why()));
        Pod {
            handler,
            id,
            config,
        }
    }

    /// Creates and starts a container of `config` in `pod`; returns its id.
    fn start_container(&self, pod: &Pod, config: &ContainerConfig) -> String {
        let h = pod.handler;
        let name = config.metadata.as_ref().map_or("?", |m| m.name.as_str());
        let id = self
            .cri
            .create_container(&pod.id, config, &pod.config)
            .unwrap_or_else(|e| panic!("[{h}] create {name}: {e}\n{}", self.why()));
        self.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("[{h}] start {name}: {e}\n{}", self.why()));
        id
    }

    /// `ContainerStatus` of `id`, which must exist.
    fn status(&self, handler: &str, id: &str) -> ContainerStatus {
        self.cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("[{handler}] status of {id}: {e}\n{}", self.why()))
            .unwrap_or_else(|| panic!("[{handler}] no status of {id}"))
    }

    /// ExecSync of `cmd` in `id`; (exit code, stdout, stderr).
    fn exec(&self, handler: &str, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let r = self
            .cri
            .exec_sync(id, cmd, EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("[{handler}] exec {cmd:?}: {e}\n{}", self.why()));
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    /// ExecSync that must exit 0; its trimmed stdout.
    fn exec_ok(&self, handler: &str, id: &str, cmd: &[&str]) -> String {
        let (code, out, err) = self.exec(handler, id, cmd);
        assert_eq!(
            code, 0,
            "[{handler}] exec {cmd:?}: stdout {out:?} stderr {err:?}"
        );
        out.trim().to_string()
    }

    /// Runs `cmd` in `id` until its trimmed stdout is `want` (or [`SEEN_WITHIN`]
    /// passes); whether it was, and the last (code, stdout, stderr).
    fn exec_until(
        &self,
        handler: &str,
        id: &str,
        cmd: &[&str],
        want: &str,
    ) -> (bool, (i32, String, String)) {
        let mut last = (0, String::new(), String::new());
        let seen = wait_until(Instant::now() + SEEN_WITHIN, || {
            last = self.exec(handler, id, cmd);
            last.0 == 0 && last.1.trim() == want
        });
        (seen, last)
    }

    /// Stops and removes `pod`, then checks that CRI lists no pod and that
    /// nothing of it is left on the host.
    fn remove_pod(&self, pod: Pod) {
        let h = pod.handler;
        self.cri
            .stop_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| panic!("[{h}] StopPodSandbox: {e}\n{}", self.why()));
        self.cri
            .remove_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| panic!("[{h}] RemovePodSandbox: {e}\n{}", self.why()));
        self.assert_no_pod(h, "after removing its pod");
    }

    /// CRI lists no pod and no container, and nothing of a pod is left on the host.
    fn assert_no_pod(&self, handler: &str, when: &str) {
        let pods = self
            .cri
            .list_pod_sandboxes()
            .unwrap_or_else(|e| panic!("[{handler}] {e}\n{}", self.why()));
        assert!(pods.is_empty(), "[{handler}] {when}: pods left: {pods:?}");
        let containers = self
            .cri
            .list_containers("")
            .unwrap_or_else(|e| panic!("[{handler}] {e}\n{}", self.why()));
        assert!(
            containers.is_empty(),
            "[{handler}] {when}: containers left: {containers:?}"
        );
        self.d.assert_nothing_left(&format!("[{handler}] {when}"));
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for pod in self.cri.list_pod_sandboxes().unwrap_or_default() {
            let _ = self.cri.stop_pod_sandbox(&pod.id);
            let _ = self.cri.remove_pod_sandbox(&pod.id);
        }
    }
}

/// The kubelet's default namespaces: the pod's network and IPC, a PID
/// namespace per container.
fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod `name` (suffixed with the handler) with hostname [`POD_HOSTNAME`]
/// and namespaces `namespaces`.
fn pod(name: &str, handler: &str, namespaces: NamespaceOption) -> PodSandboxConfig {
    let name = format!("{name}-{handler}");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            uid: format!("uid-{name}"),
            name,
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: POD_HOSTNAME.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`pod`] that may run privileged containers.
fn privileged_pod(name: &str, handler: &str) -> PodSandboxConfig {
    let mut config = pod(name, handler, pod_namespaces());
    let linux = config.linux.as_mut().expect("pod() sets linux");
    linux
        .security_context
        .as_mut()
        .expect("pod() sets a security context")
        .privileged = true;
    config
}

/// A busybox container `name` running `command`.
fn container(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(CriImage {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A busybox container `name` that sleeps.
fn sleeper(name: &str) -> ContainerConfig {
    container(name, &["sleep", "100000"])
}

/// `config` run privileged.
fn privileged(mut config: ContainerConfig) -> ContainerConfig {
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The link `/proc/self/ns/<ns>` of the test host (the runtimes' host).
fn host_namespace(ns: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{ns}"))
        .unwrap_or_else(|e| panic!("host's /proc/self/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// mount(2) on the test host, which must succeed.
fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong) {
    let source = CString::new(source).expect("source");
    let fstype = CString::new(fstype).expect("fstype");
    let target_c = cstring(target);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount {source:?} on {} ({fstype:?}, flags {flags:#x}): {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

/// A directory made a shared mount of its own (`mount --bind d d; mount
/// --make-shared d`), as containerd requires of the source of a
/// bidirectional mount; detached with everything below it when dropped.
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("shared dir");
        mount(&dir.display().to_string(), &dir, "", libc::MS_BIND);
        let shared = Self(dir);
        mount("none", &shared.0, "", libc::MS_SHARED);
        shared
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let target = cstring(&self.0);
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Whether the test host's kernel has all of `modules` (loaded or built in with a
/// /sys/module entry); the test host loads them for runc's half of the tests (the
/// `husk-testhost` network modules), so a failure message says which are missing.
fn host_kernel_has(modules: &[&str]) -> Result<(), Vec<String>> {
    let missing: Vec<String> = modules
        .iter()
        .filter(|m| !Path::new("/sys/module").join(m).exists())
        .map(|m| m.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// The pod of `cri_pod_of_two_containers_shares_one_vm`: its own network
/// namespace (CNI), its own PID namespace per container, a kubelet-like
/// cgroup parent and log directory, and a husk VM size annotation (passed on
/// by the runtime's `pod_annotations`).
fn vm_pod_config(log_dir: &Path) -> PodSandboxConfig {
    let mut config = pod("husk-e2e", HANDLER, pod_namespaces());
    config.log_directory = log_dir.display().to_string();
    config.annotations =
        HashMap::from([("io.husk.memory_mib".to_string(), POD_MEMORY_MIB.to_string())]);
    config
        .linux
        .as_mut()
        .expect("pod() sets linux")
        .cgroup_parent = "/kubepods/besteffort/pod6f1d6a52".into();
    config
}

/// A busybox container `name` that says it started and sleeps, logging to `<name>.log`.
fn container_config(name: &str) -> ContainerConfig {
    let mut config = container(
        name,
        &[
            "sh",
            "-c",
            &format!("echo started {name}; exec sleep 100000"),
        ],
    );
    config.log_path = format!("{name}.log");
    config
}

#[test]
fn cri_pod_of_two_containers_shares_one_vm() {
    let started = Instant::now();
    let h = Cri::start("cri");
    let (d, cri, work) = (&h.d, &h.cri, h.work.clone());

    let log_dir = work.join("pod-logs");
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let pod = vm_pod_config(&log_dir);
    let t = Instant::now();
    let pod_id = cri
        .run_pod_sandbox(&pod, HANDLER)
        .unwrap_or_else(|e| panic!("{e}\n{}", why(d)));
    let t_pod = millis(t);

    let mut ids = Vec::new();
    let mut t_containers = Vec::new();
    for name in ["c1", "c2"] {
        let t = Instant::now();
        let id = cri
            .create_container(&pod_id, &container_config(name), &pod)
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", why(d)));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("start {name}: {e}\n{}", why(d)));
        t_containers.push(millis(t));
        ids.push(id);
    }
    for id in &ids {
        let status = cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("status of {id}: {e}\n{}", why(d)))
            .expect("container status");
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{status:?}\n{}",
            why(d)
        );
    }

    // One VM and one shim for the whole pod ("containerd-shim-husk-v2" is cut
    // to 15 bytes in comm).
    let vmms = pids_of("husk-vmm");
    assert_eq!(vmms.len(), 1, "husk-vmm processes: {vmms:?}\n{}", why(d));
    let shims = pids_of("containerd-shim");
    assert_eq!(shims.len(), 1, "shim processes: {shims:?}\n{}", why(d));

    // Both containers run under the same guest kernel boot, not the host's.
    let t = Instant::now();
    let boot1 = exec_ok(d, cri, &ids[0], &["cat", "/proc/sys/kernel/random/boot_id"]);
    let t_exec = millis(t);
    let boot2 = exec_ok(d, cri, &ids[1], &["cat", "/proc/sys/kernel/random/boot_id"]);
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("host boot id")
        .trim()
        .to_string();
    assert_eq!(boot1.len(), 36, "boot id {boot1:?}");
    assert_eq!(boot1, boot2, "the pod's containers are in different VMs");
    assert_ne!(boot1, host_boot, "the container runs on the host kernel");
    let guest_kernel = exec_ok(d, cri, &ids[1], &["uname", "-r"]);
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("host kernel release")
        .trim()
        .to_string();
    assert!(
        !guest_kernel.is_empty() && guest_kernel != host_kernel,
        "guest {guest_kernel:?} host {host_kernel:?}"
    );

    // The kubelet's stats: CPU time and memory of a container in the guest.
    let stats = cri
        .container_stats(&ids[0])
        .unwrap_or_else(|e| panic!("stats of c1: {e}\n{}", why(d)))
        .expect("c1 stats");
    let cpu_ns = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(cpu_ns > 0 && memory > 0, "c1 stats: {stats:?}");

    // The VM has the memory the pod annotation asked for, not the default.
    let meminfo = exec_ok(d, cri, &ids[0], &["head", "-n", "1", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("meminfo {meminfo:?}"));
    assert!(
        total_kib > 256 * 1024 && total_kib <= POD_MEMORY_MIB * 1024,
        "guest MemTotal {total_kib} kB for io.husk.memory_mib={POD_MEMORY_MIB}"
    );

    // ExecSync reports exit code, stdout and stderr apart.
    let (code, out, err) = exec(
        d,
        cri,
        &ids[0],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out\n", "err\n"),
        "{}",
        why(d)
    );

    // The pod's containers share its /dev/shm (IPC namespace mode POD).
    exec_ok(
        d,
        cri,
        &ids[0],
        &["sh", "-c", "echo pod-shm > /dev/shm/husk-e2e"],
    );
    assert_eq!(
        exec_ok(d, cri, &ids[1], &["cat", "/dev/shm/husk-e2e"]),
        "pod-shm"
    );

    // CRI's per-pod files reach the guest containers.
    assert_eq!(
        exec_ok(d, cri, &ids[1], &["cat", "/etc/hostname"]),
        POD_HOSTNAME
    );
    // The containers' output reaches CRI's log files.
    for name in ["c1", "c2"] {
        let log = std::fs::read_to_string(log_dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            log.contains(&format!("stdout F started {name}")),
            "log of {name}: {log:?}"
        );
    }

    // One container is stopped (`sleep`, PID 1 of its PID namespace, ignores
    // SIGTERM: SIGKILL after the grace period) and removed, as the kubelet does;
    // the pod's VM and its other container go on.
    let t = Instant::now();
    cri.stop_container(&ids[1], Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("stop c2: {e}\n{}", why(d)));
    let t_stop = millis(t);
    let status = cri
        .container_status(&ids[1])
        .unwrap_or_else(|e| panic!("status of c2: {e}\n{}", why(d)))
        .expect("c2 status");
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!(status.exit_code, 137, "c2 was killed: {status:?}");
    cri.remove_container(&ids[1])
        .unwrap_or_else(|e| panic!("remove c2: {e}\n{}", why(d)));
    assert_eq!(
        exec_ok(d, cri, &ids[0], &["cat", "/proc/sys/kernel/random/boot_id"]),
        boot1,
        "c1 lost its VM when c2 was removed"
    );
    assert_eq!(pids_of("husk-vmm").len(), 1, "{}", why(d));

    let t = Instant::now();
    cri.stop_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("stop pod: {e}\n{}", why(d)));
    let states: HashMap<String, i32> = cri
        .list_containers(&pod_id)
        .unwrap_or_else(|e| panic!("{e}\n{}", why(d)))
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect();
    assert_eq!(
        states,
        HashMap::from([(ids[0].clone(), ContainerState::ContainerExited as i32)]),
        "containers after stopping the pod"
    );
    cri.remove_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("remove pod: {e}\n{}", why(d)));
    let t_down = millis(t);

    let pods = cri
        .list_pod_sandboxes()
        .unwrap_or_else(|e| panic!("{e}\n{}", why(d)));
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let containers = cri
        .list_containers("")
        .unwrap_or_else(|e| panic!("{e}\n{}", why(d)));
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert_eq!(d.ctr_ok(&["containers", "ls", "-q"]).trim(), "");
    d.assert_nothing_left("after removing the pod");

    // Nothing failed on the way, even where CRI retries or ignores it.
    let problems = problems(d);
    eprintln!("containerd warnings and errors:\n{}", problems.join("\n"));
    let errors: Vec<&String> = problems
        .iter()
        .filter(|l| l.contains("level=error"))
        .collect();
    assert!(errors.is_empty(), "errors in containerd's log: {errors:#?}");
    eprintln!(
        "FIGURE CRI pod (husk): RunPodSandbox {t_pod}; create+start c1 {}, c2 {}; \
         first ExecSync {t_exec}; StopContainer (2 s grace) {t_stop}; \
         stop+remove pod {t_down}; whole test {}",
        t_containers[0],
        t_containers[1],
        millis(started)
    );
}

/// A container whose PID 1 handles SIGTERM stops when told to, whatever the
/// grace period: busybox `top` exits on SIGTERM, so `StopContainer` with a
/// 60 s timeout, sent as soon as `StartContainer` returned, must not wait for
/// the SIGKILL (a stop signal lost on the way, or sent before the process
/// runs, would show as a 60 s stop).
///
/// husk's StartContainer returns once the program has exec'd (no earlier than runc's
/// start), but the kernel drops a SIGTERM that reaches a namespace's init before the
/// program installed its handler; in a guest that window is longer than on the host, so
/// the agent holds such a signal until the handler is there (`init_signal`).
#[test]
fn cri_stop_container_returns_when_pid_1_exits_on_sigterm() {
    let h = Cri::start("cri-stop");
    for handler in HANDLERS {
        let pod = h.run_pod(handler, pod("stop", handler, pod_namespaces()));
        let id = h.start_container(&pod, &container("top", &["top"]));
        let t = Instant::now();
        h.cri
            .stop_container(&id, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("[{handler}] StopContainer: {e}\n{}", h.why()));
        let took = t.elapsed();
        let status = h.status(handler, &id);
        assert!(
            took < Duration::from_secs(10),
            "[{handler}] StopContainer (60 s timeout) of busybox top, which exits on SIGTERM, \
             took {took:?}: SIGTERM did not reach it ({status:?})"
        );
        assert_eq!(
            status.state,
            ContainerState::ContainerExited as i32,
            "[{handler}] top after StopContainer: {status:?}"
        );
        eprintln!(
            "FIGURE CRI StopContainer of top right after start ({handler}): {:.0} ms, exit {}",
            took.as_secs_f64() * 1e3,
            status.exit_code
        );
        h.remove_pod(pod);
    }
}

/// `PodSandboxConfig.hostname` is the hostname of the pod's containers.
#[test]
fn cri_pod_hostname_is_the_containers_hostname() {
    let h = Cri::start("cri-hostname");
    for handler in HANDLERS {
        let pod = h.run_pod(handler, pod("hostname", handler, pod_namespaces()));
        let id = h.start_container(&pod, &sleeper("c"));
        assert_eq!(
            h.exec_ok(handler, &id, &["hostname"]),
            POD_HOSTNAME,
            "[{handler}] `hostname` in a container of a pod with hostname {POD_HOSTNAME}"
        );
        h.remove_pod(pod);
    }
}

/// `LinuxPodSandboxConfig.sysctls` (two IPC-namespaced ones) are what the
/// pod's containers read in /proc/sys, and do not change the host's.
#[test]
fn cri_pod_sysctls_are_set_in_the_pods_containers() {
    let h = Cri::start("cri-sysctls");
    let sysctls = [
        (
            "kernel.shm_rmid_forced",
            "1",
            "/proc/sys/kernel/shm_rmid_forced",
        ),
        ("fs.mqueue.msg_max", "20", "/proc/sys/fs/mqueue/msg_max"),
    ];
    let host_before: Vec<String> = sysctls
        .iter()
        .map(|(_, _, path)| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    for handler in HANDLERS {
        let mut config = pod("sysctls", handler, pod_namespaces());
        config.linux.as_mut().expect("pod() sets linux").sysctls = sysctls
            .iter()
            .map(|(name, value, _)| (name.to_string(), value.to_string()))
            .collect();
        let pod = h.run_pod(handler, config);
        let id = h.start_container(&pod, &sleeper("c"));
        for (name, value, path) in sysctls {
            assert_eq!(
                h.exec_ok(handler, &id, &["cat", path]),
                value,
                "[{handler}] pod sysctl {name}={value}, read back from {path} in a container"
            );
        }
        for ((name, _, path), before) in sysctls.iter().zip(&host_before) {
            assert_eq!(
                &std::fs::read_to_string(path).unwrap_or_default(),
                before,
                "[{handler}] the pod's {name} changed the host's {path}"
            );
        }
        h.remove_pod(pod);
    }
}

/// With `NamespaceOption.pid = POD` a container sees the processes of the
/// pod's other containers; with `CONTAINER` it does not.
#[test]
fn cri_pid_namespace_is_shared_in_the_pod_only_when_asked() {
    let h = Cri::start("cri-pid");
    for handler in HANDLERS {
        for (mode, shared) in [
            (NamespaceMode::Pod, true),
            (NamespaceMode::Container, false),
        ] {
            let what = if shared { "POD" } else { "CONTAINER" };
            let namespaces = NamespaceOption {
                pid: mode as i32,
                ..pod_namespaces()
            };
            let pod = h.run_pod(handler, pod(&format!("pid-{what}"), handler, namespaces));
            let a = h.start_container(&pod, &container("a", &["sleep", "1234"]));
            let b = h.start_container(&pod, &sleeper("b"));
            // a runs `sleep 1234`: it shows in a's own ps.
            let (seen, last) = h.exec_until(
                handler,
                &a,
                &["sh", "-c", "ps | grep -c 'sleep 1234$'"],
                "1",
            );
            assert!(
                seen,
                "[{handler}] pid {what}: a's `sleep 1234` is not in its own ps: {last:?}"
            );
            let ps = h.exec_ok(handler, &b, &["ps"]);
            assert!(
                ps.contains("sleep 100000"),
                "[{handler}] pid {what}: b does not see its own process: {ps}"
            );
            assert_eq!(
                ps.contains("sleep 1234"),
                shared,
                "[{handler}] pid {what}: b {} a's `sleep 1234`; b's ps:\n{ps}",
                if shared { "does not see" } else { "sees" }
            );
            h.remove_pod(pod);
        }
    }
}

/// The pod's containers share one IPC namespace (`ipc = POD`): the same
/// /proc/self/ns/ipc and the same /dev/shm. (Debian's busybox has no
/// `ipcmk`, so no SysV segment is made.)
#[test]
fn cri_ipc_namespace_is_shared_in_the_pod() {
    let h = Cri::start("cri-ipc");
    for handler in HANDLERS {
        let pod = h.run_pod(handler, pod("ipc", handler, pod_namespaces()));
        let a = h.start_container(&pod, &sleeper("a"));
        let b = h.start_container(&pod, &sleeper("b"));
        let ns_a = h.exec_ok(handler, &a, &["readlink", "/proc/self/ns/ipc"]);
        let ns_b = h.exec_ok(handler, &b, &["readlink", "/proc/self/ns/ipc"]);
        assert!(
            ns_a.starts_with("ipc:["),
            "[{handler}] a's ipc namespace {ns_a:?}"
        );
        assert_eq!(
            ns_a, ns_b,
            "[{handler}] the pod's containers are in different IPC namespaces"
        );
        assert_ne!(
            ns_a,
            host_namespace("ipc"),
            "[{handler}] the pod is in the host's IPC namespace"
        );
        h.exec_ok(
            handler,
            &a,
            &["sh", "-c", "echo pod-ipc > /dev/shm/husk-ipc"],
        );
        assert_eq!(
            h.exec_ok(handler, &b, &["cat", "/dev/shm/husk-ipc"]),
            "pod-ipc",
            "[{handler}] b does not see a's /dev/shm file"
        );
        h.remove_pod(pod);
    }
}

/// Two containers of a pod talk over the pod's `lo`: a serves with busybox
/// `nc -l -p 8080`, b connects to 127.0.0.1:8080 and gets its bytes.
#[test]
fn cri_containers_of_a_pod_talk_over_localhost() {
    let h = Cri::start("cri-localhost");
    for handler in HANDLERS {
        let pod = h.run_pod(handler, pod("localhost", handler, pod_namespaces()));
        let server = container(
            "server",
            &[
                "sh",
                "-c",
                "while true; do echo husk-over-lo | nc -l -p 8080; done",
            ],
        );
        h.start_container(&pod, &server);
        let client = h.start_container(&pod, &sleeper("client"));
        // The client holds its side open for a second (`sleep 1 |`), so that the
        // server sends before it sees the client's EOF; tries until the server
        // listens.
        let (seen, last) = h.exec_until(
            handler,
            &client,
            &["sh", "-c", "sleep 1 | nc 127.0.0.1 8080"],
            "husk-over-lo",
        );
        assert!(
            seen,
            "[{handler}] no bytes from 127.0.0.1:8080 (nc -l in the pod's other container): {last:?}"
        );
        h.remove_pod(pod);
    }
}

/// Bind mounts keep their `MountPropagation`: a tmpfs mounted on the host
/// under the source after the containers started shows in the
/// HOST_TO_CONTAINER (rslave) and BIDIRECTIONAL (rshared) mounts and not in
/// the PRIVATE one; a tmpfs mounted in the (privileged) rshared container
/// shows in the pod's rslave container of the same source, and under runc on
/// the host too. husk shares host directories with virtio-fs, which cannot
/// carry a mount made in the guest back to the host: that part is runc's
/// only (husk's README documents the limit).
/// Which half of [`mount_propagation`] a test checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Propagation {
    HostToContainer,
    ContainerToPod,
}

fn mount_propagation(part: Propagation) {
    let h = Cri::start("cri-propagation");
    for handler in HANDLERS {
        let base = SharedDir::new(h.work.join(format!("prop-{handler}")));
        for dir in [
            "private/fromhost",
            "rslave/fromhost",
            "rshared/fromhost",
            "rshared/fromctr",
        ] {
            std::fs::create_dir_all(base.0.join(dir)).expect("propagation dirs");
        }
        let bind = |dir: &str, at: &str, propagation: MountPropagation| Mount {
            container_path: at.into(),
            host_path: base.0.join(dir).display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        };
        let pod = h.run_pod(handler, privileged_pod("propagation", handler));
        let mut private = sleeper("private");
        private.mounts = vec![bind(
            "private",
            "/mnt/prop",
            MountPropagation::PropagationPrivate,
        )];
        let mut rslave = sleeper("rslave");
        rslave.mounts = vec![
            bind(
                "rslave",
                "/mnt/prop",
                MountPropagation::PropagationHostToContainer,
            ),
            bind(
                "rshared",
                "/mnt/peer",
                MountPropagation::PropagationHostToContainer,
            ),
        ];
        let mut rshared = privileged(sleeper("rshared"));
        rshared.mounts = vec![bind(
            "rshared",
            "/mnt/prop",
            MountPropagation::PropagationBidirectional,
        )];
        let private = h.start_container(&pod, &private);
        let rslave = h.start_container(&pod, &rslave);
        let rshared = h.start_container(&pod, &rshared);

        if part == Propagation::HostToContainer {
            host_to_container(&h, handler, &base, [&private, &rslave, &rshared]);
        } else {
            container_to_pod(&h, handler, &base, &rshared, &rslave);
        }
        h.remove_pod(pod);
        drop(base);
    }
}

fn host_to_container(h: &Cri, handler: &str, base: &SharedDir, ids: [&str; 3]) {
    let [private, rslave, rshared] = ids;
    {
        for dir in ["private", "rslave", "rshared"] {
            let at = base.0.join(dir).join("fromhost");
            mount("tmpfs", &at, "tmpfs", 0);
            std::fs::write(at.join("marker"), format!("from-host-{dir}")).expect("marker");
        }
        for (id, dir) in [(&rslave, "rslave"), (&rshared, "rshared")] {
            let want = format!("from-host-{dir}");
            let (seen, last) =
                h.exec_until(handler, id, &["cat", "/mnt/prop/fromhost/marker"], &want);
            assert!(
                seen,
                "[{handler}] a tmpfs mounted on the host under the source of the {dir} mount \
                 never showed in the container: {last:?}"
            );
        }
        // It reached the rslave and rshared mounts above; the private one must not have it.
        assert_eq!(
            h.exec_ok(handler, private, &["ls", "-A", "/mnt/prop/fromhost"]),
            "",
            "[{handler}] a tmpfs mounted on the host after start showed in a \
             PROPAGATION_PRIVATE mount"
        );
    }
}

fn container_to_pod(h: &Cri, handler: &str, base: &SharedDir, rshared: &str, rslave: &str) {
    {
        h.exec_ok(
            handler,
            rshared,
            &[
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /mnt/prop/fromctr && echo from-ctr > /mnt/prop/fromctr/marker",
            ],
        );
        let (seen, last) = h.exec_until(
            handler,
            rslave,
            &["cat", "/mnt/peer/fromctr/marker"],
            "from-ctr",
        );
        assert!(
            seen,
            "[{handler}] a tmpfs mounted in the rshared container never showed in the pod's \
             rslave container of the same source: {last:?}"
        );
        if handler == "runc" {
            let marker = base.0.join("rshared/fromctr/marker");
            let mut last = String::new();
            let seen = wait_until(Instant::now() + SEEN_WITHIN, || {
                last = std::fs::read_to_string(&marker).unwrap_or_default();
                last.trim() == "from-ctr"
            });
            assert!(
                seen,
                "[{handler}] a tmpfs mounted in the rshared container never showed on the host \
                 at {}: {last:?}",
                marker.display()
            );
        }
        // husk: not asserted on the host (virtio-fs does not carry guest mounts back).
    }
}

#[test]
fn cri_mount_propagation_host_to_container() {
    mount_propagation(Propagation::HostToContainer);
}

/// A mount made through one container's `rshared` bind reaches the pod's other container
/// binding the same host directory (husk: one guest path per volume and pod).
#[test]
fn cri_mount_propagation_container_to_pod() {
    mount_propagation(Propagation::ContainerToPod);
}

/// A VM cannot share the host's network, PID or IPC namespace: husk refuses
/// such a pod with an error that says so and leaves nothing behind; runc runs
/// it, its container in the host's namespace.
#[test]
fn cri_host_namespaces_are_refused_by_husk_only() {
    let h = Cri::start("cri-host-ns");
    let cases = [
        (
            "network",
            "net",
            NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..pod_namespaces()
            },
        ),
        (
            "pid",
            "pid",
            NamespaceOption {
                pid: NamespaceMode::Node as i32,
                ..pod_namespaces()
            },
        ),
        (
            "ipc",
            "ipc",
            NamespaceOption {
                ipc: NamespaceMode::Node as i32,
                ..pod_namespaces()
            },
        ),
    ];
    for handler in HANDLERS {
        for (ns, proc_name, namespaces) in &cases {
            let mut config = pod(&format!("host-{ns}"), handler, namespaces.clone());
            if *ns == "network" {
                // As the kubelet does: a hostNetwork pod shares the node's UTS namespace
                // too, and runc refuses a hostname without a UTS namespace of its own.
                config.hostname.clear();
            }
            if handler == HANDLER {
                let err = match h.cri.run_pod_sandbox(&config, handler) {
                    Ok(id) => panic!(
                        "[{handler}] a pod with the host's {ns} namespace ran ({id}): a VM cannot \
                         share it, husk must refuse it"
                    ),
                    Err(e) => e,
                };
                let message = match &err {
                    CriError::Status { message, .. } => message.clone(),
                    other => panic!("[{handler}] host {ns} namespace: not a refusal: {other}"),
                };
                assert!(
                    message.contains("cannot share the host's") && message.contains(ns),
                    "[{handler}] RunPodSandbox with the host's {ns} namespace failed without \
                     saying that husk's VM cannot share the host's {ns} namespace: {message}"
                );
                h.assert_no_pod(
                    handler,
                    &format!("after refusing a pod with the host's {ns} namespace"),
                );
            } else {
                let pod = h.run_pod(handler, config);
                let id = h.start_container(&pod, &sleeper("c"));
                let path = format!("/proc/self/ns/{proc_name}");
                assert_eq!(
                    h.exec_ok(handler, &id, &["readlink", &path]),
                    host_namespace(proc_name),
                    "[{handler}] a container of a pod with the host's {ns} namespace is not in it"
                );
                h.remove_pod(pod);
            }
        }
    }
}

/// A privileged container has the kernel's bridge and NAT: busybox `brctl
/// addbr` + `ip link`, and an iptables NAT rule with both iptables-legacy and
/// iptables-nft (Debian's, in a local image). husk's guest kernel must have
/// them. runc runs on the test host's kernel, which loads only the KVM
/// modules: where a module is missing there, runc's result is shown and not
/// asserted (the test then says so).
#[test]
fn cri_privileged_container_has_bridge_and_nat() {
    let h = Cri::start("cri-privileged");
    h.import_iptables_image();
    let rule = "-A OUTPUT -p tcp -m tcp --dport 1 -j REDIRECT --to-ports 2";
    let nat = |iptables: &str| {
        format!(
            "{iptables} -t nat -A OUTPUT -p tcp --dport 1 -j REDIRECT --to-ports 2 && \
             {iptables} -t nat -S OUTPUT"
        )
    };
    let checks: [(&str, String, &str, &[&str]); 3] = [
        (
            "bridge",
            "brctl addbr x0 && ip link show x0".into(),
            "x0",
            &["bridge"],
        ),
        (
            "iptables-legacy NAT",
            nat("iptables-legacy"),
            rule,
            &["ip_tables", "iptable_nat", "xt_REDIRECT"],
        ),
        (
            "iptables-nft NAT",
            nat("iptables-nft"),
            rule,
            &["nf_tables", "nft_chain_nat", "xt_REDIRECT"],
        ),
    ];
    for handler in HANDLERS {
        let pod = h.run_pod(handler, privileged_pod("privileged", handler));
        let mut config = privileged(sleeper("net-admin"));
        config.image = Some(CriImage {
            image: IPTABLES_IMAGE.into(),
            ..Default::default()
        });
        let id = h.start_container(&pod, &config);
        for (what, script, want, modules) in &checks {
            let (code, out, err) = h.exec(handler, &id, &["sh", "-c", script]);
            let worked = code == 0 && out.contains(want);
            assert!(
                worked,
                "[{handler}] {what} in a privileged container: `{script}` exit {code}, \
                 stdout {out:?}, stderr {err:?} (kernel modules it needs: {modules:?}; \
                 loaded in the test host: {:?})",
                host_kernel_has(modules)
            );
        }
        h.remove_pod(pod);
    }
}
