//! `husk-agent`: PID 1 of a husk guest and the OCI container runtime behind the agent API
//! (`husk-protocol`), served with ttrpc on vsock port 1024. The same binary runs on a host
//! (`husk-agent --listen unix:/path`) so container semantics can be tested natively.
//!
//! # Layout
//!
//! - [`init`]: PID 1 duties (root off the initramfs, mounts, console, ending the VM).
//! - [`reaper`]: the single `waitpid` loop; exit statuses for everybody.
//! - [`server`]: the ttrpc service; [`container`]: containers, processes, stdio;
//!   [`cgroup`]: cgroup v2; [`oom`]: OOM kills in container cgroups; [`sandbox`]:
//!   guest-wide settings.
//! - [`setup`]: the setup process (`husk-agent __husk_setup`) that turns an OCI spec into a
//!   running container process: namespaces, mounts, pivot_root, ids, capabilities, rlimits,
//!   no_new_privs, seccomp.
//!
//! # Why not youki's `libcontainer`
//!
//! `libcontainer` 0.7 was evaluated first. It covers the spec well (it even has `no_pivot`
//! and fd-based stdio), but it does not fit this agent:
//!
//! - **Process model.** It clones its intermediate and init processes from the calling
//!   process with raw `clone3` and then runs ordinary Rust code (allocation, logging) in
//!   the children. In the agent, a multi-threaded ttrpc server, a child cloned while
//!   another thread holds the allocator's lock can deadlock. The agent therefore forks only
//!   to exec a fresh single-threaded copy of itself ([`setup`]), which is where namespace
//!   and mount work happens.
//! - **State on disk.** Its lifecycle (`create`, `start`, `kill`, `delete`) loads and
//!   stores container state in a root directory and signals start through a notify
//!   socket, as the youki CLI does; the agent keeps its state in memory and needs
//!   exit statuses from its own reaper (as PID 1 it reaps everything).
//! - **Weight.** It pulls in a second `nix` (0.29), `procfs`, `libcgroups` (with systemd /
//!   D-Bus by default), `rust-criu` (protobuf), netlink crates, `regex`, `chrono` and
//!   `pathrs`: a large compile on the 2-core build machines and a bigger binary in every
//!   initramfs, where boot time matters.
//! - **cgroup v1 and systemd** support are dead weight in a guest that only has cgroup v2.
//!
//! The parts needed are implemented here with `nix` and `libc`; seccomp uses libseccomp
//! (linked statically) exactly as runc does.
//!
//! Not supported: user namespaces (id mappings), hooks, AppArmor/SELinux labels, and
//! OCI seccomp notify. Namespace paths are joined as given; the shim should drop the
//! network namespace path of a CRI spec (the pod's network is the VM's).

pub mod cgroup;
pub mod container;
pub mod error;
pub mod init;
pub mod oom;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod setup;
