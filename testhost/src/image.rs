//! The test host's initramfs: busybox, the KVM and network modules, an init
//! script, the caller's files (with their shared libraries) and the command to
//! run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use husk_rootfs::initramfs::{self, Compression, Initramfs};

use crate::closure;
use crate::host_kernel::HostKernel;

/// Line the init script prints with the command's exit status.
pub const EXIT_MARKER: &str = "HUSK-TESTHOST-EXIT=";
/// Printed by the test host every [`HEARTBEAT_PERIOD_S`] seconds while it runs
/// the command, so that a wedged test host (no output at all) can be told
/// from a quiet command.
pub const HEARTBEAT_MARKER: &str = "HUSK-TESTHOST-ALIVE";
/// Seconds between heartbeats.
pub const HEARTBEAT_PERIOD_S: u32 = 10;
/// Where the init script records the heartbeat loop's PID.
pub const HEARTBEAT_PID_FILE: &str = "/run/husk-testhost-heartbeat.pid";
/// Exit status the init script reports when KVM could not be set up.
pub const KVM_SETUP_FAILED: i32 = 125;
/// Where the modules go inside the test host.
const MODULE_DIR: &str = "lib/husk-testhost";

/// Errors of building the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing or reading an entry failed.
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    /// A file's library closure could not be resolved.
    #[error(transparent)]
    Closure(#[from] closure::Error),
    /// busybox is missing.
    #[error("{0} is missing: apt-get install busybox-static")]
    NoBusybox(PathBuf),
}

/// A file copied from this host into the test host.
#[derive(Debug, Clone)]
pub struct HostFile {
    /// The file on this host.
    pub source: PathBuf,
    /// Its absolute path inside the test host.
    pub target: String,
    /// Also copy the shared libraries it loads (for dynamic executables).
    pub with_libraries: bool,
}

impl HostFile {
    /// A file placed at `target` as it is.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            with_libraries: false,
        }
    }

    /// An executable placed at `target` together with its shared libraries.
    pub fn executable(source: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        Self {
            with_libraries: true,
            ..Self::new(source, target)
        }
    }
}

/// What goes into one test host run.
#[derive(Debug, Clone, Default)]
pub struct TestHostImage {
    /// Files to copy in.
    pub files: Vec<HostFile>,
    /// Environment of the command.
    pub env: Vec<(String, String)>,
    /// The shell command (run by busybox `sh -c`).
    pub command: String,
    /// Parameters for `kvm-amd.ko` (for example `vgif=0`).
    pub kvm_amd_params: String,
}

/// Shell lines loading the KVM modules: without them there is nothing to
/// test, so a failure ends the run.
fn kvm_insmods(modules: &[String]) -> String {
    modules
        .iter()
        .map(|m| {
            // Module parameters, if any, come from a file next to the module.
            let params = format!("$(cat /{MODULE_DIR}/{m}.params 2>/dev/null)");
            format!("insmod /{MODULE_DIR}/{m} {params} || fail \"cannot load {m}\"\n")
        })
        .collect()
}

/// Shell lines loading the network modules: a kernel without one of them
/// still runs the KVM tests, so a failure is only a warning.
fn net_insmods(modules: &[String]) -> String {
    modules
        .iter()
        .map(|m| {
            format!("insmod /{MODULE_DIR}/{m} || echo \"husk-testhost: WARN: insmod {m} failed\"\n")
        })
        .collect()
}

/// The init script: mounts, loads KVM (then the network modules), runs the
/// command, reports its status and resets the machine (QEMU runs with
/// `-no-reboot`, so a reset ends it).
fn init_script(kvm_modules: &[String], net_modules: &[String]) -> String {
    let insmods = kvm_insmods(kvm_modules);
    let net_insmods = net_insmods(net_modules);
    format!(
        r#"#!/bin/busybox sh
# Stage 1: move the initramfs onto a real tmpfs mount and switch to it, so
# that pivot_root(2) works for container runtimes (it fails on the rootfs).
if [ ! -e /husk-testhost/stage2 ]; then
    /bin/busybox mkdir -p /newroot
    /bin/busybox mount -t tmpfs -o mode=0755 tmpfs /newroot
    for d in /*; do
        case "$d" in /newroot|/proc|/sys|/dev) ;; *) /bin/busybox cp -a "$d" /newroot/ ;; esac
    done
    /bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
    /bin/busybox touch /newroot/husk-testhost/stage2
    exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
fail() {{
    echo "husk-testhost: FATAL: $*"
    echo "{EXIT_MARKER}{KVM_SETUP_FAILED}"
    reboot -f
}}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup /run /tmp /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname husk-testhost
ip link set lo up 2>/dev/null
{insmods}[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading kvm-amd"
grep -q '^kvm_amd ' /proc/modules || fail "kvm_amd is not loaded"
{net_insmods}. /husk-testhost/env
cd /root
(while sleep {HEARTBEAT_PERIOD_S}; do echo {HEARTBEAT_MARKER}; done) &
echo $! > {HEARTBEAT_PID_FILE}
sh -c "$(cat /husk-testhost/command)"
echo "{EXIT_MARKER}$?"
sync
reboot -f
"#
    )
}

/// Puts `modules` into the module directory; returns their file names.
fn add_modules(fs: &mut Initramfs, modules: &[PathBuf]) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for module in modules {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fs.host_file(&format!("{MODULE_DIR}/{name}"), module, 0o644)?;
        names.push(name);
    }
    Ok(names)
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl TestHostImage {
    /// Builds the initramfs for this run.
    pub fn build(&self, kernel: &HostKernel, busybox: &Path) -> Result<Initramfs, Error> {
        if !busybox.is_file() {
            return Err(Error::NoBusybox(busybox.to_path_buf()));
        }
        let mut fs = Initramfs::new();
        for dir in [
            "proc", "sys", "dev", "run", "tmp", "root", "etc", "usr/bin", "sbin",
        ] {
            fs.dir(dir, 0o755)?;
        }
        fs.char_dev("dev/console", 5, 1, 0o600)?;
        fs.host_file("bin/busybox", busybox, 0o755)?;
        fs.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
        fs.file("etc/group", "root:x:0:\n", 0o644)?;
        let kvm_names = add_modules(&mut fs, &kernel.kvm_modules)?;
        if kvm_names.iter().any(|n| n == "kvm-amd.ko") && !self.kvm_amd_params.is_empty() {
            fs.file(
                &format!("{MODULE_DIR}/kvm-amd.ko.params"),
                self.kvm_amd_params.clone(),
                0o644,
            )?;
        }
        let net_names = add_modules(&mut fs, &kernel.net_modules)?;
        fs.file("init", init_script(&kvm_names, &net_names), 0o755)?;
        let env: String = self
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect();
        fs.file("husk-testhost/env", env, 0o644)?;
        fs.file("husk-testhost/command", self.command.clone(), 0o644)?;

        let mut libraries = BTreeSet::new();
        for file in &self.files {
            let perm = std::fs::metadata(&file.source)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o644);
            fs.host_file(&file.target, &file.source, perm)?;
            if file.with_libraries {
                libraries.extend(closure::libraries(&file.source)?);
            }
        }
        for lib in libraries {
            // Resolve symlinks: the archive holds the contents under the
            // name the loader asks for.
            fs.host_file(&lib.to_string_lossy(), &lib, 0o755)?;
        }
        Ok(fs)
    }

    /// Builds the image and writes it, uncompressed (fastest for TCG to
    /// unpack), to `out`.
    pub fn write(&self, kernel: &HostKernel, busybox: &Path, out: &Path) -> Result<(), Error> {
        Ok(self
            .build(kernel, busybox)?
            .write_file(out, Compression::None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_rootfs::initramfs::{mode, read_newc};

    #[test]
    fn image_holds_init_modules_files_and_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("kvm.ko");
        std::fs::write(&module, b"module").unwrap();
        let kernel = HostKernel {
            vmlinux: dir.path().join("vmlinux"),
            kvm_modules: vec![module],
            net_modules: vec![],
        };
        let image = TestHostImage {
            files: vec![
                HostFile::executable("/bin/ls", "/usr/bin/ls"),
                HostFile::new("/bin/busybox", "/opt/bb"),
            ],
            env: vec![("GREETING".into(), "it's".into())],
            command: "ls /".into(),
            kvm_amd_params: "vgif=0".into(),
        };
        let out = dir.path().join("img.cpio");
        image
            .write(&kernel, Path::new("/bin/busybox"), &out)
            .unwrap();
        let entries = read_newc(&std::fs::read(&out).unwrap()).unwrap();
        let find = |p: &str| entries.iter().find(|e| e.path == p);
        let init = find("init").expect("init");
        assert_eq!(init.mode, mode::FILE | 0o755);
        let script = String::from_utf8_lossy(&init.data);
        assert!(
            script.contains("insmod /lib/husk-testhost/kvm.ko"),
            "{script}"
        );
        assert!(find("lib/husk-testhost/kvm.ko").is_some());
        assert!(
            script.contains("$(cat /lib/husk-testhost/kvm.ko.params 2>/dev/null)"),
            "{script}"
        );
        assert!(find("usr/bin/ls").is_some());
        assert!(find("opt/bb").is_some());
        assert!(
            entries.iter().any(|e| e.path.contains("libc.so")),
            "libc of /bin/ls is included"
        );
        let env = String::from_utf8_lossy(&find("husk-testhost/env").unwrap().data).into_owned();
        assert_eq!(env, "export GREETING='it'\\''s'\n");
        assert_eq!(find("husk-testhost/command").unwrap().data, b"ls /");
    }

    #[test]
    fn missing_file_is_an_error() {
        let kernel = HostKernel {
            vmlinux: PathBuf::from("/x"),
            kvm_modules: vec![],
            net_modules: vec![],
        };
        let image = TestHostImage {
            files: vec![HostFile::new("/nonexistent/file", "/f")],
            ..Default::default()
        };
        let err = image.build(&kernel, Path::new("/bin/busybox")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
    }

    #[test]
    fn network_modules_load_after_kvm_amd_and_may_fail() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = HostKernel {
            vmlinux: dir.path().join("vmlinux"),
            kvm_modules: ["kvm.ko", "kvm-amd.ko"]
                .map(|m| dir.path().join(m))
                .to_vec(),
            net_modules: ["llc.ko", "stp.ko", "bridge.ko"]
                .map(|m| dir.path().join(m))
                .to_vec(),
        };
        for m in kernel.kvm_modules.iter().chain(&kernel.net_modules) {
            std::fs::write(m, b"module").unwrap();
        }
        let fs = TestHostImage::default()
            .build(&kernel, Path::new("/bin/busybox"))
            .unwrap();
        let entries = fs.entries();
        let find = |p: &str| entries.iter().find(|e| e.path == p);
        assert!(find("lib/husk-testhost/bridge.ko").is_some());
        let script = String::from_utf8_lossy(&find("init").unwrap().data).into_owned();
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let kvm_amd = at("insmod /lib/husk-testhost/kvm-amd.ko");
        let (llc, stp, bridge) = (
            at("insmod /lib/husk-testhost/llc.ko"),
            at("insmod /lib/husk-testhost/stp.ko"),
            at("insmod /lib/husk-testhost/bridge.ko"),
        );
        assert!(kvm_amd < llc && llc < stp && stp < bridge, "{script}");
        // The bridge line, run with an insmod that fails, warns and goes on.
        let line = script[bridge..].lines().next().unwrap();
        assert!(!line.contains("|| fail "), "{line}");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("insmod() {{ return 1; }}\n{line}\necho went-on"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "husk-testhost: WARN: insmod bridge.ko failed\nwent-on\n"
        );
    }
}
