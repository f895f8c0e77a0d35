//! Kernel `.config` files: parsing, and checking that the options husk needs
//! survived `make olddefconfig` (which silently drops an option whose
//! dependencies are not met).

use std::collections::BTreeMap;

/// The config fragment merged on top of `tinyconfig`.
pub const FRAGMENT: &str = include_str!("../guest-kernel.config");

/// Options the guest cannot work without (design §4). The fragment sets them
/// all; this list exists so that editing the fragment cannot drop one unnoticed.
pub const REQUIRED: &[&str] = &[
    "64BIT",
    "SMP",
    "X86_MPPARSE",
    "PARAVIRT",
    "KVM_GUEST",
    "PVH",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "BLK_DEV_INITRD",
    "DEVTMPFS",
    "TMPFS",
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VSOCKETS",
    "VIRTIO_VSOCKETS",
    "FUSE_FS",
    "VIRTIO_FS",
    "OVERLAY_FS",
    "NAMESPACES",
    "UTS_NS",
    "IPC_NS",
    "USER_NS",
    "PID_NS",
    "NET_NS",
    "CGROUPS",
    "MEMCG",
    "CGROUP_PIDS",
    "CGROUP_SCHED",
    "CPUSETS",
    "BLK_CGROUP",
    "CGROUP_FREEZER",
    "CGROUP_DEVICE",
    "SECCOMP_FILTER",
    "VIRTIO_NET",
    "VIRTIO_BLK",
    "EXT4_FS",
    "HW_RANDOM_VIRTIO",
    "SERIO_I8042",
    "INET",
    "UNIX",
    "POSIX_TIMERS",
    "EPOLL",
    "EVENTFD",
    "SIGNALFD",
    "TIMERFD",
    "INOTIFY_USER",
    "FUTEX",
    "FILE_LOCKING",
    "MULTIUSER",
    // What privileged and NET_ADMIN containers of a pod expect of the kernel, as
    // under runc: virtual links, IPv6, and iptables through both nf_tables
    // (iptables-nft) and the legacy tables (iptables-legacy).
    "IPV6",
    "BRIDGE",
    "VETH",
    "TUN",
    "NF_CONNTRACK",
    "NF_NAT",
    "NF_TABLES",
    "NFT_NAT",
    "NFT_COMPAT",
    "NETFILTER_XT_NAT",
    "NETFILTER_XT_TARGET_REDIRECT",
    "NETFILTER_XT_MATCH_CONNTRACK",
    "IP_NF_IPTABLES",
    "IP_NF_NAT",
    "IP6_NF_IPTABLES",
    "IP6_NF_NAT",
];

/// Options that must stay off: the guest has no ACPI, no PCI and no modules.
pub const FORBIDDEN: &[&str] = &["ACPI", "PCI", "MODULES"];

/// A parsed `.config`: option name (without `CONFIG_`) to value. Options
/// written as `# CONFIG_X is not set` map to `"n"`.
pub type KernelConfig = BTreeMap<String, String>;

/// Parses the text of a `.config` file or fragment.
pub fn parse(text: &str) -> KernelConfig {
    let mut config = KernelConfig::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                config.insert(name.to_string(), "n".to_string());
            }
        } else if let Some(rest) = line.strip_prefix("CONFIG_") {
            if let Some((name, value)) = rest.split_once('=') {
                config.insert(name.to_string(), value.to_string());
            }
        }
    }
    config
}

/// What is wrong with a final `.config`, as human-readable lines. Empty when
/// every required option (the [`REQUIRED`] list and every `=y` of the
/// fragment) is `y` and no [`FORBIDDEN`] option is on.
pub fn problems(final_config: &KernelConfig) -> Vec<String> {
    let fragment = parse(FRAGMENT);
    let wanted_y = REQUIRED.iter().map(|s| s.to_string()).chain(
        fragment
            .iter()
            .filter(|(_, v)| *v == "y")
            .map(|(k, _)| k.clone()),
    );
    let mut out: Vec<String> = wanted_y
        .filter(|name| final_config.get(name).map(String::as_str) != Some("y"))
        .map(|name| {
            let got = final_config
                .get(&name)
                .map(String::as_str)
                .unwrap_or("unset");
            format!("CONFIG_{name} must be y, is {got}")
        })
        .collect();
    out.sort();
    out.dedup();
    for name in FORBIDDEN {
        if matches!(
            final_config.get(*name).map(String::as_str),
            Some("y") | Some("m")
        ) {
            out.push(format!("CONFIG_{name} must be off"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_unset_lines() {
        let c = parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# comment\n");
        assert_eq!(c["A"], "y");
        assert_eq!(c["B"], "n");
        assert_eq!(c["C"], "\"x y\"");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn fragment_sets_every_required_option() {
        let fragment = parse(FRAGMENT);
        for name in REQUIRED {
            assert_eq!(fragment.get(*name).map(String::as_str), Some("y"), "{name}");
        }
    }

    #[test]
    fn problems_names_dropped_and_forbidden_options() {
        let mut config = parse(FRAGMENT);
        assert!(problems(&config).is_empty());
        config.insert("VIRTIO_FS".into(), "n".into());
        config.remove("SMP");
        config.insert("PCI".into(), "y".into());
        let p = problems(&config);
        assert!(
            p.contains(&"CONFIG_VIRTIO_FS must be y, is n".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(&"CONFIG_SMP must be y, is unset".to_string()),
            "{p:?}"
        );
        assert!(p.contains(&"CONFIG_PCI must be off".to_string()), "{p:?}");
    }
}
