//! The soak's figures from its samples, the verdict on them, and their two forms: a
//! table for people and one JSON line for tools.
//!
//! Growth is measured from the end of the first 10 % of the cycles, not from the start:
//! the first cycles warm containerd's caches up (the busybox snapshot unpacked once, the
//! CRI plugin's first sandbox, CNI's config loaded, metadata database pages touched, gRPC
//! connections made, the Go heap grown to its collection target), which a long-running
//! containerd pays once and which is no leak. What grows after that does so per cycle.

use serde_json::{json, Value};

use crate::soak::args::Plan;
use crate::soak::cycle::Kind;
use crate::soak::procs::ProcFigures;
use crate::soak::stats::{median, percentile, slope, windows};

/// containerd may grow this much (KiB of RSS) after the warm-up before the soak fails:
/// generous, since the Go heap grows and shrinks with its collector; a per-cycle leak
/// of a few KiB over 1000 cycles shows as a trend in the report long before this.
pub const RSS_GROWTH_LIMIT_KIB: i64 = 50 * 1024;

/// How many fds containerd's count may rise after the warm-up, judged as the lowest
/// count of the last 10 % of the cycles against the highest of the first 10 %. A few for
/// what containerd opens lazily; with several workers, up to ten more per cycle in
/// flight elsewhere when a sample is taken (its shim's ttrpc connection, the task's
/// stdio fifos, an exec's fifos, a client's connection). A leak of one fd per cycle
/// passes this within the first tens of cycles.
pub fn fd_slack(parallel: usize) -> i64 {
    4 + 10 * parallel.saturating_sub(1) as i64
}

/// What was measured after one cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The cycle number (from 0).
    pub n: usize,
    /// How it went through containerd.
    pub kind: Kind,
    /// From its first call until nothing of it was left, in ms.
    pub took_ms: f64,
    /// containerd once the cycle was clean.
    pub containerd: ProcFigures,
    /// husk shims alive once the cycle was clean (other workers' pods).
    pub live_shims: usize,
    /// The cycle's own shim while its container ran.
    pub shim: Option<ProcFigures>,
}

/// Median, p99 and range of cycle times, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Times {
    /// Cycles measured.
    pub count: usize,
    /// Median.
    pub median: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl Times {
    fn of(ms: &[f64]) -> Option<Self> {
        Some(Self {
            count: ms.len(),
            median: median(ms)?,
            p99: percentile(ms, 99.0)?,
            min: percentile(ms, 0.0)?,
            max: percentile(ms, 100.0)?,
        })
    }
}

/// A figure of containerd at the start, after the warm-up (first 10 % of the cycles)
/// and at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Before the first cycle.
    pub start: u64,
    /// After the last cycle of the warm-up.
    pub after_warmup: u64,
    /// After the last cycle.
    pub end: u64,
}

impl Growth {
    /// `end - after_warmup`.
    pub fn growth(&self) -> i64 {
        self.end as i64 - self.after_warmup as i64
    }
}

/// Everything the soak reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was asked.
    pub plan: Plan,
    /// Cycles that finished clean.
    pub done: usize,
    /// Wall time of the cycles, in s.
    pub wall_s: f64,
    /// All cycle times.
    pub times: Option<Times>,
    /// Cycle times by kind.
    pub by_kind: Vec<(Kind, Times)>,
    /// containerd's RSS in KiB.
    pub rss_kib: Option<Growth>,
    /// containerd's open fds.
    pub fds: Option<Growth>,
    /// Lowest fd count of the last 10 % minus the highest of the first 10 %.
    pub fd_rise: Option<i64>,
    /// Trend of containerd's fds after the warm-up, per 100 cycles.
    pub fd_trend_per_100: Option<f64>,
    /// Trend of containerd's RSS after the warm-up, KiB per 100 cycles.
    pub rss_trend_per_100: Option<f64>,
    /// Median RSS (KiB) and fds of a cycle's own shim, in the first and last 10 %.
    pub shim: Option<(ProcFigures, ProcFigures)>,
    /// Most husk shims alive between cycles.
    pub max_live_shims: usize,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

fn median_figures(samples: &[ProcFigures]) -> Option<ProcFigures> {
    let rss: Vec<f64> = samples.iter().map(|f| f.rss_kib as f64).collect();
    let fds: Vec<f64> = samples.iter().map(|f| f.fds as f64).collect();
    Some(ProcFigures {
        rss_kib: median(&rss)? as u64,
        fds: median(&fds)? as u64,
    })
}

impl Report {
    /// The figures of `samples` (in the order the cycles finished), containerd's `start`
    /// figures, and the verdict; `failure` is what stopped the soak, if anything did.
    pub fn new(
        plan: Plan,
        start: ProcFigures,
        samples: &[Sample],
        wall_s: f64,
        failure: Option<String>,
    ) -> Self {
        let ms: Vec<f64> = samples.iter().map(|s| s.took_ms).collect();
        let mut by_kind = Vec::new();
        for kind in [Kind::Ctr, Kind::Cri] {
            let of: Vec<f64> = samples
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.took_ms)
                .collect();
            if let Some(t) = Times::of(&of) {
                by_kind.push((kind, t));
            }
        }
        let (warm, last) = windows(samples);
        let growth = |f: fn(&ProcFigures) -> u64, start: u64| {
            Some(Growth {
                start,
                after_warmup: f(&warm.last()?.containerd),
                end: f(&samples.last()?.containerd),
            })
        };
        let fds = growth(|f| f.fds, start.fds);
        let rss_kib = growth(|f| f.rss_kib, start.rss_kib);
        let fd_rise = match (
            last.iter().map(|s| s.containerd.fds).min(),
            warm.iter().map(|s| s.containerd.fds).max(),
        ) {
            (Some(low), Some(high)) => Some(low as i64 - high as i64),
            _ => None,
        };
        let after = &samples[warm.len().min(samples.len().saturating_sub(1))..];
        let trend = |f: fn(&ProcFigures) -> u64| {
            let v: Vec<f64> = after.iter().map(|s| f(&s.containerd) as f64).collect();
            slope(&v).map(|s| s * 100.0)
        };
        let shims = |w: &[Sample]| {
            let v: Vec<ProcFigures> = w.iter().filter_map(|s| s.shim).collect();
            median_figures(&v)
        };
        let shim = shims(warm).zip(shims(last));
        let mut report = Self {
            plan,
            done: samples.len(),
            wall_s,
            times: Times::of(&ms),
            by_kind,
            rss_kib,
            fds,
            fd_rise,
            fd_trend_per_100: trend(|f| f.fds),
            rss_trend_per_100: trend(|f| f.rss_kib),
            shim,
            max_live_shims: samples.iter().map(|s| s.live_shims).max().unwrap_or(0),
            failures: failure.into_iter().collect(),
        };
        report.failures.extend(report.verdict());
        report
    }

    /// What the figures themselves fail on.
    fn verdict(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.failures.is_empty() && self.done < self.plan.cycles {
            out.push(format!(
                "only {} of {} cycles finished",
                self.done, self.plan.cycles
            ));
        }
        let slack = fd_slack(self.plan.parallel);
        if let Some(rise) = self.fd_rise.filter(|r| *r > slack) {
            out.push(format!(
                "containerd's open fds rose by {rise} after the warm-up (lowest of the last \
                 10 % of cycles against the highest of the first 10 %), more than the {slack} \
                 allowed: fds leak"
            ));
        }
        if let Some(g) = self.rss_kib.filter(|g| g.growth() > RSS_GROWTH_LIMIT_KIB) {
            out.push(format!(
                "containerd's RSS grew by {:.1} MiB after the warm-up, more than {} MiB",
                g.growth() as f64 / 1024.0,
                RSS_GROWTH_LIMIT_KIB / 1024
            ));
        }
        out
    }

    /// Whether the soak passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Cycles per minute of wall time.
    pub fn cycles_per_min(&self) -> f64 {
        match self.wall_s > 0.0 {
            true => self.done as f64 * 60.0 / self.wall_s,
            false => 0.0,
        }
    }

    /// The rows of the table: (figure, value).
    fn rows(&self) -> Vec<(String, String)> {
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        let mut rows = vec![(
            "cycles".to_string(),
            format!(
                "{} of {} ({} worker{}{})",
                self.done,
                self.plan.cycles,
                self.plan.parallel,
                if self.plan.parallel == 1 { "" } else { "s" },
                if self.plan.cri {
                    ", ctr and CRI alternating"
                } else {
                    ", ctr"
                }
            ),
        )];
        let times = |t: &Times| {
            format!(
                "median {:.0}, p99 {:.0} [{:.0}..{:.0}] (n={})",
                t.median, t.p99, t.min, t.max, t.count
            )
        };
        if let Some(t) = &self.times {
            rows.push(("cycle time, ms".into(), times(t)));
        }
        for (kind, t) in &self.by_kind {
            rows.push((format!("cycle time {}, ms", kind.name()), times(t)));
        }
        rows.push((
            "cycles per minute".into(),
            format!("{:.1} ({:.0} s wall)", self.cycles_per_min(), self.wall_s),
        ));
        if let Some(g) = &self.rss_kib {
            rows.push((
                "containerd RSS, MiB".into(),
                format!(
                    "start {}, after 10 % {}, end {}, growth {:+.1}",
                    mib(g.start),
                    mib(g.after_warmup),
                    mib(g.end),
                    g.growth() as f64 / 1024.0
                ),
            ));
        }
        if let Some(t) = self.rss_trend_per_100 {
            rows.push((
                "containerd RSS trend".into(),
                format!("{:+.2} MiB per 100 cycles", t / 1024.0),
            ));
        }
        if let Some(g) = &self.fds {
            rows.push((
                "containerd fds".into(),
                format!(
                    "start {}, after 10 % {}, end {}, growth {:+}",
                    g.start,
                    g.after_warmup,
                    g.end,
                    g.growth()
                ),
            ));
        }
        if let (Some(rise), Some(t)) = (self.fd_rise, self.fd_trend_per_100) {
            rows.push((
                "containerd fd rise / trend".into(),
                format!(
                    "{rise:+} (allowed {}), {t:+.2} per 100 cycles",
                    fd_slack(self.plan.parallel)
                ),
            ));
        }
        if let Some((first, last)) = &self.shim {
            rows.push((
                "shim while running, first 10 %".into(),
                format!("{} MiB, {} fds", mib(first.rss_kib), first.fds),
            ));
            rows.push((
                "shim while running, last 10 %".into(),
                format!("{} MiB, {} fds", mib(last.rss_kib), last.fds),
            ));
        }
        rows.push((
            "most shims alive between cycles".into(),
            format!("{} (at most {})", self.max_live_shims, self.plan.parallel),
        ));
        rows.push((
            "verdict".into(),
            match self.passed() {
                true => "passed: nothing left behind, no leak".into(),
                false => format!("FAILED: {}", self.failures.join("; ")),
            },
        ));
        rows
    }

    /// The figures as a fixed-width table.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        let mut out = format!("{:<width$}  value\n", "figure");
        for (figure, value) in rows {
            out.push_str(&format!("{figure:<width$}  {value}\n"));
        }
        out
    }

    /// The figures as JSON, one object: `plan` {cycles, parallel, cri}, `done`, `wall_s`,
    /// `cycles_per_min`, `cycle_ms` and `cycle_ms_by_kind.{ctr,cri}` {count, median, p99,
    /// min, max}, `containerd` {`rss_kib` and `fds` {start, after_warmup, end, growth},
    /// `rss_trend_kib_per_100`, `rss_growth_limit_kib`, `fd_rise`, `fd_rise_allowed`,
    /// `fd_trend_per_100`}, `shim` {`first`, `last` {rss_kib, fds}, `max_live`},
    /// `passed`, `failures` [text]. Figures not measured are `null`.
    pub fn json(&self) -> Value {
        let times = |t: &Times| json!({"count": t.count, "median": t.median, "p99": t.p99, "min": t.min, "max": t.max});
        let growth = |g: &Growth| {
            json!({"start": g.start, "after_warmup": g.after_warmup, "end": g.end,
                   "growth": g.growth()})
        };
        let figures = |f: &ProcFigures| json!({"rss_kib": f.rss_kib, "fds": f.fds});
        let by_kind: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, t)| (k.name().to_string(), times(t)))
            .collect();
        json!({
            "plan": {"cycles": self.plan.cycles, "parallel": self.plan.parallel,
                     "cri": self.plan.cri},
            "done": self.done,
            "wall_s": self.wall_s,
            "cycles_per_min": self.cycles_per_min(),
            "cycle_ms": self.times.as_ref().map(times),
            "cycle_ms_by_kind": by_kind,
            "containerd": {
                "rss_kib": self.rss_kib.as_ref().map(growth),
                "rss_trend_kib_per_100": self.rss_trend_per_100,
                "rss_growth_limit_kib": RSS_GROWTH_LIMIT_KIB,
                "fds": self.fds.as_ref().map(growth),
                "fd_rise": self.fd_rise,
                "fd_rise_allowed": fd_slack(self.plan.parallel),
                "fd_trend_per_100": self.fd_trend_per_100,
            },
            "shim": {
                "first": self.shim.as_ref().map(|(f, _)| figures(f)),
                "last": self.shim.as_ref().map(|(_, l)| figures(l)),
                "max_live": self.max_live_shims,
            },
            "passed": self.passed(),
            "failures": self.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cycles: usize, parallel: usize) -> Plan {
        Plan {
            cycles,
            parallel,
            cri: true,
        }
    }

    /// `cycles` samples whose fds are `fds(n)` and RSS `rss(n)` KiB.
    fn samples(
        cycles: usize,
        fds: impl Fn(usize) -> u64,
        rss: impl Fn(usize) -> u64,
    ) -> Vec<Sample> {
        (0..cycles)
            .map(|n| Sample {
                n,
                kind: Kind::of(n, true),
                took_ms: 5000.0 + n as f64,
                containerd: ProcFigures {
                    rss_kib: rss(n),
                    fds: fds(n),
                },
                live_shims: 0,
                shim: Some(ProcFigures {
                    rss_kib: 8000,
                    fds: 20,
                }),
            })
            .collect()
    }

    fn start() -> ProcFigures {
        ProcFigures {
            rss_kib: 30_000,
            fds: 30,
        }
    }

    #[test]
    fn steady_figures_pass_and_warmup_is_the_baseline() {
        // The first cycle opens 6 fds and 10 MiB for good (caches): no leak.
        let s = samples(
            30,
            |n| if n == 0 { 40 } else { 36 + (n % 2) as u64 },
            |n| if n < 3 { 40_000 } else { 41_000 },
        );
        let r = Report::new(plan(30, 1), start(), &s, 150.0, None);
        assert!(r.passed(), "{:?}", r.failures);
        let fds = r.fds.expect("fds");
        assert_eq!((fds.start, fds.after_warmup, fds.end), (30, 36, 37));
        assert_eq!(r.rss_kib.expect("rss").growth(), 1000);
        assert!(r.fd_rise.expect("rise") <= 0);
        assert_eq!(r.cycles_per_min(), 12.0);
    }

    #[test]
    fn one_fd_per_cycle_is_a_leak() {
        let s = samples(30, |n| 40 + n as u64, |_| 40_000);
        let r = Report::new(plan(30, 1), start(), &s, 150.0, None);
        assert!(!r.passed());
        assert!(r.failures[0].contains("fds leak"), "{:?}", r.failures);
        assert!((r.fd_trend_per_100.expect("trend") - 100.0).abs() < 1e-6);
    }

    #[test]
    fn fd_noise_of_other_workers_is_allowed() {
        // Four workers: a sample may see up to three other cycles in flight.
        let s = samples(40, |n| 40 + 8 * (n % 4) as u64, |_| 40_000);
        let r = Report::new(plan(40, 4), start(), &s, 150.0, None);
        assert!(r.passed(), "{:?}", r.failures);
    }

    #[test]
    fn memory_fails_only_beyond_the_bound() {
        let within = samples(30, |_| 40, |n| 40_000 + 1_500 * n as u64);
        assert!(Report::new(plan(30, 1), start(), &within, 1.0, None).passed());
        let beyond = samples(30, |_| 40, |n| 40_000 + 3_000 * n as u64);
        let r = Report::new(plan(30, 1), start(), &beyond, 1.0, None);
        assert!(
            r.failures.iter().any(|f| f.contains("RSS grew")),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn a_failure_and_unfinished_cycles_are_reported() {
        let s = samples(5, |_| 40, |_| 40_000);
        let r = Report::new(plan(30, 1), start(), &s, 1.0, None);
        assert_eq!(r.failures, ["only 5 of 30 cycles finished"]);
        let r = Report::new(plan(30, 1), start(), &s, 1.0, Some("cycle 5: left".into()));
        assert_eq!(r.failures, ["cycle 5: left"]);
        let empty = Report::new(plan(30, 1), start(), &[], 0.0, Some("no containerd".into()));
        assert!(empty.times.is_none() && empty.fds.is_none());
        assert!(empty.table().contains("FAILED: no containerd"));
    }

    #[test]
    fn table_and_json_carry_the_figures() {
        let s = samples(10, |_| 40, |_| 40_960);
        let r = Report::new(plan(10, 1), start(), &s, 60.0, None);
        let t = r.table();
        for want in [
            "cycle time, ms",
            "median 5004, p99 5009",
            "cycle time cri, ms",
            "cycles per minute",
            "10.0 (60 s wall)",
            "containerd RSS, MiB",
            "start 29.3, after 10 % 40.0, end 40.0, growth +0.0",
            "containerd fds",
            "passed",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        let j = r.json();
        assert_eq!(j["done"], 10);
        assert_eq!(j["cycle_ms"]["p99"], 5009.0);
        assert_eq!(j["cycle_ms_by_kind"]["ctr"]["count"], 5);
        assert_eq!(j["containerd"]["fds"]["end"], 40);
        assert_eq!(j["containerd"]["fd_rise_allowed"], 4);
        assert_eq!(j["shim"]["last"]["fds"], 20);
        assert_eq!(j["passed"], true);
        assert!(!j.to_string().contains('\n'), "one line");
    }
}
