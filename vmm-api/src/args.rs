//! husk-vmm's command line, defined once: husk-vmm parses it with [`VmmArgs`] and everyone
//! who starts husk-vmm (the shim, the end-to-end tests, the benchmarks) builds it with
//! [`VmmArgs::to_args`]. Everything about the VM itself is in the JSON file named by
//! `--config` ([`crate::VmConfig`]), so the list stays short and typed.
//!
//! Flags about how husk-vmm runs rather than what it runs belong here: `--no-seccomp` and
//! `--no-jail` switch off parts of husk-vmm's confinement, for debugging only (a filter that
//! kills husk-vmm, a host where the jail cannot be built). Nobody passes them in production;
//! [`VmmArgs::to_args`] emits each only when set.

use std::ffi::OsString;
use std::path::PathBuf;

/// Arguments of `husk-vmm`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "husk-vmm",
    version,
    about = "KVM micro-VM monitor for one husk pod"
)]
pub struct VmmArgs {
    /// JSON file holding the VM configuration (a `VmConfig`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Debugging only: load no seccomp filter into husk-vmm's threads (the jail and the
    /// capability drop stay).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Debugging only: stay in the host's mount namespace instead of the jail (capabilities
    /// are still dropped, seccomp filters still loaded).
    #[arg(long)]
    pub no_jail: bool,
}

impl VmmArgs {
    /// Arguments for the VM configured in `config`.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            no_seccomp: false,
            no_jail: false,
        }
    }

    /// The argument list (without the program name) that [`clap::Parser::parse`] turns
    /// back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = vec!["--config".into(), self.config.clone().into_os_string()];
        if self.no_seccomp {
            args.push("--no-seccomp".into());
        }
        if self.no_jail {
            args.push("--no-jail".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<VmmArgs, clap::Error> {
        VmmArgs::try_parse_from(std::iter::once(OsString::from("husk-vmm")).chain(args))
    }

    #[test]
    fn to_args_parses_back() {
        let mut a = VmmArgs::new("/run/husk/default/pod 1/vmm.json");
        assert_eq!(parse(a.to_args()).unwrap(), a);
        assert_eq!(a.to_args().len(), 2, "no debugging flag unless set");
        a.no_seccomp = true;
        assert_eq!(parse(a.to_args()).unwrap(), a);
        a.no_jail = true;
        assert_eq!(parse(a.to_args()).unwrap(), a);
        a.no_seccomp = false;
        let parsed = parse(a.to_args()).unwrap();
        assert!(parsed.no_jail && !parsed.no_seccomp, "{parsed:?}");
    }

    #[test]
    fn per_field_flags_and_missing_config_are_refused() {
        use clap::error::ErrorKind;
        let err = parse([]).expect_err("no --config");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{err}");
        assert!(err.to_string().contains("--config"), "{err}");
        for (args, flag) in [
            (vec!["--kernel".into(), "/k".into()], "--kernel"),
            (
                vec![
                    "--config".into(),
                    "/c".into(),
                    "--vsock-socket".into(),
                    "/v".into(),
                ],
                "--vsock-socket",
            ),
        ] {
            let err = parse(args).expect_err(flag);
            assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{flag}: {err}");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }
}
