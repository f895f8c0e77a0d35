//! Property tests of the control API's encoding: the shim and husk-vmm agree on every
//! request and response, not only on the examples in `protocol`'s tests. (The
//! `vmm_api` fuzz target covers arbitrary bytes; these cover arbitrary values.)

use proptest::prelude::*;

use crate::framing::{read_line, MAX_LINE};
use crate::metrics::{Metrics, VcpuExits};
use crate::protocol::{
    decode_request, decode_response, encode_request, encode_response, Pong, Request, Response,
    VmState,
};

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Pause),
        Just(Request::Resume),
        Just(Request::Shutdown),
        Just(Request::Metrics),
    ]
}

fn state() -> impl Strategy<Value = VmState> {
    prop_oneof![
        Just(VmState::Running),
        Just(VmState::Paused),
        Just(VmState::Exiting)
    ]
}

fn metrics() -> impl Strategy<Value = Metrics> {
    (any::<[u64; 5]>(), any::<[u64; 7]>()).prop_map(|(e, m)| Metrics {
        uptime_ms: m[0],
        vcpu_exits: VcpuExits {
            io: e[0],
            mmio: e[1],
            hlt: e[2],
            intr: e[3],
            other: e[4],
        },
        serial_bytes: m[1],
        vsock_rx_bytes: m[2],
        vsock_tx_bytes: m[3],
        vsock_connections: m[4],
        guest_errors: m[5],
        vsock_rx_dropped: m[6],
    })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (state(), ".{0,40}").prop_map(|(state, version)| Response::Pong(Pong { state, version })),
        state().prop_map(|state| Response::State { state }),
        metrics().prop_map(Response::Metrics),
        // Any text, newlines and quotes included: the encoding must escape them.
        ".{0,200}".prop_map(Response::error),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn requests_round_trip_through_one_line(req in request()) {
        let line = encode_request(req);
        let mut r = std::io::Cursor::new(line.as_bytes());
        let read = read_line(&mut r).expect("one line");
        prop_assert_eq!(decode_request(&read), Ok(req));
        prop_assert_eq!(r.position() as usize, line.len());
    }

    #[test]
    fn responses_round_trip_through_one_line(resp in response()) {
        let line = encode_response(resp.clone());
        prop_assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
        let mut r = std::io::Cursor::new(line.as_bytes());
        let read = read_line(&mut r).expect("one line");
        let env = decode_response(&read).expect("decode");
        prop_assert_eq!(env.v, crate::API_VERSION);
        prop_assert_eq!(env.response, resp);
    }
}
