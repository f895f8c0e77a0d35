//! The soak's workers: each takes the next cycle number until all are taken, runs the
//! cycle, waits until nothing of it is left, then samples containerd and the shims. The
//! first failure stops every worker; what was sampled until then is still reported.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk_lock::MutexExt;

use crate::containerd::Containerd;
use crate::cri::CriClient;
use crate::soak::args::Plan;
use crate::soak::cycle::{self, Kind, StepError};
use crate::soak::procs::{self, ProbeError, ProcFigures};
use crate::soak::report::Sample;
use crate::soak::residue::{self, Residue};
use crate::wait_until;

/// How long a cycle's leftovers may take to go once its last call returned (the shim
/// exits after containerd's Shutdown, and containerd removes its socket after that).
pub const CLEAN_WITHIN: Duration = Duration::from_secs(30);
/// Longest one CRI call may take (nested VMs under TCG are slow).
pub const CRI_CALL_TIMEOUT: Duration = Duration::from_secs(240);

/// Why the soak failed.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// A step of a cycle failed.
    #[error("cycle {n} ({kind:?} {id}): {source}")]
    Step {
        /// The cycle number (from 0).
        n: usize,
        /// Its kind.
        kind: Kind,
        /// The container or pod id.
        id: String,
        /// What failed.
        #[source]
        source: StepError,
    },
    /// Something of husk was left after a cycle (or at the end, `n` = `None`).
    #[error("{} left behind {CLEAN_WITHIN:?} after its last call:\n{residue:#?}",
        n.map_or_else(|| "the soak".to_string(), |n| format!("cycle {n} ({id})")))]
    Leftovers {
        /// The cycle, or `None` for the check after all workers stopped.
        n: Option<usize>,
        /// The pod id (empty at the end).
        id: String,
        /// What was left.
        residue: Box<Residue>,
    },
    /// More husk shims, or shim sockets, than workers were alive between cycles.
    #[error(
        "after cycle {n}: {shims} husk shims ({ids:?}) and {sockets} shim sockets alive, \
             more than the {parallel} workers can hold"
    )]
    TooManyShims {
        /// The cycle after which it was seen.
        n: usize,
        /// Live husk shim servers.
        shims: usize,
        /// The ids they serve.
        ids: Vec<String>,
        /// Sockets in the shim socket dir.
        sockets: usize,
        /// Workers.
        parallel: usize,
    },
    /// containerd could not be sampled (it died?).
    #[error("containerd: {0}")]
    Containerd(#[source] ProbeError),
    /// containerd's process was not found.
    #[error("containerd's process (started with {0}) is not running")]
    NoContainerd(String),
    /// A worker could not connect to CRI.
    #[error("worker {worker}: {source}")]
    Cri {
        /// The worker.
        worker: usize,
        /// Why.
        #[source]
        source: crate::cri::CriError,
    },
    /// The soak cannot see cgroups.
    #[error(
        "cgroup v2 is not mounted at {}: the soak cannot see leaked cgroups",
        residue::CGROUP_ROOT
    )]
    NoCgroup2,
    /// The host held something of husk before the first cycle.
    #[error("the host is not clean before the soak:\n{0:#?}")]
    NotClean(Box<Residue>),
}

/// What a soak run came to.
#[derive(Debug)]
pub struct Outcome {
    /// containerd before the first cycle.
    pub start: ProcFigures,
    /// One sample per finished cycle, in the order they finished.
    pub samples: Vec<Sample>,
    /// From the first cycle's start to the last one's end.
    pub wall: Duration,
    /// The first failure, if any.
    pub failure: Option<SoakError>,
}

/// The soak in progress, shared by the workers.
struct Soak<'a> {
    d: &'a Containerd,
    plan: Plan,
    containerd_pid: u32,
    next: AtomicUsize,
    stop: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    failure: Mutex<Option<SoakError>>,
    began: Instant,
}

/// Waits until `scan` finds nothing; what it last found otherwise.
fn wait_clean(scan: impl Fn() -> Residue) -> Result<(), Residue> {
    let mut left = Residue::default();
    match wait_until(Instant::now() + CLEAN_WITHIN, || {
        left = scan();
        left.is_empty()
    }) {
        true => Ok(()),
        false => Err(left),
    }
}

impl Soak<'_> {
    fn namespace(&self) -> &str {
        &self.d.opts.namespace
    }

    fn fail(&self, e: SoakError) {
        self.stop.store(true, Ordering::SeqCst);
        let mut first = self.failure.locked();
        if first.is_none() {
            eprintln!("husk-soak: {e}");
            *first = Some(e);
        }
    }

    /// One cycle and the checks after it.
    fn cycle(&self, worker: usize, n: usize, cri: Option<&CriClient>) -> Result<(), SoakError> {
        let kind = cycle::Kind::of(n, self.plan.cri);
        let name = cycle::cycle_id(worker, n);
        let t = Instant::now();
        let mut id = name.clone();
        let result = match (kind, cri) {
            (Kind::Cri, Some(cri)) => cycle::cri_cycle(cri, &name, &mut |pod| id = pod.into()),
            _ => cycle::ctr_cycle(self.d, &name),
        };
        let shim = result.map_err(|source| {
            match cri.filter(|_| kind == Kind::Cri) {
                // The sandbox id replaced the name once RunPodSandbox answered.
                Some(cri) if id != name => cycle::cri_cleanup(cri, &id),
                Some(_) => {}
                None => cycle::ctr_cleanup(self.d, &name),
            }
            SoakError::Step {
                n,
                kind,
                id: id.clone(),
                source,
            }
        })?;
        let namespace = self.namespace();
        let clean = match self.plan.parallel {
            1 => wait_clean(|| Residue::global(namespace, crate::soak::ID_PREFIX)),
            _ => wait_clean(|| Residue::of_pod(namespace, &id)),
        };
        clean.map_err(|residue| SoakError::Leftovers {
            n: Some(n),
            id: id.clone(),
            residue: Box::new(residue),
        })?;
        let took = t.elapsed();
        let containerd = procs::figures(self.containerd_pid).map_err(SoakError::Containerd)?;
        let shims = procs::husk_shims();
        let sockets = residue::shim_sockets();
        if shims.len() > self.plan.parallel || sockets > self.plan.parallel {
            return Err(SoakError::TooManyShims {
                n,
                shims: shims.len(),
                ids: shims.into_iter().map(|s| s.id).collect(),
                sockets,
                parallel: self.plan.parallel,
            });
        }
        let sample = Sample {
            n,
            kind,
            took_ms: took.as_secs_f64() * 1e3,
            containerd,
            live_shims: shims.len(),
            shim,
        };
        let mut samples = self.samples.locked();
        samples.push(sample);
        println!(
            "soak: {:>5}/{} {} {name} {:>7.2} s | containerd {:.1} MiB {} fds | shim {} | {:.0} s in",
            samples.len(),
            self.plan.cycles,
            kind.name(),
            took.as_secs_f64(),
            containerd.rss_kib as f64 / 1024.0,
            containerd.fds,
            shim.map_or_else(
                || "-".to_string(),
                |s| format!("{:.1} MiB {} fds", s.rss_kib as f64 / 1024.0, s.fds)
            ),
            self.began.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    fn worker(&self, worker: usize) {
        let cri = match self.plan.cri {
            true => match CriClient::connect(&self.d.socket, CRI_CALL_TIMEOUT) {
                Ok(c) => Some(c),
                Err(source) => return self.fail(SoakError::Cri { worker, source }),
            },
            false => None,
        };
        while !self.stop.load(Ordering::SeqCst) {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            if n >= self.plan.cycles {
                break;
            }
            if let Err(e) = self.cycle(worker, n, cri.as_ref()) {
                return self.fail(e);
            }
        }
    }
}

/// Checks that the host is clean and sampleable, then runs `plan`'s cycles on `d`.
pub fn run(d: &Containerd, plan: Plan) -> Result<Outcome, SoakError> {
    if !residue::cgroup2_mounted() {
        return Err(SoakError::NoCgroup2);
    }
    let config = d.opts.work.join("containerd.toml");
    let containerd_pid = procs::containerd_pid(&config)
        .ok_or_else(|| SoakError::NoContainerd(config.display().to_string()))?;
    let before = Residue::global(&d.opts.namespace, crate::soak::ID_PREFIX);
    if !before.is_empty() {
        return Err(SoakError::NotClean(Box::new(before)));
    }
    let start = procs::figures(containerd_pid).map_err(SoakError::Containerd)?;
    let soak = Soak {
        d,
        plan,
        containerd_pid,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Vec::with_capacity(plan.cycles)),
        failure: Mutex::new(None),
        began: Instant::now(),
    };
    std::thread::scope(|s| {
        for worker in 0..plan.parallel {
            let soak = &soak;
            s.spawn(move || soak.worker(worker));
        }
    });
    let wall = soak.began.elapsed();
    let mut failure = soak.failure.into_inner().unwrap_or_else(|p| p.into_inner());
    if failure.is_none() {
        let namespace = d.opts.namespace.as_str();
        if let Err(residue) = wait_clean(|| Residue::global(namespace, crate::soak::ID_PREFIX)) {
            failure = Some(SoakError::Leftovers {
                n: None,
                id: String::new(),
                residue: Box::new(residue),
            });
        }
    }
    Ok(Outcome {
        start,
        samples: soak.samples.into_inner().unwrap_or_else(|p| p.into_inner()),
        wall,
        failure,
    })
}
