//! The election state machine of one node. See the module docs of [`crate::election`] and
//! `docs/elections.md` for the protocol; comments here say why each rule is there.

use super::constants::{ELECTION_FAILURES_COUNTED_MAX, OUTPUTS_QUEUED_MAX, RING_PENDING_HOPS_MAX};
use super::{Config, ConfigError, ControlMessage, Output, Persisted, Role, Status, Strategy};
use crate::constants::MEMBERS_MAX;
use crate::map::{
    apply_failover, plan_failover, wanted_handoffs, FencedPosition, Handoff, HandoffsReady,
    LeadershipMap, MapInput, Positions,
};
use crate::types::{Epoch, MapVersion, NodeId, NodeState, Term, Time};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Where a node is in its election, finer than [`Role`]: what its election deadline means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Following; at the deadline, stand (if eligible).
    Follower,
    /// Vote: asked for pre-votes; at the deadline, the round failed.
    PreCandidate,
    /// Claimed the current term; at the deadline, the claim failed.
    Candidate,
    /// Controller of the current term.
    Controller,
    /// Bully: sent ELECTION to higher ids; at the deadline (no OK), claim.
    BullyAwaitingAlive,
    /// Bully: a higher id answered; at the deadline (no claim heard), start again.
    BullyAwaitingCoordinator,
    /// Ring: started a round; at the deadline (no controller yet), start again.
    RingElecting,
}

/// A map proposal of this controller that a majority has not stored yet.
#[derive(Debug)]
struct Proposal {
    map: LeadershipMap,
    stored_by: BTreeSet<NodeId>,
}

/// A ring message this node forwards, waiting for the successor's ack.
#[derive(Debug)]
struct RingHop {
    message: ControlMessage,
    /// The successor the message was last sent to.
    current: NodeId,
    /// Successors to skip to, in ring order, if `current` does not ack in time.
    remaining: VecDeque<NodeId>,
    deadline: Time,
}

/// The controller election and map proposal state machine of one node (sans-IO).
///
/// Feed it [`handle_message`](Self::handle_message), [`handle_members`](Self::handle_members)
/// and [`tick`](Self::tick) (at or after [`next_deadline`](Self::next_deadline)); drain
/// [`poll_output`](Self::poll_output) after each call and act on outputs in order.
#[derive(Debug)]
pub struct Controller {
    config: Config,
    id: NodeId,
    rng: StdRng,
    /// The state as the driver is asked to persist it (`persist_pending` says whether the
    /// latest change is still to be output).
    persisted: Persisted,
    persist_pending: bool,
    /// The term in the last `Persist` output.
    persisted_term: Term,
    phase: Phase,
    /// The controller of the current term, when known.
    controller: Option<NodeId>,
    /// When this node last heard the controller of the current term: the lease that makes it
    /// refuse other candidates, and the reset point of its election timer.
    controller_contact: Option<Time>,
    /// The committed epoch the followed controller last announced in a heartbeat, with that
    /// controller: tells the driver whether this node's published map is the current one.
    controller_committed: Option<(NodeId, Epoch)>,
    election_deadline: Option<Time>,
    elections_failed: u32,
    members: BTreeMap<NodeId, NodeState>,
    highest_epoch_seen: Epoch,
    // Candidate state.
    pre_votes: BTreeSet<NodeId>,
    /// The term the current pre-vote round asks about.
    pre_vote_term: Term,
    acceptances: BTreeSet<NodeId>,
    adopted_map: Option<LeadershipMap>,
    // Controller state.
    heartbeat_deadline: Option<Time>,
    voters_heard: BTreeMap<NodeId, Time>,
    controller_since: Time,
    proposal: Option<Proposal>,
    /// The map's inputs changed while a proposal was in flight: reconsider after its commit.
    members_changed: bool,
    /// The fenced positions each node reported last (this node's own included), for the
    /// failover of partitions whose leader is gone ([`plan_failover`]).
    positions: Positions,
    /// When this controller last heard each member's heartbeat reply.
    members_heard: BTreeMap<NodeId, Time>,
    /// The handoffs the controller wishes (its own when controller, else the last heartbeat's).
    handoffs_wanted: Vec<Handoff>,
    /// The handoffs each leader reported ready (this node's own included).
    ready: HandoffsReady,
    /// The controller this node followed last: a new controller was elected because the
    /// voters stopped hearing it, so it counts as silent until it answers.
    last_followed: Option<NodeId>,
    /// Members silent for [`SILENT_TIMEOUTS`] election timeouts: treated as `Dead` when maps
    /// are computed, so their partitions fail over without waiting for the gossip's verdict.
    silent: BTreeSet<NodeId>,
    // Ring state.
    ring_round: u64,
    ring_hops: Vec<RingHop>,
    outputs: VecDeque<Output>,
}

/// Replaces `from`'s report in `reports` by `items` (at most `limit` of them; none removes
/// it); returns whether it changed.
fn replace_report<T: PartialEq>(
    reports: &mut BTreeMap<NodeId, Vec<T>>,
    from: NodeId,
    mut items: Vec<T>,
    limit: usize,
) -> bool {
    items.truncate(limit);
    if reports.get(&from).map_or(&[][..], Vec::as_slice) == items.as_slice() {
        return false;
    }
    if items.is_empty() {
        reports.remove(&from);
    } else {
        reports.insert(from, items);
    }
    true
}

/// Election timeouts of silence after which a controller treats a member as dead for its maps.
pub const SILENT_TIMEOUTS: u32 = 2;

impl Controller {
    /// A node's election state at start. `persisted` is what the node stored before (None on
    /// the very first start); `seed` seeds the timers' jitter (use a random seed in
    /// production, a derived one in the simulator). The node starts as a follower and waits
    /// one election timeout for a controller before it stands, so a restart does not force an
    /// election while a controller is alive.
    pub fn new(
        config: Config,
        id: NodeId,
        persisted: Option<Persisted>,
        now: Time,
        seed: u64,
    ) -> Result<Controller, ConfigError> {
        config.validate()?;
        let persisted = persisted.unwrap_or_default();
        let highest_epoch_seen = persisted
            .stored_version()
            .epoch
            .max(persisted.published_epoch());
        let mut controller = Controller {
            config,
            id,
            rng: StdRng::seed_from_u64(seed),
            persisted_term: persisted.term,
            persisted,
            persist_pending: false,
            phase: Phase::Follower,
            controller: None,
            controller_contact: None,
            controller_committed: None,
            election_deadline: None,
            elections_failed: 0,
            members: BTreeMap::new(),
            highest_epoch_seen,
            pre_votes: BTreeSet::new(),
            pre_vote_term: Term(0),
            acceptances: BTreeSet::new(),
            adopted_map: None,
            heartbeat_deadline: None,
            voters_heard: BTreeMap::new(),
            controller_since: now,
            proposal: None,
            members_changed: false,
            positions: Positions::new(),
            members_heard: BTreeMap::new(),
            handoffs_wanted: Vec::new(),
            ready: HandoffsReady::new(),
            last_followed: None,
            silent: BTreeSet::new(),
            ring_round: 0,
            ring_hops: Vec::new(),
            outputs: VecDeque::new(),
        };
        controller.election_deadline = controller.first_deadline(now);
        tracing::info!(
            node = %id,
            at_ms = now.as_millis() as u64,
            term = %controller.persisted.term,
            strategy = %controller.config.strategy,
            "election started as follower"
        );
        Ok(controller)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state as last persisted or about to be (for tests and the driver's status page).
    pub fn persisted(&self) -> &Persisted {
        &self.persisted
    }

    /// The node's election state.
    pub fn status(&self) -> Status {
        Status {
            term: self.persisted.term,
            role: match self.phase {
                Phase::Follower => Role::Follower,
                Phase::Controller => Role::Controller,
                Phase::PreCandidate
                | Phase::Candidate
                | Phase::BullyAwaitingAlive
                | Phase::BullyAwaitingCoordinator
                | Phase::RingElecting => Role::Candidate,
            },
            controller: self.controller,
            controller_committed_epoch: match self.phase {
                Phase::Controller => Some(self.persisted.published_epoch()),
                _ => self
                    .controller_committed
                    .filter(|(controller, _)| Some(*controller) == self.controller)
                    .map(|(_, epoch)| epoch),
            },
            published_epoch: self.persisted.published_epoch(),
            persisted_term: self.persisted_term,
            stored_version: self.persisted.stored_version(),
        }
    }

    /// The next output to act on, in order. An [`Output::Persist`] must be durable before
    /// any later output is acted on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.flush_persist();
        let output = self.outputs.pop_front()?;
        if let Output::Persist(persisted) = &output {
            self.persisted_term = self.persisted_term.max(persisted.term);
        }
        Some(output)
    }

    /// When [`tick`](Self::tick) must next be called, if ever (none only for a node that may
    /// never stand and follows no controller).
    pub fn next_deadline(&self) -> Option<Time> {
        let hops = self.ring_hops.iter().map(|hop| hop.deadline).min();
        [self.election_deadline, self.heartbeat_deadline, hops]
            .into_iter()
            .flatten()
            .min()
    }

    /// Advances timers to `now`: heartbeats and check-quorum for a controller, elections for
    /// the others, ring hops that were not acknowledged.
    pub fn tick(&mut self, now: Time) {
        self.tick_ring_hops(now);
        if self
            .heartbeat_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            self.controller_heartbeat(now);
        }
        if self
            .election_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            self.election_timeout(now);
        }
        self.finish_input();
    }

    /// Takes the membership view (every known member and its state): the input to map
    /// computation and the list of members a controller sends heartbeats and maps to. A
    /// controller proposes a new map when the view changes the computed assignment.
    pub fn handle_members(&mut self, now: Time, members: &BTreeMap<NodeId, NodeState>) {
        self.members = members
            .iter()
            .take(MEMBERS_MAX)
            .map(|(id, state)| (*id, *state))
            .collect();
        self.reconsider_map(now);
        self.finish_input();
    }

    /// Takes this node's own fenced positions (its replicas of partitions that have no leader in
    /// the map it holds, each reported once it stopped following: design.md section 6a). A
    /// follower sends them to the controller with every heartbeat reply; a controller uses
    /// them itself.
    pub fn handle_local_positions(&mut self, now: Time, positions: Vec<FencedPosition>) {
        let id = self.id;
        self.note_positions(now, id, positions);
        self.finish_input();
    }

    /// The handoffs the controller wishes, for this node's partitions to carry out: the
    /// controller's own, or the last its heartbeats carried.
    pub fn handoffs_wanted(&self) -> &[Handoff] {
        &self.handoffs_wanted
    }

    /// Takes the handoffs this node, as a partition's leader, made ready (it stopped taking
    /// writes, and the target acknowledged its whole log). A follower reports them to the
    /// controller with every heartbeat reply; a controller uses them itself.
    pub fn handle_local_ready(&mut self, now: Time, ready: Vec<Handoff>) {
        let id = self.id;
        self.note_ready(now, id, ready);
        self.finish_input();
    }

    /// Stores `from`'s ready handoffs; a controller proposes the map they change.
    fn note_ready(&mut self, now: Time, from: NodeId, ready: Vec<Handoff>) {
        let limit = usize::try_from(self.config.partitions).unwrap_or(usize::MAX);
        if replace_report(&mut self.ready, from, ready, limit) {
            self.reconsider_map(now);
        }
    }

    /// A controller proposes the map its inputs now give, once any proposal in flight is
    /// committed (members, reports and silences all go through here).
    fn reconsider_map(&mut self, now: Time) {
        if self.phase != Phase::Controller {
            return;
        }
        if self.proposal.is_some() {
            self.members_changed = true;
        } else {
            self.propose_if_changed(now);
        }
    }

    /// The handoffs wished in the published map.
    fn compute_handoffs(&self) -> Vec<Handoff> {
        let Some(map) = self.persisted.published_map.as_ref() else {
            return Vec::new();
        };
        let mut members = self.members.clone();
        for node in &self.silent {
            members.insert(*node, NodeState::Dead);
        }
        wanted_handoffs(map, &members, self.config.replication_factor)
    }

    /// Stores `from`'s latest positions; a controller proposes the map they may change.
    fn note_positions(&mut self, now: Time, from: NodeId, positions: Vec<FencedPosition>) {
        let limit = usize::try_from(self.config.partitions).unwrap_or(usize::MAX);
        if replace_report(&mut self.positions, from, positions, limit) {
            self.reconsider_map(now);
        }
    }

    /// Handles `message` from node `from`. Never panics on unexpected input: messages from
    /// unknown nodes, non-voters where a voter is expected, or stale terms are ignored or
    /// refused.
    pub fn handle_message(&mut self, now: Time, from: NodeId, message: ControlMessage) {
        // Ignore ourselves and strangers (neither voters nor in the membership view): a stray
        // packet must not move this node's term.
        if from == self.id || !self.is_known(from) {
            self.finish_input();
            return;
        }
        match message {
            ControlMessage::PreVote {
                term,
                proposed_term,
                stored,
            } => self.on_pre_vote(now, from, term, proposed_term, stored),
            ControlMessage::PreVoteReply {
                term,
                proposed_term,
                granted,
            } => self.on_pre_vote_reply(now, from, term, proposed_term, granted),
            ControlMessage::Claim { term, stored } => self.on_claim(now, from, term, stored),
            ControlMessage::ClaimReply {
                term,
                granted,
                stored,
                map,
            } => self.on_claim_reply(now, from, term, granted, stored, map),
            ControlMessage::Propose { term, map } => self.on_propose(now, from, term, map),
            ControlMessage::ProposeAck { term, version } => {
                self.on_propose_ack(now, from, term, version)
            }
            ControlMessage::Commit { term, map } => self.on_commit(now, from, term, map),
            ControlMessage::Heartbeat {
                term,
                committed,
                handoffs,
            } => {
                if term >= self.persisted.term && self.config.is_voter(from) {
                    self.handoffs_wanted = handoffs;
                }
                self.on_heartbeat(now, from, term, committed)
            }
            ControlMessage::HeartbeatReply {
                term,
                committed,
                stored,
                positions,
                ready,
            } => {
                self.on_heartbeat_reply(now, from, term, committed, stored);
                if term == self.persisted.term && self.phase == Phase::Controller {
                    self.note_ready(now, from, ready);
                    self.note_positions(now, from, positions);
                }
            }
            ControlMessage::Refuse { term } => {
                if self.is_known(from) {
                    self.adopt_term(now, term);
                }
            }
            ControlMessage::BullyElection { term } => self.on_bully_election(now, from, term),
            ControlMessage::BullyAlive { term } => self.on_bully_alive(now, from, term),
            message @ ControlMessage::RingElection { .. } => {
                self.on_ring_election(now, from, message)
            }
            message @ ControlMessage::RingCoordinator { .. } => {
                self.on_ring_coordinator(now, from, message)
            }
            ControlMessage::RingAck {
                initiator,
                round,
                coordinator,
                ..
            } => self.on_ring_ack(from, initiator, round, coordinator),
        }
        self.finish_input();
    }

    /// Starts an election now, as if the election timer had fired (an operator's "elect
    /// again", and how tests make candidates stand at the same instant). Does nothing on a
    /// controller or a node that may not stand; the usual rules (pre-vote, leases, one
    /// acceptance per term) still apply, so it cannot break safety.
    pub fn stand(&mut self, now: Time) {
        if self.phase != Phase::Controller && self.may_stand() {
            self.become_follower(now);
            self.election_deadline = None;
            self.start_election(now);
            if self.election_deadline.is_none() && self.phase != Phase::Controller {
                self.reset_election_timer(now);
            }
        }
        self.finish_input();
    }

    // ---- Outputs and persistence ----

    fn finish_input(&mut self) {
        self.flush_persist();
        assert!(
            self.outputs.len() <= OUTPUTS_QUEUED_MAX,
            "election output queue over its limit: {} outputs",
            self.outputs.len()
        );
    }

    /// Marks the persisted state changed; it is output before the next message or publish.
    fn mark_persist(&mut self) {
        self.persist_pending = true;
    }

    fn flush_persist(&mut self) {
        if self.persist_pending {
            self.persist_pending = false;
            self.outputs
                .push_back(Output::Persist(self.persisted.clone()));
        }
    }

    fn send(&mut self, to: NodeId, message: ControlMessage) {
        // The term and vote of every message must be durable before it leaves (design.md
        // section 3): the pending persist goes out first.
        self.flush_persist();
        debug_assert!(message.term() <= self.persisted.term);
        self.outputs.push_back(Output::Send { to, message });
    }

    fn send_to_voters(&mut self, message: &ControlMessage) {
        for index in 0..self.config.voters.len() {
            let voter = self.config.voters[index];
            if voter != self.id {
                self.send(voter, message.clone());
            }
        }
    }

    /// Voters and every member not known dead, but this node: who hears heartbeats and maps.
    fn audience(&self) -> Vec<NodeId> {
        let mut audience: BTreeSet<NodeId> = self.config.voters.iter().copied().collect();
        audience.extend(
            self.members
                .iter()
                .filter(|(_, state)| **state != NodeState::Dead)
                .map(|(id, _)| *id),
        );
        audience.remove(&self.id);
        audience.into_iter().collect()
    }

    fn refuse(&mut self, to: NodeId) {
        let term = self.persisted.term;
        self.send(to, ControlMessage::Refuse { term });
    }

    // ---- Terms and roles ----

    /// Whether `node` is a voter or in the membership view: only they may make this node
    /// step down to a higher term (a stray packet from elsewhere must not).
    fn is_known(&self, node: NodeId) -> bool {
        self.config.is_voter(node) || self.members.contains_key(&node)
    }

    fn is_voter(&self) -> bool {
        self.config.is_voter(self.id)
    }

    /// Whether this node may stand: a voter, and past the bootstrap unless it is one of the
    /// initial voters (so a node added later never bootstraps a cluster of its own).
    fn may_stand(&self) -> bool {
        self.is_voter()
            && (self.config.bootstrap_voter
                || self.persisted.term > Term(0)
                || self.persisted.stored_map.is_some()
                || self.persisted.published_map.is_some())
    }

    fn is_bootstrap(&self) -> bool {
        self.persisted.term == Term(0)
            && self.persisted.stored_map.is_none()
            && self.persisted.published_map.is_none()
    }

    /// The first election deadline. At bootstrap the initial voters stand one after another,
    /// ranked by id (the one the strategy would elect anyway first), so that one bootstrap
    /// election happens, not several; later, a random timeout as usual.
    fn first_deadline(&mut self, now: Time) -> Option<Time> {
        if !self.may_stand() {
            return None;
        }
        if self.is_bootstrap() {
            let position = self
                .config
                .voters
                .iter()
                .position(|voter| *voter == self.id)
                .unwrap_or(0);
            let rank = match self.config.strategy {
                Strategy::Bully => self.config.voters.len() - 1 - position,
                Strategy::Vote | Strategy::Ring => position,
            };
            let stagger = self.config.election_timeout / 2;
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            return Some(now + self.config.election_timeout + stagger.saturating_mul(rank));
        }
        Some(now + self.election_timeout_draw())
    }

    /// `T + uniform[0, min(T * 2^failures, cap))`: randomized so that candidates rarely
    /// collide, longer after failed elections so that repeated collisions thin out.
    fn election_timeout_draw(&mut self) -> Duration {
        let base = self.config.election_timeout;
        let failures = self.elections_failed.min(ELECTION_FAILURES_COUNTED_MAX);
        let span = base
            .saturating_mul(1 << failures)
            .min(self.config.election_backoff_cap);
        let span_us = u64::try_from(span.as_micros()).unwrap_or(u64::MAX).max(1);
        base + Duration::from_micros(self.rng.gen_range(0..span_us))
    }

    fn reset_election_timer(&mut self, now: Time) {
        self.election_deadline = if self.may_stand() {
            Some(now + self.election_timeout_draw())
        } else {
            None
        };
    }

    /// Whether this node heard a live controller of its term within the election timeout:
    /// then it refuses other candidates (pre-vote and claims), so that a node that was cut
    /// off cannot depose a controller that a majority still hears.
    fn heard_live_controller(&self, now: Time) -> bool {
        self.phase == Phase::Controller
            || (self.controller.is_some()
                && self
                    .controller_contact
                    .is_some_and(|contact| now < contact + self.config.election_timeout))
    }

    /// Moves to `term` if it is higher: persist it, forget the vote, step down.
    fn adopt_term(&mut self, now: Time, term: Term) {
        if term <= self.persisted.term {
            return;
        }
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            from_term = %self.persisted.term,
            term = %term,
            "term changed"
        );
        let was_controller = self.phase == Phase::Controller;
        self.persisted.term = term;
        self.persisted.voted_for = None;
        self.mark_persist();
        self.controller = None;
        self.controller_contact = None;
        if self.phase != Phase::Follower {
            self.become_follower(now);
        }
        if was_controller || self.election_deadline.is_none() {
            self.reset_election_timer(now);
        }
    }

    fn become_follower(&mut self, now: Time) {
        if self.phase != Phase::Follower {
            tracing::info!(
                node = %self.id,
                at_ms = now.as_millis() as u64,
                term = %self.persisted.term,
                from = ?self.phase,
                "became follower"
            );
        }
        self.phase = Phase::Follower;
        self.heartbeat_deadline = None;
        self.proposal = None;
        self.members_changed = false;
        self.pre_votes.clear();
        self.acceptances.clear();
        self.adopted_map = None;
        self.voters_heard.clear();
    }

    /// A message from the controller of `term` (heartbeat, proposal, commit): follow it.
    fn follow(&mut self, now: Time, from: NodeId, term: Term) {
        self.adopt_term(now, term);
        if self.phase == Phase::Controller {
            // Two controllers in one term cannot happen (one acceptance per voter per term);
            // ignore rather than panic on a corrupted peer.
            tracing::error!(node = %self.id, other = %from, term = %term, "second controller in term");
            return;
        }
        if self.phase != Phase::Follower {
            self.become_follower(now);
        }
        self.last_followed = Some(from);
        if self.controller != Some(from) {
            tracing::info!(
                node = %self.id,
                at_ms = now.as_millis() as u64,
                term = %term,
                controller = %from,
                "follows controller"
            );
        }
        self.controller = Some(from);
        self.controller_contact = Some(now);
        self.elections_failed = 0;
        self.reset_election_timer(now);
    }

    fn election_timeout(&mut self, now: Time) {
        self.election_deadline = None;
        match self.phase {
            Phase::Controller => {}
            Phase::Follower => self.start_election(now),
            Phase::BullyAwaitingAlive => self.start_pre_vote(now, self.persisted.term),
            Phase::PreCandidate
            | Phase::Candidate
            | Phase::BullyAwaitingCoordinator
            | Phase::RingElecting => {
                tracing::info!(
                    node = %self.id,
                    at_ms = now.as_millis() as u64,
                    term = %self.persisted.term,
                    phase = ?self.phase,
                    "election round failed"
                );
                // A failed pre-vote round disturbed no one (no term was raised): it does not
                // back off. Failed claims and Bully/Ring rounds do, so that colliding
                // candidates thin out.
                if self.phase != Phase::PreCandidate {
                    self.elections_failed = self.elections_failed.saturating_add(1);
                }
                self.become_follower(now);
                self.start_election(now);
            }
        }
        if self.election_deadline.is_none() && self.phase != Phase::Controller {
            self.reset_election_timer(now);
        }
    }

    fn start_election(&mut self, now: Time) {
        if !self.may_stand() {
            self.reset_election_timer(now);
            return;
        }
        self.controller = None;
        match self.config.strategy {
            Strategy::Vote => self.start_pre_vote(now, self.persisted.term),
            Strategy::Bully => self.start_bully(now),
            Strategy::Ring => self.start_ring(now),
        }
    }

    // ---- Pre-vote (every strategy), then claim ----

    /// Asks the voters whether they would accept this node for the term above `floor` (and
    /// above its own term), without raising any term. Vote runs it when its timer fires;
    /// Bully and Ring run it once they picked this node, before they claim: so a node cut off
    /// from the majority never raises its term, and rejoins without disrupting anyone.
    fn start_pre_vote(&mut self, now: Time, floor: Term) {
        self.phase = Phase::PreCandidate;
        let term = Term(self.persisted.term.max(floor).0.saturating_add(1));
        self.pre_vote_term = term;
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            proposed_term = %term,
            "became candidate (pre-vote)"
        );
        self.pre_votes.clear();
        self.pre_votes.insert(self.id);
        self.reset_election_timer(now);
        if self.pre_votes.len() >= self.config.quorum() {
            self.claim(now, floor);
            return;
        }
        let message = ControlMessage::PreVote {
            term: self.persisted.term,
            proposed_term: term,
            stored: self.persisted.stored_version(),
        };
        self.send_to_voters(&message);
    }

    fn on_pre_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        proposed_term: Term,
        stored: MapVersion,
    ) {
        if !self.is_voter() || !self.config.is_voter(from) {
            return;
        }
        // A pre-vote never changes this node's term: only the answer says whether it would
        // vote. Raft's rule: a higher proposed term, a log (here: stored map) at least as
        // recent (Vote only, as for the claim itself), and no live controller heard within
        // the election timeout.
        let recent_enough =
            self.config.strategy != Strategy::Vote || stored >= self.persisted.stored_version();
        let granted = proposed_term > self.persisted.term
            && recent_enough
            && !self.heard_live_controller(now);
        let _ = term;
        let reply = ControlMessage::PreVoteReply {
            term: self.persisted.term,
            proposed_term,
            granted,
        };
        self.send(from, reply);
    }

    fn on_pre_vote_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        proposed_term: Term,
        granted: bool,
    ) {
        if !granted {
            // A refusal from a higher term tells this node it is behind.
            if term > self.persisted.term {
                self.adopt_term(now, term);
            }
            return;
        }
        if self.phase != Phase::PreCandidate
            || proposed_term != self.pre_vote_term
            || proposed_term <= self.persisted.term
            || !self.config.is_voter(from)
        {
            return;
        }
        self.pre_votes.insert(from);
        if self.pre_votes.len() >= self.config.quorum() {
            // Claim exactly the term the voters said they would accept.
            let floor = Term(self.pre_vote_term.0.saturating_sub(1));
            self.claim(now, floor);
        }
    }

    // ---- The common acceptance: claim a term, gather a majority ----

    /// Stands for a term above `floor` (and above this node's term): persists the term and
    /// its own acceptance, then asks every voter to accept.
    fn claim(&mut self, now: Time, floor: Term) {
        if !self.may_stand() {
            self.become_follower(now);
            self.reset_election_timer(now);
            return;
        }
        let term = Term(self.persisted.term.max(floor).0.saturating_add(1));
        self.adopt_term(now, term);
        self.persisted.voted_for = Some(self.id);
        self.mark_persist();
        self.phase = Phase::Candidate;
        self.controller = None;
        self.acceptances.clear();
        self.acceptances.insert(self.id);
        self.adopted_map = self.persisted.stored_map.clone();
        self.reset_election_timer(now);
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %term,
            strategy = %self.config.strategy,
            "became candidate (claims term)"
        );
        if self.acceptances.len() >= self.config.quorum() {
            self.become_controller(now);
            return;
        }
        let message = ControlMessage::Claim {
            term,
            stored: self.persisted.stored_version(),
        };
        self.send_to_voters(&message);
    }

    fn on_claim(&mut self, now: Time, from: NodeId, term: Term, stored: MapVersion) {
        if !self.is_voter() || !self.config.is_voter(from) {
            return;
        }
        if term < self.persisted.term {
            self.refuse(from);
            return;
        }
        let own_stored = self.persisted.stored_version();
        // Leader stickiness: a node that hears a live controller refuses other claimants and
        // keeps its term, so a node that was cut off cannot depose a working controller.
        let sticky = self.heard_live_controller(now) && self.controller != Some(from);
        let granted = if sticky {
            false
        } else {
            self.adopt_term(now, term);
            let free = self.persisted.voted_for.is_none_or(|voted| voted == from);
            // Vote grants only to a candidate whose stored map is at least as recent (design.md
            // section 6a). Bully and Ring pick the winner by id, so they cannot ask that:
            // their claimant adopts the most recent map among its acceptors instead.
            let recent_enough = self.config.strategy != Strategy::Vote || stored >= own_stored;
            free && recent_enough && term == self.persisted.term
        };
        if granted {
            if self.persisted.voted_for != Some(from) {
                self.persisted.voted_for = Some(from);
                self.mark_persist();
            }
            if self.phase != Phase::Follower {
                self.become_follower(now);
            }
            self.reset_election_timer(now);
        }
        let map = if granted && own_stored > stored {
            self.persisted.stored_map.clone()
        } else {
            None
        };
        let reply = ControlMessage::ClaimReply {
            term: self.persisted.term,
            granted,
            stored: own_stored,
            map,
        };
        self.send(from, reply);
    }

    fn on_claim_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        granted: bool,
        stored: MapVersion,
        map: Option<LeadershipMap>,
    ) {
        if term > self.persisted.term {
            self.adopt_term(now, term);
            return;
        }
        if !granted
            || term != self.persisted.term
            || self.phase != Phase::Candidate
            || !self.config.is_voter(from)
        {
            return;
        }
        self.highest_epoch_seen = self.highest_epoch_seen.max(stored.epoch);
        if let Some(map) = map {
            let newer = self
                .adopted_map
                .as_ref()
                .is_none_or(|adopted| map.version() > adopted.version());
            // Trust the map only if it is what the voter said it stored.
            if newer && map.version() == stored {
                self.highest_epoch_seen = self.highest_epoch_seen.max(map.epoch);
                self.adopted_map = Some(map);
            }
        }
        self.acceptances.insert(from);
        if self.acceptances.len() >= self.config.quorum() {
            self.become_controller(now);
        }
    }

    // ---- Controller: propose, commit, publish, heartbeats, check-quorum ----

    fn become_controller(&mut self, now: Time) {
        self.phase = Phase::Controller;
        self.controller = Some(self.id);
        self.controller_contact = Some(now);
        self.controller_since = now;
        self.members_heard.clear();
        self.silent.clear();
        self.election_deadline = None;
        self.elections_failed = 0;
        self.pre_votes.clear();
        let acceptances = std::mem::take(&mut self.acceptances);
        self.voters_heard = acceptances.iter().map(|voter| (*voter, now)).collect();
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            strategy = %self.config.strategy,
            adopted = %self.adopted_map.as_ref().map(LeadershipMap::version).unwrap_or_default(),
            "became controller"
        );
        // A new controller always proposes a new map, above every epoch it has seen: epochs
        // strictly increase across elections, and the adopted map (the most recent any
        // acceptor stored) is superseded rather than left half-committed.
        self.propose(now);
        self.controller_heartbeat(now);
    }

    fn epoch_seen(&self) -> Epoch {
        let mut epoch = self
            .highest_epoch_seen
            .max(self.persisted.stored_version().epoch)
            .max(self.persisted.published_epoch());
        if let Some(map) = &self.adopted_map {
            epoch = epoch.max(map.epoch);
        }
        if let Some(proposal) = &self.proposal {
            epoch = epoch.max(proposal.map.epoch);
        }
        epoch
    }

    /// The map the controller would propose next: computed from the membership view and the
    /// latest map it knows (adopted or published), so leaders stay where still valid.
    fn compute_next_map(&self) -> LeadershipMap {
        let mut members = self.members.clone();
        if members.is_empty() {
            members.extend(
                self.config
                    .voters
                    .iter()
                    .map(|voter| (*voter, NodeState::Joined)),
            );
        }
        members.entry(self.id).or_insert(NodeState::Joined);
        for node in &self.silent {
            members.insert(*node, NodeState::Dead);
        }
        let previous = [
            self.adopted_map.as_ref(),
            self.persisted.published_map.as_ref(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|map| map.version());
        // A partition's leader stays while it may lead; one that may not is fenced, then
        // replaced by the most recent replica of a majority (design.md section 6a).
        let failover = plan_failover(previous, &members, &self.positions, &self.ready);
        let input = MapInput {
            members: &members,
            partitions: self.config.partitions,
            replication_factor: self.config.replication_factor,
            previous,
            lagging: &failover.lagging,
        };
        let epoch = Epoch(self.epoch_seen().0.saturating_add(1));
        let mut map = (self.config.map_function)(&input, self.persisted.term, epoch);
        apply_failover(&mut map, previous, &members, &failover);
        assert_eq!(
            map.epoch, epoch,
            "the map function must stamp the epoch asked"
        );
        assert_eq!(
            map.term, self.persisted.term,
            "the map function must stamp the term"
        );
        map
    }

    fn propose(&mut self, now: Time) {
        let map = self.compute_next_map();
        self.members_changed = false;
        self.highest_epoch_seen = self.highest_epoch_seen.max(map.epoch);
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            epoch = %map.epoch,
            "proposes map"
        );
        // The controller is one of the voters that must store it.
        self.persisted.stored_map = Some(map.clone());
        self.mark_persist();
        let mut stored_by = BTreeSet::new();
        stored_by.insert(self.id);
        self.proposal = Some(Proposal {
            map: map.clone(),
            stored_by,
        });
        let message = ControlMessage::Propose {
            term: self.persisted.term,
            map,
        };
        self.send_to_voters(&message);
        self.commit_if_stored(now);
    }

    fn propose_if_changed(&mut self, now: Time) {
        let next = self.compute_next_map();
        let current = self
            .persisted
            .published_map
            .as_ref()
            .map(|map| &map.partitions);
        if current != Some(&next.partitions) {
            self.propose(now);
        }
    }

    fn on_propose(&mut self, now: Time, from: NodeId, term: Term, map: LeadershipMap) {
        if !self.is_voter() || !self.config.is_voter(from) {
            return;
        }
        if term < self.persisted.term {
            self.refuse(from);
            return;
        }
        if map.term != term
            || usize::try_from(self.config.partitions).ok() != Some(map.partitions.len())
        {
            tracing::warn!(node = %self.id, from = %from, "malformed proposal ignored");
            return;
        }
        self.follow(now, from, term);
        if self.phase == Phase::Controller {
            return;
        }
        let version = map.version();
        let stored = self.persisted.stored_version();
        if version < stored {
            // A reordered, older proposal of this controller: the newer one is stored.
            return;
        }
        self.highest_epoch_seen = self.highest_epoch_seen.max(map.epoch);
        if version > stored {
            self.persisted.stored_map = Some(map);
            self.mark_persist();
        }
        // The ack goes out after the Persist output: durable before acknowledged.
        let reply = ControlMessage::ProposeAck {
            term: self.persisted.term,
            version,
        };
        self.send(from, reply);
    }

    fn on_propose_ack(&mut self, now: Time, from: NodeId, term: Term, version: MapVersion) {
        if term > self.persisted.term {
            self.adopt_term(now, term);
            return;
        }
        if term != self.persisted.term
            || self.phase != Phase::Controller
            || !self.config.is_voter(from)
        {
            return;
        }
        self.voters_heard.insert(from, now);
        if let Some(proposal) = &mut self.proposal {
            if proposal.map.version() == version {
                proposal.stored_by.insert(from);
            }
        }
        self.commit_if_stored(now);
    }

    fn commit_if_stored(&mut self, now: Time) {
        let stored = self
            .proposal
            .as_ref()
            .is_some_and(|proposal| proposal.stored_by.len() >= self.config.quorum());
        if !stored {
            return;
        }
        let Some(proposal) = self.proposal.take() else {
            return;
        };
        let map = proposal.map;
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            epoch = %map.epoch,
            stored_by = proposal.stored_by.len(),
            "map committed"
        );
        self.publish(now, map.clone());
        let message = ControlMessage::Commit {
            term: self.persisted.term,
            map,
        };
        for to in self.audience() {
            self.send(to, message.clone());
        }
        if self.members_changed {
            self.propose_if_changed(now);
        }
    }

    /// Publishes a committed map if it is newer than any this node published: persisted first,
    /// so a restart never publishes an epoch at or below one published before.
    fn publish(&mut self, now: Time, map: LeadershipMap) {
        if map.epoch <= self.persisted.published_epoch() {
            return;
        }
        self.highest_epoch_seen = self.highest_epoch_seen.max(map.epoch);
        if self.is_voter() && map.version() > self.persisted.stored_version() {
            self.persisted.stored_map = Some(map.clone());
        }
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            epoch = %map.epoch,
            "map published"
        );
        self.persisted.published_map = Some(map.clone());
        self.mark_persist();
        self.flush_persist();
        self.outputs.push_back(Output::Publish(map));
    }

    fn on_commit(&mut self, now: Time, from: NodeId, term: Term, map: LeadershipMap) {
        if !self.config.is_voter(from) {
            return;
        }
        if term < self.persisted.term {
            self.refuse(from);
            return;
        }
        if usize::try_from(self.config.partitions).ok() != Some(map.partitions.len()) {
            tracing::warn!(node = %self.id, from = %from, "malformed commit ignored");
            return;
        }
        self.follow(now, from, term);
        if self.phase == Phase::Controller {
            // Another controller of this very term cannot exist; never publish its map.
            return;
        }
        self.publish(now, map);
    }

    fn controller_heartbeat(&mut self, now: Time) {
        if self.phase != Phase::Controller {
            self.heartbeat_deadline = None;
            return;
        }
        // Check-quorum: a controller that has not heard a majority of voters within the
        // election timeout may be cut off, and a new controller may already be elected on
        // the other side: stop proposing.
        let window = self.config.election_timeout;
        if now >= self.controller_since + window {
            let heard = 1 + self
                .voters_heard
                .iter()
                .filter(|(voter, heard)| **voter != self.id && now < **heard + window)
                .count();
            if heard < self.config.quorum() {
                tracing::info!(
                    node = %self.id,
                    at_ms = now.as_millis() as u64,
                    term = %self.persisted.term,
                    heard,
                    "controller steps down: no quorum heard (check-quorum)"
                );
                self.become_follower(now);
                self.controller = None;
                self.controller_contact = None;
                self.reset_election_timer(now);
                return;
            }
        }
        self.controller_contact = Some(now);
        self.note_silent_members(now);
        if self.phase != Phase::Controller {
            return;
        }
        self.handoffs_wanted = self.compute_handoffs();
        let message = ControlMessage::Heartbeat {
            term: self.persisted.term,
            committed: self
                .persisted
                .published_map
                .as_ref()
                .map(LeadershipMap::version)
                .unwrap_or_default(),
            handoffs: self.handoffs_wanted.clone(),
        };
        for to in self.audience() {
            self.send(to, message.clone());
        }
        self.heartbeat_deadline = Some(now + self.config.heartbeat_interval);
    }

    /// Members that have not answered this controller's heartbeats for [`SILENT_TIMEOUTS`]
    /// election timeouts (all are given that long from its election), and the controller it
    /// replaced until that one answers (the voters elected this one because they stopped
    /// hearing it). A silent leader's partitions are fenced and fail over at once: the gossip
    /// takes seconds to declare a node dead (suspicion, then a timeout). A false alarm only
    /// moves leadership; the fence keeps it safe.
    fn note_silent_members(&mut self, now: Time) {
        let window = self.config.election_timeout * SILENT_TIMEOUTS;
        let grace = now < self.controller_since + window;
        let silent: BTreeSet<NodeId> = self
            .members
            .keys()
            .filter(|&&node| {
                let heard = self.members_heard.get(&node);
                let replaced = self.last_followed == Some(node) && heard.is_none();
                node != self.id
                    && (replaced || (!grace && heard.is_none_or(|&at| now >= at + window)))
            })
            .copied()
            .collect();
        if silent == self.silent {
            return;
        }
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            silent = ?silent,
            "members silent to the controller changed"
        );
        self.silent = silent;
        self.reconsider_map(now);
    }

    fn on_heartbeat(&mut self, now: Time, from: NodeId, term: Term, committed: MapVersion) {
        if !self.config.is_voter(from) {
            return;
        }
        if term < self.persisted.term {
            self.refuse(from);
            return;
        }
        self.follow(now, from, term);
        self.controller_committed = Some((from, committed.epoch));
        if self.phase == Phase::Controller {
            return;
        }
        let reply = ControlMessage::HeartbeatReply {
            term: self.persisted.term,
            committed: self
                .persisted
                .published_map
                .as_ref()
                .map(LeadershipMap::version)
                .unwrap_or_default(),
            stored: self.persisted.stored_version(),
            positions: self.positions.get(&self.id).cloned().unwrap_or_default(),
            ready: self.ready.get(&self.id).cloned().unwrap_or_default(),
        };
        self.send(from, reply);
    }

    fn on_heartbeat_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        committed: MapVersion,
        stored: MapVersion,
    ) {
        if !self.is_known(from) {
            return;
        }
        if term > self.persisted.term {
            self.adopt_term(now, term);
            return;
        }
        if term != self.persisted.term || self.phase != Phase::Controller {
            return;
        }
        if self.config.is_voter(from) {
            self.voters_heard.insert(from, now);
        }
        self.members_heard.insert(from, now);
        // Resend what the follower lacks: the latest committed map, the open proposal.
        if let Some(map) = self.persisted.published_map.clone() {
            if committed < map.version() {
                let message = ControlMessage::Commit {
                    term: self.persisted.term,
                    map,
                };
                self.send(from, message);
            }
        }
        if self.config.is_voter(from) {
            let mut resend = None;
            if let Some(proposal) = &mut self.proposal {
                if stored == proposal.map.version() {
                    // The reply reports what the voter stored durably: as good as the ack
                    // that was lost.
                    proposal.stored_by.insert(from);
                } else if stored < proposal.map.version() {
                    resend = Some(proposal.map.clone());
                }
            }
            if let Some(map) = resend {
                let message = ControlMessage::Propose {
                    term: self.persisted.term,
                    map,
                };
                self.send(from, message);
            }
            self.commit_if_stored(now);
        }
    }

    // ---- Bully ----

    fn higher_voters(&self) -> Vec<NodeId> {
        self.config
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter > self.id)
            .collect()
    }

    fn start_bully(&mut self, now: Time) {
        let higher = self.higher_voters();
        if higher.is_empty() {
            let term = self.persisted.term;
            self.start_pre_vote(now, term);
            return;
        }
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            "became candidate (bully election)"
        );
        self.phase = Phase::BullyAwaitingAlive;
        self.election_deadline = Some(now + self.answer_timeout());
        let message = ControlMessage::BullyElection {
            term: self.persisted.term,
        };
        for to in higher {
            self.send(to, message.clone());
        }
    }

    /// How long a Bully or Ring node waits for a peer's answer (an OK, a ring ack) before it
    /// takes the peer for dead: a quarter of the election timeout, many network round trips.
    fn answer_timeout(&self) -> Duration {
        self.config.election_timeout / 4
    }

    fn on_bully_election(&mut self, now: Time, from: NodeId, term: Term) {
        if !self.is_voter() || !self.config.is_voter(from) || from > self.id {
            return;
        }
        let _ = term;
        let reply = ControlMessage::BullyAlive {
            term: self.persisted.term,
        };
        self.send(from, reply);
        if self.phase == Phase::Controller {
            // Tell the lower node who leads, so that it stops electing.
            let heartbeat = ControlMessage::Heartbeat {
                term: self.persisted.term,
                committed: self
                    .persisted
                    .published_map
                    .as_ref()
                    .map(LeadershipMap::version)
                    .unwrap_or_default(),
                handoffs: Vec::new(),
            };
            self.send(from, heartbeat);
            return;
        }
        // A higher node takes over the election unless it hears a live controller or is
        // already electing.
        if self.phase == Phase::Follower && !self.heard_live_controller(now) && self.may_stand() {
            self.start_bully(now);
        }
    }

    fn on_bully_alive(&mut self, now: Time, from: NodeId, term: Term) {
        if from <= self.id || !self.config.is_voter(from) {
            return;
        }
        let _ = term;
        if self.phase == Phase::BullyAwaitingAlive {
            self.phase = Phase::BullyAwaitingCoordinator;
            self.election_deadline = Some(now + self.election_timeout_draw());
        }
    }

    // ---- Ring ----

    /// The other voters in ring order after this node, up to and including `stop`.
    fn ring_successors(&self, stop: NodeId) -> VecDeque<NodeId> {
        let voters = &self.config.voters;
        let position = voters
            .iter()
            .position(|voter| *voter == self.id)
            .unwrap_or(0);
        let mut successors = VecDeque::new();
        for offset in 1..voters.len() {
            let voter = voters[(position + offset) % voters.len()];
            successors.push_back(voter);
            if voter == stop {
                break;
            }
        }
        successors
    }

    fn start_ring(&mut self, now: Time) {
        tracing::info!(
            node = %self.id,
            at_ms = now.as_millis() as u64,
            term = %self.persisted.term,
            "became candidate (ring election)"
        );
        self.phase = Phase::RingElecting;
        self.reset_election_timer(now);
        self.ring_round = self.ring_round.wrapping_add(1);
        let message = ControlMessage::RingElection {
            term: self.persisted.term,
            initiator: self.id,
            round: self.ring_round,
            collected: vec![self.id],
            highest_term: self.persisted.term,
        };
        self.ring_forward(now, self.id, message);
    }

    /// Sends a ring message to the first successor (up to `stop`), remembering it so that the
    /// next successor is tried if this one does not ack in time (ring repair).
    fn ring_forward(&mut self, now: Time, stop: NodeId, message: ControlMessage) {
        let mut remaining = self.ring_successors(stop);
        let Some(first) = remaining.pop_front() else {
            // A ring of one: the message is back at once.
            self.ring_returned(now, message);
            return;
        };
        if self.ring_hops.len() >= RING_PENDING_HOPS_MAX {
            self.ring_hops.remove(0);
        }
        self.send(first, message.clone());
        self.ring_hops.push(RingHop {
            message,
            current: first,
            remaining,
            deadline: now + self.answer_timeout(),
        });
    }

    fn tick_ring_hops(&mut self, now: Time) {
        let mut index = 0;
        while index < self.ring_hops.len() {
            if now < self.ring_hops[index].deadline {
                index += 1;
                continue;
            }
            let next = self.ring_hops[index].remaining.pop_front();
            match next {
                Some(next) => {
                    tracing::debug!(node = %self.id, skipped = %self.ring_hops[index].current, "ring successor skipped");
                    let message = self.ring_hops[index].message.clone();
                    self.ring_hops[index].current = next;
                    self.ring_hops[index].deadline = now + self.answer_timeout();
                    self.send(next, message);
                    index += 1;
                }
                None => {
                    let hop = self.ring_hops.remove(index);
                    // Every successor up to the initiator is silent: if this node started the
                    // round, the round is back (with only the ids collected so far).
                    self.ring_returned(now, hop.message);
                }
            }
        }
    }

    fn on_ring_ack(&mut self, from: NodeId, initiator: NodeId, round: u64, coordinator: bool) {
        self.ring_hops.retain(|hop| {
            let (hop_initiator, hop_round, hop_coordinator) = match &hop.message {
                ControlMessage::RingElection {
                    initiator, round, ..
                } => (*initiator, *round, false),
                ControlMessage::RingCoordinator {
                    initiator, round, ..
                } => (*initiator, *round, true),
                _ => return true,
            };
            !(hop.current == from
                && hop_initiator == initiator
                && hop_round == round
                && hop_coordinator == coordinator)
        });
    }

    /// A ring message came back to (or could go no further than) this node.
    fn ring_returned(&mut self, now: Time, message: ControlMessage) {
        match message {
            ControlMessage::RingElection {
                initiator,
                round,
                collected,
                highest_term,
                ..
            } if initiator == self.id => {
                if self.phase != Phase::RingElecting || round != self.ring_round {
                    return;
                }
                let Some(winner) = collected.iter().copied().max() else {
                    return;
                };
                let coordinator = ControlMessage::RingCoordinator {
                    term: self.persisted.term,
                    initiator: self.id,
                    round,
                    winner,
                    highest_term,
                };
                if winner == self.id {
                    self.start_pre_vote(now, highest_term);
                }
                tracing::info!(
                    node = %self.id,
                    at_ms = now.as_millis() as u64,
                    winner = %winner,
                    collected = collected.len(),
                    "ring election round returned"
                );
                self.ring_forward(now, self.id, coordinator);
            }
            _ => {}
        }
    }

    fn on_ring_election(&mut self, now: Time, from: NodeId, message: ControlMessage) {
        let ControlMessage::RingElection {
            initiator,
            round,
            mut collected,
            highest_term,
            ..
        } = message
        else {
            return;
        };
        if !self.is_voter() || !self.config.is_voter(from) || !self.config.is_voter(initiator) {
            return;
        }
        // A list longer than the ring, or naming a non-voter, is not from a peer that follows
        // this protocol: drop it rather than let it name a winner.
        if collected.len() > self.config.voters.len()
            || collected.iter().any(|node| !self.config.is_voter(*node))
        {
            return;
        }
        let ack = ControlMessage::RingAck {
            term: self.persisted.term,
            initiator,
            round,
            coordinator: false,
        };
        self.send(from, ack);
        if initiator == self.id {
            let message = ControlMessage::RingElection {
                term: self.persisted.term,
                initiator,
                round,
                collected,
                highest_term,
            };
            self.ring_returned(now, message);
            return;
        }
        // A node that hears a live controller ends the round (as a pre-vote would); one that
        // is already in the list ends a looping message.
        if self.heard_live_controller(now)
            || collected.contains(&self.id)
            || collected.len() >= self.config.voters.len()
        {
            return;
        }
        collected.push(self.id);
        let message = ControlMessage::RingElection {
            term: self.persisted.term,
            initiator,
            round,
            collected,
            highest_term: highest_term.max(self.persisted.term),
        };
        // Wait for the round's outcome instead of starting a round of its own.
        if self.phase == Phase::Follower && self.may_stand() {
            self.reset_election_timer(now);
        }
        self.ring_forward(now, initiator, message);
    }

    fn on_ring_coordinator(&mut self, now: Time, from: NodeId, message: ControlMessage) {
        let ControlMessage::RingCoordinator {
            initiator,
            round,
            winner,
            highest_term,
            ..
        } = message
        else {
            return;
        };
        if !self.is_voter()
            || !self.config.is_voter(from)
            || !self.config.is_voter(initiator)
            || !self.config.is_voter(winner)
        {
            return;
        }
        let ack = ControlMessage::RingAck {
            term: self.persisted.term,
            initiator,
            round,
            coordinator: true,
        };
        self.send(from, ack);
        if initiator == self.id {
            // Back at the initiator: the announcement went round.
            return;
        }
        let standing = matches!(
            self.phase,
            Phase::Controller | Phase::Candidate | Phase::PreCandidate
        );
        if winner == self.id && !standing {
            self.start_pre_vote(now, highest_term);
        } else if self.phase == Phase::Follower && self.may_stand() {
            self.reset_election_timer(now);
        }
        let message = ControlMessage::RingCoordinator {
            term: self.persisted.term,
            initiator,
            round,
            winner,
            highest_term,
        };
        self.ring_forward(now, initiator, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple_map(input: &MapInput<'_>, term: Term, epoch: Epoch) -> LeadershipMap {
        let members: Vec<NodeId> = input.members.keys().copied().collect();
        let partitions = (0..input.partitions)
            .map(|partition| {
                let leader = members[partition as usize % members.len()];
                crate::map::PartitionAssignment {
                    leader: Some(leader),
                    replicas: vec![leader],
                }
            })
            .collect();
        LeadershipMap {
            epoch,
            term,
            partitions,
        }
    }

    fn config(voters: u64) -> Config {
        let mut config = Config::new((1..=voters).map(NodeId).collect(), Strategy::Vote, 4, 1);
        config.map_function = simple_map;
        config
    }

    /// The election timer: `T` plus a jitter whose span doubles with each failed election up
    /// to the backoff cap, spread over the whole span, and back to `T` once the node follows
    /// a controller (no election storms, and no lingering backoff after one).
    #[test]
    fn failed_elections_back_off_exponentially_with_jitter_up_to_the_cap() {
        let mut config = config(3);
        let timeout = Duration::from_millis(100);
        config.election_timeout = timeout;
        config.election_backoff_cap = Duration::from_millis(1_000);
        config.heartbeat_interval = Duration::from_millis(20);
        let mut node = Controller::new(config, NodeId(1), None, Time::ZERO, 11).unwrap();
        const DRAWS: usize = 2_000;
        for (failures, span_ms) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_000),
            (40, 1_000),
        ] {
            node.elections_failed = failures;
            let span = Duration::from_millis(span_ms);
            let draws: Vec<Duration> = (0..DRAWS).map(|_| node.election_timeout_draw()).collect();
            let (least, most) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert!(*least >= timeout, "{failures} failures: {least:?} below T");
            assert!(
                *most < timeout + span,
                "{failures} failures: {most:?} past T + {span:?}"
            );
            // Jitter over the whole span: both ends are reached within 5% of it.
            assert!(
                *least < timeout + span / 20 && *most > timeout + span * 19 / 20,
                "{failures} failures: draws {least:?}..{most:?} do not cover T + [0, {span:?})"
            );
        }
        node.follow(Time::ZERO, NodeId(2), Term(1));
        assert_eq!(
            node.elections_failed, 0,
            "following a controller resets the backoff"
        );
        assert!((0..DRAWS).all(|_| node.election_timeout_draw() < timeout * 2));
    }

    #[test]
    fn single_voter_elects_itself_persisting_before_publishing() {
        let mut node = Controller::new(config(1), NodeId(1), None, Time::ZERO, 7).unwrap();
        let deadline = node.next_deadline().unwrap();
        node.tick(deadline);
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
        let first_persist = outputs
            .iter()
            .position(|output| matches!(output, Output::Persist(p) if p.term == Term(1)));
        let publish = outputs
            .iter()
            .position(|output| matches!(output, Output::Publish(_)));
        assert!(first_persist.unwrap() < publish.unwrap());
        assert_eq!(node.status().role, Role::Controller);
        assert_eq!(node.status().published_epoch, Epoch(1));
    }

    #[test]
    fn stale_claim_is_refused_with_the_higher_term() {
        let persisted = Persisted {
            term: Term(5),
            ..Persisted::default()
        };
        let mut node =
            Controller::new(config(3), NodeId(2), Some(persisted), Time::ZERO, 1).unwrap();
        node.handle_message(
            Time::ZERO,
            NodeId(1),
            ControlMessage::Claim {
                term: Term(3),
                stored: MapVersion::default(),
            },
        );
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
        assert_eq!(
            outputs,
            vec![Output::Send {
                to: NodeId(1),
                message: ControlMessage::Refuse { term: Term(5) }
            }]
        );
    }

    #[test]
    fn messages_from_non_voters_and_unknown_nodes_are_ignored() {
        let mut node = Controller::new(config(3), NodeId(2), None, Time::ZERO, 1).unwrap();
        node.handle_message(
            Time::ZERO,
            NodeId(99),
            ControlMessage::Claim {
                term: Term(9),
                stored: MapVersion::default(),
            },
        );
        node.handle_message(
            Time::ZERO,
            NodeId(99),
            ControlMessage::Heartbeat {
                term: Term(9),
                committed: MapVersion::default(),
                handoffs: Vec::new(),
            },
        );
        assert!(node.poll_output().is_none());
        assert_eq!(node.status().term, Term(0));
    }
}
