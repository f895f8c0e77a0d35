//! The last steps before exec: session and terminal, rlimits, ids, capabilities,
//! no_new_privs, seccomp, cwd and the program lookup.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chdir, setgid, setgroups, setsid, setuid, Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process};

use super::caps::{self, Masks};
use super::seccomp::Filter;
use super::SetupError;

type Result<T> = std::result::Result<T, SetupError>;

/// Default PATH when the process environment has none (as runc).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn rlimit_resource(t: PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    use PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn set_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().iter().flatten() {
        let Some(resource) = rlimit_resource(r.typ()) else {
            return Err(SetupError::Invalid(format!("rlimit {:?}", r.typ())));
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: lim is a valid rlimit struct; resource is a known RLIMIT_* constant.
        if unsafe { libc::setrlimit(resource, &lim) } < 0 {
            return Err(SetupError::Sys(
                format!("setrlimit {:?}", r.typ()),
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

/// Looks up `prog` like execvp would, in the PATH of `env`, relative to the cwd.
pub fn find_program(prog: &str, env: &[String]) -> Result<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(SetupError::Invalid(format!("{prog}: no such executable")))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| executable(p))
        .ok_or_else(|| SetupError::Invalid(format!("{prog}: executable file not found in $PATH")))
}

/// A process ready to exec: everything checked and converted up front.
pub struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    seccomp: Option<Filter>,
    nnp: bool,
}

fn cstrings(list: &[String]) -> Result<Vec<CString>> {
    list.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| SetupError::Invalid(format!("NUL in {s:?}")))
        })
        .collect()
}

/// Applies the process's identity and limits and finds the program. After this only
/// [`Prepared::exec`] is left.
pub fn prepare(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<Prepared> {
    setsid().map_err(|e| SetupError::Sys("setsid".into(), e))?;
    if process.terminal() == Some(true) {
        // SAFETY: TIOCSCTTY on fd 0 (the pty slave) with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(SetupError::Sys(
                "TIOCSCTTY".into(),
                nix::errno::Errno::last(),
            ));
        }
        if let Some(size) = process.console_size() {
            let ws = libc::winsize {
                ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
                ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
            unsafe { libc::ioctl(0, libc::TIOCSWINSZ, &ws) };
        }
    }
    set_rlimits(process)?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| SetupError::Io("oom_score_adj".into(), e))?;
    }
    let nnp = process.no_new_privileges() == Some(true);
    let filter = seccomp
        .map(|s| Filter::compile(s, nnp))
        .transpose()
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    if !nnp {
        // Without no_new_privs the filter must go in while we still hold CAP_SYS_ADMIN.
        if let Some(f) = &filter {
            f.load().map_err(|e| SetupError::Invalid(e.to_string()))?;
        }
    }
    let masks = Masks::from_spec(process.capabilities().as_ref())
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let caps_err = |e: caps::CapsError| SetupError::Invalid(e.to_string());
    caps::drop_bounding(masks.bounding).map_err(caps_err)?;
    caps::keep_caps(true).map_err(caps_err)?;
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&gids).map_err(|e| SetupError::Sys("setgroups".into(), e))?;
    setgid(Gid::from_raw(user.gid())).map_err(|e| SetupError::Sys("setgid".into(), e))?;
    setuid(Uid::from_raw(user.uid())).map_err(|e| SetupError::Sys("setuid".into(), e))?;
    caps::keep_caps(false).map_err(caps_err)?;
    caps::apply(&masks).map_err(caps_err)?;
    let cwd = process.cwd();
    chdir(cwd).map_err(|e| SetupError::Sys(format!("chdir {cwd:?}"), e))?;
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(user.umask().unwrap_or(0o022) as libc::mode_t) };
    let args = process.args().clone().unwrap_or_default();
    let Some(first) = args.first() else {
        return Err(SetupError::Invalid("process.args is empty".into()));
    };
    let env = process.env().clone().unwrap_or_default();
    let program = find_program(first, &env)?;
    Ok(Prepared {
        program: CString::new(program.as_os_str().as_encoded_bytes())
            .map_err(|_| SetupError::Invalid("NUL in program path".into()))?,
        argv: cstrings(&args)?,
        envp: cstrings(&env)?,
        seccomp: filter,
        nnp,
    })
}

impl Prepared {
    /// Sets no_new_privs, loads the late seccomp filter and execs. Returns only on error.
    pub fn exec(self) -> SetupError {
        if self.nnp {
            // SAFETY: integer-only prctl.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return SetupError::Sys("PR_SET_NO_NEW_PRIVS".into(), nix::errno::Errno::last());
            }
            if let Some(f) = &self.seccomp {
                if let Err(e) = f.load() {
                    return SetupError::Invalid(e.to_string());
                }
            }
        }
        match nix::unistd::execve(&self.program, &self.argv, &self.envp) {
            Err(e) => SetupError::Sys(format!("exec {:?}", self.program), e),
            Ok(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_uses_path_from_env() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        let found = find_program("sh", &env).expect("sh in /bin");
        assert_eq!(found, PathBuf::from("/bin/sh"));
        assert!(matches!(
            find_program("no-such-program-here", &env),
            Err(SetupError::Invalid(m))
                if m == "no-such-program-here: executable file not found in $PATH"
        ));
        assert_eq!(
            find_program("/bin/sh", &[]).expect("absolute"),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            find_program("/etc/hostname-nope", &[]),
            Err(SetupError::Invalid(m)) if m == "/etc/hostname-nope: no such executable"
        ));
    }
}
