//! Memory figures of running processes, from `/proc/<pid>/smaps`.

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size.
    pub rss_kib: u64,
    /// Proportional set size (shared pages divided among their users).
    pub pss_kib: u64,
    /// Resident pages of guest RAM (mappings of a memfd whose name contains
    /// `guest_marker`).
    pub guest_rss_kib: u64,
}

impl ProcessMemory {
    /// Resident memory that is not guest RAM: the process's own overhead.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// Parses the text of `/proc/<pid>/smaps`.
pub fn parse_smaps(text: &str, guest_marker: &str) -> ProcessMemory {
    let mut out = ProcessMemory::default();
    let mut in_guest = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let path = line.split_whitespace().nth(5).unwrap_or("");
            in_guest = path.starts_with("/memfd:") && path.contains(guest_marker);
            continue;
        }
        let value: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Rss:" => {
                out.rss_kib += value;
                if in_guest {
                    out.guest_rss_kib += value;
                }
            }
            "Pss:" => out.pss_kib += value,
            _ => {}
        }
    }
    out
}

/// Reads the memory of process `pid`.
pub fn process_memory(pid: u32, guest_marker: &str) -> std::io::Result<ProcessMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&text, guest_marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:10 1234 /usr/bin/husk-vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 99 /memfd:husk-guest-ram (deleted)
Size:             262144 kB
Rss:               40000 kB
Pss:               20000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  16 kB
Pss:                  16 kB
";

    #[test]
    fn splits_guest_ram_from_overhead() {
        let m = parse_smaps(SMAPS, "husk-guest-ram");
        assert_eq!(m.rss_kib, 40816);
        assert_eq!(m.pss_kib, 20416);
        assert_eq!(m.guest_rss_kib, 40000);
        assert_eq!(m.overhead_kib(), 816);
    }

    #[test]
    fn reads_own_process() {
        let m = process_memory(std::process::id(), "none").unwrap();
        assert!(m.rss_kib > 0 && m.pss_kib > 0);
        assert_eq!(m.guest_rss_kib, 0);
    }
}
