//! The hybrid-vsock muxer driven by a hostile guest and by host programs at once: guest
//! packets with arbitrary headers and payloads, host streams that connect, send handshakes
//! (valid or not), write, read, shut down and close, in any order. The muxer must never
//! panic, and what it hands the guest must be well formed.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use husk_fuzz::muxer_ops::{Action, GUEST_CID, LISTEN_PORT};
use husk_vmm::devices::virtio::vsock::unix::VsockMuxer;
use husk_vmm::devices::virtio::vsock::{
    VsockBackend, VsockChannel, MAX_PKT_PAYLOAD, VSOCK_HOST_CID,
};
use husk_vmm::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EventSet;

/// A private directory for the muxer's sockets, kept for the whole process.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir").keep())
}

fuzz_target!(|actions: Vec<Action>| {
    let sock = dir().join("v.sock");
    let mut muxer = VsockMuxer::new(&sock, GUEST_CID, Arc::new(Metrics::default())).expect("muxer");
    // A host program listening for guest-initiated connections to LISTEN_PORT; dropped at
    // the end of the run, so its backlog never outlives it.
    let listen_path = dir().join(format!("v.sock_{LISTEN_PORT}"));
    let _ = std::fs::remove_file(&listen_path);
    let listener = UnixListener::bind(&listen_path).expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();

    let host_stream = |hosts: &mut Vec<UnixStream>, bytes: &[u8]| {
        if hosts.len() >= 8 {
            return;
        }
        if let Ok(mut s) = UnixStream::connect(&sock) {
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(bytes);
            hosts.push(s);
        }
    };

    for action in actions.into_iter().take(64) {
        match action {
            Action::Guest(p) => muxer.send_pkt(p.packet()),
            Action::HostConnect(port) => {
                let port = port.value();
                host_stream(&mut hosts, format!("CONNECT {port}\n").as_bytes());
            }
            Action::HostRaw(bytes) => host_stream(&mut hosts, &bytes),
            Action::HostWrite(n, bytes) => {
                if let Some(s) = pick(&mut hosts, &mut accepted, n) {
                    let _ = s.write(&bytes);
                }
            }
            Action::HostRead(n) => {
                if let Some(s) = pick(&mut hosts, &mut accepted, n) {
                    let _ = s.read(&mut [0u8; 4096]);
                }
            }
            Action::HostShutdown(n) => {
                if let Some(s) = pick(&mut hosts, &mut accepted, n) {
                    let _ = s.shutdown(Shutdown::Write);
                }
            }
            Action::HostClose(n) => {
                let n = usize::from(n);
                if n < hosts.len() {
                    hosts.swap_remove(n);
                } else if n - hosts.len() < accepted.len() {
                    accepted.swap_remove(n - hosts.len());
                }
            }
            Action::Notify => {
                muxer.notify(EventSet::IN);
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    accepted.push(s);
                }
            }
            Action::Recv(max) => {
                let max = usize::from(max);
                if let Some(p) = muxer.recv_pkt(max) {
                    assert!(
                        p.data.len() <= max.min(MAX_PKT_PAYLOAD),
                        "payload beyond room"
                    );
                    assert_eq!(
                        p.hdr.len as usize,
                        p.data.len(),
                        "hdr.len is not the payload"
                    );
                    assert_eq!(p.hdr.src_cid, VSOCK_HOST_CID);
                    assert_eq!(p.hdr.dst_cid, GUEST_CID);
                }
            }
        }
    }
});

/// Host stream `n` among the connecting streams and those the host listener accepted.
fn pick<'a>(
    hosts: &'a mut [UnixStream],
    accepted: &'a mut [UnixStream],
    n: u8,
) -> Option<&'a mut UnixStream> {
    let n = usize::from(n);
    if n < hosts.len() {
        hosts.get_mut(n)
    } else {
        accepted.get_mut(n - hosts.len())
    }
}
