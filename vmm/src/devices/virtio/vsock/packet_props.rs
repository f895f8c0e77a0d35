//! Property tests of the vsock wire format: any header survives encoding, and a packet
//! reads back the same however the guest splits it over descriptors. (The `vsock_queue`
//! and `vsock_packet` fuzz targets cover arbitrary bytes; these cover arbitrary values.)

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::packet::{read_from_chain, VsockHeader, HDR_SIZE};
use super::unix::parse_connect;
use crate::memory::anonymous_memory;

fn header() -> impl Strategy<Value = VsockHeader> {
    (
        any::<(u64, u64, u32, u32, u32)>(),
        any::<(u16, u16, u32, u32, u32)>(),
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port, len),
                (type_, op, flags, buf_alloc, fwd_cnt),
            )| {
                VsockHeader {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    type_,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn header_round_trips(h in header()) {
        prop_assert_eq!(VsockHeader::from_bytes(&h.to_bytes()), h);
    }

    /// Header and payload cut at arbitrary points into up to 4 descriptors read back whole.
    #[test]
    fn packet_reads_back_however_it_is_split(
        h in header(),
        data in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let mem = anonymous_memory(1 << 20);
        let mut hdr = h;
        hdr.len = data.len() as u32;
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&data);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len())).collect();
        points.extend([0, bytes.len()]);
        points.sort_unstable();
        points.dedup();
        // Each piece goes to its own 4 KiB-aligned buffer, away from the queue.
        let descs: Vec<RawDescriptor> = points
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let addr = 0x1_0000 + 0x1000 * i as u64;
                mem.write_slice(&bytes[w[0]..w[1]], GuestAddress(addr)).unwrap();
                RawDescriptor::from(SplitDescriptor::new(addr, (w[1] - w[0]) as u32, 0, 0))
            })
            .collect();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        mock.build_desc_chain(&descs).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).expect("a chain");
        let pkt = read_from_chain(&mem, chain).expect("a packet");
        prop_assert_eq!(pkt.hdr, hdr);
        prop_assert_eq!(pkt.data, data);
        prop_assert!(bytes.len() >= HDR_SIZE);
    }

    /// Any port, in any valid line with anything after it, is parsed exactly.
    #[test]
    fn connect_lines_parse_exactly(
        port in any::<u32>(),
        cr in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut line = format!("CONNECT {port}{}\n", if cr { "\r" } else { "" }).into_bytes();
        let len = line.len();
        line.extend(rest);
        prop_assert_eq!(parse_connect(&line), Ok(Some((port, len))));
    }
}
