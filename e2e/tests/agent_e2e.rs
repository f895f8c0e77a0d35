//! End-to-end tests of `husk-agent` as the guest's /init: boot the guest with `husk-vmm`,
//! connect through the hybrid vsock socket, create a sandbox whose share comes over
//! virtio-fs (virtiofsd), run containers from it and power the VM off.
//!
//! They need real KVM (`cargo xtask e2e agent`) and find their inputs through HUSK_KERNEL,
//! HUSK_BIN_DIR (husk-vmm, husk-agent, virtiofsd, busybox), HUSK_INITRD (the agent
//! initramfs) and HUSK_WORK_DIR.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::TestEnv;
use husk_protocol::{AgentApi, AgentClient, Timeouts};
use husk_vmm_api::{FsConfig, GuestCmdline, SerialOutput, VmConfig, VmmArgs, VmmExit, VsockConfig};
use serde_json::json;

/// Nested guests are slow (TCG outer host): generous timeouts, one VM at a time.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const SHARE_TAG: &str = "husk-share";

/// `<share>/<id>/{config.json, rootfs}` with a busybox rootfs.
fn bundle(env: &TestEnv, share: &Path, id: &str, args: &[&str]) {
    bundle_with(env, share, id, args, &[]);
}

/// Like [`bundle`], with extra OCI mounts.
fn bundle_with(env: &TestEnv, share: &Path, id: &str, args: &[&str], extra: &[serde_json::Value]) {
    let rootfs = share.join(id).join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy(env.busybox(), rootfs.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "cat", "echo", "hostname", "sleep", "head", "wc"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    std::fs::write(rootfs.join("marker"), "over virtio-fs\n").expect("marker");
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}],
            "resources": {"pids": {"limit": 64}}
        }
    });
    let mut spec = spec;
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.extend(extra.iter().cloned());
    }
    std::fs::write(share.join(id).join("config.json"), spec.to_string()).expect("config");
}

struct Sandbox {
    vmm: Child,
    virtiofsd: Child,
    console: PathBuf,
    started: Instant,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in [&mut self.vmm, &mut self.virtiofsd] {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Sandbox {
    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn start(env: &TestEnv, name: &str, share: &Path) -> (Sandbox, PathBuf) {
        let dir = env.work.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let fs_sock = dir.join("fs.sock");
        let virtiofsd = Command::new(env.bin_dir.join("virtiofsd"))
            .arg(format!("--socket-path={}", fs_sock.display()))
            .arg(format!("--shared-dir={}", share.display()))
            .arg("--sandbox=none")
            .arg("--cache=auto")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs_sock.exists() {
            assert!(Instant::now() < deadline, "virtiofsd socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        let console = dir.join("console.log");
        let vsock = dir.join("v.sock");
        let started = Instant::now();
        // The shim's guest command line (without the operator's extra parameters).
        let config = VmConfig {
            initrd: Some(env.initrd.clone()),
            cmdline: GuestCmdline::new().quiet(true).build(),
            vcpus: 2,
            memory_mib: 256,
            serial: SerialOutput::File(console.clone()),
            vsock: Some(VsockConfig {
                socket: vsock.clone(),
                guest_cid: 3,
            }),
            fs: vec![FsConfig::new(&fs_sock, SHARE_TAG)],
            api_socket: Some(dir.join("api.sock")),
            ..VmConfig::new(&env.kernel)
        };
        let config_file = dir.join("vmm.json");
        config
            .write_json_file(&config_file)
            .expect("write vmm.json");
        let vmm = Command::new(env.bin_dir.join("husk-vmm"))
            .args(VmmArgs::new(&config_file).to_args())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn husk-vmm");
        (
            Sandbox {
                vmm,
                virtiofsd,
                console,
                started,
            },
            vsock,
        )
    }

    /// Connects to the agent, retrying while the guest boots.
    fn connect(&mut self, vsock: &Path) -> AgentClient {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if vsock.exists() {
                let timeouts = Timeouts {
                    default: Some(Duration::from_secs(60)),
                    lifecycle: Some(Duration::from_secs(120)),
                    read: Some(Duration::from_secs(120)),
                };
                if let Ok(c) =
                    AgentClient::connect_hybrid_vsock(vsock, Duration::from_secs(10), timeouts)
                {
                    if c.handshake().is_ok() {
                        return c;
                    }
                }
            }
            if let Ok(Some(st)) = self.vmm.try_wait() {
                panic!(
                    "{}; console:\n{}",
                    VmmExit::describe(st),
                    self.console_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent never answered; console:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_all(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let chunk = if stderr {
            client.read_stderr(id, exec_id, 0)
        } else {
            client.read_stdout(id, exec_id, 0)
        };
        match chunk.expect("read stream") {
            Some(d) => all.extend_from_slice(&d),
            None => return all,
        }
    }
}

#[test]
fn agent_runs_container_from_virtio_fs_and_ends_the_vm() {
    let env = TestEnv::new("agent-e2e");
    let share = env.work.join("share");
    // The guest's resolv.conf (written by CreateSandbox) is bind-mounted in.
    bundle_with(
        &env,
        &share,
        "c1",
        &[
            "sh",
            "-c",
            "echo hello from $(hostname); cat /marker; cat /etc/resolv.conf; echo oops >&2; exit 3",
        ],
        &[json!({"destination": "/etc/resolv.conf", "type": "bind",
                 "source": "/etc/resolv.conf", "options": ["rbind", "ro"]})],
    );
    bundle(&env, &share, "c2", &["cat"]);
    let (mut sb, vsock) = Sandbox::start(&env, "run", &share);
    let client = sb.connect(&vsock);
    let to_health = sb.started.elapsed();
    let health = client.health().expect("health");
    assert_eq!(health.protocol_version, husk_protocol::PROTOCOL_VERSION);
    let console = sb.console_text();
    assert!(
        console.contains(&format!("husk-agent {} started", health.agent_version)),
        "{console}"
    );
    let figure: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("ms after /init start"))
        .collect();
    eprintln!(
        "VMM start to first health answer (host wall clock): {to_health:?}; guest: {figure:?}"
    );

    client
        .create_sandbox(&husk_protocol::agent::CreateSandboxRequest {
            hostname: "pod1".into(),
            share_tag: SHARE_TAG.into(),
            dns_servers: vec!["10.0.2.3".into()],
            ..Default::default()
        })
        .expect("create sandbox");
    let again = client
        .create_sandbox(&Default::default())
        .expect_err("second sandbox");
    assert_eq!(again.kind(), Some(husk_protocol::ErrorKind::AlreadyExists));

    // Spec read from the share (empty spec_json), rootfs over virtio-fs.
    client.create_container("c1", b"", None).expect("create c1");
    client.start_container("c1").expect("start c1");
    let out = read_all(&client, "c1", "", false);
    let err = read_all(&client, "c1", "", true);
    let st = client
        .wait_process("c1", "", Some(Duration::from_secs(120)))
        .expect("wait c1");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "hello from c1\nover virtio-fs\nnameserver 10.0.2.3\n"
    );
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    assert_eq!(st.exit_status, 3);
    client.remove_container("c1").expect("remove c1");

    // stdin round trip through a second container, with stats from its cgroup.
    client.create_container("c2", b"", None).expect("create c2");
    client.start_container("c2").expect("start c2");
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = std::thread::scope(|s| {
        let reader = s.spawn(|| read_all(&client, "c2", "", false));
        let mut off = 0;
        while off < data.len() {
            off += client
                .write_stdin("c2", "", &data[off..(off + 65536).min(data.len())])
                .expect("stdin");
        }
        // An exec into the running container sees its root (over virtio-fs).
        let process = json!({"args": ["sh", "-c", "echo exec in $(hostname); cat /marker"],
                             "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
        client
            .exec_process("c2", "e1", process.to_string().as_bytes())
            .expect("exec");
        let exec_out = read_all(&client, "c2", "e1", false);
        let st = client
            .wait_process("c2", "e1", Some(Duration::from_secs(120)))
            .expect("wait exec");
        assert_eq!(st.exit_status, 0);
        assert_eq!(
            String::from_utf8_lossy(&exec_out),
            "exec in c2\nover virtio-fs\n"
        );
        let stats = client.container_stats("c2").expect("stats");
        assert_eq!(stats.pids.limit, 64);
        assert!(stats.memory.current > 0, "memory controller in the guest");
        client.pause_container("c2").expect("pause");
        client.resume_container("c2").expect("resume");
        assert!(stats.pids.current >= 1);
        client.close_stdin("c2", "").expect("close stdin");
        reader.join().expect("reader")
    });
    assert!(back == data, "stdin round trip differs");
    let st = client
        .wait_process("c2", "", Some(Duration::from_secs(120)))
        .expect("wait c2");
    assert_eq!(st.exit_status, 0);
    client.remove_container("c2").expect("remove c2");

    // Destroy powers the VM off (an i8042 reset): the VMM exits cleanly, not with a triple
    // fault's status.
    client.destroy_sandbox().expect("destroy");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = sb.vmm.try_wait().expect("try_wait") {
            assert_eq!(
                VmmExit::from_status(st),
                Some(VmmExit::Clean),
                "{}; console:\n{}",
                VmmExit::describe(st),
                sb.console_text()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM did not end after destroy_sandbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
