//! The errors of the wire layer (style.md rule 8): each variant says what happened to state.
//! Nothing in this crate changes stored state, so the question is only what becomes of the
//! connection.
//!
//! - [`FrameError`]: the byte stream cannot be trusted any more (framing lost, corruption, a
//!   peer over its limits). The connection must be dropped.
//! - [`DecodeError`]: the frame is intact (both crcs held) but its body is not a valid message
//!   of its kind. Framing is intact, so a server may answer `InvalidRequest` for that request
//!   id and keep the connection.
//! - [`EncodeError`]: a message could not be written; the caller's buffer is as it was.

use crate::kind::{ChannelKind, MessageKind};
use crate::validate::Violation;

/// Why a byte stream stopped being a sequence of valid frames. Every variant means: the
/// connection must be dropped; nothing was changed, no message was handed out from the bad
/// bytes. A [`crate::decoder::FrameDecoder`] that returned one keeps returning it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Every header byte is zero (a zeroed buffer sent by mistake, or not this protocol). The
    /// connection must be dropped; nothing was changed.
    #[error("frame header is all zeros")]
    ZeroHeader,

    /// The first four bytes are not the frame magic: the peer speaks another protocol or the
    /// stream lost its framing. The connection must be dropped; nothing was changed.
    #[error("bad frame magic: expected {:02x?} (\"CGN1\"), got {:02x?}", expected.to_le_bytes(), actual.to_le_bytes())]
    BadMagic {
        /// The magic this build expects.
        expected: u32,
        /// What the header held.
        actual: u32,
    },

    /// The header's crc32c does not match its bytes: corruption in transit or a broken peer.
    /// The connection must be dropped; nothing was changed.
    #[error("frame header checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    HeaderChecksum {
        /// The crc the header carries.
        stored: u32,
        /// The crc of the bytes received.
        computed: u32,
    },

    /// The header names a message kind this build does not know (a newer or broken peer). The
    /// connection must be dropped; nothing was changed.
    #[error("unknown message kind 0x{kind:04x}")]
    UnknownKind {
        /// The header's kind field.
        kind: u16,
    },

    /// The header sets flags this build does not know. The connection must be dropped;
    /// nothing was changed.
    #[error("unknown frame flags 0x{flags:04x}")]
    UnknownFlags {
        /// The header's flags field.
        flags: u16,
    },

    /// A reserved header field is not zero. The connection must be dropped; nothing was
    /// changed.
    #[error("reserved frame header field is not zero")]
    NonZeroReserved,

    /// The header announces a body larger than this channel allows. Refused from the header
    /// alone, before a byte of the body was buffered or any memory reserved for it. The
    /// connection must be dropped; nothing was changed.
    #[error("{kind} frame body of {body_bytes} bytes is over the {channel} channel's limit of {limit_bytes} bytes")]
    TooLarge {
        /// The header's kind.
        kind: MessageKind,
        /// The channel the frame arrived on.
        channel: ChannelKind,
        /// The body length the header announced.
        body_bytes: u64,
        /// The channel's limit.
        limit_bytes: u64,
    },

    /// A message kind that does not travel on this channel (a request before the handshake,
    /// a second `Hello`, a client request on a replication connection). The connection must be
    /// dropped; nothing was changed.
    #[error("{kind} is not allowed on a {channel} channel")]
    KindNotAllowed {
        /// The header's kind.
        kind: MessageKind,
        /// The channel the frame arrived on.
        channel: ChannelKind,
    },

    /// The body's crc32c does not match: corruption in transit. The connection must be
    /// dropped; nothing was changed.
    #[error("{kind} frame body checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    BodyChecksum {
        /// The header's kind.
        kind: MessageKind,
        /// The crc the header carries.
        stored: u32,
        /// The crc of the body received.
        computed: u32,
    },

    /// The zero padding after a body holds a non-zero byte. The connection must be dropped;
    /// nothing was changed.
    #[error("{kind} frame padding is not zero")]
    NonZeroPadding {
        /// The header's kind.
        kind: MessageKind,
    },

    /// The stream ended inside a frame (the peer closed mid-frame, or a buffer given to
    /// [`crate::frame::parse_frame`] ended early where a whole frame was required). The
    /// connection must be dropped; nothing was changed.
    #[error("stream ended inside a frame: {buffered_bytes} bytes buffered")]
    Truncated {
        /// Bytes of the incomplete frame received.
        buffered_bytes: usize,
    },
}

/// Why an intact frame's body is not a message that may be acted on. Framing is intact: the
/// next frame can still be read. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// rkyv's validation refused the body (bad pointer, bad enum tag, invalid UTF-8, ...). The
    /// sender is broken; a server may answer `InvalidRequest` for this request id or drop the
    /// connection. Nothing was changed.
    #[error("{kind} body is not a valid archive: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: MessageKind,
        /// What rkyv's validation reported.
        reason: String,
    },

    /// The body does not start at an address aligned to `FRAME_ALIGNMENT_BYTES`: the frame was
    /// not read through [`crate::decoder::FrameDecoder`] or an aligned buffer. A bug of the
    /// caller, not of the peer. Nothing was changed.
    #[error("{kind} body is not aligned in memory: read frames through FrameDecoder")]
    Misaligned {
        /// The frame's kind.
        kind: MessageKind,
    },

    /// The frame holds another kind than the one asked for with [`crate::message::access`].
    /// Nothing was changed.
    #[error("expected a {expected} frame, got {actual}")]
    UnexpectedKind {
        /// The kind asked for.
        expected: MessageKind,
        /// The frame's kind.
        actual: MessageKind,
    },

    /// A valid archive whose content breaks a limit or a rule of the protocol (key too large,
    /// empty batch, ...). A server answers with the matching error response and keeps the
    /// connection. Nothing was changed.
    #[error("{kind}: {violation}")]
    Invalid {
        /// The frame's kind.
        kind: MessageKind,
        /// The rule broken.
        violation: Violation,
    },
}

/// Why a message could not be encoded. The caller's buffer is exactly as it was before the
/// call; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message breaks a limit or a rule (the same checks a receiver makes), so a peer would
    /// refuse it. Nothing was written.
    #[error("{kind}: {violation}")]
    Invalid {
        /// The message's kind.
        kind: MessageKind,
        /// The rule broken.
        violation: Violation,
    },

    /// The encoded body is larger than the kind's channel allows. Nothing was written.
    #[error("{kind} body of {body_bytes} bytes is over the {channel} channel's limit of {limit_bytes} bytes")]
    TooLarge {
        /// The message's kind.
        kind: MessageKind,
        /// The channel the kind travels on.
        channel: ChannelKind,
        /// The encoded body's length.
        body_bytes: u64,
        /// The channel's limit.
        limit_bytes: u64,
    },

    /// rkyv failed to serialize the message. Nothing was written.
    #[error("{kind}: serialization failed: {reason}")]
    Serialize {
        /// The message's kind.
        kind: MessageKind,
        /// What rkyv reported.
        reason: String,
    },
}
