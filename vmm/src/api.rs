//! Control API: JSON lines on a unix stream socket.
//!
//! # Protocol, version 1
//!
//! Each request is one line holding a JSON object, answered by one line:
//!
//! ```text
//! -> {"v":1,"cmd":"ping"}
//! <- {"v":1,"ok":true,"result":{"state":"running","version":"0.1.0"}}
//! -> {"v":1,"cmd":"pause"}
//! <- {"v":1,"ok":true,"result":{"state":"paused"}}
//! -> {"v":1,"cmd":"resume"}
//! <- {"v":1,"ok":true,"result":{"state":"running"}}
//! -> {"v":1,"cmd":"metrics"}
//! <- {"v":1,"ok":true,"result":{"uptime_ms":812,"vcpu_exits":{"io":..,"mmio":..,"hlt":..,"intr":..,"other":..},
//!     "serial_bytes":..,"vsock_rx_bytes":..,"vsock_tx_bytes":..,"vsock_connections":..,"guest_errors":..}}
//! -> {"v":1,"cmd":"shutdown"}
//! <- {"v":1,"ok":true,"result":{"state":"exiting"}}        (then the VMM exits with status 0)
//! ```
//!
//! Errors: `{"v":1,"ok":false,"error":"..."}` for unparsable lines, an unknown `cmd`, or a
//! version other than 1 (`v` may be omitted and then means 1). A connection may carry any
//! number of requests; lines longer than 4 KiB close it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::exit::{ExitReason, ExitSignal};
use crate::metrics::Metrics;
use crate::vstate::control::{RunState, VcpuControl};

/// Protocol version spoken by this VMM.
pub const API_VERSION: u32 = 1;
const MAX_LINE: u64 = 4096;
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request line.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Request {
    /// Protocol version (default 1).
    #[serde(default = "default_version")]
    pub v: u32,
    /// Command name.
    pub cmd: String,
}

fn default_version() -> u32 {
    API_VERSION
}

/// A response line.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// Whether the command succeeded.
    pub ok: bool,
    /// Command result.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<Value>,
    /// Error message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Response {
    fn ok(result: Value) -> Self {
        Self {
            v: API_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    fn err(msg: impl Into<String>) -> Self {
        Self {
            v: API_VERSION,
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Executes control commands against the running VM.
#[derive(Clone)]
pub struct ApiHandler {
    control: Arc<VcpuControl>,
    metrics: Arc<Metrics>,
    exit: ExitSignal,
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Exiting => "exiting",
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

    /// Handles one request line.
    pub fn handle_line(&self, line: &str) -> Response {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("bad request: {e}")),
        };
        if req.v != API_VERSION {
            return Response::err(format!(
                "unsupported version {} (this VMM speaks {API_VERSION})",
                req.v
            ));
        }
        match req.cmd.as_str() {
            "ping" => Response::ok(json!({
                "state": state_name(self.control.state()),
                "version": env!("CARGO_PKG_VERSION"),
            })),
            "pause" => {
                if self.control.pause(PAUSE_TIMEOUT) {
                    Response::ok(json!({"state": "paused"}))
                } else {
                    Response::err("vCPUs did not pause in time")
                }
            }
            "resume" => {
                self.control.resume();
                Response::ok(json!({"state": state_name(self.control.state())}))
            }
            "shutdown" => {
                self.exit.request(ExitReason::Shutdown);
                Response::ok(json!({"state": "exiting"}))
            }
            "metrics" => match serde_json::to_value(self.metrics.snapshot()) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e.to_string()),
            },
            other => Response::err(format!("unknown command {other:?}")),
        }
    }

    fn serve_connection(&self, stream: UnixStream) {
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let mut out = write_half;
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            match (&mut reader).take(MAX_LINE).read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if !line.ends_with('\n') => {
                    let _ = writeln!(out, "{}", to_line(&Response::err("line too long")));
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            let resp = self.handle_line(line.trim_end());
            if writeln!(out, "{}", to_line(&resp)).is_err() {
                return;
            }
        }
    }
}

fn to_line(r: &Response) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| r#"{"v":1,"ok":false,"error":"internal"}"#.into())
}

/// The listening control socket; removes its file when dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path` and serves it on a background thread.
    pub fn start(path: &Path, handler: ApiHandler) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::thread::Builder::new()
            .name("husk-api".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let h = handler.clone();
                    let _ = std::thread::Builder::new()
                        .name("husk-api-conn".into())
                        .spawn(move || h.serve_connection(stream));
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
        })
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

    fn handler() -> ApiHandler {
        ApiHandler::new(
            Arc::new(VcpuControl::default()),
            Arc::new(Metrics::default()),
            ExitSignal::new().unwrap(),
        )
    }

    #[test]
    fn commands() {
        let h = handler();
        let r = h.handle_line(r#"{"v":1,"cmd":"ping"}"#);
        assert!(r.ok);
        assert_eq!(r.result.unwrap()["state"], "running");
        // No vCPU threads: pause completes immediately.
        let r = h.handle_line(r#"{"cmd":"pause"}"#);
        assert!(r.ok, "{r:?}");
        assert_eq!(
            h.handle_line(r#"{"cmd":"ping"}"#).result.unwrap()["state"],
            "paused"
        );
        assert_eq!(
            h.handle_line(r#"{"cmd":"resume"}"#).result.unwrap()["state"],
            "running"
        );
        let m = h.handle_line(r#"{"cmd":"metrics"}"#).result.unwrap();
        assert!(m["vcpu_exits"]["io"].is_u64());
        assert!(m["uptime_ms"].is_u64());
        assert!(h.handle_line(r#"{"cmd":"shutdown"}"#).ok);
        assert_eq!(h.exit.reason(), ExitReason::Shutdown);
    }

    #[test]
    fn bad_requests() {
        let h = handler();
        for bad in [
            "",
            "nonsense",
            "{}",
            r#"{"v":2,"cmd":"ping"}"#,
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":5}"#,
        ] {
            let r = h.handle_line(bad);
            assert!(!r.ok, "{bad}");
            assert!(r.error.is_some());
        }
        assert_eq!(h.exit.reason(), ExitReason::None);
    }

    #[test]
    fn socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let h = handler();
        let server = ApiServer::start(&p, h.clone()).unwrap();
        let mut s = UnixStream::connect(&p).unwrap();
        s.write_all(b"{\"cmd\":\"ping\"}\n{\"cmd\":\"metrics\"}\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for _ in 0..2 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let resp: Response = serde_json::from_str(&line).unwrap();
            assert!(resp.ok);
        }
        s.write_all(&vec![b'x'; 5000]).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("too long"));
        drop(server);
        assert!(!p.exists());
    }
}
