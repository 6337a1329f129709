//! The control plane's vocabulary (design.md section 3).

use coregrid_net::rkyv::{self, Archive, Deserialize, Serialize};
pub use coregrid_net::{ClusterId, Epoch, NodeId, PartitionId, Term};
use std::fmt;
use std::time::Duration;

/// A point in time, as the time since an origin the driver chooses (the node's start; the
/// simulator's zero). State machines only compare and add these; they never read a clock.
pub type Time = Duration;

/// Where a node is in its life (design.md section 3). Only `Joined` nodes lead partitions that
/// take writes; a `JoinedSyncing` node may hold "paper" leadership (section 4) but refuses
/// writes until it is `Joined`.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[rkyv(crate = rkyv, derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum NodeState {
    /// Known (from the peer list or gossip) but not yet a full member.
    Joining,
    /// A member, catching up on the partitions it replicates.
    JoinedSyncing,
    /// A full member, caught up.
    Joined,
    /// Leaving the cluster on purpose; takes no new leadership.
    Leaving,
    /// Declared dead by the failure detector (after suspicion).
    Dead,
}

impl NodeState {
    /// The state rank of leader scoring (design.md section 4): lower is better; `None` for a
    /// state that may not lead at all.
    pub fn leader_rank(self) -> Option<u8> {
        match self {
            NodeState::Joined => Some(0),
            NodeState::JoinedSyncing => Some(1),
            NodeState::Joining | NodeState::Leaving | NodeState::Dead => None,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            NodeState::Joining => "joining",
            NodeState::JoinedSyncing => "joined-syncing",
            NodeState::Joined => "joined",
            NodeState::Leaving => "leaving",
            NodeState::Dead => "dead",
        };
        formatter.write_str(name)
    }
}

/// How recent a leadership map is: the term of the controller that proposed it, then its
/// epoch (design.md section 6a: a voter votes only for a candidate whose latest stored map is
/// at least this recent). The derived order compares `term` first.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct MapVersion {
    /// The proposing controller's term.
    pub term: Term,
    /// The map's epoch.
    pub epoch: Epoch,
}

impl fmt::Display for MapVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "term {} epoch {}", self.term, self.epoch)
    }
}
