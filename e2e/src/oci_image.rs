//! OCI image tarballs built locally (no registry is reachable), for
//! `ctr images import`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cmd::sh;

/// Applets linked to busybox in the test image.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "uname", "sleep", "true", "false", "ls", "head", "wc", "ps", "cut", "dd",
    "stty", "tr", "grep", "mkdir", "rm", "env", "id", "kill",
];

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
