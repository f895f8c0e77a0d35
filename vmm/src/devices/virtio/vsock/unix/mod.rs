//! Hybrid vsock backend: guest connections are unix stream sockets on the host.
//!
//! * Host-initiated: connect to the socket `S`, send `CONNECT <port>\n`, read
//!   `OK <host_port>\n`; the stream is then connected to the guest's `port`.
//! * Guest-initiated: a connection to host port `P` is forwarded to the unix socket `S_P`.

mod connect;
mod deadlines;
mod handshake;
mod muxer;
mod rxq;

pub use handshake::{parse_connect, HandshakeError, MAX_HANDSHAKE_LEN};
pub use muxer::{MuxerError, VsockMuxer};
pub use rxq::MUXER_RXQ_SIZE;
