//! One soak cycle: a container created, started, exec'd into, stopped by SIGTERM and
//! deleted, by `ctr` ([`ctr_cycle`]) or as a CRI pod ([`cri_cycle`]). Each step must
//! succeed; the first that does not ends the cycle with a [`StepError`] naming it. While
//! the container runs, its shim's memory and fds are sampled.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::cmd::output_within;
use crate::containerd::{Containerd, BUSYBOX_IMAGE, CTR_TIMEOUT, HUSK_RUNTIME};
use crate::cri::api::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use crate::cri::CriClient;
use crate::soak::procs::{self, ProcFigures};
use crate::wait_until;

/// The container's command: a shell as PID 1 that exits 0 on SIGTERM (PID 1 without a
/// handler ignores SIGTERM, so a bare `sleep` would only die by SIGKILL).
pub const COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];
/// How long a task may take to reach a state `ctr task ls` shows.
const STATE_WITHIN: Duration = Duration::from_secs(120);
/// The CRI runtime handler of husk.
pub const CRI_HANDLER: &str = "husk";
/// Grace of CRI's StopContainer before SIGKILL (the container exits on SIGTERM at once).
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Time limit of the ExecSync inside the runtime.
const EXEC_LIMIT: Duration = Duration::from_secs(120);

/// A step of a cycle failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct StepError {
    /// The step (`ctr run`, `ExecSync`, ...).
    pub step: &'static str,
    /// What happened: the command's output, the runtime's error.
    pub detail: String,
}

fn step(step: &'static str, detail: impl Into<String>) -> StepError {
    StepError {
        step,
        detail: detail.into(),
    }
}

/// Which way a cycle goes through containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `ctr run -d`, `ctr task exec`, `ctr task kill`, `ctr task delete`, `ctr container rm`.
    Ctr,
    /// RunPodSandbox, CreateContainer, StartContainer, ExecSync, StopContainer,
    /// RemoveContainer, StopPodSandbox, RemovePodSandbox.
    Cri,
}

impl Kind {
    /// The kind of the `n`-th cycle (from 0): ctr, or CRI on every other one with `cri`.
    pub fn of(n: usize, cri: bool) -> Self {
        match cri && n % 2 == 1 {
            true => Self::Cri,
            false => Self::Ctr,
        }
    }

    /// Its name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ctr => "ctr",
            Self::Cri => "cri",
        }
    }
}

/// The id of the `n`-th cycle (from 0), run by `worker`: fixed width, so that no id is a
/// prefix of another and a substring search finds only its own pod.
pub fn cycle_id(worker: usize, n: usize) -> String {
    format!("{}{worker:02}-{n:06}", crate::soak::ID_PREFIX)
}

fn ctr(d: &Containerd, what: &'static str, args: &[&str]) -> Result<String, StepError> {
    let out: Output = output_within(d.ctr_cmd(args), CTR_TIMEOUT);
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(step(what, d.explain(&out)))
}

/// Whether `ctr task ls` output shows task `id` with `status`.
pub fn task_has_status(ls: &str, id: &str, status: &str) -> bool {
    ls.lines().any(|l| {
        let mut cols = l.split_whitespace();
        cols.next() == Some(id) && cols.any(|c| c == status)
    })
}

fn wait_task(d: &Containerd, what: &'static str, id: &str, status: &str) -> Result<(), StepError> {
    let mut last = Ok(String::new());
    let reached = wait_until(Instant::now() + STATE_WITHIN, || {
        last = ctr(d, what, &["task", "ls"]);
        last.as_ref()
            .is_ok_and(|ls| task_has_status(ls, id, status))
    });
    match (reached, last) {
        (true, _) => Ok(()),
        (false, Err(e)) => Err(e),
        (false, Ok(ls)) => Err(step(
            what,
            format!("{id} not {status} within {STATE_WITHIN:?}: {ls}"),
        )),
    }
}

/// The figures of the shim serving `id`, when one is alive.
fn shim_of(id: &str) -> Option<ProcFigures> {
    procs::husk_shims()
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.figures)
}

/// A ctr cycle of container `id`; the shim's figures while the container ran.
pub fn ctr_cycle(d: &Containerd, id: &str) -> Result<Option<ProcFigures>, StepError> {
    let mut run = vec!["run", "-d", "--runtime", HUSK_RUNTIME, BUSYBOX_IMAGE, id];
    run.extend_from_slice(&COMMAND);
    ctr(d, "ctr run -d", &run)?;
    wait_task(d, "wait for RUNNING", id, "RUNNING")?;
    let exec_id = format!("exec-{id}");
    let out = ctr(
        d,
        "ctr task exec",
        &["task", "exec", "--exec-id", &exec_id, id, "echo", "ok"],
    )?;
    if out.trim() != "ok" {
        return Err(step("ctr task exec", format!("printed {out:?}, not ok")));
    }
    let shim = shim_of(id);
    ctr(d, "ctr task kill", &["task", "kill", id])?;
    wait_task(d, "wait for STOPPED", id, "STOPPED")?;
    ctr(d, "ctr task delete", &["task", "delete", id])?;
    ctr(d, "ctr container rm", &["container", "rm", id])?;
    Ok(shim)
}

/// Best effort after a failed ctr cycle, so that the host is left clean for whoever looks:
/// the task killed and deleted, the container removed.
pub fn ctr_cleanup(d: &Containerd, id: &str) {
    for args in [
        &["task", "kill", "-s", "SIGKILL", id][..],
        &["task", "delete", "-f", id][..],
        &["container", "rm", id][..],
    ] {
        let _ = output_within(d.ctr_cmd(args), CTR_TIMEOUT);
    }
}

/// The config of the pod named `name`: the kubelet's default namespaces (the pod's
/// network and IPC, a PID namespace per container).
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The config of the pod's one container, running [`COMMAND`] in busybox.
pub fn container_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "soak".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: COMMAND.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn cri_err(what: &'static str) -> impl FnOnce(crate::cri::CriError) -> StepError {
    move |e| step(what, e.to_string())
}

/// A CRI cycle of a pod named `name`; calls `started` with the sandbox id as soon as it
/// is known (the residue check and a cleanup need it even when a later step fails), and
/// returns the shim's figures while the container ran.
pub fn cri_cycle(
    cri: &CriClient,
    name: &str,
    started: &mut dyn FnMut(&str),
) -> Result<Option<ProcFigures>, StepError> {
    let pod = pod_config(name);
    let pod_id = cri
        .run_pod_sandbox(&pod, CRI_HANDLER)
        .map_err(cri_err("RunPodSandbox"))?;
    started(&pod_id);
    let id = cri
        .create_container(&pod_id, &container_config(), &pod)
        .map_err(cri_err("CreateContainer"))?;
    cri.start_container(&id)
        .map_err(cri_err("StartContainer"))?;
    let r = cri
        .exec_sync(&id, &["echo", "ok"], EXEC_LIMIT)
        .map_err(cri_err("ExecSync"))?;
    let out = String::from_utf8_lossy(&r.stdout);
    if r.exit_code != 0 || out.trim() != "ok" {
        return Err(step(
            "ExecSync",
            format!(
                "exit {} stdout {out:?} stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            ),
        ));
    }
    let shim = shim_of(&pod_id);
    cri.stop_container(&id, STOP_GRACE)
        .map_err(cri_err("StopContainer"))?;
    cri.remove_container(&id)
        .map_err(cri_err("RemoveContainer"))?;
    cri.stop_pod_sandbox(&pod_id)
        .map_err(cri_err("StopPodSandbox"))?;
    cri.remove_pod_sandbox(&pod_id)
        .map_err(cri_err("RemovePodSandbox"))?;
    Ok(shim)
}

/// Best effort after a failed CRI cycle: the pod stopped and removed.
pub fn cri_cleanup(cri: &CriClient, pod_id: &str) {
    let _ = cri.stop_pod_sandbox(pod_id);
    let _ = cri.remove_pod_sandbox(pod_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_cycles_alternate_with_ctr_cycles_only_when_asked() {
        let kinds: Vec<Kind> = (0..4).map(|n| Kind::of(n, true)).collect();
        assert_eq!(kinds, [Kind::Ctr, Kind::Cri, Kind::Ctr, Kind::Cri]);
        assert!((0..4).all(|n| Kind::of(n, false) == Kind::Ctr));
    }

    #[test]
    fn cycle_ids_are_fixed_width() {
        assert_eq!(cycle_id(0, 17), "soak-00-000017");
        assert_eq!(cycle_id(3, 1), "soak-03-000001");
        assert!(!cycle_id(0, 1).starts_with(&cycle_id(0, 10)));
        assert!(!cycle_id(0, 10).contains(&cycle_id(0, 1)));
    }

    #[test]
    fn task_status_is_read_by_column() {
        let ls = "TASK              PID    STATUS\nsoak-00-000001    412    RUNNING\n\
                  soak-00-000010    500    STOPPED\n";
        assert!(task_has_status(ls, "soak-00-000001", "RUNNING"));
        assert!(!task_has_status(ls, "soak-00-000001", "STOPPED"));
        assert!(task_has_status(ls, "soak-00-000010", "STOPPED"));
        assert!(!task_has_status(ls, "soak-00-00001", "STOPPED"));
    }

    #[test]
    fn the_container_exits_on_sigterm() {
        assert!(COMMAND[2].contains("trap 'exit 0' TERM"));
        let c = container_config();
        assert_eq!(c.command, COMMAND);
        let p = pod_config("soak-00-000001");
        assert_eq!(p.metadata.expect("metadata").name, "soak-00-000001");
    }
}
