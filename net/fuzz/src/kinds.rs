//! Which message kind the `message` target's first input byte picks, shared with the seed
//! writer. Not `MessageKind::ALL`: that is in wire order, so a new kind in the middle would
//! shift every committed corpus input onto another kind. Kinds are only ever appended here.

use coregrid_net::MessageKind;

/// Selector byte (modulo the length) -> kind. Append new kinds; never reorder.
pub const FUZZ_KINDS: [MessageKind; 22] = [
    // The first fifteen: `MessageKind::ALL` as it was when the corpus was first written.
    MessageKind::Hello,
    MessageKind::HelloReply,
    MessageKind::Put,
    MessageKind::Get,
    MessageKind::Delete,
    MessageKind::CompareAndSet,
    MessageKind::CreateCollection,
    MessageKind::DropCollection,
    MessageKind::Batch,
    MessageKind::Topology,
    MessageKind::WriteResponse,
    MessageKind::GetResponse,
    MessageKind::DeleteResponse,
    MessageKind::TopologyResponse,
    MessageKind::ErrorResponse,
    // Added with the cluster status and control datagrams.
    MessageKind::ClusterStatus,
    MessageKind::ClusterStatusResponse,
    MessageKind::Control,
    // Added with replication.
    MessageKind::SyncRequest,
    MessageKind::SyncResponse,
    // Added with catch-up by snapshot.
    MessageKind::SnapshotRequest,
    MessageKind::SnapshotResponse,
];

