//! Every filter compiles; loaded into a child process, a filter lets its thread's calls
//! through and kills the process on any other.

use super::*;
use crate::test_util::{child_passes, in_child, rerun_in_child};
use std::os::unix::process::ExitStatusExt;

#[test]
fn every_kind_compiles_for_x86_64() {
    for kind in ThreadKind::ALL {
        let program = kind.compile().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert!(
            program.len() > 20,
            "{kind:?}: {} instructions",
            program.len()
        );
        assert!(program.len() < usize::from(u16::MAX), "{kind:?}");
    }
    assert!(ThreadFilters::compile().unwrap().enabled());
    assert!(!ThreadFilters::disabled().enabled());
}

#[test]
fn lists_grant_only_what_each_kind_needs() {
    let has = |kind: ThreadKind, nr: libc::c_long| kind.rules().unwrap().contains_key(&nr);
    // Nobody execs, opens sockets beyond the event loop, or binds.
    for kind in ThreadKind::ALL {
        assert!(!has(kind, libc::SYS_execve), "{kind:?}");
        assert!(!has(kind, libc::SYS_bind), "{kind:?}");
        assert!(!has(kind, libc::SYS_ptrace), "{kind:?}");
        assert!(!has(kind, libc::SYS_mount), "{kind:?}");
        assert_eq!(
            has(kind, libc::SYS_socket),
            kind == ThreadKind::EventLoop,
            "{kind:?}"
        );
        // Only the listener creates threads.
        assert_eq!(
            has(kind, libc::SYS_clone3),
            kind == ThreadKind::ApiListener,
            "{kind:?}"
        );
    }
    assert!(!has(ThreadKind::Vcpu, libc::SYS_accept4));
    assert!(!has(ThreadKind::ApiConnection, libc::SYS_accept4));
    // A connection thread inherits the listener's filter: the listener must allow all of it.
    let listener = ThreadKind::ApiListener.rules().unwrap();
    for nr in ThreadKind::ApiConnection.rules().unwrap().keys() {
        assert!(listener.contains_key(nr), "syscall {nr}");
    }
}

/// Runs `name` in a child and asserts that the child was killed by SIGSYS.
fn child_killed_by_sigsys(name: &str) {
    let out = rerun_in_child(module_path!(), name, &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{}: {text}",
        out.status
    );
    assert!(text.contains("allowed call returned"), "{text}");
}

/// `ioctl(fd, request)` as a raw system call.
fn ioctl(fd: i32, request: u64) -> i64 {
    // SAFETY: the requests used carry no argument pointer; an invalid fd just fails.
    unsafe { libc::syscall(libc::SYS_ioctl, fd, request, 0) }
}

#[test]
fn vcpu_filter_kills_on_socket() {
    if !in_child() {
        return child_killed_by_sigsys("vcpu_filter_kills_on_socket");
    }
    ThreadFilters::compile()
        .unwrap()
        .load(ThreadKind::Vcpu)
        .unwrap();
    // KVM_RUN on a bad fd is allowed through (and fails with EBADF).
    assert_eq!(ioctl(-1, rules::KVM_RUN), -1);
    println!("allowed call returned");
    // SAFETY: socket takes integers only; it is expected to kill the process.
    unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    unreachable!("socket was allowed on a vCPU thread");
}

#[test]
fn vcpu_filter_kills_on_another_ioctl() {
    if !in_child() {
        return child_killed_by_sigsys("vcpu_filter_kills_on_another_ioctl");
    }
    ThreadFilters::compile()
        .unwrap()
        .load(ThreadKind::Vcpu)
        .unwrap();
    assert_eq!(ioctl(-1, rules::KVM_RUN), -1);
    println!("allowed call returned");
    // KVM_CREATE_VM, _IO(KVMIO, 0x01): not something a vCPU does.
    ioctl(-1, 0xae01);
    unreachable!("KVM_CREATE_VM was allowed on a vCPU thread");
}

#[test]
fn event_loop_filter_kills_on_exec_memory() {
    if !in_child() {
        return child_killed_by_sigsys("event_loop_filter_kills_on_exec_memory");
    }
    ThreadFilters::compile()
        .unwrap()
        .load(ThreadKind::EventLoop)
        .unwrap();
    let v: Vec<u8> = Vec::with_capacity(1 << 20);
    drop(v);
    println!("allowed call returned");
    // SAFETY: an anonymous mapping with no address hint; expected to kill the process.
    unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    unreachable!("executable memory was allowed");
}

#[test]
fn disabled_filters_load_nothing() {
    if !in_child() {
        return child_passes(module_path!(), "disabled_filters_load_nothing", &[]);
    }
    ThreadFilters::disabled().load(ThreadKind::Vcpu).unwrap();
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.contains("Seccomp:\t0"), "{status}");
}
