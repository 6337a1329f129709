//! The control messages of the election. Plain data: the driver encodes them on the wire.
//! Every message carries its sender's term, so a stale sender learns it is stale from the
//! answer ([`ControlMessage::Refuse`]) and steps down.

use crate::map::{FencedPosition, Handoff, LeadershipMap};
use crate::types::{MapVersion, NodeId, Term};
use coregrid_net::rkyv::{self, Archive, Deserialize, Serialize};

/// One control message between two nodes' election state machines. Archived by rkyv for the
/// wire ([`crate::wire`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(crate = rkyv, derive(Debug))]
pub enum ControlMessage {
    /// "Would you vote for me in `proposed_term`?" (Vote strategy). Does not raise anyone's
    /// term, so a node that was cut off cannot disrupt a working controller.
    PreVote {
        /// The sender's current term.
        term: Term,
        /// The term the sender would stand in (`term + 1`).
        proposed_term: Term,
        /// The sender's latest stored map version.
        stored: MapVersion,
    },
    /// The answer to a [`ControlMessage::PreVote`].
    PreVoteReply {
        /// The replier's current term.
        term: Term,
        /// The term asked about.
        proposed_term: Term,
        /// Whether the replier would vote.
        granted: bool,
    },
    /// "Accept me as controller of `term`": a vote request (Vote) or COORDINATOR (Bully,
    /// Ring). The sender persisted `term` and its own acceptance first.
    Claim {
        /// The term claimed.
        term: Term,
        /// The claimant's latest stored map version.
        stored: MapVersion,
    },
    /// The answer to a [`ControlMessage::Claim`]. A granting voter persisted `term` and its
    /// acceptance before answering.
    ClaimReply {
        /// The replier's term (the claimed term when granted).
        term: Term,
        /// Whether the replier accepted the claimant for `term`.
        granted: bool,
        /// The replier's latest stored map version.
        stored: MapVersion,
        /// The replier's stored map, when granted and newer than the claimant's.
        map: Option<LeadershipMap>,
    },
    /// The controller asks voters to store `map` (a proposal, not yet committed).
    Propose {
        /// The controller's term.
        term: Term,
        /// The proposed map (`map.term == term`).
        map: LeadershipMap,
    },
    /// A voter stored the proposal of `version` durably.
    ProposeAck {
        /// The voter's term.
        term: Term,
        /// The version stored.
        version: MapVersion,
    },
    /// `map` is committed (a majority of voters stored it): publish it.
    Commit {
        /// The controller's term.
        term: Term,
        /// The committed map.
        map: LeadershipMap,
    },
    /// The controller is alive in `term`; its latest committed map is `committed`.
    Heartbeat {
        /// The controller's term.
        term: Term,
        /// The version of the latest committed map.
        committed: MapVersion,
        /// The handoffs the controller wishes (each carried out by the partition's leader).
        handoffs: Vec<Handoff>,
    },
    /// The answer to a heartbeat: lets the controller count a quorum (check-quorum) and
    /// resend what the follower lacks.
    HeartbeatReply {
        /// The follower's term.
        term: Term,
        /// The version of the follower's latest published map.
        committed: MapVersion,
        /// The version of the follower's latest stored map.
        stored: MapVersion,
        /// The follower's fenced positions: its last record of every partition it holds a
        /// replica of and that has no leader in its map (the failover's input).
        positions: Vec<FencedPosition>,
        /// The handoffs the follower, as a partition's leader, made ready.
        ready: Vec<Handoff>,
    },
    /// The sender refused a message of a lower term: the receiver steps down to `term`.
    Refuse {
        /// The refuser's term.
        term: Term,
    },
    /// Bully ELECTION, sent to higher-id voters.
    BullyElection {
        /// The sender's term.
        term: Term,
    },
    /// Bully OK: a higher-id voter is alive and takes over.
    BullyAlive {
        /// The sender's term.
        term: Term,
    },
    /// Ring ELECTION, circulating the voters in id order.
    RingElection {
        /// The sender's term.
        term: Term,
        /// The node that started this round.
        initiator: NodeId,
        /// The initiator's round number (names the round in acks).
        round: u64,
        /// The live voters collected so far, initiator first.
        collected: Vec<NodeId>,
        /// The highest term among the collected voters.
        highest_term: Term,
    },
    /// Ring COORDINATOR: announces the winner of a round around the ring.
    RingCoordinator {
        /// The sender's term.
        term: Term,
        /// The node that started the round.
        initiator: NodeId,
        /// The initiator's round number.
        round: u64,
        /// The highest collected id: the voter that stands.
        winner: NodeId,
        /// The highest term among the collected voters: the winner claims above it.
        highest_term: Term,
    },
    /// A ring successor received a ring message (else the sender skips past it).
    RingAck {
        /// The sender's term.
        term: Term,
        /// The acknowledged round's initiator.
        initiator: NodeId,
        /// The acknowledged round.
        round: u64,
        /// Whether a COORDINATOR (else an ELECTION) is acknowledged.
        coordinator: bool,
    },
}

impl ControlMessage {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            ControlMessage::PreVote { term, .. }
            | ControlMessage::PreVoteReply { term, .. }
            | ControlMessage::Claim { term, .. }
            | ControlMessage::ClaimReply { term, .. }
            | ControlMessage::Propose { term, .. }
            | ControlMessage::ProposeAck { term, .. }
            | ControlMessage::Commit { term, .. }
            | ControlMessage::Heartbeat { term, .. }
            | ControlMessage::HeartbeatReply { term, .. }
            | ControlMessage::Refuse { term }
            | ControlMessage::BullyElection { term }
            | ControlMessage::BullyAlive { term }
            | ControlMessage::RingElection { term, .. }
            | ControlMessage::RingCoordinator { term, .. }
            | ControlMessage::RingAck { term, .. } => *term,
        }
    }

    /// A short name, for logs and message counts.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMessage::PreVote { .. } => "pre_vote",
            ControlMessage::PreVoteReply { .. } => "pre_vote_reply",
            ControlMessage::Claim { .. } => "claim",
            ControlMessage::ClaimReply { .. } => "claim_reply",
            ControlMessage::Propose { .. } => "propose",
            ControlMessage::ProposeAck { .. } => "propose_ack",
            ControlMessage::Commit { .. } => "commit",
            ControlMessage::Heartbeat { .. } => "heartbeat",
            ControlMessage::HeartbeatReply { .. } => "heartbeat_reply",
            ControlMessage::Refuse { .. } => "refuse",
            ControlMessage::BullyElection { .. } => "bully_election",
            ControlMessage::BullyAlive { .. } => "bully_alive",
            ControlMessage::RingElection { .. } => "ring_election",
            ControlMessage::RingCoordinator { .. } => "ring_coordinator",
            ControlMessage::RingAck { .. } => "ring_ack",
        }
    }

    /// Whether this message is part of electing a controller (as opposed to the steady
    /// state of heartbeats and maps): what "messages per election" counts.
    pub fn is_election(&self) -> bool {
        !matches!(
            self,
            ControlMessage::Heartbeat { .. }
                | ControlMessage::HeartbeatReply { .. }
                | ControlMessage::Propose { .. }
                | ControlMessage::ProposeAck { .. }
                | ControlMessage::Commit { .. }
        )
    }
}
