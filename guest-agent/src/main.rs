//! `husk-agent`: as PID 1, the guest's init and agent; otherwise a host-mode agent
//! (`--listen unix:/path`), or the setup process of a container (internal).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use husk_agent::container::{Runtime, RuntimeConfig};
use husk_agent::reaper::Reaper;
use husk_agent::server::{EndSandbox, Mode, Service};
use husk_agent::setup::config::SETUP_ARG;
use husk_agent::{init, setup};

/// Default directory of the pod share in the guest.
const DEFAULT_SHARE: &str = "/run/husk/shared";
/// Default cgroup directory for containers.
const DEFAULT_CGROUP: &str = "/sys/fs/cgroup/husk";

const USAGE: &str = "usage: husk-agent [--listen unix:PATH|vsock:PORT] [--share DIR] \
[--cgroup-root DIR|none]";

struct Options {
    listen: String,
    share: PathBuf,
    cgroup_root: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        listen: format!("vsock:{}", husk_protocol::AGENT_VSOCK_PORT),
        share: PathBuf::from(DEFAULT_SHARE),
        cgroup_root: Some(PathBuf::from(DEFAULT_CGROUP)),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--listen" => o.listen = value()?,
            "--share" => o.share = PathBuf::from(value()?),
            "--cgroup-root" => {
                let v = value()?;
                o.cgroup_root = (v != "none").then(|| PathBuf::from(v));
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn ttrpc_address(listen: &str) -> Result<String, String> {
    if let Some(path) = listen.strip_prefix("unix:") {
        Ok(format!("unix://{path}"))
    } else if let Some(port) = listen.strip_prefix("vsock:") {
        Ok(format!("vsock://-1:{port}"))
    } else {
        Err(format!("bad listen address {listen:?}\n{USAGE}"))
    }
}

/// In a guest: the sandbox ends with its VM.
struct ResetVm;

impl EndSandbox for ResetVm {
    fn end_sandbox(&self) {
        init::end_vm("sandbox destroyed, ending the VM");
    }
}

/// On a host (tests): the agent process exits.
struct ExitProcess;

impl EndSandbox for ExitProcess {
    fn end_sandbox(&self) {
        std::process::exit(0);
    }
}

fn serve(
    opts: Options,
    mode: Mode,
    started: Instant,
    init_t0: Option<std::time::Duration>,
) -> Result<(), String> {
    println!("husk-agent {} started", env!("CARGO_PKG_VERSION"));
    let reaper = Reaper::start().map_err(|e| format!("reaper: {e}"))?;
    let runtime = Arc::new(Runtime::new(
        RuntimeConfig {
            share: opts.share,
            cgroup_root: opts.cgroup_root,
        },
        reaper,
    ));
    let end: Arc<dyn EndSandbox> = match mode {
        Mode::Guest => Arc::new(ResetVm),
        Mode::Host => Arc::new(ExitProcess),
    };
    let service = Arc::new(Service::new(runtime, mode, end, started, init_t0));
    let address = ttrpc_address(&opts.listen)?;
    let mut server = ttrpc::Server::new()
        .bind(&address)
        .map_err(|e| format!("listen on {address}: {e}"))?
        .register_service(husk_protocol::agent_ttrpc::create_agent(service))
        .set_thread_count_max(256);
    server.start().map_err(|e| format!("serve: {e}"))?;
    match init_t0 {
        Some(t0) => println!(
            "husk-agent: listening on {} ({:.1} ms after /init start)",
            opts.listen,
            init::boottime().saturating_sub(t0).as_secs_f64() * 1000.0
        ),
        None => println!("husk-agent: listening on {}", opts.listen),
    }
    loop {
        std::thread::park();
    }
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(SETUP_ARG) {
        setup::main();
    }
    let pid1 = std::process::id() == 1;
    let init_t0 = pid1.then(init::init_t0);
    if pid1 {
        init::install_panic_hook();
        if let Err(e) = init::setup() {
            init::end_vm(&format!("fatal: init: {e}"));
        }
    }
    // A plain level unless HUSK_AGENT_LOG asks for a filter (parsing one costs boot time).
    let _ = match tracing_subscriber::EnvFilter::try_from_env("HUSK_AGENT_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        Err(_) => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // As PID 1 the kernel passes its unknown cmdline words as arguments: ignore them.
    let opts = if pid1 {
        parse_args(&[]).map_err(|e| e.to_string())
    } else {
        if args.iter().any(|a| a == "--version") {
            println!("husk-agent {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        parse_args(&args)
    };
    let result = opts.and_then(|o| {
        let mode = if pid1 { Mode::Guest } else { Mode::Host };
        if !pid1 {
            // Host mode: container processes are our children (CLONE_PARENT); orphans of
            // setup processes come back to us too.
            // SAFETY: integer-only prctl.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        serve(o, mode, started, init_t0)
    });
    if let Err(e) = result {
        if pid1 {
            init::end_vm(&format!("fatal: {e}"));
        }
        eprintln!("husk-agent: {e}");
        std::process::exit(1);
    }
}
