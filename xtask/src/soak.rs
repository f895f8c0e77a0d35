//! `cargo xtask soak`: runs `husk-soak` (create/start/exec/kill/delete cycles through
//! containerd, a leftovers check after each, containerd's and the shims' memory and fds
//! sampled) where KVM is real, and keeps its JSON next to the build output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::artifacts::{self, Artifacts};
use crate::test_host::{self, HOST_BIN, HOST_WORK};

/// Prefix of husk-soak's JSON line (`husk_e2e::soak::JSON_PREFIX`).
const JSON_PREFIX: &str = "HUSK-SOAK-JSON ";
/// The test host's limit on a whole run (`TestHostConfig::default().timeout`).
const TEST_HOST_LIMIT: Duration = Duration::from_secs(1200);
/// A cycle in the nested test host takes 5-10 s; the slow end, for the estimate.
const CYCLE_ESTIMATE: Duration = Duration::from_secs(10);
/// Booting the test host and starting containerd (with CRI: the pause image too).
const SETUP_ESTIMATE: Duration = Duration::from_secs(90);

/// What `cargo xtask soak` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Cycles in all.
    pub cycles: usize,
    /// Workers running cycles at once.
    pub parallel: usize,
    /// Alternate ctr cycles with CRI pod cycles.
    pub cri: bool,
}

impl Options {
    /// The short soak CI runs: 30 cycles, ctr and CRI alternating, one worker (a few
    /// minutes in the test host).
    pub const CI: Self = Self {
        cycles: 30,
        parallel: 1,
        cri: true,
    };

    fn check(&self) -> Result<()> {
        ensure!(self.cycles > 0, "--cycles must be at least 1");
        ensure!(self.parallel > 0, "--parallel must be at least 1");
        Ok(())
    }

    /// husk-soak's arguments.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--cycles={}", self.cycles),
            format!("--parallel={}", self.parallel),
        ];
        if self.cri {
            args.push("--cri".into());
        }
        args
    }

    /// A rough upper estimate of the soak's wall time in the test host.
    fn estimate(&self) -> Duration {
        let rounds = self.cycles.div_ceil(self.parallel) as u32;
        SETUP_ESTIMATE + CYCLE_ESTIMATE * rounds
    }
}

/// The short CI soak ([`Options::CI`]); what `cargo xtask test` calls after the
/// end-to-end tests.
pub fn ci() -> Result<bool> {
    run(&Options::CI)
}

/// Passes husk-soak's lines to the console and keeps its JSON line.
#[derive(Default)]
struct Lines {
    json: Option<String>,
}

impl Lines {
    fn show(&mut self, line: &str) {
        match line.strip_prefix(JSON_PREFIX) {
            Some(j) => self.json = Some(j.to_string()),
            None => println!("{line}"),
        }
    }
}

/// Builds everything and runs the soak as `opts` asks, inside the test host where this
/// host lacks VT-x/AMD-V; the JSON goes to `target/husk/soak.json`.
pub fn run(opts: &Options) -> Result<bool> {
    opts.check()?;
    let a = artifacts::build_all()?;
    let mut lines = Lines::default();
    let ok = if husk_testhost::hardware_kvm_available() {
        run_directly(&a, opts, &mut lines)?
    } else {
        eprintln!("xtask: no VT-x/AMD-V here: soaking inside the test host");
        let estimate = opts.estimate();
        if estimate > TEST_HOST_LIMIT {
            eprintln!(
                "xtask: warning: {} cycles may take up to {} min in the test host, which is \
                 stopped after {} min",
                opts.cycles,
                estimate.as_secs() / 60,
                TEST_HOST_LIMIT.as_secs() / 60
            );
        }
        let command = format!(
            "export PATH={HOST_BIN}:$PATH; mkdir -p {HOST_WORK}; {HOST_BIN}/husk-soak {}",
            opts.args().join(" ")
        );
        test_host::retry_on_fault("soak", test_host::files(&a, &[]), &command, &mut |l| {
            lines.show(l)
        })?
    };
    if let Some(json) = lines.json {
        let out = a.root.join("target/husk/soak.json");
        std::fs::write(&out, json + "\n").with_context(|| format!("write {}", out.display()))?;
        eprintln!("xtask: figures written to {}", out.display());
    }
    Ok(ok)
}

/// Runs husk-soak on this host, which has hardware KVM.
fn run_directly(a: &Artifacts, opts: &Options, lines: &mut Lines) -> Result<bool> {
    let mut path =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    path.insert(0, a.bin_dir.clone());
    if let Some(dir) = artifacts::virtiofsd().and_then(|v| v.parent().map(Path::to_path_buf)) {
        path.push(dir);
    }
    let mut child = Command::new(a.bin_dir.join("husk-soak"))
        .args(opts.args())
        .env("PATH", std::env::join_paths(path)?)
        .env("HUSK_KERNEL", &a.kernel)
        .env("HUSK_INITRD", &a.initrd)
        .env("HUSK_BIN_DIR", &a.bin_dir)
        .env("HUSK_WORK_DIR", a.root.join("target/husk/work"))
        .stdout(Stdio::piped())
        .spawn()
        .context("run husk-soak")?;
    let stdout = child.stdout.take().context("husk-soak's stdout")?;
    for line in BufReader::new(stdout).lines() {
        lines.show(&line.context("read husk-soak's output")?);
    }
    Ok(child.wait().context("wait for husk-soak")?.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_soak_is_30_cycles_of_ctr_and_cri() {
        assert_eq!(Options::CI.args(), ["--cycles=30", "--parallel=1", "--cri"]);
        assert!(Options::CI.estimate() < TEST_HOST_LIMIT);
    }

    #[test]
    fn arguments_and_their_checks() {
        let o = Options {
            cycles: 500,
            parallel: 4,
            cri: false,
        };
        assert_eq!(o.args(), ["--cycles=500", "--parallel=4"]);
        assert!(o.check().is_ok());
        assert!(Options { cycles: 0, ..o }.check().is_err());
        assert!(Options { parallel: 0, ..o }.check().is_err());
    }

    #[test]
    fn a_long_soak_is_estimated_past_the_test_host_limit() {
        let long = Options {
            cycles: 1000,
            parallel: 1,
            cri: true,
        };
        assert!(long.estimate() > TEST_HOST_LIMIT);
        let wide = Options {
            parallel: 10,
            cycles: 100,
            cri: true,
        };
        assert_eq!(wide.estimate(), SETUP_ESTIMATE + CYCLE_ESTIMATE * 10);
    }

    #[test]
    fn the_json_line_is_kept_and_not_shown() {
        let mut lines = Lines::default();
        lines.show("soak:     1/30 ctr soak-00-000000    6.10 s");
        lines.show("HUSK-SOAK-JSON {\"done\":30}");
        assert_eq!(lines.json.as_deref(), Some("{\"done\":30}"));
    }
}
