//! End-to-end test of husk under containerd's CRI plugin, as the kubelet drives it.
//!
//! A private containerd runs with the CRI plugin, runtime handler `husk`
//! (`io.containerd.husk.v2`) and a pause image built here (no registry is
//! reachable). A CRI client runs a pod of two busybox containers, which must
//! share one VM, execs into them, stops and removes the pod, and checks that
//! nothing is left. The pod uses the node's network namespace: no CNI config
//! is available, and husk has no guest networking yet. Run with
//! `cargo xtask e2e cri`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_e2e::containerd::{Containerd, Options, BUSYBOX_IMAGE};
use husk_e2e::cri::api::{
    ContainerConfig, ContainerMetadata, ContainerState, ImageSpec as CriImage,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use husk_e2e::cri::CriClient;
use husk_e2e::oci_image::ImageSpec;
use husk_e2e::TestEnv;

/// The CRI runtime handler of husk.
const HANDLER: &str = "husk";
/// The locally built pause image, the CRI plugin's `sandbox_image`.
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:husk";
/// Longest one CRI call may take (nested VMs under TCG are slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(240);
/// Time limit of an ExecSync inside the runtime.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// The pod's hostname, which CRI binds into the containers as /etc/hostname.
const POD_HOSTNAME: &str = "husk-pod";
/// Guest memory the pod asks for with `io.husk.memory_mib` (the husk default is 256).
const POD_MEMORY_MIB: u64 = 320;

/// containerd's CRI plugin section: husk as runtime `husk`, runc the default.
fn cri_config(work: &Path) -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
      pod_annotations = ["io.husk.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/net.d"
"#,
        cni = work.join("cni").display()
    )
}

/// CRI copies the node's /etc/hosts and /etc/resolv.conf into a host-network
/// pod; the bare test host has neither, so they are written when missing.
fn ensure_node_files() {
    for (path, text) in [
        ("/etc/hosts", "127.0.0.1 localhost\n"),
        ("/etc/resolv.conf", "nameserver 127.0.0.1\n"),
    ] {
        if !Path::new(path).exists() {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    }
}

/// Builds the pause image (the static `husk-pause` as `/pause`) and imports it.
fn import_pause_image(d: &Containerd) {
    let rootfs = d.opts.work.join("pause/rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("pause rootfs");
    std::fs::copy(d.artifacts.bin("husk-pause"), rootfs.join("pause")).expect("copy husk-pause");
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/pause\n").expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
    d.import(&ImageSpec {
        name: PAUSE_IMAGE.into(),
        rootfs,
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
    });
}

/// Waits until the CRI plugin knows image `reference` (it learns imports by events).
fn wait_for_image(d: &Containerd, cri: &CriClient, reference: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cri.image_status(reference) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => panic!("image status of {reference}: {e}\n{}", why(d)),
        }
        assert!(
            Instant::now() < deadline,
            "CRI never saw image {reference}\n{}",
            why(d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pod: node network (no CNI), its own PID namespace per container, a
/// kubelet-like cgroup parent and log directory, and a husk VM size annotation
/// (passed on by the runtime's `pod_annotations`).
fn pod_config(log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "husk-e2e".into(),
            uid: "6f1d6a52-husk-e2e".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: POD_HOSTNAME.into(),
        log_directory: log_dir.display().to_string(),
        annotations: HashMap::from([(
            "io.husk.memory_mib".to_string(),
            POD_MEMORY_MIB.to_string(),
        )]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/besteffort/pod6f1d6a52".into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container `name` that says it started and sleeps.
fn container_config(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(CriImage {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into()],
        args: vec![
            "-c".into(),
            format!("echo started {name}; exec sleep 100000"),
        ],
        log_path: format!("{name}.log"),
        ..Default::default()
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

/// containerd's (and the shims') warning and error lines, but for the missing
/// CNI config, which is expected here.
fn problems(d: &Containerd) -> Vec<String> {
    let log = std::fs::read_to_string(d.opts.work.join("containerd.log")).unwrap_or_default();
    log.lines()
        .filter(|l| (l.contains("level=error") || l.contains("level=warn")) && !l.contains("cni"))
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

#[test]
fn cri_pod_of_two_containers_shares_one_vm() {
    let started = Instant::now();
    let env = TestEnv::new("cri");
    ensure_node_files();
    let work: PathBuf = env.work.clone();
    let mut opts = Options::new(work.clone());
    opts.namespace = "k8s.io".into();
    opts.extra_config = cri_config(&work);
    let d = Containerd::start(env.artifacts.clone(), opts);
    import_pause_image(&d);

    let cri =
        CriClient::connect(&d.socket, CALL_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
    let version = cri.version().unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    wait_for_image(&d, &cri, PAUSE_IMAGE);
    wait_for_image(&d, &cri, BUSYBOX_IMAGE);

    let log_dir = work.join("pod-logs");
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let pod = pod_config(&log_dir);
    let t = Instant::now();
    let pod_id = cri
        .run_pod_sandbox(&pod, HANDLER)
        .unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
    let t_pod = millis(t);

    let mut ids = Vec::new();
    let mut t_containers = Vec::new();
    for name in ["c1", "c2"] {
        let t = Instant::now();
        let id = cri
            .create_container(&pod_id, &container_config(name), &pod)
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", why(&d)));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("start {name}: {e}\n{}", why(&d)));
        t_containers.push(millis(t));
        ids.push(id);
    }
    for id in &ids {
        let status = cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("status of {id}: {e}\n{}", why(&d)))
            .expect("container status");
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{status:?}\n{}",
            why(&d)
        );
    }

    // One VM and one shim for the whole pod ("containerd-shim-husk-v2" is cut
    // to 15 bytes in comm).
    let vmms = pids_of("husk-vmm");
    assert_eq!(vmms.len(), 1, "husk-vmm processes: {vmms:?}\n{}", why(&d));
    let shims = pids_of("containerd-shim");
    assert_eq!(shims.len(), 1, "shim processes: {shims:?}\n{}", why(&d));

    // Both containers run under the same guest kernel boot, not the host's.
    let t = Instant::now();
    let boot1 = exec_ok(
        &d,
        &cri,
        &ids[0],
        &["cat", "/proc/sys/kernel/random/boot_id"],
    );
    let t_exec = millis(t);
    let boot2 = exec_ok(
        &d,
        &cri,
        &ids[1],
        &["cat", "/proc/sys/kernel/random/boot_id"],
    );
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("host boot id")
        .trim()
        .to_string();
    assert_eq!(boot1.len(), 36, "boot id {boot1:?}");
    assert_eq!(boot1, boot2, "the pod's containers are in different VMs");
    assert_ne!(boot1, host_boot, "the container runs on the host kernel");
    let guest_kernel = exec_ok(&d, &cri, &ids[1], &["uname", "-r"]);
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
        .unwrap_or_else(|e| panic!("stats of c1: {e}\n{}", why(&d)))
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
    let meminfo = exec_ok(&d, &cri, &ids[0], &["head", "-n", "1", "/proc/meminfo"]);
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
        &d,
        &cri,
        &ids[0],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out\n", "err\n"),
        "{}",
        why(&d)
    );

    // The pod's containers share its /dev/shm (IPC namespace mode POD).
    exec_ok(
        &d,
        &cri,
        &ids[0],
        &["sh", "-c", "echo pod-shm > /dev/shm/husk-e2e"],
    );
    assert_eq!(
        exec_ok(&d, &cri, &ids[1], &["cat", "/dev/shm/husk-e2e"]),
        "pod-shm"
    );

    // CRI's per-pod files reach the guest containers.
    assert_eq!(
        exec_ok(&d, &cri, &ids[1], &["cat", "/etc/hostname"]),
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
        .unwrap_or_else(|e| panic!("stop c2: {e}\n{}", why(&d)));
    let t_stop = millis(t);
    let status = cri
        .container_status(&ids[1])
        .unwrap_or_else(|e| panic!("status of c2: {e}\n{}", why(&d)))
        .expect("c2 status");
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!(status.exit_code, 137, "c2 was killed: {status:?}");
    cri.remove_container(&ids[1])
        .unwrap_or_else(|e| panic!("remove c2: {e}\n{}", why(&d)));
    assert_eq!(
        exec_ok(
            &d,
            &cri,
            &ids[0],
            &["cat", "/proc/sys/kernel/random/boot_id"]
        ),
        boot1,
        "c1 lost its VM when c2 was removed"
    );
    assert_eq!(pids_of("husk-vmm").len(), 1, "{}", why(&d));

    let t = Instant::now();
    cri.stop_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("stop pod: {e}\n{}", why(&d)));
    let states: HashMap<String, i32> = cri
        .list_containers(&pod_id)
        .unwrap_or_else(|e| panic!("{e}\n{}", why(&d)))
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect();
    assert_eq!(
        states,
        HashMap::from([(ids[0].clone(), ContainerState::ContainerExited as i32)]),
        "containers after stopping the pod"
    );
    cri.remove_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("remove pod: {e}\n{}", why(&d)));
    let t_down = millis(t);

    let pods = cri
        .list_pod_sandboxes()
        .unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let containers = cri
        .list_containers("")
        .unwrap_or_else(|e| panic!("{e}\n{}", why(&d)));
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert_eq!(d.ctr_ok(&["containers", "ls", "-q"]).trim(), "");
    d.assert_nothing_left("after removing the pod");

    // Nothing failed on the way, even where CRI retries or ignores it.
    let problems = problems(&d);
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
