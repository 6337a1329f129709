//! coregrid's wire: the frame codec and every message, sans-IO.
//!
//! # Model
//! - **A frame** is a fixed 48-byte header ([`frame::FrameHeader`]: magic, message kind,
//!   flags, body length, body crc32c, header crc32c, request id, epoch), then an rkyv body,
//!   then zero padding to a multiple of 16 bytes. The header is a zerocopy struct of
//!   little-endian fields; its layout is pinned by a golden-bytes test.
//! - **What is validated where.** [`decoder::FrameDecoder`] (or [`frame::parse_frame`]) checks
//!   the header from its 48 bytes alone, in this order: magic, header crc, kind known, flags
//!   and reserved fields zero, body length within the connection's [`ChannelKind`] limit, kind
//!   allowed on the channel. Only then may the buffer grow for the body; once the body is
//!   there its crc and the zero padding are checked. A failure there is a [`FrameError`]: the
//!   connection must be dropped. [`message::decode`] then reads the body with rkyv's
//!   validating access (every pointer, length, enum tag and string checked; nothing from
//!   outside the process is read unchecked) and checks the protocol's rules on the archived
//!   form (key, value, name sizes, batch operation count and bytes) before anything is
//!   allocated or applied. A failure there is a [`DecodeError`]: framing is intact, the server
//!   answers with an [`message::ErrorResponse`] for that request id.
//! - **Limits** ([`constants`]): keys 1..=4 KiB, values up to 1 MiB, collection names up to
//!   128 bytes, batches of up to 4096 operations and 4 MiB (the engine's own limits); frame
//!   bodies up to 4 KiB before the handshake, 6 MiB on a client connection, 32 MiB on a
//!   replication connection, just under 64 KiB in a control datagram (one frame per UDP
//!   datagram). A decoder never holds more than its channel's largest frame.
//! - **Why zero-copy.** Values up to 1 MiB and replication batches up to 32 MiB pass through
//!   every node; copying or deserializing them on the hot path would cost more than the
//!   network. Frames are padded so that every body lies at a 16-aligned address in the
//!   decoder's aligned buffer, where rkyv reads it in place; what [`message::decode`] returns
//!   borrows the body (`&[u8]` keys and values).
//! - **Connections** begin with a handshake ([`message::Hello`] carrying cluster id, protocol
//!   version, sender and the node and shard it means to reach; [`message::HelloReply`]);
//!   [`message::answer_hello`] decides, and a refusal says what to fix. Requests are
//!   pipelined: the header's request id pairs each answer with its request, in any order.
//!   Every write carries a [`ids::ClientRequestId`], so a retry is never applied twice.
//!
//! - **The native client** ([`client`]): a sans-IO routing and retry core, and the two drivers
//!   that are the exception to the next paragraph: blocking (`std::net`) and glommio.
//!
//! Nothing here reads a socket, a clock or a file: a transport (the TCP server and client on
//! glommio, built on this crate) owns the sockets and calls in. The crate has no `unsafe`.
//! [`transport`] is that transport's socket layer, the crate's only runtime (glommio) code.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod client;
pub mod constants;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod ids;
pub mod kind;
pub mod message;
pub mod transport;
pub mod validate;

pub use decoder::FrameDecoder;
pub use error::{DecodeError, EncodeError, FrameError};
pub use frame::{encode_frame_raw, parse_frame, Frame, FrameHeader, FrameMeta};
pub use ids::{
    ClientId, ClientRequestId, ClusterId, Epoch, Lsn, NodeId, PartitionId, RequestId, ShardId, Term,
};
pub use kind::{ChannelKind, MessageKind};
pub use message::{access, decode, encode, Message, MessageRef};
pub use validate::{Limit, Validate, Violation};

/// The rkyv this crate archives with, for callers that name archived types or deserialize.
pub use rkyv;
