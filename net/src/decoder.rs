//! The streaming frame decoder: bytes from a socket in, whole validated frames out. Sans-IO: it
//! never reads a socket itself; a transport reads into [`FrameDecoder::read_buf`] (or hands
//! bytes to [`FrameDecoder::feed`]) and pops frames with [`FrameDecoder::next_frame`].
//!
//! **Memory.** The decoder owns one 16-aligned buffer (rkyv's `AlignedVec`). It starts empty,
//! takes [`READ_CHUNK_BYTES`] (or the channel's largest frame, if smaller) at the first read,
//! and grows only to the length of a frame whose header has been validated, so it never holds
//! more than the channel's largest frame ([`ChannelKind::frame_bytes_max`]). A header that
//! announces more is refused before the buffer grows. Once every buffered frame is popped a
//! grown buffer is given back.
//!
//! **Zero copy.** Frames are popped in place: a [`Frame`]'s body borrows the buffer. Every frame
//! starts at a multiple of 16 bytes from the stream's start (frames are padded), the buffer
//! starts at a 16-aligned address, and the unconsumed bytes are only ever moved to the buffer's
//! start, so every body lies at a 16-aligned address and rkyv reads it where it is. The one
//! copy is that move: the start of a frame not yet complete, once per read, never a whole
//! stream.
//!
//! **Errors are final.** After a [`FrameError`] the stream has lost its framing or its
//! integrity; the decoder returns the same error from then on and the connection must be
//! dropped.

use crate::constants::{FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES, READ_CHUNK_BYTES};
use crate::error::FrameError;
use crate::frame::{parse_frame, Frame, FrameHeader};
use crate::kind::ChannelKind;
use rkyv::util::AlignedVec;

/// Turns a byte stream into validated frames for one connection. See the module docs.
#[derive(Debug)]
pub struct FrameDecoder {
    channel: ChannelKind,
    /// Zero-initialised storage; `len()` is how much is allocated and usable.
    buffer: AlignedVec<FRAME_ALIGNMENT_BYTES>,
    /// The first byte not yet handed out: always a frame boundary, a multiple of 16.
    start: usize,
    /// The end of the bytes received.
    end: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder for a connection of `channel`; allocates nothing yet. A new connection starts
    /// as [`ChannelKind::Handshake`].
    pub fn new(channel: ChannelKind) -> FrameDecoder {
        FrameDecoder {
            channel,
            buffer: AlignedVec::new(),
            start: 0,
            end: 0,
            failed: None,
        }
    }

    /// The channel whose limits apply.
    pub fn channel(&self) -> ChannelKind {
        self.channel
    }

    /// Switches to `channel`'s limits and kinds, for frames not yet popped (the frames a peer
    /// sent right after its `Hello`, once the handshake is accepted).
    pub fn set_channel(&mut self, channel: ChannelKind) {
        self.channel = channel;
    }

    /// Bytes received and not yet popped as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes of memory the buffer holds now (never more than the channel's largest frame).
    pub fn buffer_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    /// The space to read the next bytes into; report how many were read with
    /// [`FrameDecoder::advance`]. Never larger than what keeps the buffer within the channel's
    /// largest frame. Empty only when whole frames are waiting: pop them first (an empty read
    /// buffer would make a socket read return 0, which looks like the peer closing).
    pub fn read_buf(&mut self) -> Result<&mut [u8], FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.compact();
        let base_bytes = READ_CHUNK_BYTES.min(self.channel.frame_bytes_max());
        let needed_bytes = match self.buffer.as_slice().get(..self.end) {
            Some(received) => match received.first_chunk::<FRAME_HEADER_BYTES>() {
                Some(head) => match FrameHeader::validate(head, self.channel) {
                    Ok((header, _)) => header.frame_len(),
                    Err(error) => return Err(self.fail(error)),
                },
                None => FRAME_HEADER_BYTES,
            },
            None => FRAME_HEADER_BYTES,
        };
        let target_bytes = needed_bytes.max(base_bytes);
        assert!(target_bytes <= self.channel.frame_bytes_max());
        if self.end == 0 && self.buffer.len() > base_bytes {
            // Idle after a large frame: give the memory back.
            self.buffer = AlignedVec::new();
        }
        if self.buffer.len() < target_bytes {
            self.buffer.reserve_exact(target_bytes - self.buffer.len());
            self.buffer.resize(target_bytes, 0);
        }
        Ok(&mut self.buffer.as_mut_slice()[self.end..])
    }

    /// Records that `bytes` bytes were written at the start of the last
    /// [`FrameDecoder::read_buf`].
    ///
    /// # Panics
    /// If `bytes` is more than that buffer's length (a bug of the caller, not of the peer).
    pub fn advance(&mut self, bytes: usize) {
        assert!(
            bytes <= self.buffer.len() - self.end,
            "advance past the read buffer"
        );
        self.end += bytes;
    }

    /// Copies as much of `bytes` as the buffer takes now; returns how much. Less than all of
    /// it only when whole frames are waiting: pop them, then feed the rest.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let mut copied = 0;
        while copied < bytes.len() {
            let space = self.read_buf()?;
            if space.is_empty() {
                break;
            }
            let count = space.len().min(bytes.len() - copied);
            space[..count].copy_from_slice(&bytes[copied..copied + count]);
            self.advance(count);
            copied += count;
        }
        Ok(copied)
    }

    /// The next whole frame, validated (header, limits, body crc, padding); `Ok(None)` if more
    /// bytes are needed. The frame borrows the decoder's buffer until it is dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        assert!(self.start.is_multiple_of(FRAME_ALIGNMENT_BYTES));
        let received = &self.buffer.as_slice()[self.start..self.end];
        match parse_frame(received, self.channel) {
            Ok(Some((frame, frame_bytes))) => {
                assert!(frame.body().as_ptr().align_offset(FRAME_ALIGNMENT_BYTES) == 0);
                self.start += frame_bytes;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Called when the peer closed the stream: an error if it closed inside a frame (or the
    /// stream had already failed).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.end > self.start {
            return Err(FrameError::Truncated {
                buffered_bytes: self.end - self.start,
            });
        }
        Ok(())
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.failed = Some(error.clone());
        error
    }

    /// Moves the unconsumed bytes to the buffer's start. `start` is a multiple of 16, so
    /// alignment is kept.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buffer
            .as_mut_slice()
            .copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame_raw, FrameMeta};
    use crate::ids::{Epoch, RequestId};
    use crate::kind::MessageKind;

    fn frame(kind: MessageKind, id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let meta = FrameMeta {
            request_id: RequestId(id),
            epoch: Epoch(1),
        };
        encode_frame_raw(&mut out, kind, meta, body).unwrap();
        out
    }

    #[test]
    fn pops_pipelined_frames_in_order_and_in_place() {
        let mut stream = Vec::new();
        for id in 0..100u64 {
            stream.extend(frame(MessageKind::Get, id, &vec![id as u8; id as usize]));
        }
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        // Feed in awkward chunk sizes.
        let mut next_id = 0;
        for chunk in stream.chunks(37) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let fed = decoder.feed(rest).unwrap();
                rest = &rest[fed..];
                while let Some(frame) = decoder.next_frame().unwrap() {
                    assert_eq!(frame.request_id(), RequestId(next_id));
                    assert_eq!(frame.body(), &vec![next_id as u8; next_id as usize][..]);
                    assert_eq!(frame.body().as_ptr().align_offset(16), 0);
                    next_id += 1;
                }
            }
        }
        assert_eq!(next_id, 100);
        decoder.finish().unwrap();
        assert!(decoder.buffer_bytes() <= READ_CHUNK_BYTES);
    }

    #[test]
    fn errors_are_final() {
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        let mut bad = frame(MessageKind::Get, 1, b"x");
        bad[0] = b'X';
        decoder.feed(&bad).unwrap();
        let first = decoder.next_frame().unwrap_err();
        assert!(matches!(first, FrameError::BadMagic { .. }));
        assert_eq!(decoder.next_frame().unwrap_err(), first);
        assert_eq!(decoder.read_buf().unwrap_err(), first);
        assert_eq!(decoder.feed(b"more").unwrap_err(), first);
        assert_eq!(decoder.finish().unwrap_err(), first);
    }

    #[test]
    fn grows_to_a_large_frame_then_gives_the_memory_back() {
        let body = vec![5u8; 1024 * 1024];
        let big = frame(MessageKind::Put, 1, &body);
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        assert_eq!(decoder.buffer_bytes(), 0, "nothing allocated before a read");
        assert_eq!(decoder.feed(&big).unwrap(), big.len());
        assert_eq!(
            decoder.buffer_bytes(),
            big.len(),
            "exactly the frame, no doubling"
        );
        assert_eq!(decoder.next_frame().unwrap().unwrap().body(), &body[..]);
        decoder.read_buf().unwrap();
        assert_eq!(decoder.buffer_bytes(), READ_CHUNK_BYTES);
    }

    #[test]
    fn handshake_channel_buffers_little_and_switches() {
        let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
        let space = decoder.read_buf().unwrap().len();
        assert_eq!(space, ChannelKind::Handshake.frame_bytes_max());
        let mut stream = frame(MessageKind::Hello, 0, b"hi");
        stream.extend(frame(MessageKind::Get, 1, b"k"));
        decoder.feed(&stream).unwrap();
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().kind(),
            MessageKind::Hello
        );
        decoder.set_channel(ChannelKind::Client);
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().kind(),
            MessageKind::Get
        );
        assert!(decoder.next_frame().unwrap().is_none());
    }

    #[test]
    fn closing_mid_frame_is_reported() {
        let whole = frame(MessageKind::Get, 1, b"abc");
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        decoder.feed(&whole[..20]).unwrap();
        assert!(decoder.next_frame().unwrap().is_none());
        assert_eq!(
            decoder.finish().unwrap_err(),
            FrameError::Truncated { buffered_bytes: 20 }
        );
    }
}
