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
        let err = condition_sets(&[arg(6, 1)])
            .err()
            .expect("index 6 must fail");
        assert!(
            matches!(&err, SeccompError::Unsupported(what) if what == "argument index 6"),
            "{err}"
        );
    }

    /// Set when this test binary runs again as the child that loads a filter: a loaded
    /// filter cannot be taken off, so it goes into a process of its own.
    const CHILD_ENV: &str = "HUSK_SECCOMP_TEST_CHILD";
    /// What a child prints once all its checks passed.
    const CHILD_DONE: &str = "seccomp child: checks done";

    /// Runs the test `name` (of this module) again in a child process of this test binary,
    /// with [`CHILD_ENV`] set; returns its output.
    fn rerun_in_child(name: &str) -> std::process::Output {
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let exe = std::env::current_exe().expect("current_exe");
        std::process::Command::new(exe)
            .args(["--exact", &format!("{module}::{name}"), "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the test binary again")
    }

    fn in_child() -> bool {
        std::env::var_os(CHILD_ENV).is_some()
    }

    fn compile(json: &str) -> Filter {
        let profile: LinuxSeccomp = serde_json::from_str(json).expect("profile");
        Filter::compile(&profile, true).expect("compile")
    }

    /// `mkdirat(AT_FDCWD, path, mode)` as a raw system call: the errno it failed with.
    fn mkdirat(path: &std::path::Path, mode: u32) -> Result<(), i32> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: c is a valid NUL-terminated path that lives across the call.
        let rc = unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, c.as_ptr(), mode) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    #[test]
    fn errno_rules_deny_with_their_errno_and_the_rest_runs() {
        if in_child() {
            // mkdirat is denied with EXDEV for mode 0700 or 0711 (the same argument twice:
            // two ORed rules), and allowed for any other mode; getppid is denied with the
            // default errno (EPERM); an unknown name is skipped.
            let filter = compile(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[
                  {"names":["mkdirat","no_such_call"],"action":"SCMP_ACT_ERRNO","errnoRet":18,
                   "args":[{"index":2,"value":448,"op":"SCMP_CMP_EQ"},
                           {"index":2,"value":457,"op":"SCMP_CMP_EQ"}]},
                  {"names":["getppid"],"action":"SCMP_ACT_ERRNO"}]}"#,
            );
            let dir = tempfile::tempdir().expect("tempdir");
            // SAFETY: getppid has no preconditions.
            let parent = unsafe { libc::syscall(libc::SYS_getppid) };
            assert!(parent > 0, "getppid before the filter: {parent}");
            // Without TSYNC the filter binds this thread only, which runs every check.
            filter.load().expect("load");
            assert_eq!(mkdirat(&dir.path().join("a"), 0o700), Err(libc::EXDEV));
            assert_eq!(mkdirat(&dir.path().join("b"), 0o711), Err(libc::EXDEV));
            assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
            assert_eq!(mkdirat(&dir.path().join("c"), 0o755), Ok(()));
            assert!(dir.path().join("c").is_dir());
            // SAFETY: getppid has no preconditions.
            let denied = unsafe { libc::syscall(libc::SYS_getppid) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((denied, errno), (-1, Some(libc::EPERM)));
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            assert_eq!(pid, i64::from(std::process::id()));
            println!("{CHILD_DONE}");
            return;
        }
        let out = rerun_in_child("errno_rules_deny_with_their_errno_and_the_rest_runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(CHILD_DONE),
            "child: {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn kill_process_rule_kills_with_sigsys() {
        if in_child() {
            let filter = compile(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
            );
            // No core file from the expected SIGSYS.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: no_core is a valid rlimit that lives across the call.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) }, 0);
            filter.load().expect("load");
            println!("{CHILD_DONE}");
            // SAFETY: getppid has no preconditions; the filter kills the process here.
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            println!("survived getppid: {ppid}");
            return;
        }
        use std::os::unix::process::ExitStatusExt;
        let out = rerun_in_child("kill_process_rule_kills_with_sigsys");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.signal() == Some(libc::SIGSYS)
                && stdout.contains(CHILD_DONE)
                && !stdout.contains("survived"),
            "child: {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn notify_is_refused() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdirat"],"action":"SCMP_ACT_NOTIFY"}]}"#;
        let profile: LinuxSeccomp = serde_json::from_str(json).expect("profile");
        let err = Filter::compile(&profile, false)
            .err()
            .expect("notify must fail");
        assert!(
            matches!(&err, SeccompError::Unsupported(what) if what == "SCMP_ACT_NOTIFY"),
            "{err}"
        );
    }
}
