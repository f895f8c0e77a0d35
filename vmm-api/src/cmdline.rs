//! The guest kernel command line every husk guest boots with, and a builder for the
//! parameters added per use (`quiet`, the operator's extra parameters, a benchmark's
//! tracing, a test's probe settings).

use std::fmt;

/// Kernel parameters every guest gets (each measured with `cargo xtask bench`):
/// - `console=ttyS0`: the console is husk-vmm's serial port (the pod's `console.log`);
/// - `reboot=k`: a reboot or poweroff resets through the i8042 controller, which husk-vmm
///   treats as the guest shutting down (without ACPI, `poweroff -f` only halts the vCPU);
/// - `panic=-1`: a panicking guest kernel reboots at once, so the VM ends instead of
///   hanging;
/// - `rcupdate.rcu_expedited=1`: with one or two vCPUs expedited RCU grace periods are
///   cheap, and the kernel's late init, the agent's mounts and every container's mount and
///   namespace setup wait on grace periods (a quarter less boot time);
/// - `i8042.nokbd` (with the other i8042 options): no keyboard port probing, which costs
///   hundreds of port I/O exits (`reboot=k` resets through the controller without it).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux \
                                i8042.nopnp i8042.dumbkbd i8042.nokbd rcupdate.rcu_expedited=1";

/// A guest command line: [`BASE_CMDLINE`], then `quiet` if asked, then extra parameters in
/// the order added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCmdline {
    quiet: bool,
    extra: Vec<String>,
}

impl GuestCmdline {
    /// The base command line, kernel messages shown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `quiet` (no kernel messages on the console) when `yes`.
    pub fn quiet(mut self, yes: bool) -> Self {
        self.quiet = yes;
        self
    }

    /// Appends parameters (one or several, space-separated); blank input adds nothing.
    pub fn param(mut self, params: &str) -> Self {
        let p = params.trim();
        if !p.is_empty() {
            self.extra.push(p.to_string());
        }
        self
    }

    /// The command line as a string.
    pub fn build(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for GuestCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BASE_CMDLINE)?;
        if self.quiet {
            f.write_str(" quiet")?;
        }
        for p in &self.extra {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_has_the_reset_and_console_parameters() {
        for p in ["console=ttyS0", "reboot=k", "panic=-1", "i8042.nokbd"] {
            assert!(BASE_CMDLINE.split(' ').any(|w| w == p), "{p}");
        }
        assert!(!BASE_CMDLINE.contains("  "));
        assert_eq!(GuestCmdline::new().build(), BASE_CMDLINE);
    }

    #[test]
    fn quiet_then_extra_parameters_in_order() {
        let c = GuestCmdline::new()
            .param(" loglevel=7 ")
            .quiet(true)
            .param("")
            .param("printk.time=1 initcall_debug");
        assert_eq!(
            c.build(),
            format!("{BASE_CMDLINE} quiet loglevel=7 printk.time=1 initcall_debug")
        );
        assert!(GuestCmdline::new().quiet(true).build().ends_with(" quiet"));
        assert!(!GuestCmdline::new().quiet(false).build().contains("quiet"));
    }
}
