//! Connection state machine: one guest<->host stream, its credit accounting and the
//! control packets it still owes the guest.

mod connection;
mod txbuf;

pub use connection::{ConnState, Connection};
pub use txbuf::TxBuf;

/// Receive buffer we advertise to the guest for each connection (guest -> host bytes we
/// can hold while the host side is slow).
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this many forwarded bytes are unreported.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_TX_BUF_SIZE / 4;
