//! Host memory of idle pods: for each shim process of a runtime, the PSS
//! summed over the shim and everything below it (for husk: the VMM with the
//! guest pages it touched, and virtiofsd; for runc: the container).

use crate::procfs;

/// Memory of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMemory {
    /// The shim's pid.
    pub shim: u32,
    /// PSS of the shim's process tree, KiB.
    pub pss_kib: u64,
    /// husk-vmm's RSS outside guest memory, KiB, when the tree has one.
    pub vmm_overhead_kib: Option<u64>,
    /// PSS by program (shim, husk-vmm, virtiofsd, the container's), KiB.
    pub by_program: Vec<(String, u64)>,
}

/// The memory of every pod whose shim runs program `shim`.
pub fn pods(shim: &str) -> Vec<PodMemory> {
    let procs = procfs::processes();
    procs
        .iter()
        .filter(|(pid, _)| procfs::program(*pid) == shim)
        // A shim whose parent is a shim of the same kind is a helper, not a pod.
        .filter(|(_, ppid)| procfs::program(*ppid) != shim)
        .map(|(shim_pid, _)| {
            let mut pss_kib = 0;
            let mut vmm_overhead_kib = None;
            let mut by_program: Vec<(String, u64)> = Vec::new();
            for pid in procfs::tree(*shim_pid, &procs) {
                let pss = procfs::pss_kib(pid).unwrap_or(0);
                pss_kib += pss;
                let program = procfs::program(pid);
                match by_program.iter_mut().find(|(p, _)| *p == program) {
                    Some((_, kib)) => *kib += pss,
                    None => by_program.push((program.clone(), pss)),
                }
                if program == "husk-vmm" {
                    vmm_overhead_kib = procfs::process_memory(pid, "guest")
                        .ok()
                        .map(|m| m.overhead_kib());
                }
            }
            PodMemory {
                shim: *shim_pid,
                pss_kib,
                vmm_overhead_kib,
                by_program,
            }
        })
        .collect()
}
