//! `husk-bench`: measures husk against its anchors in one run and prints a
//! table (median, min, max over N runs) and the same figures as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use husk_bench::boot::{self, Guest};
use husk_bench::report::{self, Row};
use husk_bench::stats::Summary;

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
    /// QEMU binary for the microvm anchor.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let guest = Guest {
        kernel: cli.kernel.clone(),
        initrd: cli.initrd.clone(),
        memory_mib: cli.memory_mib,
    };
    let timeout = Duration::from_secs(60);
    let vmm = cli.bin_dir.join("husk-vmm");
    let mut husk_boot = Vec::new();
    let mut husk_overhead = Vec::new();
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
                ("husk-vmm", boot::husk_command(&vmm, &guest))
            } else {
                ("qemu-microvm", boot::qemu_command(&cli.qemu, &guest))
            };
            match boot::boot_once(name, cmd, timeout) {
                Ok(sample) if husk => {
                    husk_boot.push(ms(sample.to_marker));
                    husk_overhead.push(sample.memory.overhead_kib() as f64 / 1024.0);
                }
                Ok(sample) => qemu_boot.push(ms(sample.to_marker)),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    let rows = vec![
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
    ];
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
