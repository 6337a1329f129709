//! Proves that a peer cannot make a decoder allocate past its channel's largest frame, and that
//! frames which are not ours (wrong magic, all zeros, unknown kinds, kinds of another channel)
//! are refused from the header alone with a clear error, before any body byte is buffered.

use coregrid_net::constants::{FRAME_HEADER_BYTES, FRAME_MAGIC, READ_CHUNK_BYTES};
use coregrid_net::{
    encode_frame_raw, ChannelKind, FrameDecoder, FrameError, FrameMeta, MessageKind,
};

/// A correctly sealed header of `kind` that announces `body_len` body bytes.
fn header(kind: u16, body_len: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame_raw(&mut frame, MessageKind::Get, FrameMeta::default(), b"").unwrap();
    frame.truncate(FRAME_HEADER_BYTES);
    frame[8..10].copy_from_slice(&kind.to_le_bytes());
    frame[12..16].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Feeds `bytes` and pops a frame: the error either step reports.
fn refusal(decoder: &mut FrameDecoder, bytes: &[u8]) -> FrameError {
    decoder
        .feed(bytes)
        .and_then(|_| decoder.next_frame().map(|frame| frame.is_some()))
        .expect_err("refused")
}

#[test]
fn a_header_claiming_4_gib_is_refused_before_the_buffer_grows() {
    for channel in [
        ChannelKind::Handshake,
        ChannelKind::Client,
        ChannelKind::Replication,
        ChannelKind::Control,
    ] {
        let mut decoder = FrameDecoder::new(channel);
        let kind = MessageKind::Put.to_u16();
        let error = refusal(&mut decoder, &header(kind, u32::MAX));
        assert_eq!(
            error,
            FrameError::TooLarge {
                kind: MessageKind::Put,
                channel,
                body_bytes: u64::from(u32::MAX),
                limit_bytes: channel.frame_body_bytes_max() as u64,
            }
        );
        assert!(
            decoder.buffer_bytes() <= READ_CHUNK_BYTES,
            "{channel}: the buffer grew to {}",
            decoder.buffer_bytes()
        );
        assert!(error.to_string().contains("over the"), "{error}");
    }
}

#[test]
fn each_channel_takes_exactly_its_limit() {
    for (channel, kind) in [
        (ChannelKind::Handshake, MessageKind::Hello),
        (ChannelKind::Client, MessageKind::Batch),
        (ChannelKind::Control, MessageKind::Control),
    ] {
        let limit = channel.frame_body_bytes_max() as u32;
        // One byte over: refused, nothing grown.
        let mut decoder = FrameDecoder::new(channel);
        refusal(&mut decoder, &header(kind.to_u16(), limit + 1));
        assert!(decoder.buffer_bytes() <= READ_CHUNK_BYTES);
        // At the limit: accepted, and the buffer grows to exactly the frame once asked for
        // more bytes, never beyond.
        let mut decoder = FrameDecoder::new(channel);
        decoder.feed(&header(kind.to_u16(), limit)).unwrap();
        assert!(decoder.next_frame().unwrap().is_none());
        let space = decoder.read_buf().unwrap().len();
        assert_eq!(
            decoder.buffer_bytes(),
            channel.frame_bytes_max(),
            "{channel}: the buffer is the largest frame"
        );
        assert_eq!(space, channel.frame_bytes_max() - FRAME_HEADER_BYTES);
    }
    // The replication channel's limit is larger than the client's: a body over the client
    // limit passes its length check there (and is refused only because client kinds do not
    // travel on replication connections).
    let over_client = ChannelKind::Client.frame_body_bytes_max() as u32 + 16;
    let mut decoder = FrameDecoder::new(ChannelKind::Replication);
    assert_eq!(
        refusal(
            &mut decoder,
            &header(MessageKind::Put.to_u16(), over_client)
        ),
        FrameError::KindNotAllowed {
            kind: MessageKind::Put,
            channel: ChannelKind::Replication
        }
    );
}

#[test]
fn wrong_magic_is_refused_with_what_was_seen() {
    let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
    let error = refusal(
        &mut decoder,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n          ",
    );
    assert_eq!(
        error,
        FrameError::BadMagic {
            expected: FRAME_MAGIC,
            actual: u32::from_le_bytes(*b"GET "),
        }
    );
    assert!(error.to_string().contains("CGN1"), "{error}");
}

#[test]
fn an_all_zero_header_is_refused() {
    let mut decoder = FrameDecoder::new(ChannelKind::Client);
    assert_eq!(
        refusal(&mut decoder, &[0u8; FRAME_HEADER_BYTES]),
        FrameError::ZeroHeader
    );
}

#[test]
fn unknown_kinds_are_refused() {
    for kind in [
        0u16, 0x0003, 0x0100, 0x010a, 0x0186, 0x0200, 0x0300, 0x0302, 0xffff,
    ] {
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        assert_eq!(
            refusal(&mut decoder, &header(kind, 0)),
            FrameError::UnknownKind { kind }
        );
    }
}

#[test]
fn kinds_of_another_channel_are_refused() {
    // A request before the handshake.
    let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
    assert_eq!(
        refusal(&mut decoder, &header(MessageKind::Put.to_u16(), 0)),
        FrameError::KindNotAllowed {
            kind: MessageKind::Put,
            channel: ChannelKind::Handshake
        }
    );
    // A second hello after it.
    let mut decoder = FrameDecoder::new(ChannelKind::Client);
    assert!(matches!(
        refusal(&mut decoder, &header(MessageKind::Hello.to_u16(), 0)),
        FrameError::KindNotAllowed { .. }
    ));
}
