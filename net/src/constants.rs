//! Every limit of the wire, named in one place with its unit, and the relations between them
//! proven at compile time (style.md rule 5). A limit that is not here is a bug.
//!
//! The key, value, name and batch limits mirror the engine's (`engine/src/constants.rs`): a
//! request the wire accepts is never refused by the engine for its size, and nothing the engine
//! stores is too large to be read back over the wire. `net` does not depend on the engine (it is
//! the lower layer); `tests/limits_match_engine.rs` fails when the two drift apart.

/// "CGN1" read as a little-endian u32: the first four bytes of every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"CGN1");

/// The protocol version this build speaks, sent in every handshake.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build still accepts from a peer.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Bytes of the fixed frame header (see [`crate::frame::FrameHeader`]).
pub const FRAME_HEADER_BYTES: usize = 48;

/// Alignment of every frame on the wire and of every body in memory, in bytes.
///
/// rkyv's validated access needs the body at an address aligned for its archived types (8 bytes
/// for the u64 fields here; 16 covers every rkyv primitive). Each frame is padded with zeros to a
/// multiple of this, and the header is a multiple of it too, so in a stream that starts at an
/// aligned address every header and every body is aligned and nothing is copied to read it.
pub const FRAME_ALIGNMENT_BYTES: usize = 16;

/// Largest key, in bytes (the engine's `KEY_BYTES_MAX`). Keys are never empty.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest value, in bytes (the engine's `VALUE_BYTES_MAX`).
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Longest collection name, in bytes of UTF-8 (the engine's `COLLECTION_NAME_BYTES_MAX`).
pub const COLLECTION_NAME_BYTES_MAX: usize = 128;

/// Most operations in one batch (the engine's `BATCH_OPERATIONS_MAX`).
pub const BATCH_OPERATIONS_MAX: usize = 4096;

/// Largest batch, in bytes as the engine encodes it in one WAL record body:
/// `2 + Σ (per-operation overhead + collection + key + value)`. Equal to the
/// engine's `RECORD_BODY_BYTES_MAX`, so a batch the wire accepts fits in one record.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Bytes the engine's record encoding adds to a batch as a whole (the operation count).
pub const BATCH_ENGINE_OVERHEAD_BYTES: usize = 2;

/// Bytes the engine's record encoding adds to each put of a batch (kind, name length, key
/// length, value length).
pub const BATCH_PUT_ENGINE_OVERHEAD_BYTES: usize = 8;

/// Bytes the engine's record encoding adds to each delete of a batch (kind, name length, key
/// length).
pub const BATCH_DELETE_ENGINE_OVERHEAD_BYTES: usize = 4;

/// Bound on the bytes rkyv adds to each batch operation beyond its collection, key and value
/// bytes (enum tag, relative pointers, padding). Proven by a unit test in `message`.
pub const BATCH_OPERATION_ARCHIVE_OVERHEAD_BYTES_MAX: usize = 32;

/// Bound on the bytes of any message beyond its variable-length fields (fixed fields, pointers,
/// padding). Proven by the round-trip tests.
pub const MESSAGE_FIXED_BYTES_MAX: usize = 256;

/// Longest reason text in an error or a handshake refusal, in bytes of UTF-8.
pub const REASON_BYTES_MAX: usize = 1024;

/// Most partitions a cluster may have (the engine's `PARTITIONS_MAX`).
pub const PARTITIONS_MAX: u32 = 65_536;

/// Most data shards one node may announce in a topology answer.
pub const SHARDS_PER_NODE_MAX: usize = 1024;

/// Largest whole WAL record the engine writes (its `RECORD_BYTES_MAX`: a 56-byte header and a
/// body of up to 4 MiB). Replication frames carry such records as they lie on disk.
pub const WAL_RECORD_BYTES_MAX: usize = 56 + 4 * 1024 * 1024;

/// Largest frame body on a connection that has not finished its handshake, in bytes. Small, so
/// that a peer that has not proven it belongs to the cluster cannot make a node allocate much.
pub const HANDSHAKE_FRAME_BODY_BYTES_MAX: usize = 4 * 1024;

/// Largest frame body on a client connection, in bytes: the largest cluster status answer
/// (65,536 partitions of 7 replicas and 1,024 members: about 5.1 MiB, at most 5.6 MiB by the
/// bound proven below), which also covers the
/// largest batch with its archive overhead (about 4.2 MiB), the largest put and the largest get
/// answer. It was 5 MiB until the cluster status answer came; the decoder of a connection
/// buffers at most one frame of it.
pub const CLIENT_FRAME_BODY_BYTES_MAX: usize = 6 * 1024 * 1024;

/// Largest frame body on a replication connection, in bytes. A sync response carries up to 1000
/// WAL records (the default batch); the leader must end a batch before it reaches this many
/// bytes, so large records make shorter batches. At least four of the largest records fit.
pub const REPLICATION_FRAME_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most bytes of records one sync answer carries (a follower asks for at most this many).
/// At least the engine's largest record, so that any record can be sent; with the answer's
/// fixed fields, within a replication frame.
pub const SYNC_RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Longest a leader may hold a sync request that has nothing new (a long poll), in
/// milliseconds. Bounds how long a request can tie up its slot on the connection.
pub const SYNC_WAIT_MS_MAX: u32 = 10_000;

/// Most epochs an epoch history on the wire may list (16 bytes each: 1.6 MiB at most). A
/// partition starts an epoch only when its leader changes; a million leader changes of one
/// partition would be a bug elsewhere.
pub const EPOCH_HISTORY_ENTRIES_MAX: usize = 100_000;

/// Largest UDP payload over IPv4, in bytes: 65,535 minus the 20-byte IP and 8-byte UDP headers.
/// (IPv6 allows 65,527 without jumbograms; IPv4 is the tighter bound, so it is the one used.)
/// A datagram larger than this cannot be sent at all.
pub const UDP_PAYLOAD_BYTES_MAX: usize = 65_507;

/// Largest frame body of a control datagram, in bytes ([`crate::ChannelKind::Control`]).
///
/// A control datagram is exactly one frame in one UDP datagram, so the whole frame (header,
/// body, padding) must fit [`UDP_PAYLOAD_BYTES_MAX`]: this is the largest multiple of
/// [`FRAME_ALIGNMENT_BYTES`] for which it does: 65,456 bytes, just under 64 KiB (a body of a full
/// 64 KiB would not fit one datagram with its header). The body itself is defined by
/// the cluster crate (gossip, votes, leadership maps); it should keep most datagrams far
/// smaller (below the path MTU, about 1,400 bytes), because a datagram above the MTU is
/// fragmented and lost whole when any fragment is.
pub const CONTROL_FRAME_BODY_BYTES_MAX: usize =
    (UDP_PAYLOAD_BYTES_MAX - FRAME_HEADER_BYTES) / FRAME_ALIGNMENT_BYTES * FRAME_ALIGNMENT_BYTES;

/// Most members a cluster status answer lists (one per node the answering node knows of).
pub const CLUSTER_MEMBERS_MAX: usize = 1024;

/// Most replicas (leader included) of one partition in a cluster status answer.
pub const REPLICAS_PER_PARTITION_MAX: usize = 7;

/// Longest address text (`ip:port`, gossip or data) of a member in a cluster status answer, in
/// bytes.
/// The longest IPv6 socket address with a scope id is well under it.
pub const GOSSIP_ADDRESS_BYTES_MAX: usize = 64;

/// Bound on the bytes rkyv adds to each member of a cluster status answer beyond its two
/// addresses' text (node id, state, flags, string pointer, padding). Proven by a unit test in `message`.
pub const MEMBER_STATUS_ARCHIVE_BYTES_MAX: usize = 32;

/// Bound on the bytes rkyv adds to each partition of a cluster status answer beyond its
/// replicas' 8-byte node ids (optional leader, vector pointer, padding). Proven by a unit test
/// in `message`.
pub const PARTITION_STATUS_ARCHIVE_BYTES_MAX: usize = 32;

/// How long a shard keeps polling its sockets' readiness set after its last event or socket
/// operation before it hands the set to its watcher thread and stops polling
/// (`transport::readiness`): an event within it is seen at the shard's next turn, one after it
/// costs the watcher's wake-up (a thread wake, some microseconds).
///
/// Short on purpose. Session 14 measured, node and bench client on the 2 cores of one machine,
/// 64 partitions: with 250 µs a put at 1 client ran at 2.8-2.9k/s against 4.6k/s with 100 µs,
/// and with 2 ms at 0.5k/s, because a shard that polls while it waits for its disk takes the
/// core the kernel's io_uring worker needs to write and sync the WAL. 20-50 µs gave 4.1-5.5k/s
/// and the same gets (noise between them), against 4.1-4.6k/s for 100 µs.
pub const READINESS_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Bytes a [`crate::decoder::FrameDecoder`] allocates before it knows the size of the frame it
/// is reading, and the most it asks a socket read for beyond the current frame.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes a frame occupies on the wire for a body of `body_bytes`: the header, the body, and zero
/// padding up to [`FRAME_ALIGNMENT_BYTES`].
pub const fn frame_bytes(body_bytes: usize) -> usize {
    FRAME_HEADER_BYTES + body_bytes.next_multiple_of(FRAME_ALIGNMENT_BYTES)
}

const _: () = assert!(FRAME_MAGIC != 0);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION);
const _: () = assert!(FRAME_ALIGNMENT_BYTES.is_power_of_two());
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGNMENT_BYTES));
const _: () = assert!(HANDSHAKE_FRAME_BODY_BYTES_MAX.is_multiple_of(FRAME_ALIGNMENT_BYTES));
const _: () = assert!(CLIENT_FRAME_BODY_BYTES_MAX.is_multiple_of(FRAME_ALIGNMENT_BYTES));
const _: () = assert!(REPLICATION_FRAME_BODY_BYTES_MAX.is_multiple_of(FRAME_ALIGNMENT_BYTES));
// Every body length fits the header's u32 field, and so does every whole frame.
const _: () = assert!(frame_bytes(REPLICATION_FRAME_BODY_BYTES_MAX) <= u32::MAX as usize);
const _: () = assert!(HANDSHAKE_FRAME_BODY_BYTES_MAX <= CLIENT_FRAME_BODY_BYTES_MAX);
const _: () = assert!(CLIENT_FRAME_BODY_BYTES_MAX <= REPLICATION_FRAME_BODY_BYTES_MAX);
// A refusal with the longest reason fits in a handshake frame.
const _: () = assert!(REASON_BYTES_MAX + MESSAGE_FIXED_BYTES_MAX <= HANDSHAKE_FRAME_BODY_BYTES_MAX);
// The largest put, the largest get answer and the largest batch fit in a client frame.
const _: () = assert!(
    COLLECTION_NAME_BYTES_MAX + KEY_BYTES_MAX + VALUE_BYTES_MAX + MESSAGE_FIXED_BYTES_MAX
        <= CLIENT_FRAME_BODY_BYTES_MAX
);
const _: () = assert!(
    BATCH_BYTES_MAX
        + BATCH_OPERATIONS_MAX * BATCH_OPERATION_ARCHIVE_OVERHEAD_BYTES_MAX
        + MESSAGE_FIXED_BYTES_MAX
        <= CLIENT_FRAME_BODY_BYTES_MAX
);
// The largest put fits in a batch, so any single write can also be sent as a batch of one.
const _: () = assert!(
    BATCH_ENGINE_OVERHEAD_BYTES
        + BATCH_PUT_ENGINE_OVERHEAD_BYTES
        + COLLECTION_NAME_BYTES_MAX
        + KEY_BYTES_MAX
        + VALUE_BYTES_MAX
        <= BATCH_BYTES_MAX
);
// The largest topology answer (every partition listed once, 4 bytes each) fits.
const _: () = assert!(
    PARTITIONS_MAX as usize * 4 + SHARDS_PER_NODE_MAX * 16 + MESSAGE_FIXED_BYTES_MAX
        <= CLIENT_FRAME_BODY_BYTES_MAX
);
const _: () =
    assert!(4 * WAL_RECORD_BYTES_MAX + MESSAGE_FIXED_BYTES_MAX <= REPLICATION_FRAME_BODY_BYTES_MAX);
// The largest cluster status answer (every member with the longest address, every partition
// with the most replicas) fits a client frame.
const _: () = assert!(
    CLUSTER_MEMBERS_MAX * (MEMBER_STATUS_ARCHIVE_BYTES_MAX + 2 * GOSSIP_ADDRESS_BYTES_MAX)
        + PARTITIONS_MAX as usize
            * (PARTITION_STATUS_ARCHIVE_BYTES_MAX + REPLICAS_PER_PARTITION_MAX * 8)
        + MESSAGE_FIXED_BYTES_MAX
        <= CLIENT_FRAME_BODY_BYTES_MAX
);
// A whole control frame fits one UDP datagram, and its body limit keeps the frame alignment.
// Any WAL record fits one sync answer, and the largest answer (records or an epoch history of
// 16-byte entries, with the fixed fields) fits a replication frame.
const _: () = assert!(WAL_RECORD_BYTES_MAX <= SYNC_RECORD_BYTES_MAX);
const _: () =
    assert!(SYNC_RECORD_BYTES_MAX + MESSAGE_FIXED_BYTES_MAX <= REPLICATION_FRAME_BODY_BYTES_MAX);
const _: () = assert!(
    EPOCH_HISTORY_ENTRIES_MAX * 16 + MESSAGE_FIXED_BYTES_MAX <= REPLICATION_FRAME_BODY_BYTES_MAX
);
const _: () = assert!(frame_bytes(CONTROL_FRAME_BODY_BYTES_MAX) <= UDP_PAYLOAD_BYTES_MAX);
const _: () = assert!(CONTROL_FRAME_BODY_BYTES_MAX.is_multiple_of(FRAME_ALIGNMENT_BYTES));
const _: () = assert!(CONTROL_FRAME_BODY_BYTES_MAX <= CLIENT_FRAME_BODY_BYTES_MAX);
const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(FRAME_ALIGNMENT_BYTES));
const _: () = assert!(READ_CHUNK_BYTES >= frame_bytes(HANDSHAKE_FRAME_BODY_BYTES_MAX));
const _: () = assert!(READ_CHUNK_BYTES <= CLIENT_FRAME_BODY_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(BATCH_OPERATIONS_MAX <= u16::MAX as usize);
const _: () = assert!(SHARDS_PER_NODE_MAX <= u16::MAX as usize);
