//! The control API on husk-vmm's unix socket: typed, versioned requests and responses.
//!
//! # Protocol, version 1
//!
//! Each request is one line holding a JSON object, answered by one line (framing:
//! [`crate::framing`]). A connection may carry any number of requests.
//!
//! ```text
//! -> {"v":1,"cmd":"ping"}
//! <- {"v":1,"reply":"pong","state":"running","version":"0.1.0"}
//! -> {"v":1,"cmd":"pause"}                  (and "resume")
//! <- {"v":1,"reply":"state","state":"paused"}
//! -> {"v":1,"cmd":"metrics"}
//! <- {"v":1,"reply":"metrics","uptime_ms":812,"vcpu_exits":{"io":..,..},"serial_bytes":..,..}
//! -> {"v":1,"cmd":"shutdown"}
//! <- {"v":1,"reply":"state","state":"exiting"}    (then husk-vmm exits with status 0)
//! <- {"v":1,"reply":"error","error":"..."}        (any request that failed or was refused)
//! ```
//!
//! `v` may be omitted in a request and then means 1. Unparsable lines, an unknown `cmd` and
//! a version other than [`API_VERSION`] are answered with an error reply; a line longer
//! than [`crate::framing::MAX_LINE`] is answered with one and closes the connection.

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// Protocol version spoken by this crate.
pub const API_VERSION: u32 = 1;

fn default_version() -> u32 {
    API_VERSION
}

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Is husk-vmm alive, and in which state? Answered with [`Response::Pong`].
    Ping,
    /// Stop every vCPU. Answered with [`Response::State`] once they have stopped.
    Pause,
    /// Run the vCPUs again. Answered with [`Response::State`].
    Resume,
    /// End the VM; husk-vmm exits with status 0. Answered with [`Response::State`].
    Shutdown,
    /// Read the counters. Answered with [`Response::Metrics`].
    Metrics,
}

/// A request as it travels: the version and the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Protocol version.
    #[serde(default = "default_version")]
    pub v: u32,
    /// The command.
    #[serde(flatten)]
    pub request: Request,
}

/// Where the VM's vCPUs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped until resumed.
    Paused,
    /// The VM is ending.
    Exiting,
}

/// The answer to [`Request::Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The VM's state.
    pub state: VmState,
    /// husk-vmm's version.
    pub version: String,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// Answer to ping.
    Pong(Pong),
    /// Answer to pause, resume and shutdown: the state now.
    State {
        /// The VM's state.
        state: VmState,
    },
    /// Answer to metrics.
    Metrics(Metrics),
    /// The request failed or was refused.
    Error {
        /// Why.
        error: String,
    },
}

impl Response {
    /// An error reply.
    pub fn error(msg: impl Into<String>) -> Self {
        Self::Error { error: msg.into() }
    }
}

/// A response as it travels: the version and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    /// Protocol version.
    pub v: u32,
    /// The answer.
    #[serde(flatten)]
    pub response: Response,
}

/// Just enough of a request line to name what is wrong with it before the typed parse.
#[derive(Deserialize)]
struct Probe {
    #[serde(default = "default_version")]
    v: u32,
    #[serde(default)]
    cmd: Option<String>,
}

/// Parses a request line (without its newline). The error is the message for the error
/// reply: a bad line, a missing or unknown command, or an unsupported version, bounded by
/// [`MAX_ERROR_LEN`].
pub fn decode_request(line: &str) -> Result<Request, String> {
    parse_request(line).map_err(bounded)
}

fn parse_request(line: &str) -> Result<Request, String> {
    let probe: Probe = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if probe.v != API_VERSION {
        return Err(format!(
            "unsupported version {} (this VMM speaks {API_VERSION})",
            probe.v
        ));
    }
    let Some(cmd) = probe.cmd else {
        return Err("bad request: no cmd".into());
    };
    serde_json::from_str::<RequestEnvelope>(line)
        .map(|env| env.request)
        .map_err(|_| format!("unknown command {cmd:?}"))
}

/// Longest error message, in bytes, that [`decode_request`] returns. The messages quote
/// parts of the request, escaped, and the reply escapes them again: unbounded, the reply
/// to a line that fits [`crate::framing::MAX_LINE`] could itself exceed it, and the client
/// would read a framing error instead of the reason. Even if every byte became a 6-byte
/// JSON escape, this many fit in a reply line.
pub const MAX_ERROR_LEN: usize = 512;

/// `msg`, cut at a character boundary to at most [`MAX_ERROR_LEN`] bytes.
fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN - "...".len();
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str("...");
    }
    msg
}

/// The line (with its newline) that sends `request`.
pub fn encode_request(request: Request) -> String {
    to_line(&RequestEnvelope {
        v: API_VERSION,
        request,
    })
}

/// A request line naming any command and version, including ones this crate does not
/// define: for tests that check how husk-vmm refuses them. Everything else sends
/// [`Request`]s.
pub fn raw_request_line(v: u32, cmd: &str) -> String {
    #[derive(Serialize)]
    struct Raw<'a> {
        v: u32,
        cmd: &'a str,
    }
    to_line(&Raw { v, cmd })
}

/// The line (with its newline) that sends `response`.
pub fn encode_response(response: Response) -> String {
    to_line(&ResponseEnvelope {
        v: API_VERSION,
        response,
    })
}

/// Parses a response line (without its newline).
pub fn decode_response(line: &str) -> Result<ResponseEnvelope, serde_json::Error> {
    serde_json::from_str(line)
}

fn to_line<T: Serialize>(value: &T) -> String {
    // These types serialize without error: no maps with non-string keys, no failing
    // Serialize impls. The fallback keeps the framing intact all the same.
    let mut s = serde_json::to_string(value)
        .unwrap_or_else(|_| r#"{"v":1,"reply":"error","error":"internal"}"#.into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::VcpuExits;

    const ALL: [Request; 5] = [
        Request::Ping,
        Request::Pause,
        Request::Resume,
        Request::Shutdown,
        Request::Metrics,
    ];

    #[test]
    fn every_request_round_trips() {
        for r in ALL {
            let line = encode_request(r);
            assert!(line.ends_with('\n') && line.starts_with(r#"{"v":1,"cmd":""#));
            assert_eq!(decode_request(line.trim_end()), Ok(r));
        }
        assert_eq!(
            encode_request(Request::Shutdown),
            "{\"v\":1,\"cmd\":\"shutdown\"}\n"
        );
        // The version may be left out.
        assert_eq!(decode_request(r#"{"cmd":"pause"}"#), Ok(Request::Pause));
    }

    /// A request whose command or version is a long string of quotes or unprintable
    /// characters made an error reply longer than a frame (the `vmm_api` fuzz target checks
    /// this for any line).
    #[test]
    fn error_replies_to_long_lines_fit_in_a_frame() {
        use crate::framing::MAX_LINE;
        let quotes = "\\\"".repeat(1000);
        let unprintable = "\u{10ffff}".repeat(900);
        for line in [
            format!(r#"{{"cmd":"{quotes}"}}"#),
            format!(r#"{{"v":"{quotes}","cmd":"ping"}}"#),
            format!(r#"{{"cmd":"{unprintable}"}}"#),
        ] {
            assert!(line.len() < MAX_LINE, "{}", line.len());
            let msg = decode_request(&line).expect_err("refused");
            assert!(msg.len() <= MAX_ERROR_LEN, "{}", msg.len());
            let reply = encode_response(Response::error(msg));
            assert!(reply.len() <= MAX_LINE, "reply of {} bytes", reply.len());
        }
    }

    #[test]
    fn bad_requests_get_a_clear_message() {
        let err = |l: &str| decode_request(l).expect_err(l);
        assert!(err("").starts_with("bad request"));
        assert!(err("nonsense").starts_with("bad request"));
        assert!(err("{}").contains("no cmd"));
        assert!(err(r#"{"cmd":5}"#).starts_with("bad request"));
        assert_eq!(err(r#"{"cmd":"reboot"}"#), r#"unknown command "reboot""#);
        assert!(err(r#"{"v":2,"cmd":"ping"}"#).contains("unsupported version 2"));
        assert!(err(r#"{"v":2,"cmd":"reboot"}"#).contains("unsupported version 2"));
        assert_eq!(
            err(raw_request_line(API_VERSION, "reboot").trim_end()),
            r#"unknown command "reboot""#
        );
    }

    #[test]
    fn every_response_round_trips() {
        let metrics = Metrics {
            uptime_ms: 812,
            vcpu_exits: VcpuExits {
                io: 1,
                mmio: 2,
                hlt: 3,
                intr: 4,
                other: u64::MAX,
            },
            serial_bytes: 5,
            vsock_rx_bytes: 6,
            vsock_tx_bytes: 7,
            vsock_connections: 8,
            guest_errors: 9,
            vsock_rx_dropped: 10,
        };
        let all = [
            Response::Pong(Pong {
                state: VmState::Running,
                version: "0.1.0".into(),
            }),
            Response::State {
                state: VmState::Paused,
            },
            Response::State {
                state: VmState::Exiting,
            },
            Response::Metrics(metrics),
            Response::error("vCPUs did not pause in time"),
        ];
        for r in all {
            let line = encode_response(r.clone());
            let back = decode_response(line.trim_end()).unwrap();
            assert_eq!(back.v, API_VERSION);
            assert_eq!(back.response, r, "{line}");
        }
        assert_eq!(
            encode_response(Response::State {
                state: VmState::Paused
            }),
            "{\"v\":1,\"reply\":\"state\",\"state\":\"paused\"}\n"
        );
        use serde_json::error::Category;
        for (line, category, why) in [
            (
                r#"{"v":1,"reply":"bogus"}"#,
                Category::Data,
                "unknown variant `bogus`",
            ),
            (
                r#"{"v":1,"reply":"state","state":"asleep"}"#,
                Category::Data,
                "unknown variant `asleep`",
            ),
            ("garbage", Category::Syntax, "expected value"),
        ] {
            let err = decode_response(line).expect_err(line);
            assert_eq!(err.classify(), category, "{line}: {err}");
            assert!(err.to_string().contains(why), "{line}: {err}");
        }
    }
}
