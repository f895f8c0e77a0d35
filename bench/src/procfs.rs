//! Memory figures of running processes, from `/proc/<pid>/smaps` and
//! `smaps_rollup`, and the process trees they are summed over.

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

/// Parses the `Pss:` line of `/proc/<pid>/smaps_rollup`, in KiB.
pub fn parse_rollup_pss(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("Pss:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Proportional set size of process `pid` in KiB (from `smaps_rollup`).
pub fn pss_kib(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    parse_rollup_pss(&text).ok_or_else(|| std::io::Error::other("no Pss in smaps_rollup"))
}

/// The parent pid in the text of `/proc/<pid>/stat` (the field after the
/// parenthesised command name, which may itself contain spaces or parens).
pub fn parse_stat_ppid(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every process as `(pid, parent pid)`.
pub fn processes() -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, parse_stat_ppid(&stat)?))
        })
        .collect()
}

/// `root` and all its descendants, given `(pid, ppid)` pairs.
pub fn tree(root: u32, procs: &[(u32, u32)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|(pid, ppid)| *ppid == parent && *pid != parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out
}

/// The program a process runs: the file name of its `argv[0]`.
pub fn program(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    argv0.rsplit('/').next().unwrap_or_default().to_string()
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
    fn rollup_and_stat_fields() {
        let rollup = "00400000-7fff0000 ---p 00000000 00:00 0 [rollup]\nRss: 900 kB\nPss: 456 kB\n";
        assert_eq!(parse_rollup_pss(rollup), Some(456));
        assert_eq!(parse_rollup_pss("Rss: 1 kB\n"), None);
        let stat = "42 (a) b (c)) S 7 42 42 0 -1";
        assert_eq!(parse_stat_ppid(stat), Some(7));
    }

    #[test]
    fn tree_collects_descendants_only() {
        let procs = [(1, 0), (10, 1), (11, 10), (12, 11), (20, 1), (21, 20)];
        let mut t = tree(10, &procs);
        t.sort();
        assert_eq!(t, vec![10, 11, 12]);
    }

    #[test]
    fn finds_own_process_and_program() {
        let me = std::process::id();
        assert!(processes().iter().any(|(pid, _)| *pid == me));
        assert!(pss_kib(me).unwrap() > 0);
        assert!(!program(me).is_empty());
    }

    #[test]
    fn reads_own_process() {
        let m = process_memory(std::process::id(), "none").unwrap();
        assert!(m.rss_kib > 0 && m.pss_kib > 0);
        assert_eq!(m.guest_rss_kib, 0);
    }
}
