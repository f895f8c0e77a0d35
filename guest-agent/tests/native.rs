//! Container semantics of a host-mode agent, through the ttrpc client, on busybox bundles.
//! Needs root (as the agent does in the guest).

mod common;

use std::time::Duration;

use common::{spec, Agent};
use husk_protocol::{AgentApi, ErrorKind};

#[test]
fn exit_code_and_output() {
    let agent = Agent::start();
    let (code, out, err) = agent.run_to_end("exit", &spec(&["sh", "-c", "echo hello; exit 3"]));
    assert_eq!(code, 3);
    assert_eq!(out, b"hello\n");
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
}
