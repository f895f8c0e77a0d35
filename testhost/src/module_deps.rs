//! Which kernel module files to `insmod`, and in which order, for a list of
//! module names: read from a kernel package's `modules.dep` and
//! `modules.builtin`.
//!
//! The test host has busybox's `insmod` and no `modprobe` (nor a module tree
//! for one), so the dependency closure and its load order are worked out here
//! on the build host, as `modprobe` would: every dependency loads before the
//! module that needs it, each module once, and modules built into the kernel
//! are skipped. Soft dependencies (`modules.softdep`) are not followed.

use std::collections::{HashMap, HashSet};

/// Errors of resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `modules.dep` line has no `:` after the module path.
    #[error("modules.dep line {line}: expected `<module>: <deps>`, got {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A module is neither in `modules.dep` nor built in.
    #[error("kernel module `{0}` is neither in modules.dep nor in modules.builtin")]
    Unknown(String),
    /// Modules depend on each other in a circle.
    #[error("kernel module dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Normalises a module name as the kernel does (`kvm-amd` is `kvm_amd`).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path such as `kernel/net/bridge/bridge.ko.xz`:
/// `bridge`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let file = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    normalize(file.strip_suffix(".ko").unwrap_or(file))
}

/// One loadable module.
#[derive(Debug, Clone)]
struct Entry {
    /// Its path relative to `lib/modules/<release>/`.
    path: String,
    /// The names of the modules it needs, as `modules.dep` lists them.
    deps: Vec<String>,
}

/// A kernel's modules: the loadable ones with their dependencies, and the
/// names of those built in.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    loadable: HashMap<String, Entry>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Parses the text of `modules.dep` and of `modules.builtin`.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<Self> {
        let mut loadable = HashMap::new();
        for (i, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| Error::Malformed {
                line: i + 1,
                text: line.to_string(),
            })?;
            let entry = Entry {
                path: path.trim().to_string(),
                deps: deps.split_whitespace().map(module_name).collect(),
            };
            loadable.insert(module_name(path.trim()), entry);
        }
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        Ok(Self { loadable, builtin })
    }

    /// The paths (relative to `lib/modules/<release>/`) of `names` and of
    /// everything they depend on, in an order `insmod` can load them: each
    /// dependency before its users, each module once, built-in ones left out.
    pub fn load_order<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<String>> {
        let mut walk = Walk {
            index: self,
            done: HashSet::new(),
            stack: Vec::new(),
            order: Vec::new(),
        };
        for name in names {
            walk.visit(&normalize(name.as_ref()))?;
        }
        Ok(walk.order)
    }
}

/// A depth-first walk of the dependency graph (post-order is load order).
struct Walk<'a> {
    index: &'a ModuleIndex,
    done: HashSet<String>,
    /// The modules being visited, outermost first (to report a cycle).
    stack: Vec<String>,
    order: Vec<String>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str) -> Result<()> {
        if self.done.contains(name) {
            return Ok(());
        }
        if let Some(at) = self.stack.iter().position(|n| n == name) {
            let mut cycle = self.stack[at..].to_vec();
            cycle.push(name.to_string());
            return Err(Error::Cycle(cycle));
        }
        let Some(entry) = self.index.loadable.get(name) else {
            if self.index.builtin.contains(name) {
                self.done.insert(name.to_string());
                return Ok(());
            }
            return Err(Error::Unknown(name.to_string()));
        };
        self.stack.push(name.to_string());
        // depmod lists the whole closure, the deepest last; visiting it from
        // the end gives the order modprobe would use.
        for dep in entry.deps.iter().rev() {
            self.visit(dep)?;
        }
        self.stack.pop();
        self.done.insert(name.to_string());
        self.order.push(entry.path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the 6.12 cloud kernel's `depmod` writes them.
    const DEP: &str = "\
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/drivers/net/veth.ko.xz:
kernel/net/netfilter/x_tables.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz:
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nf_nat.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/ipv4/netfilter/ip_tables.ko.xz: kernel/net/netfilter/x_tables.ko.xz
kernel/net/ipv4/netfilter/iptable_nat.ko.xz: kernel/net/ipv4/netfilter/ip_tables.ko.xz kernel/net/netfilter/x_tables.ko.xz kernel/net/netfilter/nf_nat.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz
kernel/arch/x86/kvm/kvm.ko.xz:
";
    const BUILTIN: &str = "kernel/net/unix/unix.ko\nkernel/crypto/crc32c_generic.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, BUILTIN).unwrap()
    }

    #[test]
    fn module_names_drop_directory_suffix_and_dashes() {
        assert_eq!(module_name("kernel/net/bridge/bridge.ko.xz"), "bridge");
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
        assert_eq!(module_name("xt_REDIRECT.ko.zst"), "xt_REDIRECT");
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let order = index()
            .load_order(&["bridge", "iptable_nat", "veth", "stp"])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz",
                "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz",
                "kernel/net/netfilter/nf_conntrack.ko.xz",
                "kernel/net/netfilter/nf_nat.ko.xz",
                "kernel/net/netfilter/x_tables.ko.xz",
                "kernel/net/ipv4/netfilter/ip_tables.ko.xz",
                "kernel/net/ipv4/netfilter/iptable_nat.ko.xz",
                "kernel/drivers/net/veth.ko.xz",
            ]
        );
    }

    #[test]
    fn dashes_in_requested_names_match() {
        assert_eq!(
            index().load_order(&["kvm-amd"]).unwrap(),
            [
                "kernel/arch/x86/kvm/kvm.ko.xz",
                "kernel/arch/x86/kvm/kvm-amd.ko.xz"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped() {
        assert!(index().load_order(&["unix"]).unwrap().is_empty());
        let dep = "kernel/lib/libcrc32c.ko: kernel/crypto/crc32c_generic.ko\n";
        let order = ModuleIndex::parse(dep, BUILTIN)
            .unwrap()
            .load_order(&["libcrc32c"])
            .unwrap();
        assert_eq!(order, ["kernel/lib/libcrc32c.ko"]);
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let err = index().load_order(&["veth", "no_such_mod"]).unwrap_err();
        assert!(
            matches!(&err, Error::Unknown(n) if n == "no_such_mod"),
            "{err}"
        );
        assert!(err.to_string().contains("no_such_mod"));
        // A dependency without a line of its own is unknown too.
        let err = ModuleIndex::parse("a.ko: b.ko\n", "")
            .unwrap()
            .load_order(&["a"])
            .unwrap_err();
        assert!(matches!(&err, Error::Unknown(n) if n == "b"), "{err}");
    }

    #[test]
    fn a_cycle_is_an_error_naming_it() {
        let dep = "a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n";
        let err = ModuleIndex::parse(dep, "")
            .unwrap()
            .load_order(&["a"])
            .unwrap_err();
        assert!(
            matches!(&err, Error::Cycle(c) if c == &["a", "b", "c", "a"]),
            "{err}"
        );
        assert!(err.to_string().contains("a -> b -> c -> a"), "{err}");
    }

    #[test]
    fn a_line_without_colon_is_malformed() {
        let err = ModuleIndex::parse("x.ko: y.ko\n\nbroken.ko\n", "").unwrap_err();
        assert!(matches!(err, Error::Malformed { line: 3, .. }), "{err}");
    }
}
