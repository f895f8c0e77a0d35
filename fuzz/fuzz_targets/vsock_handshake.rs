//! The host side of a hybrid-vsock connection sends `CONNECT <port>\n` before anything else;
//! any local process that can reach the socket picks those bytes, so the parser sees
//! arbitrary input and must answer every prefix without panicking.
#![no_main]

use husk_vmm::devices::virtio::vsock::unix::{parse_connect, MAX_HANDSHAKE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The muxer peeks at most MAX_HANDSHAKE_LEN bytes; longer input is what a peek of a
    // longer stream would see.
    let peek = &data[..data.len().min(MAX_HANDSHAKE_LEN)];
    if let Ok(Some((port, consumed))) = parse_connect(peek) {
        // What was accepted is exactly a `CONNECT <port>` line that fits the peek.
        assert!(consumed <= peek.len());
        assert_eq!(peek[consumed - 1], b'\n');
        let line = std::str::from_utf8(&peek[..consumed]).expect("accepted line is UTF-8");
        let digits = line
            .trim_end_matches('\n')
            .trim_end_matches('\r')
            .strip_prefix("CONNECT ")
            .expect("accepted line starts with CONNECT");
        assert_eq!(digits.parse::<u32>().ok(), Some(port));
    }
    // Every prefix of the input is either incomplete or answered the same way.
    for end in 0..peek.len() {
        let _ = parse_connect(&peek[..end]);
    }
});
