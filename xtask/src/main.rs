//! `cargo xtask`: builds husk's guest image and static binaries and runs the
//! tests, inside the nested-KVM test host when this host lacks VT-x/AMD-V.

mod artifacts;
mod bench;
mod deps;
mod e2e;
mod e2e_attempts;
mod install;
mod soak;
mod test_host;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "husk project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Builds the guest kernel (cached), the static binaries and the guest initramfs.
    Build,
    /// Runs the end-to-end tests (test binaries whose name starts with FILTER).
    E2e {
        /// Only test binaries whose name starts with this (e.g. `vmm`, `agent`, `kvm`).
        filter: Option<String>,
        /// Extra arguments for the test binaries (e.g. a test name).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Everything: the workspace's unit and integration tests, the end-to-end tests, then
    /// a short soak (installs the dependencies first where some are missing).
    Test,
    /// Builds everything and runs a container in a husk VM through containerd (inside the
    /// test host where needed; installs the dependencies first where some are missing).
    Demo,
    /// Runs the benchmarks and prints their table (JSON in target/husk/bench.json).
    Bench {
        /// Runs per figure.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also boot with this guest kernel, `NAME=PATH` (a row against the default one;
        /// e.g. a cached build of an earlier config from /var/cache/husk/kernel).
        #[arg(long = "alt-kernel")]
        alt_kernels: Vec<String>,
        /// Only the boot figures (no containerd).
        #[arg(long)]
        boot_only: bool,
    },
    /// Soaks husk: create/start/exec/kill/delete cycles through containerd, a leftovers
    /// check after each, containerd's and the shims' memory and fds watched for growth
    /// (inside the test host where needed; JSON in target/husk/soak.json).
    Soak {
        /// Cycles in all.
        #[arg(long, default_value_t = 30)]
        cycles: usize,
        /// Workers running cycles at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Alternate ctr cycles with CRI pod cycles.
        #[arg(long)]
        cri: bool,
    },
    /// Builds everything and installs the shim, the VMM, virtiofsd, the guest kernel and initramfs.
    Install {
        /// Binaries go to PREFIX/bin.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Guest kernel and initramfs go here (the shim's default config looks here).
        #[arg(long, default_value = "/usr/share/husk")]
        share_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Build => artifacts::build_all().map(|a| {
            println!("{a}");
            true
        }),
        Cmd::E2e { filter, test_args } => e2e::run(filter.as_deref(), &test_args),
        Cmd::Test => deps::ensure()
            .and_then(|()| e2e::unit_tests())
            .and_then(|ok| Ok(e2e::run(None, &[])? && ok))
            // The short soak: create/exec/kill/delete cycles with a leftovers check each.
            .and_then(|ok| Ok(soak::ci()? && ok)),
        Cmd::Demo => deps::ensure().and_then(|()| e2e::demo()),
        Cmd::Bench {
            runs,
            alt_kernels,
            boot_only,
        } => bench::run(&bench::Options {
            runs,
            alt_kernels,
            boot_only,
        }),
        Cmd::Soak {
            cycles,
            parallel,
            cri,
        } => deps::ensure().and_then(|()| {
            soak::run(&soak::Options {
                cycles,
                parallel,
                cri,
            })
        }),
        Cmd::Install { prefix, share_dir } => install::run(&prefix, &share_dir),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
