//! The system calls each kind of husk-vmm thread may make, as plain data.
//!
//! Each list is what the thread's code paths need once the VM runs, found by reading them
//! (the KVM, device, vsock and API code) and by tracing the unit tests: setup (opening
//! `/dev/kvm`, loading the kernel, binding sockets, connecting to virtiofsd) is over before
//! any filter is loaded, so none of it appears here. The allocator, thread and logging side
//! of the standard library is granted generously to every kind (see [`runtime`]); what a
//! kind may do to the world outside the process (KVM, sockets, files) is granted narrowly,
//! with argument checks where they are cheap (the `ioctl` request, the `socket` domain, the
//! `openat` flags, no executable mappings).
//!
//! Filters stack: a thread created by a filtered thread inherits its creator's filter and
//! only adds its own on top. The API listener's list therefore holds everything a
//! connection thread needs up to and including loading its own (narrower) filter.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
};

use super::SeccompError;

/// Syscall number to the rules it must match (an empty list: allowed whatever the
/// arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `KVM_RUN`, `_IO(KVMIO, 0x80)`: the only ioctl a vCPU makes once it runs.
pub const KVM_RUN: u64 = 0xae80;

/// One rule: every condition must hold.
fn all(conds: Vec<Cond>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conds)?)
}

/// `arg == value` (compared as 64 bits).
fn eq(arg: u8, value: u64) -> Result<Cond, SeccompError> {
    Ok(Cond::new(arg, Len::Qword, Op::Eq, value)?)
}

/// `arg == value` compared on the low 32 bits only (for `int` arguments, whose upper half
/// the kernel ignores and the caller may leave as garbage).
fn eq32(arg: u8, value: u32) -> Result<Cond, SeccompError> {
    Ok(Cond::new(arg, Len::Dword, Op::Eq, u64::from(value))?)
}

/// Allows `nr` whatever its arguments.
fn allow(rules: &mut Rules, nrs: &[libc::c_long]) {
    for nr in nrs {
        rules.insert(*nr, Vec::new());
    }
}

/// Allows `nr` when its argument `arg` (an `int`) is one of `values`.
fn allow_if_arg(
    rules: &mut Rules,
    nr: libc::c_long,
    arg: u8,
    values: &[u32],
) -> Result<(), SeccompError> {
    let list = values
        .iter()
        .map(|v| all(vec![eq32(arg, *v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(nr, list);
    Ok(())
}

/// What every thread needs from the C library and Rust's standard library: allocation
/// (never executable memory), locks, time, logging to stderr, closing fds, signal return,
/// aborting and exiting.
fn runtime(rules: &mut Rules) -> Result<(), SeccompError> {
    allow(
        rules,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            // glibc sizes its malloc arenas by the CPUs a thread may run on.
            libc::SYS_sched_getaffinity,
            libc::SYS_clock_gettime,
            libc::SYS_gettimeofday,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    // mmap and mprotect without PROT_EXEC: nothing in husk-vmm makes code at run time.
    let no_exec = || -> Result<Vec<SeccompRule>, SeccompError> {
        Ok(vec![all(vec![Cond::new(
            2,
            Len::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    // A panic that aborts raises SIGABRT at itself.
    allow_if_arg(rules, libc::SYS_tgkill, 2, &[libc::SIGABRT as u32])?;
    Ok(())
}

/// `tgkill` for SIGABRT and the vCPU kick signal (pausing and stopping vCPUs).
fn kick(rules: &mut Rules, kick_signal: i32) -> Result<(), SeccompError> {
    allow_if_arg(
        rules,
        libc::SYS_tgkill,
        2,
        &[libc::SIGABRT as u32, kick_signal as u32],
    )
}

/// A vCPU thread: `KVM_RUN`; the devices it drives by port and MMIO accesses (eventfd
/// writes for interrupts and the exit signal, the serial console file including its
/// rotation, vhost-user messages to virtiofsd when the guest activates or resets virtio-fs).
pub fn vcpu() -> Result<Rules, SeccompError> {
    let mut r = Rules::new();
    runtime(&mut r)?;
    r.insert(libc::SYS_ioctl, vec![all(vec![eq(1, KVM_RUN)?])?]);
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
        ],
    );
    allow_if_arg(
        &mut r,
        libc::SYS_fcntl,
        1,
        &[libc::F_GETFD as u32, libc::F_SETFD as u32],
    )?;
    // The console file reopened after rotation, with exactly the flags `console_file` uses.
    let console_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
    allow_if_arg(&mut r, libc::SYS_openat, 2, &[console_flags as u32])?;
    Ok(r)
}

/// The main thread: the event loop (epoll, eventfds, the vsock muxer's sockets and timer)
/// and, at the end, stopping the vCPUs and removing husk-vmm's own socket files.
pub fn event_loop(kick_signal: i32) -> Result<Rules, SeccompError> {
    let mut r = Rules::new();
    runtime(&mut r)?;
    kick(&mut r, kick_signal)?;
    allow(
        &mut r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
            libc::SYS_unlink,
        ],
    );
    // Outgoing vsock connections go to unix sockets only.
    r.insert(
        libc::SYS_socket,
        vec![all(vec![eq32(0, libc::AF_UNIX as u32)?])?],
    );
    // Rust's `set_nonblocking` is `ioctl(FIONBIO)`.
    r.insert(libc::SYS_ioctl, vec![all(vec![eq(1, libc::FIONBIO)?])?]);
    allow_if_arg(
        &mut r,
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFD as u32,
            libc::F_SETFD as u32,
            libc::F_GETFL as u32,
            libc::F_SETFL as u32,
        ],
    )?;
    Ok(r)
}

/// A control-API connection thread: reads requests, writes replies, kicks vCPUs to pause
/// them, signals the exit eventfd.
pub fn api_connection(kick_signal: i32) -> Result<Rules, SeccompError> {
    let mut r = Rules::new();
    runtime(&mut r)?;
    kick(&mut r, kick_signal)?;
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
        ],
    );
    // `try_clone` of the stream; F_GETFD: the standard library's check, in debug builds,
    // that a descriptor it closes is open.
    allow_if_arg(
        &mut r,
        libc::SYS_fcntl,
        1,
        &[libc::F_DUPFD_CLOEXEC as u32, libc::F_GETFD as u32],
    )?;
    Ok(r)
}

/// The control-API listener: accepts connections and starts a thread for each. It holds
/// everything a connection thread needs, since that thread inherits this filter, plus
/// creating the thread (clone, stack, robust list, rseq, name) and loading its own filter.
pub fn api_listener(kick_signal: i32) -> Result<Rules, SeccompError> {
    let mut r = api_connection(kick_signal)?;
    allow(
        &mut r,
        &[
            libc::SYS_accept4,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
        ],
    );
    // The new thread names itself, and loads its filter (seccompiler sets no_new_privs first).
    allow_if_arg(
        &mut r,
        libc::SYS_prctl,
        0,
        &[libc::PR_SET_NAME as u32, libc::PR_SET_NO_NEW_PRIVS as u32],
    )?;
    allow_if_arg(
        &mut r,
        libc::SYS_seccomp,
        0,
        &[libc::SECCOMP_SET_MODE_FILTER],
    )?;
    Ok(r)
}
