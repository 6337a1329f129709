//! A node's own state (`Joining` -> `JoinedSyncing` -> `Joined` -> `Leaving`), spread as a foca
//! custom broadcast.
//!
//! foca knows whether a member is alive, suspect or down; what the node says of itself (is it
//! caught up, is it leaving) rides on foca's gossip as a 25-byte announcement:
//! ```text
//!  0  node        u64  the announcing node
//!  8  generation  u64  its identity's generation (which life of the node)
//! 16  version     u64  grows with every change of state within one life
//! 24  state       u8   1 joining, 2 joined-syncing, 3 joined, 4 leaving
//! ```
//! Each node keeps, per node and generation, the announcement of the highest version in a
//! table shared with the foca broadcast handler, which passes on only what is new to it (so
//! dissemination stops), and never believes what others say about its own node. The view reads
//! the announcement of the generation foca currently knows for the node; generations below it
//! are pruned. Keeping generations apart (rather than only the newest overall) means that an
//! announcement of a generation that never lived (a bug, a forged or mangled packet) cannot
//! shadow the real ones; at most [`ANNOUNCED_GENERATIONS_MAX`] generations are kept per node.
//! `Dead` is never announced: only the failure detector declares it.

use super::identity::GossipIdentity;
use crate::constants::MEMBERS_MAX;
use crate::types::NodeState;
use foca::{BroadcastHandler, Invalidates};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Most generations of one node whose announcements are kept at once: the live one, a newer
/// one that foca has not seen yet (a restart in progress), and slack.
pub(crate) const ANNOUNCED_GENERATIONS_MAX: usize = 3;

/// Length of an encoded announcement.
pub(crate) const ANNOUNCEMENT_BYTES: usize = 25;

/// What a node says of itself (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub(crate) node: u64,
    pub(crate) generation: u64,
    pub(crate) version: u64,
    pub(crate) state: NodeState,
}

/// Why an announcement did not decode. foca stops reading the packet's broadcasts there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnnouncementError {
    #[error("a state announcement is {ANNOUNCEMENT_BYTES} bytes, got {length_bytes}")]
    Length { length_bytes: usize },
    #[error("unknown announced state {state}")]
    UnknownState { state: u8 },
}

impl Announcement {
    pub(crate) fn encode(&self) -> [u8; ANNOUNCEMENT_BYTES] {
        let mut bytes = [0u8; ANNOUNCEMENT_BYTES];
        bytes[0..8].copy_from_slice(&self.node.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.generation.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.version.to_le_bytes());
        bytes[24] = match self.state {
            NodeState::Joining => 1,
            NodeState::JoinedSyncing => 2,
            NodeState::Joined => 3,
            NodeState::Leaving => 4,
            NodeState::Dead => unreachable!("Dead is never announced (checked by the caller)"),
        };
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Announcement, AnnouncementError> {
        let Ok(bytes) = <&[u8; ANNOUNCEMENT_BYTES]>::try_from(bytes) else {
            return Err(AnnouncementError::Length {
                length_bytes: bytes.len(),
            });
        };
        let field = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let state = match bytes[24] {
            1 => NodeState::Joining,
            2 => NodeState::JoinedSyncing,
            3 => NodeState::Joined,
            4 => NodeState::Leaving,
            state => return Err(AnnouncementError::UnknownState { state }),
        };
        Ok(Announcement {
            node: field(0),
            generation: field(8),
            version: field(16),
            state,
        })
    }
}

/// What the announcements say, shared between the membership and its foca broadcast handler
/// (foca owns the handler and offers no way back to it).
#[derive(Debug, Default)]
pub(crate) struct AnnouncementBook {
    /// The newest announcement of every node (by node, then generation).
    pub(crate) by_node: BTreeMap<u64, BTreeMap<u64, Announcement>>,
    /// The newest announcement about our own node that others sent us since the membership
    /// last looked. The origin is the authority on its own state: when someone claims a
    /// version of our generation that we did not send (a mangled or forged packet), every
    /// node that took it would ignore our real announcements of lower versions, so the
    /// membership re-announces above it.
    pub(crate) claim_about_us: Option<Announcement>,
}

/// The announcement book of one membership. Single-threaded: the control shard owns both
/// users.
pub(crate) type AnnouncementTable = Rc<RefCell<AnnouncementBook>>;

/// foca's broadcast key: a newer announcement of a node's generation replaces the older one
/// still waiting to be sent.
pub(crate) struct AnnouncementKey {
    node: u64,
    generation: u64,
}

impl Invalidates for AnnouncementKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.generation == other.generation
    }
}

/// Decides which announcements foca keeps disseminating (see the module docs).
pub(crate) struct AnnouncementHandler {
    pub(crate) table: AnnouncementTable,
    pub(crate) own_node: u64,
}

impl BroadcastHandler<GossipIdentity> for AnnouncementHandler {
    type Key = AnnouncementKey;
    type Error = AnnouncementError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&GossipIdentity>,
    ) -> Result<Option<AnnouncementKey>, AnnouncementError> {
        let announcement = Announcement::decode(data)?;
        let key = AnnouncementKey {
            node: announcement.node,
            generation: announcement.generation,
        };
        let own = sender.is_none();
        let mut book = self.table.borrow_mut();
        if !own && announcement.node == self.own_node {
            // What others say of us is at best an echo of what we said: we know better, but
            // the membership checks that the echo is not newer than what we said.
            let newer = book.claim_about_us.is_none_or(|claim| {
                (claim.generation, claim.version) < (announcement.generation, announcement.version)
            });
            if newer {
                book.claim_about_us = Some(announcement);
            }
            return Ok(None);
        }
        let table = &mut book.by_node;
        if !table.contains_key(&announcement.node) && table.len() >= MEMBERS_MAX {
            tracing::warn!(
                node = announcement.node,
                "state announcement dropped: {MEMBERS_MAX} nodes already announced"
            );
            return Ok(None);
        }
        let generations = table.entry(announcement.node).or_default();
        match generations.get(&announcement.generation) {
            // Our own announcement is re-added on purpose (a refresh for newcomers).
            Some(known) if own && known.version == announcement.version => Ok(Some(key)),
            Some(known) if known.version >= announcement.version => Ok(None),
            _ => {
                generations.insert(announcement.generation, announcement);
                if generations.len() > ANNOUNCED_GENERATIONS_MAX {
                    // The oldest life is the least useful: the view prunes it soon anyway.
                    generations.pop_first();
                }
                Ok(Some(key))
            }
        }
    }
}

/// The state node `node` announced for `generation`, if any.
pub(crate) fn announced_state(
    book: &AnnouncementBook,
    node: u64,
    generation: u64,
) -> Option<NodeState> {
    book.by_node
        .get(&node)?
        .get(&generation)
        .map(|announcement| announcement.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> AnnouncementHandler {
        AnnouncementHandler {
            table: AnnouncementTable::default(),
            own_node: 1,
        }
    }

    fn sender() -> GossipIdentity {
        GossipIdentity {
            node: 9,
            generation: 1,
            gossip_addr: "10.0.0.9:7000".parse().unwrap(),
        }
    }

    fn announcement(node: u64, generation: u64, version: u64, state: NodeState) -> Vec<u8> {
        Announcement {
            node,
            generation,
            version,
            state,
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn only_newer_announcements_are_kept_and_passed_on() {
        let mut handler = handler();
        let from = sender();
        let joined = announcement(2, 5, 3, NodeState::Joined);
        assert!(handler
            .receive_item(&joined, Some(&from))
            .unwrap()
            .is_some());
        assert!(handler
            .receive_item(&joined, Some(&from))
            .unwrap()
            .is_none());
        let older = announcement(2, 5, 2, NodeState::JoinedSyncing);
        assert!(handler.receive_item(&older, Some(&from)).unwrap().is_none());
        let restarted = announcement(2, 6, 1, NodeState::Joining);
        assert!(handler
            .receive_item(&restarted, Some(&from))
            .unwrap()
            .is_some());
        let table = handler.table.borrow();
        assert_eq!(announced_state(&table, 2, 6), Some(NodeState::Joining));
        assert_eq!(announced_state(&table, 2, 5), Some(NodeState::Joined));
    }

    #[test]
    fn an_announcement_of_a_generation_that_never_lived_does_not_shadow_the_real_one() {
        let mut handler = handler();
        let from = sender();
        let forged = announcement(2, 1_000, 9, NodeState::Leaving);
        assert!(handler
            .receive_item(&forged, Some(&from))
            .unwrap()
            .is_some());
        let real = announcement(2, 5, 1, NodeState::Joined);
        assert!(handler.receive_item(&real, Some(&from)).unwrap().is_some());
        assert_eq!(
            announced_state(&handler.table.borrow(), 2, 5),
            Some(NodeState::Joined)
        );
    }

    #[test]
    fn claims_about_ourselves_from_others_are_ignored_and_bad_bytes_are_errors() {
        let mut handler = handler();
        let about_us = announcement(1, 99, 99, NodeState::Leaving);
        assert!(handler
            .receive_item(&about_us, Some(&sender()))
            .unwrap()
            .is_none());
        assert!(handler.table.borrow().by_node.is_empty());
        assert_eq!(
            handler
                .table
                .borrow()
                .claim_about_us
                .map(|claim| claim.version),
            Some(99)
        );
        let mut bad_state = announcement(2, 1, 1, NodeState::Joined);
        bad_state[24] = 5;
        assert!(handler.receive_item(&bad_state, Some(&sender())).is_err());
        assert!(handler
            .receive_item(&bad_state[..24], Some(&sender()))
            .is_err());
    }
}
