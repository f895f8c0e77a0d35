//! `husk-rootfs`: builds the guest kernel and the agent initramfs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use husk_rootfs::{guest_image, kernel::KernelBuild};

#[derive(Parser)]
#[command(version, about = "Builds the husk guest kernel and initramfs")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Builds (or finds in the cache) the guest vmlinux and prints its path.
    Kernel,
    /// Writes the agent initramfs (gzip newc) around a static husk-agent.
    Initramfs {
        /// The statically linked husk-agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Cmd::Kernel => KernelBuild::from_system()
            .and_then(|b| b.build(&mut std::io::stderr()))
            .map(|k| {
                eprintln!(
                    "kernel: {} in {:.1} s",
                    if k.cached { "cached" } else { "built" },
                    started.elapsed().as_secs_f64()
                );
                println!("{}", k.vmlinux.display());
            })
            .map_err(Into::into),
        Cmd::Initramfs { agent, out } => guest_image::write_agent_initramfs(&agent, &out)
            .map(|()| println!("{}", out.display()))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-rootfs: {e}");
            ExitCode::FAILURE
        }
    }
}
