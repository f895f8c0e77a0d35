//! The container figures, measured in one private containerd: `ctr run`
//! start to exit and `ctr task exec` (husk against runc), memory of 1 and N
//! idle pods, and N pods started at once against one after another.

use std::time::Duration;

use husk_e2e::containerd::Containerd;

use crate::ctr::{self, Runtime, HUSK, RUNC};
use crate::podmem;
use crate::report::Row;
use crate::stats::Summary;

/// How long a freshly started pod is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Runs of `ctr run` and `ctr task exec` per runtime.
    pub runs: usize,
    /// Pods of the memory and parallel-start figures.
    pub pods: usize,
    /// Rounds of the N-pod figures (each starts N pods twice).
    pub pod_rounds: usize,
}

/// The samples (ms or MiB) and the errors met.
#[derive(Debug, Default)]
pub struct Samples {
    run: [Vec<f64>; 2],
    exec: [Vec<f64>; 2],
    mem_one: [Vec<f64>; 2],
    mem_many: Vec<f64>,
    vmm_overhead: Vec<f64>,
    /// PSS by program over all idle husk pods measured, MiB.
    by_program: Vec<(String, Vec<f64>)>,
    sequential: [Vec<f64>; 2],
    parallel: [Vec<f64>; 2],
    /// What failed, in words.
    pub errors: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn slot(rt: Runtime) -> usize {
    usize::from(rt == RUNC)
}

impl Samples {
    fn keep<T>(&mut self, what: &str, r: Result<T, ctr::Error>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(format!("{what}: {e}"));
                None
            }
        }
    }

    /// Reads the memory of every idle pod of `rt`; returns how many.
    fn read_memory(&mut self, rt: Runtime, one: bool) -> usize {
        let pods = podmem::pods(rt.shim);
        for p in &pods {
            let v = mib(p.pss_kib);
            if one {
                self.mem_one[slot(rt)].push(v);
            } else {
                self.mem_many.push(v);
            }
            if let Some(o) = p.vmm_overhead_kib {
                self.vmm_overhead.push(mib(o));
            }
            if rt != HUSK {
                continue;
            }
            for (program, kib) in &p.by_program {
                match self.by_program.iter_mut().find(|(n, _)| n == program) {
                    Some((_, v)) => v.push(mib(*kib)),
                    None => self.by_program.push((program.clone(), vec![mib(*kib)])),
                }
            }
        }
        pods.len()
    }

    /// The table rows.
    pub fn rows(&self, pods: usize) -> Vec<Row> {
        let row =
            |figure: String, unit: &str, husk: &[f64], anchor_name: &str, anchor: &[f64]| Row {
                figure,
                unit: unit.into(),
                husk: Summary::of(husk),
                anchor_name: anchor_name.into(),
                anchor: Summary::of(anchor),
            };
        let mut rows = vec![
            row(
                "ctr run --rm busybox true".into(),
                "ms",
                &self.run[0],
                "runc",
                &self.run[1],
            ),
            row(
                "ctr task exec true".into(),
                "ms",
                &self.exec[0],
                "runc",
                &self.exec[1],
            ),
            row(
                "PSS per idle pod, 1 pod".into(),
                "MiB",
                &self.mem_one[0],
                "runc",
                &self.mem_one[1],
            ),
            row(
                format!("PSS per idle pod, {pods} pods"),
                "MiB",
                &self.mem_many,
                "-",
                &[],
            ),
            row(
                "VMM RSS outside guest memory, idle pod".into(),
                "MiB",
                &self.vmm_overhead,
                "-",
                &[],
            ),
            row(
                format!("{pods} pods started at once"),
                "ms",
                &self.parallel[0],
                "one after another",
                &self.sequential[0],
            ),
            row(
                format!("{pods} runc containers started at once"),
                "ms",
                &self.parallel[1],
                "one after another",
                &self.sequential[1],
            ),
        ];
        for (program, v) in &self.by_program {
            rows.push(row(format!("  of which {program}"), "MiB", v, "-", &[]));
        }
        rows
    }
}

/// Measures everything in `plan` against `d`, calling `progress` after each
/// phase (so that a hang later still leaves the figures so far).
pub fn measure(d: &Containerd, plan: Plan, progress: &mut dyn FnMut(&Samples)) -> Samples {
    let mut s = Samples::default();
    for run in 0..plan.runs {
        // Alternate the order so neither runtime always runs on a warmer cache.
        let order = if run % 2 == 0 {
            [HUSK, RUNC]
        } else {
            [RUNC, HUSK]
        };
        for rt in order {
            let r = ctr::run_true(d, rt, &format!("run-{}-{run}", rt.name));
            if let Some(t) = s.keep("ctr run", r) {
                s.run[slot(rt)].push(ms(t));
            }
        }
    }
    progress(&s);
    exec_and_one_pod(d, plan.runs, &mut s);
    progress(&s);
    for round in 0..plan.pod_rounds {
        many_pods(d, HUSK, plan.pods, round, &mut s);
        progress(&s);
        many_pods(d, RUNC, plan.pods, round, &mut s);
        progress(&s);
    }
    s
}

/// One idle container per runtime: its memory, then `runs` execs into it.
fn exec_and_one_pod(d: &Containerd, runs: usize, s: &mut Samples) {
    for rt in [HUSK, RUNC] {
        let id = format!("exec-{}", rt.name);
        let r = ctr::start_idle(d, rt, &id);
        if s.keep("ctr run -d", r).is_none() {
            let _ = ctr::remove(d, &id);
            continue;
        }
        std::thread::sleep(SETTLE);
        s.read_memory(rt, true);
        for run in 0..runs {
            let r = ctr::exec_true(d, &id, &format!("e{run}"));
            if let Some(t) = s.keep("ctr task exec", r) {
                s.exec[slot(rt)].push(ms(t));
            }
        }
        let r = ctr::remove(d, &id);
        s.keep("remove", r);
    }
}

/// `pods` pods one after another (for husk: memory with 1 and with all), then
/// `pods` at once.
fn many_pods(d: &Containerd, rt: Runtime, pods: usize, round: usize, s: &mut Samples) {
    let name = rt.name;
    let ids: Vec<String> = (0..pods)
        .map(|i| format!("seq-{name}-{round}-{i}"))
        .collect();
    let mut total = Duration::ZERO;
    let mut ok = true;
    for (i, id) in ids.iter().enumerate() {
        let r = ctr::start_idle(d, rt, id);
        match s.keep("sequential start", r) {
            Some(t) => total += t,
            None => {
                ok = false;
                break;
            }
        }
        if i == 0 && rt == HUSK {
            std::thread::sleep(SETTLE);
            s.read_memory(HUSK, true);
        }
    }
    if ok {
        s.sequential[slot(rt)].push(ms(total));
    }
    if ok && rt == HUSK {
        std::thread::sleep(SETTLE);
        let n = s.read_memory(HUSK, false);
        if n != pods {
            s.errors
                .push(format!("{n} husk shims running, {pods} expected"));
        }
    }
    let r = ctr::remove_all(d, &ids);
    s.keep("remove", r);

    let ids: Vec<String> = (0..pods)
        .map(|i| format!("par-{name}-{round}-{i}"))
        .collect();
    let r = ctr::start_idle_parallel(d, rt, &ids);
    if let Some(t) = s.keep("parallel start", r) {
        s.parallel[slot(rt)].push(ms(t));
    }
    let r = ctr::remove_all(d, &ids);
    s.keep("remove", r);
}
