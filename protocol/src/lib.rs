//! The husk agent API: the ttrpc protocol between the shim (host) and `husk-agent` (guest PID 1).
//!
//! The API is defined in `protos/agent.proto` (protobuf package `husk.agent.v1`) and compiled
//! by `build.rs` with `ttrpc-codegen` (pure-Rust parser, no `protoc` needed) into
//! [`agent`] (messages) and [`agent_ttrpc`] (the sync client and the server trait
//! [`agent_ttrpc::Agent`] with [`agent_ttrpc::create_agent`]).
//!
//! # Versioning
//!
//! The protobuf package carries the major version (`v1`); [`PROTOCOL_VERSION`] is returned by
//! `Health` and checked by [`AgentClient::handshake`]. Fields are only ever added, never
//! renumbered; an incompatible change gets a new package and a new version number.
//!
//! # OCI payloads
//!
//! The runtime spec, an exec'd process and the Linux resources travel as their OCI JSON
//! encoding in `bytes` fields. The OCI spec is the schema; a protobuf mirror of it (as Kata
//! keeps) is thousands of lines that drift from the spec.
//!
//! # Why stdio travels in calls, not in dedicated vsock streams
//!
//! A process's stdin, stdout and stderr are moved by `WriteStdin`/`CloseStdin`,
//! `ReadStdout` and `ReadStderr` calls on the one ttrpc connection (as Kata does), because:
//!
//! - **One connection, no port bookkeeping.** Dedicated streams need either one vsock
//!   port per stream (with the guest connecting to host ports `S_<port>` of the hybrid vsock
//!   and both sides matching connections to processes) or a per-connection preamble; with
//!   calls, the container id and exec id in each request say which stream is meant.
//! - **No lost bytes at exit, by construction.** The agent keeps the read end of each pipe
//!   until the client has read it to EOF (`eof = true`) or removes the container, so output
//!   written just before exit is still delivered after `WaitProcess` returns. A separate
//!   stream would need its own close handshake to give the same guarantee.
//! - **EOF on stdin is explicit** (`CloseStdin`), independent of any connection's lifetime.
//! - **Back-pressure is natural**: `ReadStdout` blocks in the agent until data exists; a slow
//!   reader leaves the data in the pipe, so a chatty process blocks instead of the agent
//!   buffering without bound. `WriteStdin` returns how much the pipe accepted.
//!
//! The cost is one round trip per chunk (up to [`MAX_STREAM_CHUNK`] bytes); ttrpc multiplexes
//! concurrent calls, so stdout, stderr, stdin and wait proceed in parallel on one connection.
//!
//! # The client
//!
//! [`AgentApi`] is the seam the shim programs against; [`AgentClient`] implements it over a
//! unix socket ([`AgentClient::connect_unix`]), the VMM's hybrid vsock
//! ([`AgentClient::connect_hybrid_vsock`]) or any connected stream, with per-call
//! [`Timeouts`].

mod client;
mod connect;
mod error;

pub use client::{AgentApi, AgentClient, Timeouts, WaitStatus};
pub use connect::{hybrid_vsock_connect, ConnectError};
pub use error::{AgentError, ErrorKind};

/// Version of the agent API, returned by `Health`.
pub const PROTOCOL_VERSION: u32 = 1;

/// vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Largest chunk a `ReadStdout`/`ReadStderr`/`WriteStdin` call moves (256 KiB), well
/// below ttrpc's 4 MiB message limit.
pub const MAX_STREAM_CHUNK: u32 = 256 * 1024;

/// Generated protobuf messages of `husk.agent.v1`.
#[allow(
    missing_docs,
    unused,
    clippy::all,
    clippy::pedantic,
    non_upper_case_globals
)]
#[allow(renamed_and_removed_lints, unused_qualifications, unused_results)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/gen/agent.rs"));
}

/// Generated ttrpc client (`AgentClient`) and server trait (`Agent`).
#[allow(
    missing_docs,
    unused,
    clippy::all,
    clippy::pedantic,
    non_upper_case_globals
)]
#[allow(renamed_and_removed_lints, unused_qualifications, unused_results)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/gen/agent_ttrpc.rs"));
}
