//! Control API server: serves [`husk_vmm_api::protocol`] (typed, versioned JSON lines) on a
//! unix stream socket. Parsing, framing and the reply types live in `husk-vmm-api`, shared
//! with the shim's client; this module only carries out each [`Request`].

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_vmm_api::framing::{self, FrameError};
use husk_vmm_api::protocol::{self, Pong, Request, Response, VmState};

use crate::exit::{ExitReason, ExitSignal};
use crate::metrics::Metrics;
use crate::seccomp::{self, SeccompError, ThreadFilters, ThreadKind};
use crate::vstate::control::{RunState, VcpuControl};

const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Executes control commands against the running VM.
#[derive(Clone)]
pub struct ApiHandler {
    control: Arc<VcpuControl>,
    metrics: Arc<Metrics>,
    exit: ExitSignal,
}

fn vm_state(s: RunState) -> VmState {
    match s {
        RunState::Running => VmState::Running,
        RunState::Paused => VmState::Paused,
        RunState::Exiting => VmState::Exiting,
    }
}

impl ApiHandler {
    /// A handler acting on `control`, reading `metrics`, ending the VM through `exit`.
    pub fn new(control: Arc<VcpuControl>, metrics: Arc<Metrics>, exit: ExitSignal) -> Self {
        Self {
            control,
            metrics,
            exit,
        }
    }

    /// Carries out one request.
    pub fn handle(&self, request: Request) -> Response {
        match request {
            Request::Ping => Response::Pong(Pong {
                state: vm_state(self.control.state()),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            Request::Pause => {
                if self.control.pause(PAUSE_TIMEOUT) {
                    Response::State {
                        state: VmState::Paused,
                    }
                } else {
                    Response::error("vCPUs did not pause in time")
                }
            }
            Request::Resume => {
                self.control.resume();
                Response::State {
                    state: vm_state(self.control.state()),
                }
            }
            Request::Shutdown => {
                self.exit.request(ExitReason::Shutdown);
                Response::State {
                    state: VmState::Exiting,
                }
            }
            Request::Metrics => Response::Metrics(self.metrics.snapshot()),
        }
    }

    /// Handles one request line (without its newline): garbage, unknown commands and other
    /// versions get an error reply.
    pub fn handle_line(&self, line: &str) -> Response {
        match protocol::decode_request(line) {
            Ok(request) => self.handle(request),
            Err(msg) => Response::error(msg),
        }
    }

    fn serve_connection(&self, stream: UnixStream) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let resp = match framing::read_line(&mut reader) {
                Ok(line) => self.handle_line(&line),
                Err(FrameError::TooLong) => {
                    let too_long = Response::error(FrameError::TooLong.to_string());
                    let _ = out.write_all(protocol::encode_response(too_long).as_bytes());
                    return;
                }
                Err(FrameError::Closed | FrameError::Io(_)) => return,
            };
            if out
                .write_all(protocol::encode_response(resp).as_bytes())
                .is_err()
            {
                return;
            }
        }
    }
}

/// The listening control socket; removes its file when dropped.
///
/// Binding ([`ApiServer::bind`]) is part of building the VM and happens before the jail;
/// serving ([`ApiServer::serve`]) starts the listener thread after it, since a process
/// cannot enter a new mount namespace once it has more than one thread.
pub struct ApiServer {
    path: PathBuf,
    pending: Option<(UnixListener, ApiHandler)>,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket file); serves nothing yet.
    pub fn bind(path: &Path, handler: ApiHandler) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(Self {
            path: path.to_owned(),
            pending: Some((listener, handler)),
        })
    }

    /// Serves the socket on a listener thread that starts a thread per connection, each
    /// confined by its seccomp filter from `filters`. Does nothing when called again.
    pub fn serve(&mut self, filters: &ThreadFilters) -> Result<(), SeccompError> {
        let Some((listener, handler)) = self.pending.take() else {
            return Ok(());
        };
        let conn_filters = filters.clone();
        seccomp::spawn(
            "husk-api".into(),
            ThreadKind::ApiListener,
            filters,
            move || {
                for stream in listener.incoming().flatten() {
                    let h = handler.clone();
                    let served = seccomp::spawn(
                        "husk-api-conn".into(),
                        ThreadKind::ApiConnection,
                        &conn_filters,
                        move || h.serve_connection(stream),
                    );
                    if let Err(e) = served {
                        tracing::warn!("control API: {e}");
                    }
                }
            },
        )?;
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm_api::{ApiClient, ApiError, API_VERSION};

    fn handler() -> ApiHandler {
        ApiHandler::new(
            Arc::new(VcpuControl::default()),
            Arc::new(Metrics::default()),
            ExitSignal::new().unwrap(),
        )
    }

    fn state(r: Response) -> VmState {
        match r {
            Response::State { state } | Response::Pong(Pong { state, .. }) => state,
            other => panic!("no state in {other:?}"),
        }
    }

    #[test]
    fn commands() {
        let h = handler();
        assert_eq!(state(h.handle(Request::Ping)), VmState::Running);
        // No vCPU threads: pause completes immediately.
        assert_eq!(state(h.handle(Request::Pause)), VmState::Paused);
        assert_eq!(state(h.handle(Request::Ping)), VmState::Paused);
        assert_eq!(state(h.handle(Request::Resume)), VmState::Running);
        assert!(matches!(h.handle(Request::Metrics), Response::Metrics(_)));
        assert_eq!(h.exit.reason(), ExitReason::None);
        assert_eq!(state(h.handle(Request::Shutdown)), VmState::Exiting);
        assert_eq!(h.exit.reason(), ExitReason::Shutdown);
    }

    #[test]
    fn bad_requests() {
        let h = handler();
        let unknown = protocol::raw_request_line(API_VERSION, "reboot");
        let other_version = protocol::raw_request_line(API_VERSION + 1, "ping");
        for bad in [
            "",
            "nonsense",
            "{}",
            other_version.trim_end(),
            unknown.trim_end(),
            r#"{"v":"one"}"#,
            "[1,2]",
        ] {
            assert!(
                matches!(h.handle_line(bad), Response::Error { ref error } if !error.is_empty()),
                "{bad}"
            );
        }
        assert_eq!(h.exit.reason(), ExitReason::None);
    }

    /// The listener and connection threads with their seccomp filters loaded serve every
    /// request, over several connections (each a thread started by the filtered listener);
    /// a call outside a filter would kill the child with SIGSYS.
    #[test]
    fn serves_under_its_seccomp_filters() {
        use crate::test_util::{child_passes, in_child};
        if !in_child() {
            return child_passes(module_path!(), "serves_under_its_seccomp_filters", &[]);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let h = handler();
        let filters = ThreadFilters::compile().unwrap();
        // A stand-in vCPU (with the vCPU filter) that pausing kicks and parks.
        crate::vstate::control::install_kick_handler().unwrap();
        let control = h.control.clone();
        seccomp::spawn("vcpu".into(), ThreadKind::Vcpu, &filters, move || {
            control.register_current_thread();
            while control.checkpoint() {
                std::thread::sleep(Duration::from_millis(1));
            }
            control.unregister_current_thread();
        })
        .unwrap();
        while h.control.state() != RunState::Running {}
        let mut server = ApiServer::bind(&p, h.clone()).unwrap();
        server.serve(&filters).unwrap();
        for _ in 0..3 {
            let mut c = ApiClient::connect(&p, Duration::from_secs(10)).unwrap();
            assert_eq!(c.ping().unwrap().state, VmState::Running);
            assert_eq!(c.pause().unwrap(), VmState::Paused);
            assert_eq!(c.resume().unwrap(), VmState::Running);
            assert_eq!(c.metrics().unwrap().vcpu_exits.io, 0);
            let long = "x".repeat(5000) + "\n";
            assert!(c.call_line(&long).is_err());
        }
        let mut c = ApiClient::connect(&p, Duration::from_secs(10)).unwrap();
        c.shutdown().unwrap();
        assert_eq!(h.exit.reason(), ExitReason::Shutdown);
        h.control.exit();
        assert!(h.control.wait_threads_gone(Duration::from_secs(5)));
    }

    #[test]
    fn socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let h = handler();
        let mut server = ApiServer::bind(&p, h.clone()).unwrap();
        server.serve(&ThreadFilters::disabled()).unwrap();
        let mut c = ApiClient::connect(&p, Duration::from_secs(10)).unwrap();
        assert_eq!(c.ping().unwrap().state, VmState::Running);
        assert_eq!(c.metrics().unwrap().vcpu_exits.io, 0);
        let unknown = protocol::raw_request_line(API_VERSION, "reboot");
        assert!(
            matches!(c.call_line(&unknown), Err(ApiError::Refused(m)) if m.contains("unknown command"))
        );
        // An overlong line is answered with an error, then the connection closes.
        let long = "x".repeat(5000) + "\n";
        assert!(matches!(c.call_line(&long), Err(ApiError::Refused(m)) if m.contains("too long")));
        // The connection is gone: the next call fails to write or to read, it is not refused.
        let r = c.ping();
        assert!(
            matches!(
                r,
                Err(ApiError::Write(_) | ApiError::Read(FrameError::Closed | FrameError::Io(_)))
            ),
            "{r:?}"
        );
        drop(server);
        assert!(!p.exists());
    }
}
