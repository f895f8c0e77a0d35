//! OCI image tarballs built locally (no registry is reachable), for
//! `ctr images import`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cmd::sh;

/// Applets linked to busybox in the test image (all in Debian's busybox-static 1.35;
/// it has no `ipcmk`/`ipcs` and no iptables).
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "uname", "sleep", "true", "false", "ls", "head", "wc", "ps", "cut", "dd",
    "stty", "tr", "grep", "mkdir", "rm", "env", "id", "kill", "top", "hostname", "readlink",
    "mount", "umount", "nc", "brctl", "ip", "touch", "test", "tail", "sysctl",
];

/// The dynamic loader of x86_64 glibc. `LOADER --list EXE` prints what `ldd EXE` prints,
/// and works where there is no `ldd` script (the test host's busybox initramfs).
pub const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// iptables' two multi-call binaries (Debian's `iptables` package), each with the names it
/// answers to.
pub const XTABLES: &[(&str, &[&str])] = &[
    (
        "/usr/sbin/xtables-legacy-multi",
        &[
            "iptables-legacy",
            "iptables-legacy-save",
            "iptables-legacy-restore",
        ],
    ),
    (
        "/usr/sbin/xtables-nft-multi",
        &["iptables-nft", "iptables-nft-save", "iptables-nft-restore"],
    ),
];

/// Where iptables loads its extensions (`libxt_tcp.so`, `libxt_REDIRECT.so`, ...) from.
pub const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// An image to build: a root filesystem directory and its config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. `docker.io/library/busybox:husk`.
    pub name: String,
    /// Directory whose content becomes the single layer.
    pub rootfs: PathBuf,
    /// Image config `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// Image config `Cmd`.
    pub cmd: Vec<String>,
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum '{}'", path.display()))
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// Writes `bytes` as a blob of the OCI layout in `dir`; returns (digest, size).
fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, bytes).expect("blob");
    let digest = sha256(&tmp);
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&digest)).expect("rename");
    (format!("sha256:{digest}"), bytes.len())
}

/// Lays out a minimal root filesystem with busybox and its applet links in `rootfs`.
pub fn busybox_rootfs(rootfs: &Path, busybox: &Path) {
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir bin");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("pw");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
}

/// The shared libraries `exe` loads, as [`LOADER`] lists them; panics naming what is missing.
pub fn libraries(exe: &Path) -> Vec<PathBuf> {
    assert!(
        Path::new(LOADER).is_file(),
        "{LOADER} is missing: cannot list the libraries of {}",
        exe.display()
    );
    let out = std::process::Command::new(LOADER)
        .arg("--list")
        .arg(exe)
        .output()
        .unwrap_or_else(|e| panic!("{LOADER} --list {}: {e}", exe.display()));
    assert!(
        out.status.success(),
        "{LOADER} --list {}: {out:?}",
        exe.display()
    );
    husk_testhost::closure::parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|lib| panic!("{} needs {lib}, which is not found", exe.display()))
}

/// Copies `file` (its content, links followed) to the same absolute path under `rootfs`.
fn copy_in(rootfs: &Path, file: &Path) {
    let rel = file.strip_prefix("/").unwrap_or(file);
    let dst = rootfs.join(rel);
    std::fs::create_dir_all(dst.parent().expect("an absolute path has a parent"))
        .expect("mkdir in rootfs");
    std::fs::copy(file, &dst)
        .unwrap_or_else(|e| panic!("copy {} into the image: {e}", file.display()));
}

/// Copies the dynamic executable `exe` and its shared libraries into `rootfs`, each at its
/// own path.
pub fn add_with_libraries(rootfs: &Path, exe: &Path) {
    assert!(exe.is_file(), "{} is missing", exe.display());
    copy_in(rootfs, exe);
    for lib in libraries(exe) {
        copy_in(rootfs, &lib);
    }
}

/// A busybox root filesystem (see [`busybox_rootfs`]) plus Debian's iptables: both
/// [`XTABLES`] binaries with their libraries, their `iptables-legacy` / `iptables-nft` names
/// in `/sbin`, and the [`XTABLES_EXTENSIONS`]. Panics naming what is missing (`iptables`
/// is in `scripts/install-deps.sh`; xtask packs it into the test host).
pub fn xtables_rootfs(rootfs: &Path, busybox: &Path) {
    busybox_rootfs(rootfs, busybox);
    std::fs::create_dir_all(rootfs.join("sbin")).expect("mkdir sbin");
    for (exe, names) in XTABLES {
        add_with_libraries(rootfs, Path::new(exe));
        for name in *names {
            let target = Path::new("..").join(exe.trim_start_matches('/'));
            std::os::unix::fs::symlink(target, rootfs.join("sbin").join(name)).expect("link");
        }
    }
    let extensions: Vec<PathBuf> = std::fs::read_dir(XTABLES_EXTENSIONS)
        .unwrap_or_else(|e| panic!("{XTABLES_EXTENSIONS}: {e}"))
        .flatten()
        .map(|e| e.path())
        .collect();
    for needed in ["libxt_tcp.so", "libxt_REDIRECT.so", "libxt_standard.so"] {
        assert!(
            extensions.iter().any(|p| p.ends_with(needed)),
            "iptables extension {needed} is missing in {XTABLES_EXTENSIONS}"
        );
    }
    for ext in extensions {
        copy_in(rootfs, &ext);
    }
    // xtables-legacy takes its lock in /run.
    std::fs::create_dir_all(rootfs.join("run")).expect("mkdir run");
}

/// Builds the OCI archive of `spec` under `work` and returns its path.
pub fn build(spec: &ImageSpec, work: &Path) -> PathBuf {
    let layout = work.join("layout");
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir layout");
    let layer = work.join("layer.tar");
    sh(&format!(
        "cd '{}' && tar -cf '{}' .",
        spec.rootfs.display(),
        layer.display()
    ));
    let layer_bytes = std::fs::read(&layer).expect("layer");
    let (layer_digest, layer_size) = blob(&layout, &layer_bytes);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin"], "Entrypoint": spec.entrypoint,
                   "Cmd": spec.cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let tag = spec.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": spec.name,
                            "org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let tarball = work.join("image-oci.tar");
    sh(&format!(
        "cd '{}' && tar -cf '{}' oci-layout index.json blobs",
        layout.display(),
        tarball.display()
    ));
    tarball
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_lists_a_dynamic_executables_libc() {
        let libs = libraries(Path::new("/bin/ls"));
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(libs.contains(&PathBuf::from(LOADER)), "{libs:?}");
    }

    #[test]
    fn an_executable_goes_in_with_its_libraries() {
        let dir = tempfile::tempdir().expect("tempdir");
        add_with_libraries(dir.path(), Path::new("/bin/ls"));
        assert!(dir.path().join("bin/ls").is_file() || dir.path().join("usr/bin/ls").is_file());
        for lib in libraries(Path::new("/bin/ls")) {
            let inside = dir.path().join(lib.strip_prefix("/").unwrap());
            assert!(inside.is_file(), "{} missing", inside.display());
        }
    }

    #[test]
    fn the_iptables_rootfs_has_both_iptables_and_their_extensions() {
        let dir = tempfile::tempdir().expect("tempdir");
        xtables_rootfs(dir.path(), Path::new("/bin/busybox"));
        for name in ["iptables-legacy", "iptables-nft"] {
            let link = dir.path().join("sbin").join(name);
            let target = std::fs::read_link(&link).expect("a link");
            assert!(
                link.parent().unwrap().join(&target).is_file(),
                "{name} -> {}",
                target.display()
            );
        }
        let ext = dir
            .path()
            .join("usr/lib/x86_64-linux-gnu/xtables/libxt_REDIRECT.so");
        assert!(ext.is_file(), "{}", ext.display());
        assert!(dir.path().join(LOADER.trim_start_matches('/')).is_file());
    }
}
