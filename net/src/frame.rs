//! The frame: a fixed 48-byte zerocopy header, the body, zero padding to 16 bytes.
//!
//! Layout of the header (little-endian):
//! ```text
//!  0  magic       u32  "CGN1"
//!  4  header_crc  u32  crc32c of bytes 8..48 (everything after this field)
//!  8  kind        u16  MessageKind
//! 10  flags       u16  0 (no flag is defined; any other value is refused)
//! 12  body_len    u32  exact length of the rkyv body, padding not counted
//! 16  body_crc    u32  crc32c of the body_len body bytes
//! 20  reserved    u32  0
//! 24  request_id  u64  chosen by the requester, echoed by the answer (pipelining)
//! 32  epoch       u64  the sender's leadership-map epoch (0: none known)
//! 40  reserved    u64  0
//! ```
//! then `body_len` bytes of body, then zeros up to the next multiple of 16 bytes.
//!
//! **Why the header crc covers bytes 8..48.** The magic is checked for equality first, so every
//! header byte is covered by one check or the other, and the crc never covers itself (no field
//! to zero before computing it). An all-zero header fails the magic check (`ZeroHeader`); it
//! would fail the crc too, because crc32c of 40 zero bytes is not zero (only of no bytes).
//!
//! **Why 48 bytes and padding.** rkyv's validated `access` refuses a body that is not aligned
//! for its archived types. The header and every frame are a multiple of 16 bytes, so a stream
//! read into a 16-aligned buffer ([`crate::decoder::FrameDecoder`] uses rkyv's `AlignedVec`)
//! has every body aligned in place: bodies are never copied to be read. Padding costs at most
//! 15 bytes per frame and is checked to be zero, so no bit of a frame goes unchecked.
//!
//! **Validation order** ([`FrameHeader::validate`]): magic, header crc, kind known, flags and
//! reserved zero, body length within the channel's limit, kind allowed on the channel. All of
//! it runs on the header alone, before any memory is reserved for the body. Then, once the body
//! is there ([`parse_frame`]): body crc, zero padding.

use crate::constants::{frame_bytes, FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES, FRAME_MAGIC};
use crate::error::{EncodeError, FrameError};
use crate::ids::{Epoch, RequestId};
use crate::kind::{ChannelKind, MessageKind};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The fixed header of every frame. See the module docs for the layout.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct FrameHeader {
    magic: U32,
    header_crc: U32,
    kind: U16,
    flags: U16,
    body_len: U32,
    body_crc: U32,
    reserved_20: U32,
    request_id: U64,
    epoch: U64,
    reserved_40: U64,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_BYTES);
const _: () = assert!(std::mem::align_of::<FrameHeader>() == 1);

/// Byte offset of the first header byte covered by the header crc.
const HEADER_CRC_COVERS_FROM: usize = 8;

/// The fields a sender chooses for a frame besides its kind and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// Names the request on its connection; an answer carries its request's id.
    pub request_id: RequestId,
    /// The sender's leadership-map epoch (0: none known yet).
    pub epoch: Epoch,
}

impl FrameHeader {
    /// Validates a received header for `channel`, in the order the module docs give, and
    /// returns it with its kind. Looks at these 48 bytes only: nothing is allocated.
    pub fn validate(
        bytes: &[u8; FRAME_HEADER_BYTES],
        channel: ChannelKind,
    ) -> Result<(FrameHeader, MessageKind), FrameError> {
        let header: FrameHeader = zerocopy::transmute!(*bytes);
        if header.magic.get() != FRAME_MAGIC {
            if bytes.iter().all(|&byte| byte == 0) {
                return Err(FrameError::ZeroHeader);
            }
            return Err(FrameError::BadMagic {
                expected: FRAME_MAGIC,
                actual: header.magic.get(),
            });
        }
        let computed = crc_fast::crc32_iscsi(&bytes[HEADER_CRC_COVERS_FROM..]);
        if computed != header.header_crc.get() {
            return Err(FrameError::HeaderChecksum {
                stored: header.header_crc.get(),
                computed,
            });
        }
        let Some(kind) = MessageKind::from_u16(header.kind.get()) else {
            return Err(FrameError::UnknownKind {
                kind: header.kind.get(),
            });
        };
        if header.flags.get() != 0 {
            return Err(FrameError::UnknownFlags {
                flags: header.flags.get(),
            });
        }
        if header.reserved_20.get() != 0 || header.reserved_40.get() != 0 {
            return Err(FrameError::NonZeroReserved);
        }
        let limit_bytes = channel.frame_body_bytes_max();
        if header.body_len() > limit_bytes {
            return Err(FrameError::TooLarge {
                kind,
                channel,
                body_bytes: u64::from(header.body_len.get()),
                limit_bytes: limit_bytes as u64,
            });
        }
        if kind.channel() != channel {
            return Err(FrameError::KindNotAllowed { kind, channel });
        }
        Ok((header, kind))
    }

    /// Body length in bytes (padding not counted).
    pub fn body_len(&self) -> usize {
        self.body_len.get() as usize
    }

    /// Whole frame length in bytes: header, body and padding.
    pub fn frame_len(&self) -> usize {
        frame_bytes(self.body_len())
    }

    /// The crc32c the body must have.
    pub fn body_crc(&self) -> u32 {
        self.body_crc.get()
    }

    /// The raw kind field.
    pub fn kind_raw(&self) -> u16 {
        self.kind.get()
    }

    /// The sender's request id.
    pub fn request_id(&self) -> RequestId {
        RequestId(self.request_id.get())
    }

    /// The sender's epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.get())
    }

    /// A sealed header (both crcs set) for `body`.
    fn seal(kind: MessageKind, meta: FrameMeta, body: &[u8]) -> FrameHeader {
        let body_len = u32::try_from(body.len()).expect("bodies are checked against the limit");
        let mut header = FrameHeader {
            magic: U32::new(FRAME_MAGIC),
            header_crc: U32::ZERO,
            kind: U16::new(kind.to_u16()),
            flags: U16::ZERO,
            body_len: U32::new(body_len),
            body_crc: U32::new(crc_fast::crc32_iscsi(body)),
            reserved_20: U32::ZERO,
            request_id: U64::new(meta.request_id.get()),
            epoch: U64::new(meta.epoch.get()),
            reserved_40: U64::ZERO,
        };
        header.header_crc = U32::new(crc_fast::crc32_iscsi(
            &header.as_bytes()[HEADER_CRC_COVERS_FROM..],
        ));
        header
    }
}

/// One validated frame: both crcs held, the kind is known and allowed on the channel, the
/// body is within the channel's limit. Borrows the body from the buffer it was read from.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    kind: MessageKind,
    request_id: RequestId,
    epoch: Epoch,
    body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }
    /// The sender's request id (an answer carries its request's id).
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
    /// The sender's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The body: an rkyv archive of the kind's message type. Read it with
    /// [`crate::message::decode`] (validated), never with unchecked access.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// Parses the frame at the start of `bytes` for `channel`: `Ok(None)` if `bytes` holds only
/// part of it (what is there has been checked: the magic once 4 bytes are in, the whole header
/// once 48 are, so the caller may wait for the rest), else the frame and its length on the wire
/// including padding.
///
/// The body is not copied; to read it as a message it must lie at an address aligned to
/// [`FRAME_ALIGNMENT_BYTES`], which holds when `bytes` starts at such an address (a frame's
/// length is a multiple of it).
pub fn parse_frame(
    bytes: &[u8],
    channel: ChannelKind,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = bytes.first_chunk::<FRAME_HEADER_BYTES>() else {
        // Refuse another protocol as soon as its first four bytes are in (an HTTP request or
        // a TLS hello shorter than a header would otherwise wait for bytes that never come).
        // Zeros wait for the whole header, to be reported as a zero header.
        if let Some(magic) = bytes.first_chunk::<4>() {
            let actual = u32::from_le_bytes(*magic);
            if actual != FRAME_MAGIC && bytes.iter().any(|&byte| byte != 0) {
                return Err(FrameError::BadMagic {
                    expected: FRAME_MAGIC,
                    actual,
                });
            }
        }
        return Ok(None);
    };
    let (header, kind) = FrameHeader::validate(head, channel)?;
    let frame_len = header.frame_len();
    let Some(frame) = bytes.get(..frame_len) else {
        return Ok(None);
    };
    let body_end = FRAME_HEADER_BYTES + header.body_len();
    let (body, padding) = frame[FRAME_HEADER_BYTES..].split_at(header.body_len());
    debug_assert_eq!(padding.len(), frame_len - body_end);
    let computed = crc_fast::crc32_iscsi(body);
    if computed != header.body_crc() {
        return Err(FrameError::BodyChecksum {
            kind,
            stored: header.body_crc(),
            computed,
        });
    }
    if padding.iter().any(|&byte| byte != 0) {
        return Err(FrameError::NonZeroPadding { kind });
    }
    let frame = Frame {
        kind,
        request_id: header.request_id(),
        epoch: header.epoch(),
        body,
    };
    Ok(Some((frame, frame_len)))
}

/// Appends one frame of `kind` with `body` to `out`: header, body, zero padding. Returns the
/// bytes appended. Refuses a body over the kind's channel limit (nothing is appended then).
/// Used for bodies that are already encoded; messages go through [`crate::message::encode`].
pub fn encode_frame_raw(
    out: &mut Vec<u8>,
    kind: MessageKind,
    meta: FrameMeta,
    body: &[u8],
) -> Result<usize, EncodeError> {
    let start = begin_frame(out);
    out.extend_from_slice(body);
    finish_frame(out, start, kind, meta)
}

/// Reserves the header of a frame at the end of `out`; returns where the frame starts. The body
/// is then appended to `out` and [`finish_frame`] seals the frame.
pub(crate) fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    start
}

/// Seals the frame started at `start` whose body is everything after its header: checks the
/// limit, pads, writes the header. On error truncates `out` back to `start`.
pub(crate) fn finish_frame(
    out: &mut Vec<u8>,
    start: usize,
    kind: MessageKind,
    meta: FrameMeta,
) -> Result<usize, EncodeError> {
    let body_start = start + FRAME_HEADER_BYTES;
    assert!(out.len() >= body_start, "the frame's header was reserved");
    let body_len = out.len() - body_start;
    let channel = kind.channel();
    let limit_bytes = channel.frame_body_bytes_max();
    if body_len > limit_bytes {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            kind,
            channel,
            body_bytes: body_len as u64,
            limit_bytes: limit_bytes as u64,
        });
    }
    let header = FrameHeader::seal(kind, meta, &out[body_start..]);
    out[start..body_start].copy_from_slice(header.as_bytes());
    out.resize(start + frame_bytes(body_len), 0);
    let frame_len = out.len() - start;
    assert_eq!(frame_len % FRAME_ALIGNMENT_BYTES, 0);
    Ok(frame_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FrameMeta {
        FrameMeta {
            request_id: RequestId(0x0102_0304_0506_0708),
            epoch: Epoch(9),
        }
    }

    /// The header of a `Get` frame with a 5-byte body, pinned byte for byte. If this test fails
    /// the wire format changed: every deployed peer would refuse the new frames. Change it only
    /// deliberately, together with `PROTOCOL_VERSION` (and the magic, for a new header layout),
    /// by printing `hex(&frame[..48])` from this test and pasting it here.
    const GOLDEN_HEADER_HEX: &str = concat!(
        "43474e31",         // magic "CGN1"
        "44bcac8c",         // header crc32c of bytes 8..48
        "0201",             // kind 0x0102 (Get)
        "0000",             // flags
        "05000000",         // body_len 5
        "4cbb719a",         // body crc32c of "hello"
        "00000000",         // reserved
        "0807060504030201", // request id
        "0900000000000000", // epoch 9
        "0000000000000000", // reserved
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn golden_header() {
        let mut frame = Vec::new();
        let len = encode_frame_raw(&mut frame, MessageKind::Get, meta(), b"hello").unwrap();
        assert_eq!(len, 64);
        assert_eq!(frame.len(), 64);
        assert_eq!(hex(&frame[..FRAME_HEADER_BYTES]), GOLDEN_HEADER_HEX);
        assert_eq!(&frame[48..53], b"hello");
        assert_eq!(&frame[53..], &[0u8; 11], "padding is zeros");
        // The crcs in the golden bytes are what they claim to be.
        assert_eq!(
            u32::from_le_bytes(frame[4..8].try_into().unwrap()),
            crc32c::crc32c(&frame[8..48])
        );
        assert_eq!(
            u32::from_le_bytes(frame[16..20].try_into().unwrap()),
            crc32c::crc32c(b"hello")
        );
    }

    #[test]
    fn all_zero_header_never_validates() {
        let zeros = [0u8; FRAME_HEADER_BYTES];
        for channel in [
            ChannelKind::Handshake,
            ChannelKind::Client,
            ChannelKind::Replication,
        ] {
            assert_eq!(
                FrameHeader::validate(&zeros, channel).unwrap_err(),
                FrameError::ZeroHeader
            );
        }
        // Even with the magic right, zeros after it fail the crc: crc32c is zero only for no
        // bytes.
        assert_eq!(crc32c::crc32c(b""), 0);
        assert_ne!(crc32c::crc32c(&zeros[HEADER_CRC_COVERS_FROM..]), 0);
        let mut magic_only = zeros;
        magic_only[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        assert!(matches!(
            FrameHeader::validate(&magic_only, ChannelKind::Client),
            Err(FrameError::HeaderChecksum { stored: 0, .. })
        ));
    }

    #[test]
    fn validation_order_is_magic_crc_kind_limit_channel() {
        let mut frame = Vec::new();
        encode_frame_raw(&mut frame, MessageKind::Get, meta(), b"x").unwrap();
        let head: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
        let reseal = |mut head: [u8; FRAME_HEADER_BYTES]| {
            let crc = crc32c::crc32c(&head[HEADER_CRC_COVERS_FROM..]);
            head[4..8].copy_from_slice(&crc.to_le_bytes());
            head
        };
        // Wrong magic wins over a wrong crc.
        let mut bad = head;
        bad[0] ^= 1;
        bad[8] ^= 1;
        assert!(matches!(
            FrameHeader::validate(&bad, ChannelKind::Client),
            Err(FrameError::BadMagic { .. })
        ));
        // A wrong crc wins over an unknown kind.
        let mut bad = head;
        bad[8..10].copy_from_slice(&0x7777u16.to_le_bytes());
        assert!(matches!(
            FrameHeader::validate(&bad, ChannelKind::Client),
            Err(FrameError::HeaderChecksum { .. })
        ));
        // Sealed, the unknown kind is reported.
        assert_eq!(
            FrameHeader::validate(&reseal(bad), ChannelKind::Client).unwrap_err(),
            FrameError::UnknownKind { kind: 0x7777 }
        );
        let mut bad = head;
        bad[10] = 1;
        assert_eq!(
            FrameHeader::validate(&reseal(bad), ChannelKind::Client).unwrap_err(),
            FrameError::UnknownFlags { flags: 1 }
        );
        for offset in [20, 40] {
            let mut bad = head;
            bad[offset] = 1;
            assert_eq!(
                FrameHeader::validate(&reseal(bad), ChannelKind::Client).unwrap_err(),
                FrameError::NonZeroReserved
            );
        }
        // The length limit is checked before the channel: a huge Get on a handshake channel
        // is TooLarge, a small one is KindNotAllowed.
        let mut bad = head;
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameHeader::validate(&reseal(bad), ChannelKind::Handshake),
            Err(FrameError::TooLarge {
                body_bytes: 0xffff_ffff,
                ..
            })
        ));
        assert_eq!(
            FrameHeader::validate(&head, ChannelKind::Handshake).unwrap_err(),
            FrameError::KindNotAllowed {
                kind: MessageKind::Get,
                channel: ChannelKind::Handshake
            }
        );
        assert!(FrameHeader::validate(&head, ChannelKind::Client).is_ok());
    }

    #[test]
    fn body_limit_is_per_channel_and_inclusive() {
        let limit = ChannelKind::Client.frame_body_bytes_max();
        let mut out = Vec::new();
        let body = vec![0u8; limit];
        assert_eq!(
            encode_frame_raw(&mut out, MessageKind::Put, meta(), &body).unwrap(),
            frame_bytes(limit)
        );
        assert!(parse_frame(&out, ChannelKind::Client).unwrap().is_some());
        let mut over = vec![7u8; 3];
        let body = vec![0u8; limit + 1];
        assert_eq!(
            encode_frame_raw(&mut over, MessageKind::Put, meta(), &body).unwrap_err(),
            EncodeError::TooLarge {
                kind: MessageKind::Put,
                channel: ChannelKind::Client,
                body_bytes: limit as u64 + 1,
                limit_bytes: limit as u64,
            }
        );
        assert_eq!(over, vec![7u8; 3], "nothing appended on error");
    }

    #[test]
    fn body_crc_and_padding_are_checked() {
        let mut frame = Vec::new();
        encode_frame_raw(&mut frame, MessageKind::Get, meta(), b"abc").unwrap();
        let mut bad = frame.clone();
        bad[FRAME_HEADER_BYTES] ^= 0x80;
        assert!(matches!(
            parse_frame(&bad, ChannelKind::Client),
            Err(FrameError::BodyChecksum { .. })
        ));
        let mut bad = frame.clone();
        *bad.last_mut().unwrap() = 1;
        assert_eq!(
            parse_frame(&bad, ChannelKind::Client).unwrap_err(),
            FrameError::NonZeroPadding {
                kind: MessageKind::Get
            }
        );
        let (parsed, len) = parse_frame(&frame, ChannelKind::Client).unwrap().unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(parsed.body(), b"abc");
        assert_eq!(parsed.request_id(), meta().request_id);
        assert_eq!(parsed.epoch(), meta().epoch);
        for cut in 0..frame.len() {
            assert!(parse_frame(&frame[..cut], ChannelKind::Client)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn empty_body_frame_is_valid() {
        let mut frame = Vec::new();
        assert_eq!(
            encode_frame_raw(&mut frame, MessageKind::Topology, meta(), b"").unwrap(),
            FRAME_HEADER_BYTES
        );
        let (parsed, _) = parse_frame(&frame, ChannelKind::Client).unwrap().unwrap();
        assert!(parsed.body().is_empty());
    }
}
