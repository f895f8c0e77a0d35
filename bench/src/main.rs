//! `husk-bench`: measures husk against its anchors in one run and prints a
//! table (median, min, max over N runs) and the same figures as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use husk_bench::boot::{self, Guest};
use husk_bench::containers::{self, Plan};
use husk_bench::report::{self, Row};
use husk_bench::stats::Summary;
use husk_bench::virtiofsd;
use husk_e2e::containerd::{Containerd, Options};
use husk_e2e::Artifacts;

/// Prefix of the JSON line, so a wrapper can pick it out of a console log.
const JSON_PREFIX: &str = "HUSK-BENCH-JSON ";

#[derive(Parser)]
#[command(about = "husk benchmarks (run where /dev/kvm is real KVM)")]
struct Cli {
    /// Runs per figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Guest kernel (ELF vmlinux).
    #[arg(long, env = "HUSK_KERNEL")]
    kernel: PathBuf,
    /// Guest initramfs (husk-agent as /init).
    #[arg(long, env = "HUSK_INITRD")]
    initrd: PathBuf,
    /// Directory with husk-vmm.
    #[arg(long, env = "HUSK_BIN_DIR")]
    bin_dir: PathBuf,
    /// More initramfs images to boot husk with, each `NAME=PATH`; each gets a
    /// row against the default initrd (compression and size experiments).
    #[arg(long = "alt-initrd", value_parser = parse_alt)]
    alt_initrds: Vec<(String, PathBuf)>,
    /// More kernel parameters to boot husk with, each `NAME=PARAMS` (appended
    /// to the default command line); each gets a row against the default.
    #[arg(long = "alt-cmdline", value_parser = parse_alt_cmdline)]
    alt_cmdlines: Vec<(String, String)>,
    /// More guest kernels to boot husk with, each `NAME=PATH`; each gets a row against
    /// the default kernel (what a kernel config change costs in boot time).
    #[arg(long = "alt-kernel", value_parser = parse_alt)]
    alt_kernels: Vec<(String, PathBuf)>,
    /// QEMU binary for the microvm anchor.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Pods of the memory and parallel-start figures.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// Rounds of the many-pod figures (each starts the pods twice).
    #[arg(long, default_value_t = 1)]
    pod_rounds: usize,
    /// Guest memory per pod in MiB (containerd figures).
    #[arg(long, default_value_t = 128)]
    pod_memory_mib: u32,
    /// Scratch directory for the private containerd.
    #[arg(long, env = "HUSK_WORK_DIR", default_value = "/tmp/husk-bench")]
    work_dir: PathBuf,
    /// First print one husk boot's console with timestamps (where boot time goes).
    #[arg(long)]
    boot_trace: bool,
    /// Give up (exit 2) after this many seconds, keeping the tables printed so far.
    #[arg(long, default_value_t = 1080)]
    deadline_s: u64,
    /// Only the boot figures (no containerd).
    #[arg(long)]
    boot_only: bool,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_alt(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    Ok((name.to_string(), PathBuf::from(path)))
}

fn parse_alt_cmdline(s: &str) -> Result<(String, String), String> {
    let (name, params) = s.split_once('=').ok_or("expected NAME=PARAMS")?;
    Ok((name.to_string(), params.to_string()))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The containerd figures; a panic of the harness (containerd missing, image
/// import failed) becomes an error instead of losing the boot figures.
fn container_figures(cli: &Cli) -> (Vec<Row>, Vec<String>) {
    let artifacts = Artifacts {
        kernel: cli.kernel.clone(),
        initrd: cli.initrd.clone(),
        bin_dir: cli.bin_dir.clone(),
        work_dir: cli.work_dir.clone(),
    };
    let mut opts = Options::new(cli.work_dir.join("containerd"));
    opts.namespace = "husk-bench".into();
    opts.memory_mib = cli.pod_memory_mib;
    opts.debug = false;
    let plan = Plan {
        runs: cli.runs,
        pods: cli.pods,
        pod_rounds: cli.pod_rounds,
    };
    let pods = cli.pods;
    let measured = std::panic::catch_unwind(|| {
        let d = Containerd::start(artifacts, opts);
        containers::measure(&d, plan, &mut |s| {
            print!(
                "husk-bench: figures so far\n{}",
                report::table(&s.rows(pods))
            );
        })
    });
    match measured {
        Ok(s) => (s.rows(cli.pods), s.errors),
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (Vec::new(), vec![format!("containerd harness: {why}")])
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let deadline = Duration::from_secs(cli.deadline_s);
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("husk-bench: deadline of {deadline:?} reached; giving up");
        std::process::exit(2);
    });
    let guest = Guest {
        kernel: cli.kernel.clone(),
        initrd: cli.initrd.clone(),
        memory_mib: cli.memory_mib,
    };
    let timeout = Duration::from_secs(60);
    let vmm = cli.bin_dir.join("husk-vmm");
    // Each husk boot writes husk-vmm's configuration here (one boot at a time).
    if let Err(e) = std::fs::create_dir_all(&cli.work_dir) {
        eprintln!("husk-bench: cannot create {}: {e}", cli.work_dir.display());
        return ExitCode::FAILURE;
    }
    let vmm_config = cli.work_dir.join("husk-vmm.json");
    if cli.boot_trace {
        let traced =
            boot::husk_command_with(&vmm, &guest, &boot::trace_cmdline(), &vmm_config, true)
                .and_then(|mut cmd| {
                    cmd.env("HUSK_VMM_LOG", "husk_vmm::builder=debug,info");
                    boot::trace("husk-vmm", cmd, timeout)
                });
        match traced {
            Ok(lines) => {
                for (at, line) in lines.iter().filter(|(_, l)| boot::worth_showing(l)) {
                    println!("boot-trace {:>8.1} ms | {line}", ms(*at));
                }
            }
            Err(e) => eprintln!("husk-bench: boot trace: {e}"),
        }
    }
    let mut husk_boot = Vec::new();
    let mut husk_overhead = Vec::new();
    let mut husk_touched = Vec::new();
    // Variants of the husk boot: (name, guest, kernel command line, confined). The
    // unconfined one (no jail, no seccomp) shows what confinement costs.
    let mut alts: Vec<(String, Guest, String, bool)> = vec![(
        "husk-vmm unconfined".into(),
        guest.clone(),
        boot::cmdline().build(),
        false,
    )];
    for (name, initrd) in &cli.alt_initrds {
        let alt = Guest {
            initrd: initrd.clone(),
            ..guest.clone()
        };
        alts.push((format!("initrd {name}"), alt, boot::cmdline().build(), true));
    }
    for (name, params) in &cli.alt_cmdlines {
        let cmdline = boot::cmdline().param(params).build();
        alts.push((format!("cmdline {name}"), guest.clone(), cmdline, true));
    }
    for (name, kernel) in &cli.alt_kernels {
        let alt = Guest {
            kernel: kernel.clone(),
            ..guest.clone()
        };
        alts.push((format!("kernel {name}"), alt, boot::cmdline().build(), true));
    }
    let mut alt_boot = vec![Vec::new(); alts.len()];
    let mut alt_touched = vec![Vec::new(); alts.len()];
    let mut alt_overhead = vec![Vec::new(); alts.len()];
    let mut qemu_boot = Vec::new();
    let mut errors = Vec::new();
    for run in 0..cli.runs {
        // Alternate the order so neither side always runs on a warmer cache.
        let order: [bool; 2] = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for husk in order {
            let (name, cmd) = if husk {
                ("husk-vmm", boot::husk_command(&vmm, &guest, &vmm_config))
            } else {
                ("qemu-microvm", Ok(boot::qemu_command(&cli.qemu, &guest)))
            };
            match cmd.and_then(|cmd| boot::boot_once(name, cmd, timeout)) {
                Ok(sample) if husk => {
                    husk_boot.push(ms(sample.to_marker));
                    husk_overhead.push(mib(sample.memory.overhead_kib()));
                    husk_touched.push(mib(sample.memory.guest_rss_kib));
                }
                Ok(sample) => qemu_boot.push(ms(sample.to_marker)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for (i, (name, alt, cmdline, confined)) in alts.iter().enumerate() {
            let booted = boot::husk_command_with(&vmm, alt, cmdline, &vmm_config, *confined)
                .and_then(|cmd| boot::boot_once(name, cmd, timeout));
            match booted {
                Ok(sample) => {
                    alt_boot[i].push(ms(sample.to_marker));
                    alt_touched[i].push(mib(sample.memory.guest_rss_kib));
                    alt_overhead[i].push(mib(sample.memory.overhead_kib()));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    let mut vfs_start = Vec::new();
    let vfs_bin = cli.bin_dir.join("virtiofsd");
    for _ in 0..cli.runs {
        match virtiofsd::start_to_socket(&vfs_bin, &cli.work_dir.join("virtiofsd"), timeout) {
            Ok(t) => vfs_start.push(ms(t)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut rows = vec![
        Row {
            figure: "boot: VMM start to guest init".into(),
            unit: "ms".into(),
            husk: Summary::of(&husk_boot),
            anchor_name: "QEMU microvm".into(),
            anchor: Summary::of(&qemu_boot),
        },
        Row {
            figure: "VMM RSS outside guest memory".into(),
            unit: "MiB".into(),
            husk: Summary::of(&husk_overhead),
            anchor_name: "-".into(),
            anchor: None,
        },
        Row {
            figure: "virtiofsd spawn to socket (overlaps VMM start)".into(),
            unit: "ms".into(),
            husk: Summary::of(&vfs_start),
            anchor_name: "-".into(),
            anchor: None,
        },
        Row {
            figure: "guest RAM touched at init".into(),
            unit: "MiB".into(),
            husk: Summary::of(&husk_touched),
            anchor_name: "-".into(),
            anchor: None,
        },
    ];
    for (i, (name, _, _, _)) in alts.iter().enumerate() {
        rows.push(Row {
            figure: format!("boot with {name}"),
            unit: "ms".into(),
            husk: Summary::of(&alt_boot[i]),
            anchor_name: "default".into(),
            anchor: Summary::of(&husk_boot),
        });
        rows.push(Row {
            figure: format!("guest RAM touched, {name}"),
            unit: "MiB".into(),
            husk: Summary::of(&alt_touched[i]),
            anchor_name: "default".into(),
            anchor: Summary::of(&husk_touched),
        });
        rows.push(Row {
            figure: format!("VMM RSS outside guest memory, {name}"),
            unit: "MiB".into(),
            husk: Summary::of(&alt_overhead[i]),
            anchor_name: "default".into(),
            anchor: Summary::of(&husk_overhead),
        });
    }
    if !cli.boot_only {
        print!("husk-bench: boot figures\n{}", report::table(&rows));
        let (more, errs) = container_figures(&cli);
        rows.extend(more);
        errors.extend(errs);
    }
    print!("{}", report::table(&rows));
    for e in &errors {
        eprintln!("husk-bench: {e}");
    }
    let json = serde_json::json!({ "runs": cli.runs, "rows": rows, "errors": errors });
    println!("{JSON_PREFIX}{json}");
    if let Some(path) = cli.json {
        if let Err(e) = std::fs::write(&path, format!("{json:#}\n")) {
            eprintln!("husk-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
