//! Any bytes as one frame, on every channel: header validation and `parse_frame` may refuse,
//! never panic; a frame they accept re-encodes to exactly the same bytes (nothing in a frame is
//! ignored), and its body lies where the header says.
#![no_main]

use coregrid_net::constants::FRAME_HEADER_BYTES;
use coregrid_net::rkyv::util::AlignedVec;
use coregrid_net::{encode_frame_raw, parse_frame, ChannelKind, FrameHeader, FrameMeta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    for channel in [
        ChannelKind::Handshake,
        ChannelKind::Client,
        ChannelKind::Replication,
        ChannelKind::Control,
    ] {
        if let Some(head) = data.first_chunk::<FRAME_HEADER_BYTES>() {
            if let Ok((header, kind)) = FrameHeader::validate(head, channel) {
                assert!(header.body_len() <= channel.frame_body_bytes_max());
                assert_eq!(kind.channel(), channel);
                assert_eq!(header.frame_len() % 16, 0);
            }
        }
        if let Ok(Some((frame, frame_len))) = parse_frame(&aligned, channel) {
            assert!(frame_len <= data.len());
            assert_eq!(frame.body().as_ptr().align_offset(16), 0);
            let mut again = Vec::new();
            let meta = FrameMeta {
                request_id: frame.request_id(),
                epoch: frame.epoch(),
            };
            let written = encode_frame_raw(&mut again, frame.kind(), meta, frame.body())
                .expect("an accepted body is within its limit");
            assert_eq!(written, frame_len);
            assert_eq!(
                &again[..],
                &data[..frame_len],
                "parse/encode is not the identity"
            );
        }
    }
});
