//! Any bytes as a socket stream, delivered in chunk sizes the input chooses, into a
//! `FrameDecoder`; every frame popped is decoded as a message. Nothing may panic, the decoder
//! never holds more than its channel's largest frame, every body it hands out is aligned, and
//! after an error it only repeats that error.
#![no_main]

use coregrid_net::{decode, ChannelKind, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the channel and whether to switch to the client channel after a first frame
    // (as a server does after the handshake); byte 1: the chunk size; the rest: the stream.
    let Some((&[mode, chunk], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let channel = match mode % 4 {
        0 => ChannelKind::Handshake,
        1 => ChannelKind::Client,
        2 => ChannelKind::Replication,
        _ => ChannelKind::Control,
    };
    let switch_after_first = mode & 0x80 != 0;
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new(channel);
    let mut frames = 0usize;
    let mut failed = None;
    'stream: for piece in stream.chunks(chunk) {
        let mut rest = piece;
        while !rest.is_empty() {
            match decoder.feed(rest) {
                Ok(fed) => rest = &rest[fed..],
                Err(error) => {
                    failed = Some(error);
                    break 'stream;
                }
            }
            assert!(decoder.buffer_bytes() <= decoder.channel().frame_bytes_max());
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        assert_eq!(frame.body().as_ptr().align_offset(16), 0);
                        let _ = decode(&frame);
                        frames += 1;
                        if frames == 1 && switch_after_first {
                            decoder.set_channel(ChannelKind::Client);
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        failed = Some(error);
                        break 'stream;
                    }
                }
            }
        }
    }
    if let Some(error) = failed {
        assert_eq!(decoder.next_frame().err(), Some(error.clone()));
        assert_eq!(decoder.finish().err(), Some(error));
    } else {
        let _ = decoder.finish();
    }
});
