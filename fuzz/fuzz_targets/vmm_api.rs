//! The control API as husk-vmm reads it from its socket: bytes split into lines by the
//! framing, each line parsed as a request. Any peer that can reach the socket sends these
//! bytes. The shim parses replies the same way. Whatever parses must encode back to
//! itself, so both sides agree on every value, and the error reply to a line that does not
//! parse must itself fit in a line (else the client cannot read why it was refused).
#![no_main]

use std::io::Cursor;

use husk_vmm_api::framing::{read_line, FrameError, MAX_LINE};
use husk_vmm_api::protocol::{
    decode_request, decode_response, encode_request, encode_response, ResponseEnvelope,
};
use husk_vmm_api::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Cursor::new(data);
    loop {
        let line = match read_line(&mut r) {
            Ok(line) => line,
            Err(FrameError::Closed | FrameError::TooLong) => break,
            Err(FrameError::Io(e)) => panic!("in-memory read failed: {e}"),
        };
        assert!(
            line.len() < MAX_LINE * 3,
            "line longer than the frame allows"
        );
        match decode_request(&line) {
            Ok(req) => {
                let again = encode_request(req);
                assert_eq!(decode_request(again.trim_end_matches('\n')), Ok(req));
            }
            Err(msg) => {
                let reply = encode_response(Response::error(msg));
                assert!(
                    reply.len() <= MAX_LINE,
                    "error reply of {} bytes",
                    reply.len()
                );
            }
        }
        if let Ok(resp) = decode_response(&line) {
            let text = serde_json::to_string(&resp).expect("encode response");
            let back: ResponseEnvelope = decode_response(&text).expect("decode own encoding");
            assert_eq!(back, resp);
        }
    }
});
