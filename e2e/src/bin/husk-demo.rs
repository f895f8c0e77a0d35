//! `husk-demo`: husk's main job end to end. Starts a private containerd
//! configured for husk, imports a busybox image built locally, and runs a
//! container in its own VM with `ctr run --runtime io.containerd.husk.v2`,
//! printing what the container printed. `cargo xtask demo` runs it (inside
//! the nested-KVM test host where this host has no VT-x/AMD-V).

use std::process::ExitCode;
use std::time::Instant;

use husk_e2e::cmd::sh;
use husk_e2e::containerd::{Containerd, Options, BUSYBOX_IMAGE, HUSK_RUNTIME};
use husk_e2e::Artifacts;

/// What the demo container runs.
const SCRIPT: &str = "echo \"hello from a husk VM\"; \
    echo \"kernel: $(uname -sr)\"; echo \"cpus: $(grep -c ^processor /proc/cpuinfo)\"; \
    echo \"memory: $(grep MemTotal /proc/meminfo)\"";

fn main() -> ExitCode {
    let artifacts = Artifacts::from_env();
    let work = artifacts.work_dir.join("demo");
    let mut opts = Options::new(work);
    opts.namespace = "husk-demo".into();
    opts.debug = false;
    let started = Instant::now();
    let containerd = Containerd::start(artifacts, opts);
    println!(
        "demo: private containerd up, {BUSYBOX_IMAGE} imported ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("demo: ctr run --rm --runtime {HUSK_RUNTIME} {BUSYBOX_IMAGE} demo sh -c '...'");
    let t = Instant::now();
    let out = containerd.run("demo", &[], &["sh", "-c", SCRIPT]);
    let took = t.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        eprintln!("demo: the container failed:\n{}", containerd.explain(&out));
        return ExitCode::FAILURE;
    }
    println!("demo: host kernel: Linux {}", sh("uname -r").trim());
    println!("demo: container ran in its own husk VM; ctr run took {took:.1} s");
    containerd.assert_nothing_left("after the demo");
    println!("demo: VM, virtiofsd, shim, mounts and sockets are gone");
    ExitCode::SUCCESS
}
