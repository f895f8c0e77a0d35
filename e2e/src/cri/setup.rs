//! A private containerd's CRI plugin set up for husk, as the CRI tests and the soak need
//! it: the plugin section (husk as handler `husk`, runc as the default handler), the
//! node files CRI copies into pods, the CNI config, and the pause image built here (no
//! registry is reachable).
//!
//! Every pod gets its own network namespace from CNI: the conf dir holds one network
//! list, Debian's `loopback` plugin and then `static`, which only reports an address
//! (192.0.2.2, TEST-NET-1) for `eth0` and touches no interface. containerd 1.6 refuses a
//! pod whose CNI result has no address on `eth0` ("failed to find network info for
//! sandbox"), and a loopback-only list gives none; so the pod's namespace holds `lo` and
//! nothing else. The plugins are found in [`CNI_BIN_DIR`] (package
//! `containernetworking-plugins`; xtask packs them into the test host).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::containerd::Containerd;
use crate::cri::CriClient;
use crate::oci_image::ImageSpec;
use crate::wait_until;

/// The locally built pause image, the CRI plugin's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:husk";
/// Where Debian's CNI plugins are (in the test host too).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The pods' CNI network list (see the module docs for why `static` follows `loopback`).
const CNI_CONFLIST: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "husk-e2e",
  "plugins": [
    {"type": "loopback"},
    {"type": "static", "ipam": {"type": "static", "addresses": [{"address": "192.0.2.2/24"}]}}
  ]
}
"#;

/// The CRI plugin never listed an image.
#[derive(Debug, thiserror::Error)]
#[error("CRI never saw image {reference} within {within:?} (last error: {last:?})")]
pub struct ImageNotSeen {
    /// The image.
    pub reference: String,
    /// How long it was waited for.
    pub within: Duration,
    /// The last error of `ImageStatus`, if any.
    pub last: Option<String>,
}

/// containerd's CRI plugin section: husk as runtime `husk`, runc the default,
/// CNI from [`CNI_BIN_DIR`] and `<work>/cni/net.d` (see [`write_cni_config`]).
pub fn cri_config(work: &Path) -> String {
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
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf}"
"#,
        conf = work.join("cni/net.d").display()
    )
}

/// CRI copies the node's /etc/hosts and /etc/resolv.conf into every pod; the
/// bare test host has neither, so they are written when missing.
pub fn ensure_node_files() {
    for (path, text) in [
        ("/etc/hosts", "127.0.0.1 localhost\n"),
        ("/etc/resolv.conf", "nameserver 127.0.0.1\n"),
    ] {
        if !Path::new(path).exists() {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    }
}

/// Writes the CNI config under `work` and checks that the plugins it names are there.
pub fn write_cni_config(work: &Path) {
    for plugin in ["loopback", "static"] {
        let path = Path::new(CNI_BIN_DIR).join(plugin);
        assert!(
            path.is_file(),
            "CNI plugin {} is missing: apt-get install containernetworking-plugins \
             (xtask packs it into the test host)",
            path.display()
        );
    }
    let dir = work.join("cni/net.d");
    std::fs::create_dir_all(&dir).expect("CNI conf dir");
    std::fs::write(dir.join("10-husk-e2e.conflist"), CNI_CONFLIST).expect("CNI config");
}

/// Builds the pause image (the static `husk-pause` as `/pause`) and imports it.
pub fn import_pause_image(d: &Containerd) {
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
pub fn wait_for_image(
    cri: &CriClient,
    reference: &str,
    within: Duration,
) -> Result<(), ImageNotSeen> {
    let mut last = None;
    let seen = wait_until(Instant::now() + within, || {
        match cri.image_status(reference) {
            Ok(image) => image.is_some(),
            Err(e) => {
                last = Some(e.to_string());
                false
            }
        }
    });
    match seen {
        true => Ok(()),
        false => Err(ImageNotSeen {
            reference: reference.to_string(),
            within,
            last,
        }),
    }
}
