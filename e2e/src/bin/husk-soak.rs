//! `husk-soak --cycles N [--parallel P] [--cri]`: husk's soak. Starts a private
//! containerd configured for husk (with the CRI plugin, CNI and the pause image when
//! `--cri` asks for CRI pod cycles between the ctr ones) and runs N create/start/exec/
//! kill/delete cycles on P workers, checking after every cycle that nothing of husk is
//! left and sampling containerd's and the shims' memory and fds. Prints a line per cycle,
//! then a table and the same figures as one JSON line prefixed `HUSK-SOAK-JSON `; exits
//! non-zero on leftovers, a failed step, an fd leak or memory growth beyond its bound.
//! `cargo xtask soak` runs it (inside the nested-KVM test host where this host has no
//! VT-x/AMD-V); see `husk_e2e::soak`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use husk_e2e::containerd::{Containerd, Options, BUSYBOX_IMAGE};
use husk_e2e::cri::setup::{self, CRI_NAMESPACE, PAUSE_IMAGE};
use husk_e2e::cri::CriClient;
use husk_e2e::soak::args::Plan;
use husk_e2e::soak::report::Report;
use husk_e2e::soak::runner::{self, CRI_CALL_TIMEOUT};
use husk_e2e::soak::{JSON_PREFIX, NAMESPACE};
use husk_e2e::Artifacts;

/// How long the CRI plugin may take to list an imported image.
const IMAGE_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// Starts containerd as `plan` needs it; with CRI, waits until CRI lists the images.
fn start(plan: &Plan) -> Result<Containerd, String> {
    let artifacts = Artifacts::from_env();
    let work = artifacts.scratch("soak");
    // containerd starts with its work directory emptied: the CNI config lives beside it.
    let mut opts = Options::new(work.join("containerd"));
    opts.debug = false;
    opts.namespace = NAMESPACE.into();
    if plan.cri {
        setup::ensure_node_files();
        setup::write_cni_config(&work);
        opts.namespace = CRI_NAMESPACE.into();
        opts.extra_config = setup::cri_config(&work);
    }
    let d = Containerd::start(artifacts, opts);
    if plan.cri {
        setup::import_pause_image(&d);
        let cri = CriClient::connect(&d.socket, CRI_CALL_TIMEOUT).map_err(|e| e.to_string())?;
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            setup::wait_for_image(&cri, image, IMAGE_SEEN_WITHIN).map_err(|e| e.to_string())?;
        }
    }
    Ok(d)
}

fn main() -> ExitCode {
    let plan = match Plan::parse(std::env::args().skip(1)) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("husk-soak: {e}");
            return ExitCode::from(2);
        }
    };
    let t = Instant::now();
    let d = match start(&plan) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("husk-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: private containerd up in namespace {} ({:.1} s); {} cycles on {} worker(s){}",
        d.opts.namespace,
        t.elapsed().as_secs_f64(),
        plan.cycles,
        plan.parallel,
        if plan.cri {
            ", ctr and CRI alternating"
        } else {
            ""
        }
    );
    let outcome = match runner::run(&d, plan) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("husk-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failure = outcome.failure.as_ref().map(ToString::to_string);
    if failure.is_some() {
        eprintln!("husk-soak: why:\n{}", d.diagnostics());
    }
    let report = Report::new(
        plan,
        outcome.start,
        &outcome.samples,
        outcome.wall.as_secs_f64(),
        failure,
    );
    print!("{}", report.table());
    println!("{JSON_PREFIX}{}", report.json());
    match report.passed() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}
