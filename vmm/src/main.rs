//! `husk-vmm --config FILE`: boots one micro-VM and exits with a [`VmmExit`] status: 0 when
//! the guest resets or the control API asks it to, 1 on a fatal error, 2 for an invalid
//! configuration, 3 when the guest triple-faults.

use clap::Parser;
use husk_vmm::builder::{run_vm, Confinement};
use husk_vmm_api::{VmConfig, VmmArgs, VmmExit};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match VmmArgs::try_parse() {
        Ok(a) => a,
        // --help and --version print and end with status 0; usage errors get BadConfig.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(VmmExit::BadConfig.code());
        }
    };
    let cfg = match VmConfig::from_json_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            std::process::exit(VmmExit::BadConfig.code());
        }
    };
    let confinement = Confinement {
        seccomp: !args.no_seccomp,
        jail: !args.no_jail,
    };
    let result = run_vm(&cfg, confinement);
    remove_own_sockets(&cfg);
    match result {
        Ok(reason) => {
            let exit = reason.vmm_exit();
            tracing::info!("VM ended: {reason:?}; exit status {} ({exit})", exit.code());
            std::process::exit(exit.code());
        }
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            std::process::exit(VmmExit::Error.code());
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
