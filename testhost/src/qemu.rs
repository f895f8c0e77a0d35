//! Running the test host: QEMU's microvm machine under TCG with `-cpu max`
//! (which emulates AMD SVM with nested paging), console on stdio.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::host_kernel::{self, HostKernel};
use crate::image::{self, TestHostImage, EXIT_MARKER, HEARTBEAT_MARKER};

/// Errors of a test host run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Preparing the host kernel failed.
    #[error(transparent)]
    Kernel(#[from] host_kernel::Error),
    /// Building the image failed.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// QEMU could not be started.
    #[error("cannot start {binary}: {source} (apt-get install qemu-system-x86)")]
    Spawn {
        /// The QEMU binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The run took longer than allowed; QEMU was killed.
    #[error("test host timed out after {0:?}; QEMU was killed")]
    Timeout(Duration),
    /// No console output, not even the heartbeat, for this long: the test host
    /// is wedged; QEMU was killed.
    #[error(
        "test host wedged: no console output, not even its heartbeat, for {0:?}; QEMU was killed"
    )]
    Wedged(Duration),
    /// The console watcher asked to end the run (after a fault); QEMU was killed.
    #[error("test host stopped {0:?} after its console showed a fault; QEMU was killed")]
    Stopped(Duration),
    /// QEMU ended without the command's exit status (kernel panic, crash).
    #[error("test host ended without reporting an exit status ({status})")]
    NoExitStatus {
        /// How QEMU exited.
        status: String,
    },
    /// A filesystem operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Settings of the test host machine.
#[derive(Debug, Clone)]
pub struct TestHostConfig {
    /// The QEMU binary (`HUSK_TESTHOST_QEMU`, else `qemu-system-x86_64` from PATH).
    pub qemu: PathBuf,
    /// QEMU's firmware directory (`-L`), for a QEMU unpacked outside `/usr`
    /// (`HUSK_TESTHOST_QEMU_DATA`); `None` uses the binary's built-in path.
    pub qemu_data: Option<PathBuf>,
    /// The apt suite whose cloud kernel the test host boots
    /// (`HUSK_TESTHOST_KERNEL_SUITE`, e.g. `bookworm-backports`); `None` takes
    /// the default candidate.
    pub kernel_suite: Option<String>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs (TCG runs one host thread per vCPU).
    pub cpus: u32,
    /// Wall-clock limit of the whole run.
    pub timeout: Duration,
    /// Where busybox (static) is found.
    pub busybox: PathBuf,
    /// Cache root for the host kernel.
    pub cache_dir: PathBuf,
    /// Print the kernel's own messages too.
    pub verbose_kernel: bool,
    /// Give up on a test host whose console stays silent this long once the
    /// command has started (it prints a heartbeat every few seconds while alive).
    pub silence_limit: Duration,
    /// Give up on a test host that prints nothing at all this long from QEMU's
    /// start: its boot hung. Longer than the silence limit, because a boot on a
    /// busy machine can take a while before the first line.
    pub boot_limit: Duration,
}

impl Default for TestHostConfig {
    fn default() -> Self {
        Self {
            qemu: std::env::var_os("HUSK_TESTHOST_QEMU")
                .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from),
            qemu_data: std::env::var_os("HUSK_TESTHOST_QEMU_DATA").map(PathBuf::from),
            kernel_suite: std::env::var("HUSK_TESTHOST_KERNEL_SUITE")
                .ok()
                .filter(|s| !s.is_empty()),
            memory_mib: 3072,
            cpus: 2,
            timeout: Duration::from_secs(1200),
            busybox: PathBuf::from("/bin/busybox"),
            cache_dir: husk_rootfs::cache::root(),
            verbose_kernel: false,
            silence_limit: Duration::from_secs(120),
            boot_limit: Duration::from_secs(180),
        }
    }
}

/// What a console watcher wants after a line (see [`TestHost::run_watched`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Go on until the command ends or the configured timeout.
    Continue,
    /// End the run at the latest this long from now.
    EndWithin(Duration),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit status of the command inside the test host.
    pub exit_code: i32,
    /// Wall time from QEMU's start to its exit.
    pub wall: Duration,
}

/// A test host ready to run commands.
#[derive(Debug, Clone)]
pub struct TestHost {
    kernel: HostKernel,
    config: TestHostConfig,
}

/// Kills and reaps QEMU however the run ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestHost {
    /// Prepares the host kernel (downloading it on first use).
    pub fn new(config: TestHostConfig) -> Result<Self, Error> {
        let kernel = host_kernel::prepare(&config.cache_dir, config.kernel_suite.as_deref())?;
        Ok(Self { kernel, config })
    }

    /// The QEMU command line for an initramfs at `initrd`.
    pub fn qemu_command(&self, initrd: &Path) -> Command {
        let c = &self.config;
        let loglevel = if c.verbose_kernel {
            "loglevel=7"
        } else {
            "quiet loglevel=1"
        };
        let mut cmd = Command::new(&c.qemu);
        if let Some(data) = &c.qemu_data {
            cmd.arg("-L").arg(data);
        }
        cmd.args(["-M", "microvm,accel=tcg", "-cpu", "max"])
            .args(["-m", &c.memory_mib.to_string(), "-smp", &c.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel.vmlinux)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 reboot=t panic=-1 {loglevel}{}",
                tsc_hint()
            ));
        cmd
    }

    /// Runs `image` in a fresh test host, passing each console line to
    /// `on_line`, and returns the command's exit status.
    pub fn run(
        &self,
        image: &TestHostImage,
        mut on_line: impl FnMut(&str),
    ) -> Result<RunOutcome, Error> {
        self.run_watched(image, |line| {
            on_line(line);
            Watch::Continue
        })
    }

    /// Like [`TestHost::run`], but `on_line` may ask to end the run early
    /// (for instance some time after the test host's kernel faulted).
    pub fn run_watched(
        &self,
        image: &TestHostImage,
        mut on_line: impl FnMut(&str) -> Watch,
    ) -> Result<RunOutcome, Error> {
        let scratch = tempdir()?;
        let initrd = scratch.join("testhost.cpio");
        image.write(&self.kernel, &self.config.busybox, &initrd)?;

        let mut cmd = self.qemu_command(&initrd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe;
        // it makes the kernel kill QEMU if this process dies first.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = ChildGuard(cmd.spawn().map_err(|source| Error::Spawn {
            binary: self.config.qemu.clone(),
            source,
        })?);
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.0.stdout.take().expect("stdout is piped");
        let stderr = child.0.stderr.take().expect("stderr is piped");
        let err_tx = tx.clone();
        std::thread::spawn(move || forward_lines(stdout, tx));
        std::thread::spawn(move || forward_lines(stderr, err_tx));

        let mut deadline = started + self.config.timeout;
        let mut stop_asked = None;
        let mut seen_output = false;
        let mut exit_code = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The boot prints nothing (quiet), but the command's heartbeat starts within
            // seconds of it: a host silent for the boot limit from QEMU's start hung in
            // its boot (seen with a busy machine), which is a wedge too.
            let wait = match seen_output {
                true => left.min(self.config.silence_limit),
                false => deadline
                    .min(started + self.config.boot_limit)
                    .saturating_duration_since(Instant::now()),
            };
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    seen_output = true;
                    // A heartbeat only proves the host alive; one may also land in the
                    // middle of a line of the command's.
                    let heartbeat = line.contains(HEARTBEAT_MARKER);
                    let line = line.replace(HEARTBEAT_MARKER, "");
                    match line.trim().strip_prefix(EXIT_MARKER) {
                        Some(code) if exit_code.is_none() => exit_code = code.trim().parse().ok(),
                        _ if heartbeat && line.trim().is_empty() => {}
                        _ if !self.config.verbose_kernel && is_reset_notice(&line) => {}
                        _ => {
                            if let Watch::EndWithin(grace) = on_line(&line) {
                                let end = Instant::now() + grace;
                                if end < deadline {
                                    deadline = end;
                                    stop_asked = Some(grace);
                                }
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    return Err(Error::Wedged(match seen_output {
                        true => self.config.silence_limit,
                        false => self.config.boot_limit,
                    }));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(match stop_asked {
                        Some(grace) => Error::Stopped(grace),
                        None => Error::Timeout(self.config.timeout),
                    });
                }
            }
        }
        let status = child.0.wait()?;
        let _ = std::fs::remove_dir_all(&scratch);
        match exit_code {
            Some(exit_code) => Ok(RunOutcome {
                exit_code,
                wall: started.elapsed(),
            }),
            None => Err(Error::NoExitStatus {
                status: status.to_string(),
            }),
        }
    }
}

/// Under TCG the guest's TSC runs at the host's TSC rate, and calibrating it
/// against the emulated PIT fails when the host is busy (the boot then hangs
/// without a clock). Telling the kernel the rate skips that calibration.
fn tsc_hint() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|mhz| format!(" tsc_early_khz={}", (mhz * 1000.0) as u64))
        .unwrap_or_default()
}

/// The kernel's emergency-level "reboot: Restarting system" that ends every
/// run (printed even with `quiet`).
fn is_reset_notice(line: &str) -> bool {
    line.starts_with('[') && line.contains("] reboot: ")
}

fn forward_lines(reader: impl Read, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if tx.send(line.to_string()).is_err() {
            return;
        }
        buf.clear();
    }
}

fn tempdir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("husk-testhost-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create a scratch directory"))
}
