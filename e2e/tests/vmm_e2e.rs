//! End-to-end tests of `husk-vmm` with the real guest kernel and `husk-guest-probe` as
//! /init. They need real KVM (run them with `cargo xtask e2e vmm`) and find their inputs
//! through HUSK_KERNEL, HUSK_BIN_DIR (husk-vmm, husk-guest-probe, virtiofsd) and
//! HUSK_WORK_DIR.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::TestEnv;
use husk_rootfs::initramfs::{Compression, Initramfs};
use husk_vmm_api::protocol::raw_request_line;
use husk_vmm_api::{
    ApiClient, ApiError, FsConfig, GuestCmdline, SerialOutput, VmConfig, VmState, VmmArgs, VmmExit,
    VsockConfig, API_VERSION,
};

/// Nested guests are slow (TCG outer host): generous timeouts, one VM at a time. A boot
/// normally reaches /init in 5-10 s there.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn probe_initrd(env: &TestEnv) -> PathBuf {
    let path = env.work.join("probe-initrd.cpio");
    if path.exists() {
        return path;
    }
    let mut i = Initramfs::new();
    i.dir("dev", 0o755)
        .unwrap()
        .dir("proc", 0o555)
        .unwrap()
        .dir("sys", 0o555)
        .unwrap()
        .dir("mnt", 0o755)
        .unwrap()
        .char_dev("dev/console", 5, 1, 0o600)
        .unwrap()
        .host_file("init", &env.bin_dir.join("husk-guest-probe"), 0o755)
        .unwrap();
    i.write_file(&path, Compression::None).unwrap();
    path
}

struct VmOpts<'a> {
    probe: &'a str,
    vcpus: u8,
    memory_mib: u64,
    fs: Option<(&'a Path, &'a str)>,
}

impl Default for VmOpts<'_> {
    fn default() -> Self {
        Self {
            probe: "info,reset",
            vcpus: 1,
            memory_mib: 128,
            fs: None,
        }
    }
}

struct Vm {
    child: Child,
    started: Instant,
    console: PathBuf,
    vsock: PathBuf,
    api: PathBuf,
    exit: Option<ExitStatus>,
}

impl Vm {
    fn start(env: &TestEnv, name: &str, opts: VmOpts) -> Vm {
        let initrd = probe_initrd(env);
        let dir = env.work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console.log");
        let vsock = dir.join("v.sock");
        let api = dir.join("api.sock");
        // HUSK_E2E_VERBOSE=1 keeps the kernel's boot messages (with timestamps).
        let verbose = std::env::var_os("HUSK_E2E_VERBOSE").is_some();
        let cmdline = GuestCmdline::new()
            .quiet(!verbose)
            .param(if verbose { "printk.time=1" } else { "" })
            .param(&format!("probe={}", opts.probe))
            .build();
        let config = VmConfig {
            initrd: Some(initrd),
            cmdline,
            vcpus: opts.vcpus,
            memory_mib: opts.memory_mib,
            serial: SerialOutput::File(console.clone()),
            vsock: Some(VsockConfig {
                socket: vsock.clone(),
                guest_cid: 3,
            }),
            fs: opts
                .fs
                .map(|(sock, tag)| FsConfig::new(sock, tag))
                .into_iter()
                .collect(),
            api_socket: Some(api.clone()),
            ..VmConfig::new(&env.kernel)
        };
        let config_file = dir.join("vmm.json");
        config
            .write_json_file(&config_file)
            .expect("write vmm.json");
        let mut cmd = Command::new(env.bin_dir.join("husk-vmm"));
        cmd.args(VmmArgs::new(&config_file).to_args())
            // Its log (stderr, on the console) says how a guest ended, e.g. a triple fault,
            // which tells an emulation fault of the nested test host from a husk bug.
            .env("HUSK_VMM_LOG", "info")
            .stdin(Stdio::null());
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn husk-vmm");
        Vm {
            child,
            started,
            console,
            vsock,
            api,
            exit: None,
        }
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for a console line starting with `prefix`; returns it and when it was seen.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> (String, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console_text();
            // Only complete lines: the guest may be in the middle of writing one.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(l) = complete
                .lines()
                .find(|l| l.trim_start().starts_with(prefix))
            {
                return (l.trim().to_string(), Instant::now());
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exit = Some(st);
                panic!("husk-vmm exited ({st}) before {prefix:?}; console:\n{text}");
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {prefix:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exit = Some(st);
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// A control API connection.
    fn api(&self) -> ApiClient {
        ApiClient::connect(&self.api, Duration::from_secs(30)).expect("connect API socket")
    }

    /// (total RSS, RSS of the guest-RAM memfd mapping) in KiB, from /proc/PID/smaps.
    fn rss_kib(&self) -> (u64, u64) {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap();
        let (mut total, mut guest) = (0, 0);
        let mut in_guest = false;
        for l in smaps.lines() {
            let first = l.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                in_guest = l.contains("husk-guest-ram");
            } else if let Some(v) = l.strip_prefix("Rss:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                total += kib;
                if in_guest {
                    guest += kib;
                }
            }
        }
        (total, guest)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            // Reap it if it dies promptly, but never hang the remaining tests on a process
            // whose vCPU thread is stuck in the kernel (seen with the nested test host).
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "husk-vmm {} did not die within 5 s of SIGKILL",
                self.child.id()
            );
        }
    }
}

/// A helper process killed when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// husk-vmm ended cleanly: the guest reset through the i8042, or shutdown was requested.
/// A triple fault (status 3) is not a clean end, even though the VM is gone.
fn assert_clean(st: ExitStatus) {
    assert_eq!(
        VmmExit::from_status(st),
        Some(VmmExit::Clean),
        "{}",
        VmmExit::describe(st)
    );
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn vmm_boot_reports_vcpus_and_memory_and_reset_exits_zero() {
    let env = TestEnv::new("vmm-e2e");
    let mut vm = Vm::start(
        &env,
        "boot",
        VmOpts {
            probe: "info,reset",
            vcpus: 2,
            memory_mib: 256,
            ..Default::default()
        },
    );
    let (_, seen) = vm.wait_line("PROBE start", BOOT_TIMEOUT);
    eprintln!("boot to marker: {:?}", seen - vm.started);
    let (info, _) = vm.wait_line("PROBE info", BOOT_TIMEOUT);
    assert_eq!(field(&info, "cpus"), 2, "{info}");
    let mem = field(&info, "mem_kib");
    // MemTotal excludes what the kernel reserves for itself, but most of it is there.
    assert!(mem <= 256 * 1024 && mem > 200 * 1024, "{info}");

    let (_, reset_at) = vm.wait_line("PROBE reset", BOOT_TIMEOUT);
    if std::env::var_os("HUSK_E2E_VERBOSE").is_some() {
        eprintln!("console:\n{}", vm.console_text());
    }
    let st = vm
        .wait_exit(Duration::from_secs(10))
        .expect("husk-vmm did not exit after the guest reset");
    let took = reset_at.elapsed();
    assert_clean(st);
    assert!(
        took < Duration::from_secs(1),
        "exit took {took:?} after reset"
    );
    assert!(
        !vm.api.exists() && !vm.vsock.exists(),
        "sockets left behind"
    );
}

#[test]
fn vmm_boot_time_median_of_five_and_overhead() {
    let env = TestEnv::new("vmm-e2e");
    let mut times = vec![];
    for i in 0..5 {
        eprintln!("boot {i}");
        let mut vm = Vm::start(&env, &format!("bench{i}"), VmOpts::default());
        let (line, seen) = vm.wait_line("PROBE start", BOOT_TIMEOUT);
        times.push(seen - vm.started);
        eprintln!("{line} (guest seconds at /init)");
        assert_clean(vm.wait_exit(Duration::from_secs(30)).expect("exit"));
    }
    times.sort();
    eprintln!(
        "husk-vmm boot to /init marker: {times:?}, median {:?}",
        times[2]
    );

    let mut vm = Vm::start(
        &env,
        "rss",
        VmOpts {
            probe: "info,sleep",
            ..Default::default()
        },
    );
    vm.wait_line("PROBE info", BOOT_TIMEOUT);
    let (total, guest) = vm.rss_kib();
    eprintln!(
        "husk-vmm RSS {total} KiB, guest memory {guest} KiB, VMM overhead {} KiB",
        total - guest
    );
    assert!(guest > 0 && total > guest);
    eprintln!(
        "metrics after boot: {:?}",
        vm.api().metrics().expect("metrics")
    );
    assert_eq!(vm.api().shutdown().expect("shutdown"), VmState::Exiting);
    assert_clean(vm.wait_exit(Duration::from_secs(10)).expect("exit"));
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Hybrid-vsock handshake, retried until the guest listener is up.
fn host_connect(vm: &Vm, port: u32) -> (UnixStream, u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = UnixStream::connect(&vm.vsock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        let line = String::from_utf8_lossy(&line).to_string();
        if let Some(p) = line.strip_prefix("OK ") {
            return (s, p.trim().parse().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "CONNECT {port} never answered OK"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vmm_vsock_echo_both_directions_and_guest_connect() {
    let env = TestEnv::new("vmm-e2e");
    let dir = env.work.join("vsock");
    std::fs::create_dir_all(&dir).unwrap();
    // The guest connects to host port 5000: the VMM forwards that to "<vsock socket>_5000".
    let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (&s).write_all(b"hello from host\n").unwrap();
        line
    });
    let mut vm = Vm::start(
        &env,
        "vsock",
        VmOpts {
            probe: "echo:1024,connect:5000,sleep",
            ..Default::default()
        },
    );
    let (reply, _) = vm.wait_line("PROBE connect", BOOT_TIMEOUT);
    assert_eq!(reply, "PROBE connect reply=hello from host");
    assert_eq!(server.join().unwrap(), "hello from guest\n");

    let (mut s, host_port) = host_connect(&vm, 1024);
    assert!(host_port > 0);
    let data = pattern(1 << 20, 0x1234_5678);
    let to_send = data.clone();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&to_send).unwrap());
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "echoed bytes differ");

    // A second connection at the same time gets its own host port.
    let (mut s2, port2) = host_connect(&vm, 1024);
    assert_ne!(port2, host_port);
    s2.write_all(b"second").unwrap();
    let mut b = [0u8; 6];
    s2.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"second");
    drop(s);
    drop(s2);
    vm.wait_line("PROBE echo closed bytes=1048576", Duration::from_secs(30));

    // Nobody listens on guest port 999: the guest resets, the VMM closes without OK.
    let mut bad = UnixStream::connect(&vm.vsock).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    bad.write_all(b"CONNECT 999\n").unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "unexpected reply {:?}",
        String::from_utf8_lossy(&rest)
    );

    let m = vm.api().metrics().expect("metrics");
    assert!(m.vsock_rx_bytes >= 1 << 20, "{m:?}");
    assert!(m.vsock_tx_bytes >= 1 << 20, "{m:?}");
    assert_eq!(vm.api().shutdown().expect("shutdown"), VmState::Exiting);
    assert_clean(vm.wait_exit(Duration::from_secs(10)).expect("exit"));
}

#[test]
fn vmm_virtio_fs_with_virtiofsd() {
    let env = TestEnv::new("vmm-e2e");
    let dir = env.work.join("fs");
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let input = pattern(300 * 1024 + 17, 0xfeed_beef);
    std::fs::write(share.join("input.bin"), &input).unwrap();
    let sock = dir.join("fs.sock");
    let virtiofsd = Command::new(env.bin_dir.join("virtiofsd"))
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .arg("--sandbox=none")
        .arg("--cache=never")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn virtiofsd");
    let mut virtiofsd = KillOnDrop(virtiofsd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "virtiofsd socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut vm = Vm::start(
        &env,
        "fs",
        VmOpts {
            probe: "fs:hostshare,reset",
            memory_mib: 256,
            fs: Some((&sock, "hostshare")),
            ..Default::default()
        },
    );
    let (line, _) = vm.wait_line("PROBE fs", BOOT_TIMEOUT);
    assert_eq!(line, format!("PROBE fs ok bytes={}", input.len()));
    assert_clean(vm.wait_exit(Duration::from_secs(30)).expect("exit"));
    let output = std::fs::read(share.join("output.bin")).unwrap();
    assert!(output == input, "file copied by the guest differs");
    assert_eq!(
        std::fs::read_to_string(share.join("guest.txt")).unwrap(),
        "written by the guest\n"
    );
    // virtiofsd exits when its frontend goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while virtiofsd.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "virtiofsd still running after the VM ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("PROBE tick "))
        .find_map(|n| n.parse().ok())
}

#[test]
fn vmm_control_api_pause_resume_shutdown() {
    let env = TestEnv::new("vmm-e2e");
    let mut vm = Vm::start(
        &env,
        "api",
        VmOpts {
            probe: "ticks",
            ..Default::default()
        },
    );
    vm.wait_line("PROBE tick 3", BOOT_TIMEOUT);
    let mut api = vm.api();
    let ping = api.ping().expect("ping");
    assert_eq!(ping.state, VmState::Running, "{ping:?}");

    assert_eq!(api.pause().expect("pause"), VmState::Paused);
    assert_eq!(api.ping().expect("ping").state, VmState::Paused);
    let before = vm.console_text();
    let paused = api.metrics().expect("metrics");
    assert!(paused.uptime_ms > 0, "{paused:?}");
    assert!(paused.vcpu_exits.io > 0, "{paused:?}");
    assert!(paused.serial_bytes > 0, "{paused:?}");
    // That nothing happens can only be watched for a while: the guest ticks every 50 ms,
    // so over 20 tick periods of the VMM's own clock a running guest would have written
    // to its serial port many times. Every snapshot in that span must show no new serial
    // byte and no port I/O exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = api.metrics().expect("metrics");
        assert_eq!(
            (m.serial_bytes, m.vcpu_exits.io),
            (paused.serial_bytes, paused.vcpu_exits.io),
            "guest kept running while paused"
        );
        if m.uptime_ms >= paused.uptime_ms + 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "husk-vmm's clock did not advance: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = vm.console_text();
    assert_eq!(
        last_tick(&before),
        last_tick(&during),
        "guest kept running while paused"
    );

    assert_eq!(api.resume().expect("resume"), VmState::Running);
    let next = last_tick(&during).unwrap() + 3;
    vm.wait_line(&format!("PROBE tick {next}"), Duration::from_secs(60));

    let bad = api.call_line(&raw_request_line(API_VERSION, "reboot"));
    assert!(
        matches!(bad, Err(ApiError::Refused(ref m)) if m.contains("unknown command")),
        "{bad:?}"
    );

    let t = Instant::now();
    assert_eq!(api.shutdown().expect("shutdown"), VmState::Exiting);
    let st = vm
        .wait_exit(Duration::from_secs(10))
        .expect("no exit after shutdown");
    assert_clean(st);
    eprintln!("shutdown took {:?}", t.elapsed());
    assert!(!vm.api.exists());
}
