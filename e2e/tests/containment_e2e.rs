//! End-to-end containment tests: the host side of a husk pod holds when the guest is
//! hostile (design §9). Real containerd, shim, husk-vmm, virtiofsd and guest kernel, in the
//! test host; run with `cargo xtask e2e containment`.
//!
//! A guest root can do anything the guest kernel allows, so each test looks at what the
//! host enforces: the host-side mount options of a volume, husk-vmm's seccomp, capabilities
//! and mount namespace, virtiofsd's root.

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use husk_e2e::containerd::Containerd;
use husk_e2e::pods::{pod_dir, processes_of};

/// The virtio-fs tag of the pod share (the shim's `SHARE_TAG`).
const SHARE_TAG: &str = "husk-share";

fn daemon() -> (&'static Containerd, MutexGuard<'static, ()>) {
    husk_e2e::containerd::shared("containment")
}

/// `ctr run -d` of a `sleep` with `extra` ctr options, waiting until it runs.
fn run_sleeper(d: &Containerd, id: &str, extra: &[&str]) {
    d.run_detached_with(id, extra, &["sleep", "600"]);
}

/// Kills and removes container `id`, then checks nothing of husk is left.
fn remove(d: &Containerd, id: &str) {
    let _ = d.ctr(&["task", "kill", "-s", "KILL", id]);
    let out = d.ctr(&["task", "delete", "-f", id]);
    assert!(out.status.success(), "task delete: {}", d.explain(&out));
    d.ctr_ok(&["container", "rm", id]);
    d.assert_nothing_left(&format!("after {id}"));
}

fn exec(d: &Containerd, id: &str, exec_id: &str, cmd: &[&str]) -> (String, String, Option<i32>) {
    d.exec(id, exec_id, cmd)
}

/// The mountinfo lines of the host whose mount point lies below `dir`.
fn host_mounts_below(dir: &Path) -> Vec<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| Path::new(p).starts_with(&real))
        })
        .map(str::to_string)
        .collect()
}

/// `ro` on a volume is the host's: the host-side bind in the pod share is read-only in the
/// host's mountinfo, a write in the container fails with EROFS, and so does a write by a
/// privileged container that mounts the virtio-fs share itself (a guest root bypassing the
/// container's own read-only bind).
#[test]
fn containment_a_read_only_volume_is_read_only_on_the_host() {
    let (d, _g) = daemon();
    let src = d.opts.work.join("ro-volume");
    std::fs::create_dir_all(&src).expect("volume dir");
    std::fs::write(src.join("keep"), "host file\n").expect("volume file");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", src.display());

    let id = "rovol";
    run_sleeper(d, id, &["--mount", &mount]);
    let volumes = pod_dir(d, id).join("shared/.volumes");
    let binds = host_mounts_below(&volumes);
    assert_eq!(binds.len(), 1, "one host bind for the volume: {binds:#?}");
    let options: Vec<&str> = binds[0]
        .split(' ')
        .nth(5)
        .unwrap_or("")
        .split(',')
        .collect();
    assert!(
        options.contains(&"ro"),
        "the host-side bind of a ro volume is not ro: {}",
        binds[0]
    );
    let (out, _, code) = exec(d, id, "read", &["cat", "/data/keep"]);
    assert_eq!((out.as_str(), code), ("host file\n", Some(0)));
    let (_, err, code) = exec(d, id, "write", &["touch", "/data/from-container"]);
    assert_ne!(code, Some(0), "a write to a ro volume succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    remove(d, id);

    // A guest root mounts the share itself: virtiofsd's writes hit the host's ro bind.
    let id = "rovolpriv";
    run_sleeper(d, id, &["--privileged", "--mount", &mount]);
    let script = format!(
        "mkdir -p /mnt/share && mount -t virtiofs {SHARE_TAG} /mnt/share && \
         cat /mnt/share/.volumes/*/keep && \
         for v in /mnt/share/.volumes/*; do touch $v/from-guest-root; done"
    );
    let (out, err, code) = exec(d, id, "bypass", &["sh", "-c", &script]);
    assert!(
        out.contains("host file"),
        "the privileged container did not reach the volume through its own mount of the \
         share (the test would prove nothing): {out:?} {err:?}"
    );
    assert_ne!(
        code,
        Some(0),
        "the write through the share succeeded: {err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    remove(d, id);
    let written: Vec<_> = std::fs::read_dir(&src)
        .expect("volume dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        written,
        vec![std::ffi::OsString::from("keep")],
        "host dir changed"
    );
}

/// The `(Seccomp, NoNewPrivs, CapEff)` fields of a `/proc/.../status` text.
fn confinement(status: &str) -> (String, String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Seccomp"), field("NoNewPrivs"), field("CapEff"))
}

/// husk-vmm is confined like Firecracker's jailed VMM: every thread has a seccomp filter
/// (`Seccomp: 2`), no_new_privs and no capability; its mount namespace is not the host's
/// and its root holds none of the host's files.
#[test]
fn containment_husk_vmm_runs_jailed_with_seccomp_and_no_capabilities() {
    let (d, _g) = daemon();
    let id = "jailed";
    run_sleeper(d, id, &[]);
    let pod = pod_dir(d, id);
    let vmms = processes_of("husk-vmm", &pod);
    assert_eq!(
        vmms.len(),
        1,
        "one husk-vmm for {}: {vmms:?}",
        pod.display()
    );
    let vmm = vmms[0];
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{vmm}/task"))
        .expect("tasks")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        tasks.len() >= 2,
        "husk-vmm runs vCPU and device threads: {tasks:?}"
    );
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).expect("status");
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        assert_eq!(
            confinement(&status),
            ("2".into(), "1".into(), "0000000000000000".into()),
            "thread {} ({}) of husk-vmm is not confined",
            task.display(),
            name.trim()
        );
    }
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt ns");
    assert_ne!(
        ns(&vmm.to_string()),
        ns("self"),
        "husk-vmm shares the host's mounts"
    );
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    for host_file in ["etc/passwd", "usr/bin", "var/lib"] {
        assert!(
            !root.join(host_file).exists(),
            "/{host_file} of the host is visible in husk-vmm's root"
        );
    }
    // The VM still works: the guest's vsock connections to the host still reach the shim.
    let (out, _, code) = exec(d, id, "alive", &["echo", "still served"]);
    assert_eq!((out.as_str(), code), ("still served\n", Some(0)));
    remove(d, id);
}

/// virtiofsd runs in its namespace sandbox: its processes have the share as their root, so
/// no `..` or symlink lookup from the share reaches a host file outside it.
#[test]
fn containment_virtiofsd_is_rooted_at_the_share() {
    let (d, _g) = daemon();
    let id = "fsroot";
    run_sleeper(d, id, &[]);
    let pod = pod_dir(d, id);
    let shared = pod.join("shared");
    let helpers = processes_of("virtiofsd", &pod);
    assert!(!helpers.is_empty(), "no virtiofsd for {}", pod.display());
    // virtiofsd's sandbox is a mount namespace of its own whose root is the share: its
    // monitor and its serving process both live in it.
    for pid in &helpers {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        assert!(
            root.join(id).join("rootfs/bin").exists(),
            "virtiofsd {pid} is not rooted at the share {}",
            shared.display()
        );
        for host_file in ["etc/passwd", "usr", "proc/self"] {
            assert!(
                !root.join(host_file).exists(),
                "virtiofsd {pid}: /{host_file} of the host is below its root"
            );
        }
    }
    remove(d, id);
}

/// The cgroup v2 path (below /sys/fs/cgroup) of host process `pid`.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line for {pid}: {text}"))
        .to_string()
}

fn cgroup_file(cgroup: &str, file: &str) -> String {
    let path = Path::new("/sys/fs/cgroup")
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The host side of a pod is accounted and bounded (Kata's `sandbox_cgroup_only`):
/// husk-vmm and virtiofsd live in one cgroup, at the spec's `linux.cgroupsPath` (`ctr run`
/// gives `/<namespace>/<id>` unless `--cgroup` says otherwise), with `memory.max` = guest memory + the configured overhead (256 MiB by
/// default) and `cpu.max` = vCPUs + 50 %; the cgroup goes with the pod.
#[test]
fn containment_vmm_and_virtiofsd_live_in_the_pods_bounded_cgroup() {
    let (d, _g) = daemon();
    let want_memory = (u64::from(d.opts.memory_mib) + 256) * 1024 * 1024;
    let want_cpu = format!("{} 100000", (u64::from(d.opts.vcpus) * 100 + 50) * 1000);
    for (id, extra, want_path) in [
        ("bounded", vec![], format!("/{}/bounded", d.opts.namespace)),
        (
            "boundedpath",
            vec!["--cgroup", "/husk-e2e-parent/boundedpath"],
            "/husk-e2e-parent/boundedpath".to_string(),
        ),
    ] {
        run_sleeper(d, id, &extra);
        let pod = pod_dir(d, id);
        let vmm = processes_of("husk-vmm", &pod);
        let fsd = processes_of("virtiofsd", &pod);
        assert_eq!(vmm.len(), 1, "{id}: husk-vmm {vmm:?}");
        assert!(!fsd.is_empty(), "{id}: no virtiofsd");
        let cgroup = cgroup_of(vmm[0]);
        assert!(
            cgroup.ends_with(&want_path),
            "{id}: husk-vmm is in {cgroup}, not below {want_path}"
        );
        for pid in &fsd {
            assert_eq!(cgroup_of(*pid), cgroup, "{id}: virtiofsd {pid}");
        }
        assert_eq!(
            cgroup_file(&cgroup, "memory.max"),
            want_memory.to_string(),
            "{id}: memory.max of {cgroup}"
        );
        assert_eq!(cgroup_file(&cgroup, "cpu.max"), want_cpu, "{id}: cpu.max");
        let current: u64 = cgroup_file(&cgroup, "memory.current")
            .parse()
            .expect("memory.current");
        assert!(
            current > 16 * 1024 * 1024,
            "{id}: {current} bytes charged: the guest's memory is not accounted here"
        );
        remove(d, id);
        let dir = Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
        assert!(!dir.exists(), "{id}: {} left", dir.display());
    }
    assert!(
        !Path::new("/sys/fs/cgroup/husk-e2e-parent").exists(),
        "the parent husk made for --cgroup is left"
    );
}

/// Annotations are bounded by the admin's caps and allow-list: a pod asking for more
/// memory than `max_memory_mib`, or setting a husk annotation that is not allowed, is
/// refused with an error naming the annotation, and nothing is left.
#[test]
fn containment_annotations_beyond_the_caps_are_refused() {
    let (d, _g) = daemon();
    for (id, annotation, says) in [
        (
            "bigmem",
            "io.husk.memory_mib=999999",
            "above the cap of 16384 (config key max_memory_mib)",
        ),
        ("badkey", "io.husk.kernel=/tmp/evil", "is not allowed"),
    ] {
        let out = d.run(id, &["--annotation", annotation], &["true"]);
        assert!(!out.status.success(), "{annotation} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let key = annotation.split('=').next().unwrap_or_default();
        assert!(
            err.contains(key) && err.contains(says),
            "{annotation}: {}",
            d.explain(&out)
        );
        let _ = d.ctr(&["container", "rm", id]);
        d.assert_nothing_left(&format!("after {annotation}"));
        assert!(
            !Path::new("/sys/fs/cgroup")
                .join(format!("husk-{}-{id}", d.opts.namespace))
                .exists(),
            "{annotation}: a cgroup was made"
        );
    }
}
