//! Building what the end-to-end tests and the demo need: static binaries,
//! the guest kernel and the agent initramfs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use husk_rootfs::{guest_image, kernel::KernelBuild};

/// The target triple static binaries are built for. Naming it explicitly
/// keeps `crt-static` away from build scripts and proc macros.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Binaries that go into the test host.
pub const BINARIES: &[(&str, &str)] = &[
    ("husk-vmm", "husk-vmm"),
    ("husk-shim", "containerd-shim-husk-v2"),
    ("husk-e2e", "husk-guest-probe"),
    ("husk-e2e", "husk-pause"),
    ("husk-e2e", "husk-demo"),
    ("husk-e2e", "husk-soak"),
    ("husk-bench", "husk-bench"),
];

/// Everything built.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The workspace root.
    pub root: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Agent initramfs.
    pub initrd: PathBuf,
    /// Directory of the static binaries.
    pub bin_dir: PathBuf,
    /// The end-to-end test executables, by test name.
    pub tests: Vec<(String, PathBuf)>,
}

impl fmt::Display for Artifacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel  {}", self.kernel.display())?;
        writeln!(f, "initrd  {}", self.initrd.display())?;
        writeln!(f, "bin     {}", self.bin_dir.display())?;
        for (name, path) in &self.tests {
            writeln!(f, "test    {name} {}", path.display())?;
        }
        Ok(())
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo` (the one running xtask) in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The guest agent: built with the `guest` profile (for size: the whole binary
/// is copied into every guest's RAM).
pub const AGENT: (&str, &str) = ("husk-agent", "husk-agent");
/// Cargo profile of the guest agent.
pub const GUEST_PROFILE: &str = "guest";

fn static_cargo(args: &[&str]) -> Command {
    static_cargo_profile(args, "release")
}

fn static_cargo_profile(args: &[&str], profile: &str) -> Command {
    let mut cmd = cargo();
    cmd.args(args)
        .args(["--profile", profile, "--target", TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    cmd
}

/// Builds the guest agent with [`GUEST_PROFILE`] and copies it into `bin_dir`.
fn build_agent(bin_dir: &Path) -> Result<()> {
    let (package, bin) = AGENT;
    let status = static_cargo_profile(&["build", "-p", package, "--bin", bin], GUEST_PROFILE)
        .status()
        .context("run cargo build (agent)")?;
    if !status.success() {
        bail!("static build of the agent failed ({status})");
    }
    let src = workspace_root()
        .join("target")
        .join(TARGET)
        .join(GUEST_PROFILE)
        .join(bin);
    std::fs::copy(&src, bin_dir.join(bin)).with_context(|| format!("copy {}", src.display()))?;
    Ok(())
}

/// Builds the static binaries and the e2e test executables; returns the
/// test executables.
fn build_static(bin_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut build = static_cargo(&["build"]);
    for (package, bin) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    let status = build.status().context("run cargo build")?;
    if !status.success() {
        bail!("static build failed ({status})");
    }
    let release = workspace_root().join("target").join(TARGET).join("release");
    std::fs::create_dir_all(bin_dir)?;
    for (_, bin) in BINARIES {
        let src = release.join(bin);
        std::fs::copy(&src, bin_dir.join(bin))
            .with_context(|| format!("copy {}", src.display()))?;
    }
    build_agent(bin_dir)?;

    let output = static_cargo(&[
        "test",
        "-p",
        "husk-e2e",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit())
    .output()
    .context("run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the end-to-end tests failed ({})", output.status);
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
            && msg["profile"]["test"] == true;
        if let (true, Some(exe)) = (is_test, msg["executable"].as_str()) {
            let name = msg["target"]["name"].as_str().unwrap_or("test").to_string();
            if name != "husk_e2e" && name != "husk-e2e" {
                tests.push((name, PathBuf::from(exe)));
            }
        }
    }
    tests.sort();
    Ok(tests)
}

/// Builds the kernel (cached), the static binaries, the tests and the initramfs.
pub fn build_all() -> Result<Artifacts> {
    let root = workspace_root();
    let out = root.join("target").join("husk");
    let bin_dir = out.join("bin");
    let kernel = KernelBuild::from_system()?.build(&mut std::io::stderr())?;
    let tests = build_static(&bin_dir)?;
    let initrd = out.join("initrd.img");
    guest_image::write_agent_initramfs(&bin_dir.join("husk-agent"), &initrd)?;
    let busybox = Path::new("/bin/busybox");
    if busybox.is_file() {
        std::fs::copy(busybox, bin_dir.join("busybox"))?;
    }
    Ok(Artifacts {
        root,
        kernel: kernel.vmlinux,
        initrd,
        bin_dir,
        tests,
    })
}

/// Where virtiofsd is, if installed.
pub fn virtiofsd() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [
        home.join(".cargo/bin/virtiofsd"),
        PathBuf::from("/usr/libexec/virtiofsd"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}
