//! Boot time: from spawning a VMM process to the guest's init marker on its
//! console, for husk-vmm and for QEMU's microvm machine booting the same
//! kernel and initramfs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_vmm_api::{ConfigError, GuestCmdline, SerialOutput, VmConfig, VmmArgs};

use crate::procfs::{self, ProcessMemory};

/// The line husk-agent prints when it starts (guest init).
pub const INIT_MARKER: &str = "husk-agent";

/// Guest command line used for both VMMs: the shim's (the base line with
/// `quiet`); more parameters can be added for a variant.
pub fn cmdline() -> GuestCmdline {
    GuestCmdline::new().quiet(true)
}

/// Guest command line of a traced boot: the base line with kernel messages
/// with timestamps and each init call's duration.
pub fn trace_cmdline() -> String {
    GuestCmdline::new()
        .param("printk.time=1 initcall_debug")
        .build()
}

/// Errors of one boot measurement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VMM could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// husk-vmm's configuration could not be written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The marker did not appear in time.
    #[error("{vmm}: no init marker within {timeout:?}; last output: {last}")]
    NoMarker {
        /// Which VMM.
        vmm: String,
        /// The limit.
        timeout: Duration,
        /// The last console line seen.
        last: String,
    },
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// Initramfs with husk-agent as /init.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

/// One boot's result.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// Spawn to marker.
    pub to_marker: Duration,
    /// The VMM process's memory at the marker.
    pub memory: ProcessMemory,
}

/// husk-vmm's configuration for `guest` with kernel command line `cmdline`:
/// one vCPU, the console on stdout, no devices.
pub fn husk_config(guest: &Guest, cmdline: String) -> VmConfig {
    VmConfig {
        initrd: Some(guest.initrd.clone()),
        cmdline,
        vcpus: 1,
        memory_mib: u64::from(guest.memory_mib),
        serial: SerialOutput::Stdout,
        ..VmConfig::new(&guest.kernel)
    }
}

/// The husk-vmm command for `guest` with the default command line; its
/// configuration is written to `config_file`.
pub fn husk_command(vmm: &Path, guest: &Guest, config_file: &Path) -> Result<Command, Error> {
    husk_command_with(vmm, guest, &cmdline().build(), config_file, true)
}

/// The husk-vmm command for `guest` with kernel command line `cmdline`; its
/// configuration is written to `config_file`.
pub fn husk_command_with(
    vmm: &Path,
    guest: &Guest,
    cmdline: &str,
    config_file: &Path,
    confined: bool,
) -> Result<Command, Error> {
    husk_config(guest, cmdline.to_string()).write_json_file(config_file)?;
    let mut args = VmmArgs::new(config_file);
    // Unconfined only to measure what the jail and the seccomp filters cost.
    args.no_seccomp = !confined;
    args.no_jail = !confined;
    let mut cmd = Command::new(vmm);
    cmd.args(args.to_args());
    Ok(cmd)
}

/// The QEMU microvm command line for `guest` (KVM, no ACPI, no devices).
pub fn qemu_command(qemu: &Path, guest: &Guest) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,accel=kvm,acpi=off", "-cpu", "host"])
        .args(["-m", &guest.memory_mib.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .arg("-append")
        .arg(cmdline().build());
    cmd
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Init calls shorter than this are left out of a printed trace.
const SLOW_INITCALL_US: u64 = 5000;

/// Whether a traced console line is worth printing: everything but
/// `initcall_debug`'s "calling" lines and init calls faster than 5 ms.
pub fn worth_showing(line: &str) -> bool {
    if line.contains("] calling ") {
        return false;
    }
    match line.split_once(" returned ") {
        Some((_, rest)) => rest
            .split_whitespace()
            .skip_while(|w| *w != "after")
            .nth(1)
            .and_then(|us| us.parse::<u64>().ok())
            .is_none_or(|us| us >= SLOW_INITCALL_US),
        None => true,
    }
}

/// Console lines up to and including the init marker, each with the time
/// since the VMM was spawned.
pub type Trace = Vec<(Duration, String)>;

/// Boots once with `cmd`, returning the time to the marker; the VMM is
/// killed afterwards.
pub fn boot_once(name: &str, cmd: Command, timeout: Duration) -> Result<BootSample, Error> {
    boot(name, cmd, Stdio::null(), timeout).map(|(sample, _)| sample)
}

/// Boots once with `cmd` and returns every console line up to the marker; the
/// VMM's own log goes to our stderr.
pub fn trace(name: &str, cmd: Command, timeout: Duration) -> Result<Trace, Error> {
    boot(name, cmd, Stdio::inherit(), timeout).map(|(_, lines)| lines)
}

fn boot(
    name: &str,
    mut cmd: Command,
    stderr: Stdio,
    timeout: Duration,
) -> Result<(BootSample, Trace), Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let started = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().map_err(|e| Error::Spawn(name.to_string(), e))?);
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let hit = line.contains(INIT_MARKER);
            if tx.send((Instant::now(), line)).is_err() || hit {
                break;
            }
        }
    });
    let mut lines = Trace::new();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let hit = line.contains(INIT_MARKER);
                lines.push((at - started, line));
                if hit {
                    let memory = procfs::process_memory(child.0.id(), "guest").unwrap_or_default();
                    let sample = BootSample {
                        to_marker: at - started,
                        memory,
                    };
                    return Ok((sample, lines));
                }
            }
            Err(_) => {
                return Err(Error::NoMarker {
                    vmm: name.to_string(),
                    timeout,
                    last: lines.pop().map(|(_, l)| l).unwrap_or_default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn husk_boots_from_a_config_file_with_the_shims_cmdline() {
        let dir = std::env::temp_dir().join(format!("husk-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initrd"));
        std::fs::write(&kernel, b"").unwrap();
        std::fs::write(&initrd, b"").unwrap();
        let guest = Guest {
            kernel,
            initrd,
            memory_mib: 256,
        };
        let file = dir.join("husk-vmm.json");
        let cmd = husk_command(Path::new("/bin/husk-vmm"), &guest, &file).unwrap();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(args, VmmArgs::new(&file).to_args());
        let cfg = VmConfig::from_json_file(&file).unwrap();
        assert_eq!(cfg.cmdline, GuestCmdline::new().quiet(true).build());
        assert_eq!((cfg.vcpus, cfg.memory_mib), (1, 256));
        assert!(trace_cmdline().ends_with(" printk.time=1 initcall_debug"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trace_keeps_messages_and_slow_initcalls_only() {
        assert!(worth_showing("[    0.1] Run /init as init process"));
        assert!(!worth_showing("[    0.1] calling  fuse_init+0x0/0x1a0 @ 1"));
        assert!(!worth_showing(
            "[    0.2] initcall fuse_init+0x0/0x1a0 returned 0 after 812 usecs"
        ));
        assert!(worth_showing(
            "[    0.2] initcall serial8250_init+0x0/0x120 returned 0 after 450123 usecs"
        ));
    }
}
