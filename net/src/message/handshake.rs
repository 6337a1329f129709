//! The handshake: the first frame of every connection is a [`Hello`]; the server answers with a
//! [`HelloReply`] and, on a refusal, closes the connection. [`answer_hello`] is the server's
//! whole decision, as a pure function, so servers of every channel share it and tests can try
//! every refusal without a socket.

use crate::constants::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use crate::ids::{ClientId, ClusterId, Epoch, NodeId, ShardId};
use crate::kind::{ArchivedChannelKind, ChannelKind};
use crate::validate::{check_reason, Validate, Violation};
use rkyv::{Archive, Deserialize, Serialize};

/// Who opened a connection.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
pub enum Peer {
    /// A client application.
    Client(ClientId),
    /// Another node of the cluster (replication, or forwarding control traffic).
    Node(NodeId),
}

/// The first frame of a connection: who the sender is, which cluster and protocol it speaks,
/// and which node and shard it means to reach.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The cluster the sender belongs to (or, for a client, means to reach).
    pub cluster_id: ClusterId,
    /// The protocol version the sender speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// What the connection is for; never [`ChannelKind::Handshake`].
    pub channel: ChannelKind,
    /// Who the sender is.
    pub sender: Peer,
    /// The node the sender means to reach, if it knows (from a topology answer or its
    /// configuration): a connection that reached another node (a reused address) is refused.
    pub node: Option<NodeId>,
    /// The shard the sender means to reach, if it knows.
    pub shard: Option<ShardId>,
}

impl Hello {
    /// A client's hello to the shard behind an address, this build's protocol version.
    pub fn client(cluster_id: ClusterId, client: ClientId) -> Hello {
        Hello {
            cluster_id,
            protocol_version: PROTOCOL_VERSION,
            channel: ChannelKind::Client,
            sender: Peer::Client(client),
            node: None,
            shard: None,
        }
    }
}

/// The server's answer to a [`Hello`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum HelloReply {
    /// The connection is open for the hello's channel.
    Accepted(HelloAccepted),
    /// The connection is refused; the server closes it after sending this.
    Refused(Refusal),
}

/// What a server tells a peer it accepted.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HelloAccepted {
    /// The server's node.
    pub node: NodeId,
    /// The shard that answered.
    pub shard: ShardId,
    /// The protocol version the connection uses (the server's, which the hello's is compatible
    /// with).
    pub protocol_version: u16,
    /// The server's current leadership-map epoch.
    pub epoch: Epoch,
}

/// Why a handshake was refused. The server closes the connection after sending it; nothing was
/// changed. Each says what to fix.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[rkyv(derive(Debug))]
pub enum Refusal {
    /// The peer belongs to another cluster (a stale address, a mixed-up configuration).
    #[error("wrong cluster: this node belongs to cluster {expected}, the peer to {actual}")]
    WrongCluster {
        /// This node's cluster.
        expected: ClusterId,
        /// The hello's cluster.
        actual: ClusterId,
    },
    /// The peer speaks a protocol version this node does not.
    #[error("unsupported protocol version {actual}: this node speaks {min}..={max}")]
    UnsupportedProtocol {
        /// Oldest version this node accepts.
        min: u16,
        /// Newest version this node speaks.
        max: u16,
        /// The hello's version.
        actual: u16,
    },
    /// The peer meant to reach another node (its address now belongs to this one).
    #[error("wrong node: the peer asked for node {expected}, this is node {actual}")]
    WrongNode {
        /// The node the hello asked for.
        expected: NodeId,
        /// This node.
        actual: NodeId,
    },
    /// The peer meant to reach another shard of this node.
    #[error("wrong shard: the peer asked for shard {expected}, this port serves shard {actual}")]
    WrongShard {
        /// The shard the hello asked for.
        expected: ShardId,
        /// The shard behind this port.
        actual: ShardId,
    },
    /// The channel asked for is not served to this peer (replication from a client, a
    /// handshake channel, a channel this port does not serve).
    #[error("{channel} channel refused: {reason}")]
    ChannelRefused {
        /// The hello's channel.
        channel: ChannelKind,
        /// Why.
        reason: String,
    },
    /// The node is shutting down; try another replica or later.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Who a server is, to judge a [`Hello`] by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    /// This node's cluster.
    pub cluster_id: ClusterId,
    /// This node.
    pub node: NodeId,
    /// The shard behind the port the hello arrived on.
    pub shard: ShardId,
    /// This node's current epoch, told to accepted peers.
    pub epoch: Epoch,
    /// Whether this port serves the channel a hello asks for.
    pub serves_client: bool,
    /// Whether this port serves replication.
    pub serves_replication: bool,
}

/// The server's decision on a validated hello: protocol version, then cluster, node, shard,
/// channel. A refusal says what to fix; the server sends it and closes the connection.
pub fn answer_hello(hello: &ArchivedHello, local: &LocalIdentity) -> HelloReply {
    let refuse = HelloReply::Refused;
    let version = hello.protocol_version.to_native();
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
        return refuse(Refusal::UnsupportedProtocol {
            min: PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION,
            actual: version,
        });
    }
    if hello.cluster_id.get() != local.cluster_id {
        return refuse(Refusal::WrongCluster {
            expected: local.cluster_id,
            actual: hello.cluster_id.get(),
        });
    }
    if let Some(node) = hello.node.as_ref().map(|node| node.get()) {
        if node != local.node {
            return refuse(Refusal::WrongNode {
                expected: node,
                actual: local.node,
            });
        }
    }
    if let Some(shard) = hello.shard.as_ref().map(|shard| shard.get()) {
        if shard != local.shard {
            return refuse(Refusal::WrongShard {
                expected: shard,
                actual: local.shard,
            });
        }
    }
    let channel_refused = |channel, reason: &str| {
        refuse(Refusal::ChannelRefused {
            channel,
            reason: reason.to_string(),
        })
    };
    match hello.channel {
        ArchivedChannelKind::Handshake => {
            return channel_refused(
                ChannelKind::Handshake,
                "a connection cannot stay in the handshake",
            )
        }
        ArchivedChannelKind::Client if !local.serves_client => {
            return channel_refused(ChannelKind::Client, "this port does not serve clients")
        }
        ArchivedChannelKind::Control => {
            return channel_refused(
                ChannelKind::Control,
                "control traffic travels in UDP datagrams, never on a connection",
            )
        }
        ArchivedChannelKind::Replication if !local.serves_replication => {
            return channel_refused(
                ChannelKind::Replication,
                "this port does not serve replication",
            )
        }
        ArchivedChannelKind::Replication if !matches!(hello.sender, ArchivedPeer::Node(_)) => {
            return channel_refused(
                ChannelKind::Replication,
                "only nodes of the cluster may replicate",
            )
        }
        _ => {}
    }
    HelloReply::Accepted(HelloAccepted {
        node: local.node,
        shard: local.shard,
        protocol_version: PROTOCOL_VERSION,
        epoch: local.epoch,
    })
}

macro_rules! validate_hello {
    ($ty:ty) => {
        impl Validate for $ty {
            fn validate(&self) -> Result<(), Violation> {
                if self.channel == ChannelKind::Handshake {
                    return Err(Violation::Invalid(
                        "a hello must name the channel it opens".into(),
                    ));
                }
                Ok(())
            }
        }
    };
}
validate_hello!(Hello);
validate_hello!(ArchivedHello);

impl Validate for HelloReply {
    fn validate(&self) -> Result<(), Violation> {
        match self {
            HelloReply::Refused(Refusal::ChannelRefused { reason, .. }) => check_reason(reason),
            _ => Ok(()),
        }
    }
}

impl Validate for ArchivedHelloReply {
    fn validate(&self) -> Result<(), Violation> {
        match self {
            ArchivedHelloReply::Refused(ArchivedRefusal::ChannelRefused { reason, .. }) => {
                check_reason(reason.as_str())
            }
            _ => Ok(()),
        }
    }
}
