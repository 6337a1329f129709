//! What a frame carries ([`MessageKind`], the header's `kind` field) and what a connection
//! carries ([`ChannelKind`], which decides the largest frame a peer may send).

use crate::constants::{
    frame_bytes, CLIENT_FRAME_BODY_BYTES_MAX, CONTROL_FRAME_BODY_BYTES_MAX,
    HANDSHAKE_FRAME_BODY_BYTES_MAX, REPLICATION_FRAME_BODY_BYTES_MAX,
};
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

/// What a connection is for. Every connection starts as [`ChannelKind::Handshake`]; once the
/// handshake is accepted it becomes the kind the `Hello` named. The kind sets the largest frame
/// the peer may send, checked from the header before a byte of the body is buffered.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum ChannelKind {
    /// A connection before its handshake is accepted: only `Hello` and `HelloReply`, small.
    Handshake = 0,
    /// A client (or a node acting as one) sending requests to one data shard.
    Client = 1,
    /// A follower shard pulling WAL records from a leader shard: [`MessageKind::SyncRequest`]
    /// and [`MessageKind::SyncResponse`] (kinds `0x02xx`).
    Replication = 2,
    /// Control-plane traffic between the control shards of nodes (gossip, votes, leadership
    /// maps): one frame per UDP datagram, no connection and so no handshake; a `Hello` asking
    /// for it is refused. Its one kind is [`MessageKind::Control`], whose body the cluster
    /// crate defines. Small, because a whole frame must fit in one datagram
    /// ([`CONTROL_FRAME_BODY_BYTES_MAX`]).
    Control = 3,
}

impl ChannelKind {
    /// Largest frame body a peer may send on this channel, in bytes.
    pub const fn frame_body_bytes_max(self) -> usize {
        match self {
            ChannelKind::Handshake => HANDSHAKE_FRAME_BODY_BYTES_MAX,
            ChannelKind::Client => CLIENT_FRAME_BODY_BYTES_MAX,
            ChannelKind::Replication => REPLICATION_FRAME_BODY_BYTES_MAX,
            ChannelKind::Control => CONTROL_FRAME_BODY_BYTES_MAX,
        }
    }

    /// Largest whole frame (header, body, padding) on this channel, in bytes: the most a
    /// [`crate::decoder::FrameDecoder`] for it ever buffers.
    pub const fn frame_bytes_max(self) -> usize {
        frame_bytes(self.frame_body_bytes_max())
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ChannelKind::Handshake => "handshake",
            ChannelKind::Client => "client",
            ChannelKind::Replication => "replication",
            ChannelKind::Control => "control",
        })
    }
}

/// The header's `kind` field: which message the body holds. One kind per body type, so the kind
/// alone says how to read the body. The high byte groups kinds: `0x00` handshake, `0x01` client
/// requests (`0x01_0x`) and responses (`0x01_8x`), `0x02` replication (requests `0x02_0x`,
/// responses `0x02_8x`), `0x03` control datagrams between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum MessageKind {
    /// [`crate::message::Hello`]: the first frame of every connection.
    Hello = 0x0001,
    /// [`crate::message::HelloReply`]: the answer to it.
    HelloReply = 0x0002,
    /// [`crate::message::PutRequest`].
    Put = 0x0101,
    /// [`crate::message::GetRequest`].
    Get = 0x0102,
    /// [`crate::message::DeleteRequest`].
    Delete = 0x0103,
    /// [`crate::message::CompareAndSetRequest`].
    CompareAndSet = 0x0104,
    /// [`crate::message::CreateCollectionRequest`].
    CreateCollection = 0x0105,
    /// [`crate::message::DropCollectionRequest`].
    DropCollection = 0x0106,
    /// [`crate::message::BatchRequest`].
    Batch = 0x0107,
    /// [`crate::message::TopologyRequest`].
    Topology = 0x0108,
    /// [`crate::message::ClusterStatusRequest`]: what the answering node knows of the control
    /// plane (term, controller, members, leadership map). Changes nothing.
    ClusterStatus = 0x0109,
    /// [`crate::message::WriteResponse`]: a put, compare-and-set, batch or collection change
    /// was applied.
    WriteResponse = 0x0181,
    /// [`crate::message::GetResponse`].
    GetResponse = 0x0182,
    /// [`crate::message::DeleteResponse`].
    DeleteResponse = 0x0183,
    /// [`crate::message::TopologyResponse`].
    TopologyResponse = 0x0184,
    /// [`crate::message::ClusterStatusResponse`].
    ClusterStatusResponse = 0x0185,
    /// [`crate::message::ErrorResponse`]: any request failed.
    ErrorResponse = 0x01ff,
    /// [`crate::message::SyncRequest`]: a follower asks for a partition's records.
    SyncRequest = 0x0201,
    /// [`crate::message::SnapshotRequest`]: a follower asks for a chunk of a partition's
    /// snapshot (catch-up by snapshot).
    SnapshotRequest = 0x0202,
    /// [`crate::message::SyncResponse`]: the leader's records (or why not).
    SyncResponse = 0x0281,
    /// [`crate::message::SnapshotResponse`]: the leader's snapshot chunk (or why not).
    SnapshotResponse = 0x0282,
    /// A control-plane datagram between the control shards of two nodes, on
    /// [`ChannelKind::Control`]. Its body is defined by the `coregrid-cluster` crate (this
    /// crate does not depend on it): net checks the frame (magic, crcs, length, padding) and
    /// [`crate::message::decode`] hands the body out as bytes
    /// ([`crate::message::MessageRef::Control`]); the cluster crate validates it with rkyv's
    /// checked access like every other body from outside the process.
    Control = 0x0301,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 22] = [
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
        MessageKind::ClusterStatus,
        MessageKind::WriteResponse,
        MessageKind::GetResponse,
        MessageKind::DeleteResponse,
        MessageKind::TopologyResponse,
        MessageKind::ClusterStatusResponse,
        MessageKind::ErrorResponse,
        MessageKind::SyncRequest,
        MessageKind::SnapshotRequest,
        MessageKind::SyncResponse,
        MessageKind::SnapshotResponse,
        MessageKind::Control,
    ];

    /// The kind for a header's field, if it is one.
    pub const fn from_u16(raw: u16) -> Option<MessageKind> {
        Some(match raw {
            0x0001 => MessageKind::Hello,
            0x0002 => MessageKind::HelloReply,
            0x0101 => MessageKind::Put,
            0x0102 => MessageKind::Get,
            0x0103 => MessageKind::Delete,
            0x0104 => MessageKind::CompareAndSet,
            0x0105 => MessageKind::CreateCollection,
            0x0106 => MessageKind::DropCollection,
            0x0107 => MessageKind::Batch,
            0x0108 => MessageKind::Topology,
            0x0109 => MessageKind::ClusterStatus,
            0x0181 => MessageKind::WriteResponse,
            0x0182 => MessageKind::GetResponse,
            0x0183 => MessageKind::DeleteResponse,
            0x0184 => MessageKind::TopologyResponse,
            0x0185 => MessageKind::ClusterStatusResponse,
            0x01ff => MessageKind::ErrorResponse,
            0x0201 => MessageKind::SyncRequest,
            0x0202 => MessageKind::SnapshotRequest,
            0x0281 => MessageKind::SyncResponse,
            0x0282 => MessageKind::SnapshotResponse,
            0x0301 => MessageKind::Control,
            _ => return None,
        })
    }

    /// The header's field for this kind.
    pub const fn to_u16(self) -> u16 {
        self as u16
    }

    /// The channel this kind travels on. A frame of this kind on another channel is refused.
    pub const fn channel(self) -> ChannelKind {
        match self {
            MessageKind::Hello | MessageKind::HelloReply => ChannelKind::Handshake,
            MessageKind::Control => ChannelKind::Control,
            MessageKind::SyncRequest
            | MessageKind::SyncResponse
            | MessageKind::SnapshotRequest
            | MessageKind::SnapshotResponse => ChannelKind::Replication,
            _ => ChannelKind::Client,
        }
    }

    /// Whether a client sends this kind (a request) rather than a server (an answer). A
    /// control datagram is neither: nodes exchange them as peers, so it is not a request.
    pub const fn is_request(self) -> bool {
        matches!(
            self,
            MessageKind::Hello
                | MessageKind::Put
                | MessageKind::Get
                | MessageKind::Delete
                | MessageKind::CompareAndSet
                | MessageKind::CreateCollection
                | MessageKind::DropCollection
                | MessageKind::Batch
                | MessageKind::Topology
                | MessageKind::ClusterStatus
                | MessageKind::SyncRequest
                | MessageKind::SnapshotRequest
        )
    }

    /// Whether this request changes stored state (and so carries a client request id and a
    /// write consistency).
    pub const fn is_write(self) -> bool {
        matches!(
            self,
            MessageKind::Put
                | MessageKind::Delete
                | MessageKind::CompareAndSet
                | MessageKind::CreateCollection
                | MessageKind::DropCollection
                | MessageKind::Batch
        )
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{self:?} (0x{:04x})", self.to_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_number() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_u16(kind.to_u16()), Some(kind));
        }
        let known = (0..=u16::MAX)
            .filter(|&raw| MessageKind::from_u16(raw).is_some())
            .count();
        assert_eq!(known, MessageKind::ALL.len(), "ALL misses a kind");
        assert_eq!(MessageKind::from_u16(0), None);
        let numbers: Vec<u16> = MessageKind::ALL.iter().map(|kind| kind.to_u16()).collect();
        assert!(
            numbers.windows(2).all(|pair| pair[0] < pair[1]),
            "ALL is in wire order"
        );
    }

    #[test]
    fn cluster_status_and_control_kinds_are_pinned() {
        // Numbers are the wire: changing one breaks every peer of another build.
        assert_eq!(MessageKind::ClusterStatus.to_u16(), 0x0109);
        assert_eq!(MessageKind::ClusterStatusResponse.to_u16(), 0x0185);
        assert_eq!(MessageKind::Control.to_u16(), 0x0301);
        assert_eq!(ChannelKind::Control as u8, 3);
        assert!(MessageKind::ClusterStatus.is_request());
        assert!(!MessageKind::ClusterStatus.is_write());
        assert!(!MessageKind::ClusterStatusResponse.is_request());
        assert!(!MessageKind::Control.is_request());
        assert!(!MessageKind::Control.is_write());
        assert_eq!(MessageKind::ClusterStatus.channel(), ChannelKind::Client);
        assert_eq!(
            MessageKind::ClusterStatusResponse.channel(),
            ChannelKind::Client
        );
        assert_eq!(MessageKind::Control.channel(), ChannelKind::Control);
        // Only the control kind travels on the control channel.
        let control: Vec<MessageKind> = MessageKind::ALL
            .into_iter()
            .filter(|kind| kind.channel() == ChannelKind::Control)
            .collect();
        assert_eq!(control, vec![MessageKind::Control]);
    }

    #[test]
    fn replication_kinds_are_pinned_and_travel_on_their_channel() {
        assert_eq!(MessageKind::SyncRequest.to_u16(), 0x0201);
        assert_eq!(MessageKind::SyncResponse.to_u16(), 0x0281);
        assert_eq!(MessageKind::SnapshotRequest.to_u16(), 0x0202);
        assert_eq!(MessageKind::SnapshotResponse.to_u16(), 0x0282);
        assert!(MessageKind::SnapshotRequest.is_request());
        assert!(!MessageKind::SnapshotResponse.is_request());
        assert_eq!(ChannelKind::Replication as u8, 2);
        assert!(MessageKind::SyncRequest.is_request());
        assert!(!MessageKind::SyncRequest.is_write());
        assert!(!MessageKind::SyncResponse.is_request());
        let replication: Vec<MessageKind> = MessageKind::ALL
            .into_iter()
            .filter(|kind| kind.channel() == ChannelKind::Replication)
            .collect();
        assert_eq!(
            replication,
            vec![
                MessageKind::SyncRequest,
                MessageKind::SnapshotRequest,
                MessageKind::SyncResponse,
                MessageKind::SnapshotResponse
            ]
        );
    }

    #[test]
    fn channel_limits_grow_with_the_channel() {
        assert!(ChannelKind::Handshake.frame_bytes_max() < ChannelKind::Client.frame_bytes_max());
        assert!(ChannelKind::Client.frame_bytes_max() < ChannelKind::Replication.frame_bytes_max());
        assert!(ChannelKind::Handshake.frame_bytes_max() < ChannelKind::Control.frame_bytes_max());
        assert!(ChannelKind::Control.frame_bytes_max() < ChannelKind::Client.frame_bytes_max());
        assert!(
            ChannelKind::Control.frame_bytes_max() <= crate::constants::UDP_PAYLOAD_BYTES_MAX,
            "a control frame fits one datagram"
        );
    }
}
