//! Proves that damage in transit never becomes a message: every single-bit flip of an encoded
//! frame of every kind is refused (magic, header crc, body crc or padding), and every
//! truncation is reported as incomplete while the stream is open and as `Truncated` when it
//! closes. Never a panic, never a wrong message.

#[expect(dead_code, reason = "this file uses the samples only")]
mod common;

use coregrid_net::{ChannelKind, Epoch, FrameDecoder, FrameError, FrameMeta, RequestId};

fn encoded_samples() -> Vec<(ChannelKind, Vec<u8>)> {
    common::samples()
        .iter()
        .map(|sample| {
            let mut out = Vec::new();
            let meta = FrameMeta {
                request_id: RequestId(77),
                epoch: Epoch(3),
            };
            sample.encode(&mut out, meta).unwrap();
            (sample.kind().channel(), out)
        })
        .collect()
}

#[test]
fn every_single_bit_flip_is_refused() {
    for (channel, frame) in encoded_samples() {
        for bit in 0..frame.len() * 8 {
            let mut damaged = frame.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let mut decoder = FrameDecoder::new(channel);
            // Feeding may already refuse the header (read_buf validates it to size the buffer).
            let outcome = decoder
                .feed(&damaged)
                .and_then(|_| decoder.next_frame().map(|frame| frame.is_some()));
            let error = match outcome {
                Err(error) => error,
                Ok(popped) => panic!("bit {bit} flipped was not refused (popped: {popped})"),
            };
            let byte = bit / 8;
            let expected_family = match byte {
                0..4 => matches!(error, FrameError::BadMagic { .. }),
                4..48 => matches!(error, FrameError::HeaderChecksum { .. }),
                _ => matches!(
                    error,
                    FrameError::BodyChecksum { .. } | FrameError::NonZeroPadding { .. }
                ),
            };
            assert!(expected_family, "byte {byte}: unexpected {error:?}");
            // And the error is final.
            assert_eq!(decoder.next_frame().unwrap_err(), error);
        }
    }
}

#[test]
fn every_truncation_is_incomplete_then_truncated() {
    for (channel, frame) in encoded_samples() {
        for cut in 0..frame.len() {
            let mut decoder = FrameDecoder::new(channel);
            assert_eq!(decoder.feed(&frame[..cut]).unwrap(), cut);
            assert!(decoder.next_frame().unwrap().is_none(), "cut at {cut}");
            match decoder.finish() {
                Ok(()) => assert_eq!(cut, 0),
                Err(error) => assert_eq!(
                    error,
                    FrameError::Truncated {
                        buffered_bytes: cut
                    }
                ),
            }
            // The rest arrives: the frame comes out whole.
            assert_eq!(decoder.feed(&frame[cut..]).unwrap(), frame.len() - cut);
            let popped = decoder.next_frame().unwrap().expect("whole frame");
            assert_eq!(popped.request_id(), RequestId(77));
        }
    }
}

#[test]
fn a_flip_in_a_later_frame_does_not_hide_the_earlier_ones() {
    let frames = encoded_samples();
    let client: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|(channel, _)| *channel == ChannelKind::Client)
        .map(|(_, frame)| frame)
        .collect();
    let mut stream = Vec::new();
    for frame in &client {
        stream.extend_from_slice(frame);
    }
    let last_start = stream.len() - client[client.len() - 1].len();
    stream[last_start + 60] ^= 0x10;
    let mut decoder = FrameDecoder::new(ChannelKind::Client);
    decoder.feed(&stream).unwrap();
    for _ in 0..client.len() - 1 {
        assert!(decoder.next_frame().unwrap().is_some());
    }
    assert!(decoder.next_frame().is_err());
}
