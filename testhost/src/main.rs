//! `husk-testhost`: runs a command inside the nested-KVM test host.
//!
//! ```text
//! husk-testhost run [--file SRC[:DST]]... [--exe SRC[:DST]]... [--env K=V]... -- COMMAND...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use husk_testhost::{HostFile, TestHost, TestHostConfig, TestHostImage};

#[derive(Parser)]
#[command(version, about = "Runs commands inside the husk nested-KVM test host")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boots the test host, runs COMMAND there, exits with its status.
    Run {
        /// A file to copy in, as SRC or SRC:DST (DST defaults to SRC).
        #[arg(long = "file")]
        files: Vec<String>,
        /// An executable to copy in with its shared libraries.
        #[arg(long = "exe")]
        executables: Vec<String>,
        /// An environment variable for the command.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Memory of the test host in MiB.
        #[arg(long, default_value_t = 3072)]
        memory_mib: u32,
        /// Time limit in seconds.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
        /// Also print the test host kernel's messages.
        #[arg(long)]
        verbose_kernel: bool,
        /// Parameters for kvm-amd.ko inside the test host.
        #[arg(long, env = "HUSK_TESTHOST_KVM_AMD", default_value = husk_testhost::DEFAULT_KVM_AMD_PARAMS)]
        kvm_amd_params: String,
        /// The command (joined with spaces and run by `sh -c`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Prints whether this host can run KVM guests itself.
    Probe,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn host_file(spec: &str, executable: bool) -> HostFile {
    let (src, dst) = spec.split_once(':').unwrap_or((spec, spec));
    let dst = if dst.starts_with('/') {
        dst.to_string()
    } else {
        format!("/{dst}")
    };
    let src = PathBuf::from(src);
    if executable {
        HostFile::executable(src, dst)
    } else {
        HostFile::new(src, dst)
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Probe => {
            let yes = husk_testhost::hardware_kvm_available();
            println!(
                "hardware KVM: {}",
                if yes { "yes" } else { "no (use the test host)" }
            );
            ExitCode::SUCCESS
        }
        Cmd::Run {
            files,
            executables,
            env,
            memory_mib,
            timeout,
            verbose_kernel,
            kvm_amd_params,
            command,
        } => {
            let config = TestHostConfig {
                memory_mib,
                timeout: Duration::from_secs(timeout),
                verbose_kernel,
                ..Default::default()
            };
            let image = TestHostImage {
                files: files
                    .iter()
                    .map(|f| host_file(f, false))
                    .chain(executables.iter().map(|f| host_file(f, true)))
                    .collect(),
                env,
                command: command.join(" "),
                kvm_amd_params,
            };
            let result =
                TestHost::new(config).and_then(|host| host.run(&image, |l| println!("{l}")));
            match result {
                Ok(outcome) => {
                    eprintln!(
                        "husk-testhost: exit {} after {:.1} s",
                        outcome.exit_code,
                        outcome.wall.as_secs_f64()
                    );
                    ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)
                }
                Err(e) => {
                    eprintln!("husk-testhost: {e}");
                    ExitCode::from(125)
                }
            }
        }
    }
}
