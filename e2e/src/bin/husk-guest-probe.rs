//! `husk-guest-probe`: a tiny static /init for husk-vmm end-to-end tests.
//!
//! It mounts /proc, /sys and /dev, then runs the actions listed in the kernel command line
//! parameter `probe=` (comma separated), printing one `PROBE ...` line per result on the
//! console:
//!
//! * `info`: `PROBE info cpus=<online cpus> mem_kib=<MemTotal>`
//! * `echo:<port>`: serve a vsock echo server on `<port>` in the background
//! * `connect:<port>`: connect to the host (CID 2) on `<port>`, send `hello from guest\n`,
//!   print the reply line as `PROBE connect reply=<line>`
//! * `fs:<tag>`: mount virtio-fs `<tag>` on /mnt, copy `input.bin` to `output.bin`, write
//!   `guest.txt`, print `PROBE fs ok bytes=<n>`
//! * `ticks`: print `PROBE tick <n>` every 50 ms, forever
//! * `sleep`: sleep forever
//! * `reset`: print `PROBE reset` and reboot (`reboot=k`: through the i8042)
//!
//! Errors print `PROBE error <action>: <reason>` and the probe goes on with the next action.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let actions = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("probe="))
        .unwrap_or("info,reset")
        .to_string();
    // Guest time since the kernel started, for comparing boot figures across VMMs.
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let uptime = uptime.split_whitespace().next().unwrap_or("?");
    say(&format!("PROBE start uptime={uptime}"));
    for action in actions.split(',') {
        let (name, arg) = action.split_once(':').unwrap_or((action, ""));
        let res = match name {
            "info" => info(),
            "echo" => echo(arg),
            "connect" => connect(arg),
            "fs" => fs(arg),
            "ticks" => ticks(),
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "reset" => reset(),
            other => Err(format!("unknown action {other}")),
        };
        if let Err(e) = res {
            say(&format!("PROBE error {action}: {e}"));
        }
    }
    say("PROBE done");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn cstr(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap_or_default()
}

fn mount(src: &str, target: &str, fstype: &str) -> i32 {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) }
}

fn info() -> Result<(), String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("cpu/online: {e}"))?;
    let cpus: usize = online
        .trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum();
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no MemTotal")?;
    say(&format!("PROBE info cpus={cpus} mem_kib={mem_kib}"));
    Ok(())
}

fn vsock_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn parse_port(arg: &str) -> Result<u32, String> {
    arg.parse().map_err(|_| format!("bad port {arg:?}"))
}

fn echo(arg: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let port = parse_port(arg)?;
    let fd = vsock_socket()?;
    let addr = sockaddr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes; fd is a socket.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    say(&format!("PROBE echo listening port={port}"));
    std::thread::spawn(move || loop {
        // SAFETY: fd is a listening socket; null address arguments are allowed.
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            continue;
        }
        // SAFETY: accept returned a new fd owned here.
        let mut s = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(c) });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        total += n as u64;
                    }
                }
            }
            say(&format!("PROBE echo closed bytes={total}"));
        });
    });
    Ok(())
}

fn connect(arg: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let port = parse_port(arg)?;
    let fd = vsock_socket()?;
    let addr = sockaddr(libc::VMADDR_CID_HOST, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(format!("connect: {}", std::io::Error::last_os_error()));
    }
    let mut s = std::fs::File::from(fd);
    s.write_all(b"hello from guest\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    say(&format!("PROBE connect reply={}", line.trim_end()));
    Ok(())
}

fn fs(tag: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all("/mnt");
    if mount(tag, "/mnt", "virtiofs") != 0 {
        return Err(format!("mount: {}", std::io::Error::last_os_error()));
    }
    let data = std::fs::read("/mnt/input.bin").map_err(|e| format!("read input.bin: {e}"))?;
    std::fs::write("/mnt/output.bin", &data).map_err(|e| format!("write output.bin: {e}"))?;
    std::fs::write("/mnt/guest.txt", b"written by the guest\n")
        .map_err(|e| format!("write guest.txt: {e}"))?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    say(&format!("PROBE fs ok bytes={}", data.len()));
    Ok(())
}

fn ticks() -> Result<(), String> {
    for n in 0u64.. {
        say(&format!("PROBE tick {n}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn reset() -> Result<(), String> {
    say("PROBE reset");
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_RESTART);
    }
    Err(format!("reboot: {}", std::io::Error::last_os_error()))
}
