//! `husk-vmm`: boots one micro-VM and exits when the guest resets (status 0), when the
//! control API asks it to (status 0), or on a fatal error (status 1; invalid configuration:
//! status 2).

use clap::Parser;
use husk_vmm::builder::run_vm;
use husk_vmm::config::{Cli, VmConfig};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match VmConfig::try_from(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            std::process::exit(2);
        }
    };
    let result = run_vm(&cfg);
    remove_own_sockets(&cfg);
    match result {
        Ok(reason) => {
            tracing::info!("VM ended: {reason:?}");
            std::process::exit(reason.exit_code());
        }
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            std::process::exit(1);
        }
    }
}

/// Removes the sockets husk-vmm bound. `process::exit` runs no destructors, and the
/// devices that own them may still be held by another thread when the VM ends.
fn remove_own_sockets(cfg: &VmConfig) {
    if let Some(v) = &cfg.vsock {
        let _ = std::fs::remove_file(&v.socket);
    }
    if let Some(api) = &cfg.api_socket {
        let _ = std::fs::remove_file(api);
    }
}
