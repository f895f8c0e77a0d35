//! OCI seccomp profiles compiled with libseccomp (linked statically; see `build.rs`).
//!
//! Semantics follow runc: unknown syscall names are skipped, rules whose action equals the
//! default action are skipped, and the conditions of one rule are ANDed unless several
//! name the same argument, in which case each becomes its own rule (ORed).

use std::ffi::{c_char, c_int, c_uint, c_void, CString};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};

/// Errors building or loading a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// libseccomp refused an operation.
    #[error("seccomp {what}: errno {errno}")]
    Lib {
        /// The libseccomp call.
        what: &'static str,
        /// Its negative errno, made positive.
        errno: i32,
    },
    /// The profile asks for something this runtime does not do.
    #[error("seccomp: unsupported {0}")]
    Unsupported(String),
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ScmpArgCmp {
    arg: c_uint,
    op: c_int,
    datum_a: u64,
    datum_b: u64,
}

/// `SCMP_FLTATR_CTL_NNP`: whether seccomp_load sets no_new_privs itself.
const ATTR_CTL_NNP: c_int = 3;

extern "C" {
    fn seccomp_init(def_action: u32) -> *mut c_void;
    fn seccomp_release(ctx: *mut c_void);
    fn seccomp_arch_add(ctx: *mut c_void, arch_token: u32) -> c_int;
    fn seccomp_attr_set(ctx: *mut c_void, attr: c_int, value: u32) -> c_int;
    fn seccomp_syscall_resolve_name(name: *const c_char) -> c_int;
    fn seccomp_rule_add_array(
        ctx: *mut c_void,
        action: u32,
        syscall: c_int,
        arg_cnt: c_uint,
        arg_array: *const ScmpArgCmp,
    ) -> c_int;
    fn seccomp_load(ctx: *const c_void) -> c_int;
}

/// A compiled, not yet loaded filter.
pub struct Filter {
    ctx: *mut c_void,
}

impl Drop for Filter {
    fn drop(&mut self) {
        // SAFETY: ctx came from seccomp_init, is non-null and released exactly once here.
        unsafe { seccomp_release(self.ctx) }
    }
}

fn check(what: &'static str, rc: c_int) -> Result<(), SeccompError> {
    if rc < 0 {
        Err(SeccompError::Lib { what, errno: -rc })
    } else {
        Ok(())
    }
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    if action == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY".into()));
    }
    Ok(action.as_u32(errno))
}

fn condition(arg: &LinuxSeccompArg) -> Result<ScmpArgCmp, SeccompError> {
    let index = c_uint::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| SeccompError::Unsupported(format!("argument index {}", arg.index())))?;
    Ok(ScmpArgCmp {
        arg: index,
        op: arg.op() as c_int,
        datum_a: arg.value(),
        datum_b: arg.value_two().unwrap_or(0),
    })
}

/// Splits a rule's conditions into the condition sets that each become one libseccomp rule.
fn condition_sets(args: &[LinuxSeccompArg]) -> Result<Vec<Vec<ScmpArgCmp>>, SeccompError> {
    let conds = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let mut indexes: Vec<c_uint> = conds.iter().map(|c| c.arg).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    Ok(if repeated {
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    })
}

impl Filter {
    /// Compiles `profile`. `set_nnp` says whether loading also sets no_new_privs.
    pub fn compile(profile: &LinuxSeccomp, set_nnp: bool) -> Result<Self, SeccompError> {
        let default = action(profile.default_action(), profile.default_errno_ret())?;
        // SAFETY: plain constructor; a null return is handled below.
        let ctx = unsafe { seccomp_init(default) };
        if ctx.is_null() {
            return Err(SeccompError::Lib {
                what: "init",
                errno: libc::EINVAL,
            });
        }
        let filter = Filter { ctx };
        // SAFETY: ctx is a live filter context.
        check("attr nnp", unsafe {
            seccomp_attr_set(ctx, ATTR_CTL_NNP, u32::from(set_nnp))
        })?;
        for arch in profile.architectures().iter().flatten() {
            // SAFETY: ctx is live; the token is an AUDIT_ARCH value as libseccomp expects.
            let rc = unsafe { seccomp_arch_add(ctx, *arch as u32) };
            // -EEXIST: the native arch is already in the filter.
            if rc != -libc::EEXIST {
                check("arch add", rc)?;
            }
        }
        for rule in profile.syscalls().iter().flatten() {
            filter.add_rule(rule, default)?;
        }
        Ok(filter)
    }

    fn add_rule(&self, rule: &LinuxSyscall, default: u32) -> Result<(), SeccompError> {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            return Ok(());
        }
        let sets = condition_sets(rule.args().as_deref().unwrap_or(&[]))?;
        for name in rule.names() {
            let Ok(cname) = CString::new(name.as_str()) else {
                continue;
            };
            // SAFETY: cname is a valid NUL-terminated string.
            let nr = unsafe { seccomp_syscall_resolve_name(cname.as_ptr()) };
            if nr < 0 {
                continue; // unknown on this architecture, as runc does
            }
            for set in &sets {
                let count = c_uint::try_from(set.len()).unwrap_or(0);
                // SAFETY: ctx is live; the array holds `count` initialised conditions.
                let rc = unsafe { seccomp_rule_add_array(self.ctx, act, nr, count, set.as_ptr()) };
                check("rule add", rc)?;
            }
        }
        Ok(())
    }

    /// Installs the filter on the calling process.
    pub fn load(&self) -> Result<(), SeccompError> {
        // SAFETY: ctx is a live, fully built filter context.
        check("load", unsafe { seccomp_load(self.ctx) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(index: usize, value: u64) -> LinuxSeccompArg {
        serde_json::from_value(serde_json::json!({
            "index": index, "value": value, "op": "SCMP_CMP_EQ"
        }))
        .expect("arg")
    }

    #[test]
    fn repeated_index_splits_into_or_rules() {
        let sets = condition_sets(&[arg(0, 1), arg(0, 2)]).expect("sets");
        assert_eq!(sets.len(), 2);
        let sets = condition_sets(&[arg(0, 1), arg(1, 2)]).expect("sets");
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].len(), 2);
    }

    #[test]
    fn bad_index_is_rejected() {
        assert!(condition_sets(&[arg(6, 1)]).is_err());
    }

    #[test]
    fn profile_compiles_with_unknown_names_skipped() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["mkdirat","no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let profile: LinuxSeccomp = serde_json::from_str(json).expect("profile");
        assert!(Filter::compile(&profile, false).is_ok());
    }
}
