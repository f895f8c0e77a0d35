//! The typed client against an in-process ttrpc server: round trip, typed errors, timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::agent::{ContainerRequest, Empty, HealthRequest, HealthResponse};
use husk_protocol::agent_ttrpc::{create_agent, Agent};
use husk_protocol::{AgentApi, AgentClient, AgentError, ErrorKind, Timeouts, PROTOCOL_VERSION};

struct Fake;

impl Agent for Fake {
    fn health(&self, _: &ttrpc::TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            agent_version: "test".into(),
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        })
    }

    fn start_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        if req.container_id == "slow" {
            std::thread::sleep(Duration::from_secs(3));
            return Ok(Empty::default());
        }
        Err(ErrorKind::NotFound.to_ttrpc(format!("no container {:?}", req.container_id)))
    }
}

fn serve() -> (tempfile::TempDir, ttrpc::Server, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .expect("bind")
        .register_service(create_agent(Arc::new(Fake)));
    server.start().expect("start");
    (dir, server, path)
}

#[test]
fn round_trip_typed_errors_and_timeouts() {
    let (_dir, _server, path) = serve();
    let timeouts = Timeouts {
        lifecycle: Some(Duration::from_millis(300)),
        ..Timeouts::default()
    };
    let client = AgentClient::connect_unix(&path, timeouts).expect("connect");
    let health = client.handshake().expect("handshake");
    assert_eq!(health.agent_version, "test");

    let err = client.start_container("missing").expect_err("not found");
    assert_eq!(err.kind(), Some(ErrorKind::NotFound));
    assert!(err.to_string().contains("missing"), "{err}");

    let started = Instant::now();
    let err = client.start_container("slow").expect_err("timeout");
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // An unimplemented call is a typed error too, and the connection stays usable.
    // A status from the server (not a transport failure) that names the call.
    let err = client.pause_container("x").expect_err("unimplemented");
    assert!(
        matches!(&err, AgentError::Status { message, .. } if message.contains("PauseContainer")),
        "{err:?}"
    );
    let health = client.health().expect("health after an unimplemented call");
    assert_eq!(health.agent_version, "test");
}
