//! `containerd-shim-husk-v2`: see the `husk_shim` crate.

use husk_shim::bootstrap;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", bootstrap::RUNTIME_ID);
            std::process::exit(1);
        }
    };
    if flags.version {
        println!("containerd-shim-husk-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let result = match flags.action.as_str() {
        "start" => bootstrap::start(&flags).map(|address| print!("{address}")),
        "delete" => bootstrap::delete(&flags).and_then(|r| bootstrap::write_delete_response(&r)),
        _ => bootstrap::serve(&flags),
    };
    if let Err(e) = result {
        eprintln!("{}: {e}", bootstrap::RUNTIME_ID);
        std::process::exit(1);
    }
}
