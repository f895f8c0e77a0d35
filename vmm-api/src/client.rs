//! A small blocking client of the control API, for the shim, the benchmarks and the tests.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::framing::{self, FrameError};
use crate::metrics::Metrics;
use crate::protocol::{self, Pong, Request, Response, VmState, API_VERSION};

/// Errors of a control API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected.
    #[error("connect {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    /// No reply line was read.
    #[error(transparent)]
    Read(#[from] FrameError),
    /// The reply is not a response of this protocol.
    #[error("bad reply {line:?}: {reason}")]
    BadReply {
        /// The line received.
        line: String,
        /// Why it was not understood.
        reason: String,
    },
    /// husk-vmm answers in another protocol version.
    #[error("husk-vmm speaks API version {0}, this client {API_VERSION}")]
    Version(u32),
    /// husk-vmm refused or failed the request.
    #[error("husk-vmm: {0}")]
    Refused(String),
    /// husk-vmm answered with a reply that does not belong to the request.
    #[error("unexpected reply to {request:?}: {reply:?}")]
    Unexpected {
        /// The request sent.
        request: Request,
        /// The reply received.
        reply: Box<Response>,
    },
}

/// A connection to husk-vmm's control socket. Each call waits at most the timeout given to
/// [`ApiClient::connect`] for writing and for the reply.
pub struct ApiClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ApiClient {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ApiError> {
        let connect_err = |source| ApiError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns husk-vmm's answer; an error reply is
    /// [`ApiError::Refused`].
    pub fn call(&mut self, request: Request) -> Result<Response, ApiError> {
        self.call_line(&protocol::encode_request(request))
    }

    /// Sends a line as it is (see [`protocol::raw_request_line`]) and returns the answer;
    /// an error reply is [`ApiError::Refused`]. For tests of how husk-vmm treats requests
    /// the [`Request`] type cannot express.
    pub fn call_line(&mut self, line: &str) -> Result<Response, ApiError> {
        self.writer
            .write_all(line.as_bytes())
            .map_err(ApiError::Write)?;
        let reply = framing::read_line(&mut self.reader)?;
        let env = protocol::decode_response(&reply).map_err(|e| ApiError::BadReply {
            line: reply.clone(),
            reason: e.to_string(),
        })?;
        if env.v != API_VERSION {
            return Err(ApiError::Version(env.v));
        }
        match env.response {
            Response::Error { error } => Err(ApiError::Refused(error)),
            other => Ok(other),
        }
    }

    /// Whether husk-vmm answers, its state and version.
    pub fn ping(&mut self) -> Result<Pong, ApiError> {
        match self.call(Request::Ping)? {
            Response::Pong(p) => Ok(p),
            other => Err(unexpected(Request::Ping, other)),
        }
    }

    /// Stops the vCPUs.
    pub fn pause(&mut self) -> Result<VmState, ApiError> {
        self.state_call(Request::Pause)
    }

    /// Runs the vCPUs again.
    pub fn resume(&mut self) -> Result<VmState, ApiError> {
        self.state_call(Request::Resume)
    }

    /// Ends the VM.
    pub fn shutdown(&mut self) -> Result<VmState, ApiError> {
        self.state_call(Request::Shutdown)
    }

    /// husk-vmm's counters.
    pub fn metrics(&mut self) -> Result<Metrics, ApiError> {
        match self.call(Request::Metrics)? {
            Response::Metrics(m) => Ok(m),
            other => Err(unexpected(Request::Metrics, other)),
        }
    }

    fn state_call(&mut self, request: Request) -> Result<VmState, ApiError> {
        match self.call(request)? {
            Response::State { state } => Ok(state),
            other => Err(unexpected(request, other)),
        }
    }
}

fn unexpected(request: Request, reply: Response) -> ApiError {
    ApiError::Unexpected {
        request,
        reply: Box::new(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A server for one connection that answers each line with the next of `replies` and
    /// returns the lines it received.
    fn serve(dir: &Path, replies: Vec<String>) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("api.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut got = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).expect("read") == 0 {
                    break;
                }
                got.push(line);
                (&s).write_all(reply.as_bytes()).expect("write");
            }
            got
        });
        (path, server)
    }

    #[test]
    fn each_helper_sends_its_request_and_reads_its_reply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics {
            uptime_ms: 5,
            ..Metrics::default()
        };
        let state = |state| protocol::encode_response(Response::State { state });
        let (path, server) = serve(
            dir.path(),
            vec![
                protocol::encode_response(Response::Pong(Pong {
                    state: VmState::Running,
                    version: "9.9.9".into(),
                })),
                state(VmState::Paused),
                state(VmState::Running),
                protocol::encode_response(Response::Metrics(metrics.clone())),
                state(VmState::Exiting),
            ],
        );
        let mut c = ApiClient::connect(&path, TIMEOUT).expect("connect");
        assert_eq!(c.ping().expect("ping").version, "9.9.9");
        assert_eq!(c.pause().expect("pause"), VmState::Paused);
        assert_eq!(c.resume().expect("resume"), VmState::Running);
        assert_eq!(c.metrics().expect("metrics"), metrics);
        assert_eq!(c.shutdown().expect("shutdown"), VmState::Exiting);
        let sent = server.join().expect("server");
        let expected: Vec<String> = [
            Request::Ping,
            Request::Pause,
            Request::Resume,
            Request::Metrics,
            Request::Shutdown,
        ]
        .into_iter()
        .map(protocol::encode_request)
        .collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn errors_versions_mismatches_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, server) = serve(
            dir.path(),
            vec![
                protocol::encode_response(Response::error("vCPUs did not pause in time")),
                "{\"v\":2,\"reply\":\"state\",\"state\":\"paused\"}\n".into(),
                protocol::encode_response(Response::State {
                    state: VmState::Running,
                }),
                "garbage\n".into(),
                "x".repeat(framing::MAX_LINE + 10) + "\n",
            ],
        );
        let mut c = ApiClient::connect(&path, TIMEOUT).expect("connect");
        assert!(matches!(c.pause(), Err(ApiError::Refused(m)) if m.contains("did not pause")));
        assert!(matches!(c.pause(), Err(ApiError::Version(2))));
        assert!(matches!(
            c.metrics(),
            Err(ApiError::Unexpected {
                request: Request::Metrics,
                ..
            })
        ));
        assert!(matches!(c.ping(), Err(ApiError::BadReply { .. })));
        assert!(matches!(c.ping(), Err(ApiError::Read(FrameError::TooLong))));
        server.join().expect("server");
        // The server is gone: the next call fails to read (or write), and a connect fails.
        let r = c.ping();
        assert!(
            matches!(
                r,
                Err(ApiError::Write(_) | ApiError::Read(FrameError::Closed | FrameError::Io(_)))
            ),
            "{r:?}"
        );
        assert!(matches!(
            ApiClient::connect(&dir.path().join("none.sock"), TIMEOUT),
            Err(ApiError::Connect { .. })
        ));
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let mut c = ApiClient::connect(&path, Duration::from_millis(50)).expect("connect");
        assert!(matches!(c.ping(), Err(ApiError::Read(FrameError::Io(_)))));
    }
}
