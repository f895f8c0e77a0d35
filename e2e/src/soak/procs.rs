//! What the soak samples of host processes from `/proc`: resident memory (`VmRSS`),
//! open file descriptors, and which processes are containerd and husk's shims.

use std::path::Path;

/// The shim binary containerd runs for husk (its `comm` is cut to 15 bytes, so it is
/// recognised by its `argv[0]`).
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";

/// A process could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A `/proc` file could not be read (the process may have gone).
    #[error("read /proc/{pid}/{file}: {source}")]
    Read {
        /// The process.
        pid: u32,
        /// The file under `/proc/<pid>`.
        file: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/status` has no `VmRSS` line (a kernel thread or a zombie).
    #[error("/proc/{pid}/status has no VmRSS")]
    NoRss {
        /// The process.
        pid: u32,
    },
}

/// One process's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcFigures {
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The arguments of a process from the bytes of `/proc/<pid>/cmdline`.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The `-id` a husk shim server was started with, when `args` are a husk shim's.
pub fn shim_id(args: &[String]) -> Option<&str> {
    let exe = args.first()?;
    if Path::new(exe).file_name()? != SHIM_BINARY {
        return None;
    }
    let at = args.iter().position(|a| a == "-id")?;
    args.get(at + 1).map(String::as_str)
}

/// The figures of process `pid` now.
pub fn figures(pid: u32) -> Result<ProcFigures, ProbeError> {
    let read_err = |file| move |source| ProbeError::Read { pid, file, source };
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(read_err("status"))?;
    let rss_kib = parse_vm_rss_kib(&status).ok_or(ProbeError::NoRss { pid })?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(read_err("fd"))?
        .count() as u64;
    Ok(ProcFigures { rss_kib, fds })
}

/// `(pid, args)` of every process whose arguments could be read.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, parse_cmdline(&bytes)))
        })
        .collect()
}

/// The pid of the containerd started with config file `config`.
pub fn containerd_pid(config: &Path) -> Option<u32> {
    let config = config.to_string_lossy();
    processes().into_iter().find_map(|(pid, args)| {
        let is_containerd = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "containerd"));
        (is_containerd && args.iter().any(|a| *a == config)).then_some(pid)
    })
}

/// A live husk shim server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    /// Its pid.
    pub pid: u32,
    /// The task or sandbox id it serves.
    pub id: String,
    /// Its figures (`None`: it went away while sampled).
    pub figures: Option<ProcFigures>,
}

/// The husk shim servers alive now.
pub fn husk_shims() -> Vec<Shim> {
    processes()
        .into_iter()
        .filter_map(|(pid, args)| {
            let id = shim_id(&args)?.to_string();
            Some(Shim {
                pid,
                id,
                figures: figures(pid).ok(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rss_is_read_from_the_status_text() {
        let status = "Name:\tcontainerd\nVmPeak:\t 1000 kB\nVmRSS:\t   45312 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(45312));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(
            parse_cmdline(b"/usr/bin/containerd\0--config\0/w/c.toml\0"),
            args(&["/usr/bin/containerd", "--config", "/w/c.toml"])
        );
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn a_husk_shim_server_is_known_by_argv0_and_its_id() {
        let server = args(&[
            "/husk/bin/containerd-shim-husk-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "soak-00-000017",
            "-address",
            "/w/containerd.sock",
        ]);
        assert_eq!(shim_id(&server), Some("soak-00-000017"));
        let runc = args(&["/usr/bin/containerd-shim-runc-v2", "-id", "x"]);
        assert_eq!(shim_id(&runc), None);
        let ctr = args(&["ctr", "task", "exec", "-id", "soak"]);
        assert_eq!(shim_id(&ctr), None);
        assert_eq!(
            shim_id(&args(&["/bin/containerd-shim-husk-v2", "-id"])),
            None
        );
    }

    #[test]
    fn this_process_has_figures() {
        let f = figures(std::process::id()).expect("own figures");
        assert!(f.rss_kib > 0 && f.fds >= 3, "{f:?}");
    }
}
