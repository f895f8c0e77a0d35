//! Cgroup v2: one leaf cgroup per container below the agent's cgroup root; resources,
//! statistics, freezing, killing and removal.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::agent::{ContainerStatsResponse, CpuStats, IoStats, MemoryStats, PidsStats};
use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

/// The cgroup v2 directory under which container cgroups are made.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
}

impl CgroupRoot {
    /// Uses (and creates) `dir` if it lies in a cgroup v2 hierarchy; enables every
    /// controller it has for its children. `None` when cgroup v2 is not there.
    pub fn open(dir: &Path) -> Option<Self> {
        let in_v2 = |d: &Path| d.join("cgroup.controllers").exists();
        if !dir.exists() && !dir.parent().is_some_and(in_v2) {
            return None;
        }
        if fs::create_dir_all(dir).is_err() || !dir.join("cgroup.procs").exists() {
            return None;
        }
        if !dir.join("cgroup.controllers").exists() {
            return None; // cgroup v1
        }
        let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for c in controllers.split_whitespace() {
            // One at a time: a controller that cannot be enabled must not block the others.
            let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
        Some(CgroupRoot {
            dir: dir.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the (empty) cgroup of a container.
    pub fn create(&self, id: &str) -> Result<Cgroup> {
        let dir = self.dir.join(id);
        fs::create_dir(&dir).map_err(|e| Error::io(format!("mkdir {dir:?}"), e))?;
        Ok(Cgroup { dir })
    }
}

/// A container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Unavailable(format!("{file}: controller not enabled"))
        } else {
            Error::io(format!("write {value:?} to {path:?}"), e)
        }
    })
}

fn max_or(v: Option<i64>) -> String {
    match v {
        Some(n) if n >= 0 => n.to_string(),
        _ => "max".into(),
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?, it.next()?.parse().ok()?))
    })
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroup {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the OCI resources that cgroup v2 has files for.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let d = &self.dir;
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                write_file(d, "memory.max", &max_or(Some(limit)))?;
            }
            if let Some(low) = m.reservation() {
                write_file(d, "memory.low", &max_or(Some(low)))?;
            }
            if let Some(swap) = m.swap() {
                // v1 "memory+swap" to v2 "swap alone", as runc converts.
                let v2 = match (swap, m.limit()) {
                    (s, Some(l)) if s > 0 && l > 0 => (s - l).max(0).to_string(),
                    (s, _) => max_or(Some(s)),
                };
                write_file(d, "memory.swap.max", &v2)?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(shares) = c.shares() {
                write_file(d, "cpu.weight", &shares_to_weight(shares).to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let period = c.period().unwrap_or(100_000);
                write_file(d, "cpu.max", &format!("{} {period}", max_or(c.quota())))?;
            }
            if let Some(cpus) = c.cpus() {
                write_file(d, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems() {
                write_file(d, "cpuset.mems", mems)?;
            }
        }
        if let Some(p) = r.pids() {
            write_file(d, "pids.max", &max_or(Some(p.limit()).filter(|l| *l > 0)))?;
        }
        for (k, v) in r.unified().iter().flatten() {
            if k.contains('/') || k.starts_with('.') {
                return Err(Error::InvalidArgument(format!("unified key {k:?}")));
            }
            write_file(d, k, v)?;
        }
        Ok(())
    }

    /// Statistics from cpu.stat, memory.*, pids.* and io.stat (absent files read as 0).
    pub fn stats(&self) -> ContainerStatsResponse {
        let d = &self.dir;
        let mut cpu = CpuStats::default();
        for (k, v) in keyed(&fs::read_to_string(d.join("cpu.stat")).unwrap_or_default()) {
            match k {
                "usage_usec" => cpu.usage_usec = v,
                "user_usec" => cpu.user_usec = v,
                "system_usec" => cpu.system_usec = v,
                "nr_periods" => cpu.nr_periods = v,
                "nr_throttled" => cpu.nr_throttled = v,
                "throttled_usec" => cpu.throttled_usec = v,
                _ => {}
            }
        }
        let mut memory = MemoryStats {
            current: read_u64(d, "memory.current"),
            limit: read_u64(d, "memory.max"),
            peak: read_u64(d, "memory.peak"),
            ..Default::default()
        };
        for (k, v) in keyed(&fs::read_to_string(d.join("memory.stat")).unwrap_or_default()) {
            match k {
                "anon" => memory.anon = v,
                "file" => memory.file = v,
                _ => {}
            }
        }
        let pids = PidsStats {
            current: read_u64(d, "pids.current"),
            limit: read_u64(d, "pids.max"),
            ..Default::default()
        };
        let mut io = IoStats::default();
        for line in fs::read_to_string(d.join("io.stat"))
            .unwrap_or_default()
            .lines()
        {
            for field in line.split_whitespace().skip(1) {
                let Some((k, v)) = field.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => io.read_bytes += v,
                    "wbytes" => io.write_bytes += v,
                    "rios" => io.read_ios += v,
                    "wios" => io.write_ios += v,
                    _ => {}
                }
            }
        }
        ContainerStatsResponse {
            cpu: Some(cpu).into(),
            memory: Some(memory).into(),
            pids: Some(pids).into(),
            io: Some(io).into(),
            ..Default::default()
        }
    }

    /// Freezes (`true`) or thaws the cgroup and waits until the kernel reports it done.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        write_file(&self.dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = fs::read_to_string(self.dir.join("cgroup.events"))
                .map_err(|e| Error::io("read cgroup.events", e))?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::FailedPrecondition(format!(
                    "cgroup did not reach {want:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the cgroup is frozen (or being frozen).
    pub fn is_frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
    }

    /// Pids of every process in the cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let text = fs::read_to_string(self.dir.join("cgroup.procs"))
            .map_err(|e| Error::io("read cgroup.procs", e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// SIGKILLs every process in the cgroup (cgroup.kill, or one by one on old kernels).
    pub fn kill_all(&self) -> Result<()> {
        if write_file(&self.dir, "cgroup.kill", "1").is_ok() {
            return Ok(());
        }
        // A frozen task dies only once thawed.
        let _ = write_file(&self.dir, "cgroup.freeze", "0");
        for pid in self.procs()? {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(())
    }

    /// Removes the cgroup once its processes are gone (waits up to `timeout`).
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::io(format!("rmdir {:?}", self.dir), e))
                }
                Err(_) => {
                    let _ = self.kill_all();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn stats_parse_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("cpu.stat"), "usage_usec 42\nuser_usec 40\n").expect("w");
        fs::write(dir.path().join("memory.current"), "4096\n").expect("w");
        fs::write(
            dir.path().join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n8:16 rbytes=5 wbytes=0 rios=1 wios=0\n",
        )
        .expect("w");
        let cg = Cgroup {
            dir: dir.path().to_path_buf(),
        };
        let s = cg.stats();
        assert_eq!(s.cpu.usage_usec, 42);
        assert_eq!(s.memory.current, 4096);
        assert_eq!(s.io.read_bytes, 15);
        assert_eq!(s.io.write_ios, 2);
        assert_eq!(s.pids.current, 0);
    }
}
