//! Who a member is on the gossip layer: a node id, the generation of the process that runs it,
//! and where it listens for gossip.
//!
//! foca keys its member table by [`Identity::addr`], so here that key is the [`NodeId`]
//! (stable across restarts, design.md section 3), not the socket address: a node that restarts
//! on another address is still the same member. Two identities with the same node id are two
//! lives of one node; the higher generation wins (foca's rename), so a restarted node with a
//! new generation replaces its dead or suspected former self at once instead of waiting until
//! the cluster forgets it. foca also calls [`Identity::renew`] when it learns that the cluster
//! declared us down while we live (a false positive): the generation is bumped by one and the
//! node rejoins by itself.
//!
//! [`NodeId`]: crate::types::NodeId

use foca::Identity;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A member's identity as foca sees it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct GossipIdentity {
    /// The node id, raw: foca's member key.
    pub(crate) node: u64,
    /// Which life of the node this is; a higher one replaces a lower one.
    pub(crate) generation: u64,
    /// Where the node receives gossip datagrams.
    pub(crate) gossip_addr: SocketAddr,
}

impl Identity for GossipIdentity {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        // At u64::MAX there is no higher generation: foca then reports us defunct.
        let generation = self.generation.checked_add(1)?;
        Some(GossipIdentity {
            generation,
            ..*self
        })
    }

    fn addr(&self) -> u64 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // The address breaks a tie so that the order is total: two identities with the same
        // generation (a misconfigured restart) never keep replacing each other.
        (self.generation, self.gossip_addr) > (adversary.generation, adversary.gossip_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_identity_wins_over_its_former_self() {
        let first = GossipIdentity {
            node: 3,
            generation: 10,
            gossip_addr: "10.0.0.3:7000".parse().unwrap(),
        };
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.addr(), first.addr());
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        let last = GossipIdentity {
            generation: u64::MAX,
            ..first
        };
        assert_eq!(last.renew(), None);
    }
}
