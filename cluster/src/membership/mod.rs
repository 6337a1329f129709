//! Gossip membership and failure detection (design.md section 6, "Control"): who is in the
//! cluster, where they listen, and in which [`NodeState`] each one is.
//!
//! **Model.** One [`Membership`] per node, owned by the node's control shard. It is a sans-IO
//! state machine (style.md rule 1) around [`foca`], the SWIM implementation design.md section 9
//! names: the driver hands it received datagrams, expired deadlines and the node's own state
//! changes, always with the current time; it hands back datagrams to send and membership
//! changes through [`Membership::poll_output`]. It never reads a clock, opens a socket or draws
//! entropy: all randomness comes from a PRNG seeded at construction, so a run replays from its
//! seed.
//!
//! **What is whose.** foca decides liveness: it probes members, suspects one that answers
//! neither a direct nor an indirect probe, and declares it dead when the suspicion is not
//! refuted within [`MembershipConfig::suspect_to_down_after`]. Each node decides its own
//! [`NodeState`] (`Joining` -> `JoinedSyncing` -> `Joined` -> `Leaving`) and announces it
//! through [`Membership::set_local_state`]; announcements ride on foca's gossip as custom
//! broadcasts stamped with (generation, version), so a stale one never overrides a newer one.
//! The view ([`Membership::members`]) combines both: a live member shows its announced state
//! (`Joining` until its first announcement of the current generation arrives), a dead one
//! `Dead`, or `Leaving` when it announced that it leaves.
//!
//! **Identity and restarts.** A member is its [`NodeId`] (foca's member key), a generation and
//! a gossip address. The driver passes a generation that grows across restarts (the wall-clock
//! start time in milliseconds, or a persisted restart counter shifted left by 32 bits: foca
//! bumps the generation by one by itself when it finds itself declared dead while alive, and
//! those bumps must stay below the next restart's value). A restarted node therefore replaces
//! its former self at once and is seen alive again, with its newly announced state.
//!
//! **Data addresses.** Each node also announces where its data shard 0 serves (the `data_addr`
//! given to [`Membership::new`]; `None` for a node without data shards), in the same
//! announcement as its state, so every member learns every other member's data address once
//! it learns its state: [`MemberView::data_addr`]. A follower dials it to reach the leader of a
//! partition (a `Topology` request there tells which port serves which partition). A change of
//! it alone is not reported as an output: a driver that needs it re-reads
//! [`Membership::members`] after draining the outputs.
//!
//! **Joining from addresses.** A static `--peers` list holds addresses, but foca can only
//! announce to an identity. So [`Membership::join`] sends each peer a *hello* carrying our
//! identity; the receiver announces to us, which makes us members of each other's view (foca's
//! join sub-protocol), and the feed that answers the announce introduces the rest of the
//! cluster. Hellos are repeated to each static peer that is not a live member, first after
//! [`MembershipConfig::join_retry_period`], then at doubling periods up to
//! [`MembershipConfig::join_retry_period_max`] (and again from the shortest when the node finds
//! itself alone), so nodes may start in any order, a full partition heals, and a peer that is
//! gone for good costs one hello per long period.
//!
//! **The wire.** Every datagram starts with a fixed 32-byte header (magic and version, the
//! cluster id, crc32c of header and body: see [`DATAGRAM_HEADER_BYTES`] and the `wire` module).
//! A datagram of another cluster, a corrupt or an undecodable one is refused
//! ([`MembershipOutput::Refused`]) and never reaches foca.
//!
//! **Driver contract.** The control shard's driver binds one UDP socket on the gossip address
//! and, for every input (a received datagram, the clock passing [`Membership::next_deadline`],
//! a state change of its own node), calls the matching method with the current time, then
//! drains [`Membership::poll_output`]: it sends every [`MembershipOutput::Send`] as one
//! datagram, feeds [`MembershipOutput::StateChanged`] and
//! [`MembershipOutput::SuspicionChanged`] to the controller (or re-reads
//! [`Membership::members`]), counts or logs [`MembershipOutput::Refused`], and stops gossiping
//! after [`MembershipOutput::Left`]. Then it sleeps until the next deadline or datagram.
//!
//! ```
//! use coregrid_cluster::membership::{Membership, MembershipConfig, MembershipOutput};
//! use coregrid_cluster::types::{ClusterId, NodeId, NodeState};
//! use std::time::Duration;
//!
//! let cluster = ClusterId::from_name("example").unwrap();
//! let addresses = ["127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap()];
//! let mut nodes: Vec<Membership> = (0..2)
//!     .map(|index| {
//!         let (id, seed) = (NodeId(index as u64 + 1), index as u64);
//!         let data_addr = None; // no data shards in this example
//!         let config = MembershipConfig::lan(2);
//!         Membership::new(cluster, id, addresses[index], data_addr, 1, config, seed).unwrap()
//!     })
//!     .collect();
//! let mut now = Duration::ZERO;
//! for node in &mut nodes {
//!     node.join(now, &addresses).unwrap();
//! }
//! // A perfect network: deliver every datagram at once, run every deadline when it is due.
//! while now < Duration::from_secs(5) {
//!     let mut in_flight = Vec::new();
//!     for (index, node) in nodes.iter_mut().enumerate() {
//!         while let Some(output) = node.poll_output() {
//!             if let MembershipOutput::Send { to, bytes } = output {
//!                 in_flight.push((addresses[index], to, bytes));
//!             }
//!         }
//!     }
//!     if in_flight.is_empty() {
//!         now = nodes.iter().filter_map(Membership::next_deadline).min().unwrap();
//!         nodes.iter_mut().for_each(|node| node.handle_deadline(now));
//!     }
//!     for (from, to, bytes) in in_flight {
//!         let index = addresses.iter().position(|address| *address == to).unwrap();
//!         nodes[index].handle_datagram(now, from, &bytes);
//!     }
//! }
//! assert_eq!(nodes[0].members()[&NodeId(2)].state, NodeState::Joining);
//! assert_eq!(nodes[1].members()[&NodeId(1)].state, NodeState::Joining);
//! ```
//!
//! **Limits** (style.md rule 5): datagrams are at most [`DATAGRAM_BYTES_MAX`] bytes, the member
//! table and the announcement table at most [`MEMBERS_MAX`] nodes (dead members are evicted
//! first), the peer list [`PEERS_MAX`] addresses, the timer queue [`TIMERS_MAX`] entries and
//! queued datagrams [`SENDS_QUEUED_MAX`].

mod announcement;
mod config;
mod identity;
mod wire;

pub use config::MembershipConfig;
pub use wire::RefusalReason;

use crate::constants::MEMBERS_MAX;
use crate::types::{ClusterId, NodeId, NodeState, Time};
use announcement::{Announcement, AnnouncementHandler, AnnouncementTable};
use foca::{Foca, Member, Notification, OwnedNotification, PostcardCodec, Runtime, State, Timer};
use identity::GossipIdentity;
use rand_foca::rngs::Xoshiro256PlusPlus;
use rand_foca::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use wire::DatagramKind;

/// Longest gossip datagram, header included: below a 1500-byte Ethernet MTU with room for IP
/// and UDP headers, so gossip is never fragmented (RFC 8085; foca's own advice is 1400).
pub const DATAGRAM_BYTES_MAX: usize = 1400;

/// Length of the fixed header in front of every gossip datagram.
pub const DATAGRAM_HEADER_BYTES: usize = 32;

/// Most static peers [`Membership::join`] takes: a peer list longer than the largest cluster
/// is a configuration error.
pub const PEERS_MAX: usize = MEMBERS_MAX;

/// Most pending deadlines. foca keeps a handful of periodic timers plus at most one suspicion
/// timer per member; the rest is slack for timers made stale by a reconnection.
pub const TIMERS_MAX: usize = 2 * MEMBERS_MAX + 64;

/// Most datagrams queued for the driver. A driver drains the outputs after every input, so
/// this is only reached when it does not; further datagrams are then dropped (gossip tolerates
/// loss), never the membership changes.
pub const SENDS_QUEUED_MAX: usize = 4 * MEMBERS_MAX;

/// Fewest times an update or a state announcement is piggybacked: foca's LAN profile gives 3
/// for five nodes, too few to reach all four others reliably on a lossy network.
pub const MAX_TRANSMISSIONS_MIN: u8 = 5;

const _: () = assert!(DATAGRAM_HEADER_BYTES < DATAGRAM_BYTES_MAX);
const _: () = assert!(
    DATAGRAM_BYTES_MAX <= 1472,
    "one unfragmented UDP/IPv4 datagram"
);
const _: () = assert!(
    announcement::ANNOUNCEMENT_BYTES + 2 < DATAGRAM_BYTES_MAX - DATAGRAM_HEADER_BYTES,
    "an announcement fits a gossip packet with its length prefix"
);
const _: () = assert!(TIMERS_MAX > MEMBERS_MAX);

/// One member as this node sees it: what the controller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Its state: the one it announced while it lives, `Dead` once the failure detector
    /// declared it so, or `Leaving` when it announced leaving before it went away.
    pub state: NodeState,
    /// Whether the failure detector currently suspects it (it still counts as alive until the
    /// suspicion times out or is refuted).
    pub suspected: bool,
    /// Where it receives gossip.
    pub gossip_addr: SocketAddr,
    /// Where its data shard 0 serves (a TCP address; a `Topology` request there tells which
    /// port serves which partitions), as its newest announcement of its current generation
    /// says: `None` until that announcement arrives, or when the node has no data shards.
    /// This node's own entry has its own. A dead or leaving member keeps the last one it
    /// announced.
    pub data_addr: Option<SocketAddr>,
    /// Which life of the node this is (grows across restarts).
    pub generation: u64,
}

/// What the membership asks of its driver, from [`Membership::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOutput {
    /// Send `bytes` as one UDP datagram to `to`. Losing it is fine; sending it twice is too.
    Send {
        /// The destination's gossip address.
        to: SocketAddr,
        /// The whole datagram, header included (at most [`DATAGRAM_BYTES_MAX`] bytes).
        bytes: Vec<u8>,
    },
    /// A node (this one included) entered a new state in this node's view. `from` is `None`
    /// the first time the node appears.
    StateChanged {
        /// The node.
        node: NodeId,
        /// Its previous state in the view, if it was in it.
        from: Option<NodeState>,
        /// Its state now.
        to: NodeState,
        /// When this node saw the change.
        at: Time,
    },
    /// The failure detector started or stopped suspecting a node. A suspect is still alive
    /// for the view; leader scoring may prefer others while it is suspect.
    SuspicionChanged {
        /// The node.
        node: NodeId,
        /// Whether it is suspected now.
        suspected: bool,
        /// When this node saw the change.
        at: Time,
    },
    /// A dead node was dropped from the view to keep the member table within [`MEMBERS_MAX`].
    Forgotten {
        /// The node.
        node: NodeId,
        /// When.
        at: Time,
    },
    /// A received datagram was refused; nothing changed (see [`RefusalReason`]).
    Refused {
        /// Where it came from.
        from: SocketAddr,
        /// Why it was refused.
        reason: RefusalReason,
    },
    /// This node has left the cluster ([`Membership::leave`]): after the sends queued before
    /// this output, the driver may stop gossiping.
    Left {
        /// When.
        at: Time,
    },
}

/// What went wrong with a call; each variant says what happened to the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The configuration breaks a relation foca relies on; nothing was built.
    #[error("invalid membership configuration: {0}")]
    InvalidConfig(&'static str),
    /// A node state change the life cycle does not allow; nothing changed.
    #[error("a node cannot go from {from} to {to}")]
    InvalidTransition {
        /// The current state.
        from: NodeState,
        /// The state asked for.
        to: NodeState,
    },
    /// More static peers than [`PEERS_MAX`]; nothing changed.
    #[error("{peers} peers given, at most {PEERS_MAX} are taken")]
    TooManyPeers {
        /// How many were given.
        peers: usize,
    },
    /// The node has left or is leaving; nothing changed.
    #[error("this node has left or is leaving the cluster")]
    Leaving,
    /// A data address with port 0, which no member could dial; nothing was built.
    #[error("the data address {data_addr} has port 0")]
    InvalidDataAddr {
        /// The address given.
        data_addr: SocketAddr,
    },
}

/// Where the node itself is in its membership's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A member (or joining).
    Running,
    /// Announced `Leaving`; declares itself gone when the linger deadline passes.
    Lingering,
    /// Gone: ignores every input.
    Left,
}

/// What a deadline is for.
#[derive(Debug)]
enum TimerEvent {
    /// One of foca's timers.
    Foca(Timer<GossipIdentity>),
    /// Send hellos to static peers that are not live members; ignored unless `token` is the
    /// membership's current one (a restart of the retries makes older ones stale).
    JoinRetry { token: u64 },
    /// Re-announce our own state.
    StateRefresh,
    /// The linger after `leave` is over: declare ourselves gone.
    LeaveLinger,
}

/// Deadlines in the order they expire, then in the order they were set.
#[derive(Debug, Default)]
struct TimerQueue {
    entries: BTreeMap<(Time, u64), TimerEvent>,
    next_sequence: u64,
}

impl TimerQueue {
    fn push(&mut self, deadline: Time, event: TimerEvent) {
        if self.entries.len() >= TIMERS_MAX {
            // Unreachable while foca keeps one suspicion timer per member and the member
            // table stays within MEMBERS_MAX; dropping beats growing without bound.
            tracing::error!(?event, "timer dropped: {TIMERS_MAX} deadlines pending");
            return;
        }
        self.entries.insert((deadline, self.next_sequence), event);
        self.next_sequence += 1;
    }

    fn next_deadline(&self) -> Option<Time> {
        self.entries
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    fn pop_due(&mut self, now: Time) -> Option<TimerEvent> {
        let entry = self.entries.first_entry()?;
        (entry.key().0 <= now).then(|| entry.remove())
    }
}

/// foca's window on the world during one call: sends become [`MembershipOutput::Send`]
/// (framed with our header), timers become deadlines at `now + after`.
struct FocaRuntime<'a> {
    now: Time,
    cluster_id: ClusterId,
    timers: &'a mut TimerQueue,
    outputs: &'a mut VecDeque<MembershipOutput>,
    sends_queued: &'a mut usize,
    notifications: &'a mut Vec<OwnedNotification<GossipIdentity>>,
}

impl Runtime<GossipIdentity> for FocaRuntime<'_> {
    fn notify(&mut self, notification: Notification<'_, GossipIdentity>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: GossipIdentity, data: &[u8]) {
        push_send(
            self.outputs,
            self.sends_queued,
            to.gossip_addr,
            wire::encode_datagram(self.cluster_id, DatagramKind::Gossip, data),
        );
    }

    fn submit_after(&mut self, event: Timer<GossipIdentity>, after: Duration) {
        self.timers.push(self.now + after, TimerEvent::Foca(event));
    }
}

fn push_send(
    outputs: &mut VecDeque<MembershipOutput>,
    sends_queued: &mut usize,
    to: SocketAddr,
    bytes: Vec<u8>,
) {
    assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
    if *sends_queued >= SENDS_QUEUED_MAX {
        tracing::warn!(%to, "gossip datagram dropped: {SENDS_QUEUED_MAX} sends queued");
        return;
    }
    *sends_queued += 1;
    outputs.push_back(MembershipOutput::Send { to, bytes });
}

/// Builds the runtime for one foca call from disjoint fields of a [`Membership`], so that
/// `self.foca` can be borrowed at the same time.
macro_rules! foca_runtime {
    ($membership:ident, $now:expr) => {
        FocaRuntime {
            now: $now,
            cluster_id: $membership.cluster_id,
            timers: &mut $membership.timers,
            outputs: &mut $membership.outputs,
            sends_queued: &mut $membership.sends_queued,
            notifications: &mut $membership.notifications,
        }
    };
}

/// One node's gossip membership and failure detector (see the module docs).
pub struct Membership {
    cluster_id: ClusterId,
    node_id: NodeId,
    /// Where this node's data shard 0 serves, announced with its state (fixed for the life of
    /// the membership).
    data_addr: Option<SocketAddr>,
    config: MembershipConfig,
    /// The PRNG is named rather than rand's `SmallRng`, whose algorithm differs between
    /// platforms and releases: a seed replays the same run on every machine.
    foca: Foca<GossipIdentity, PostcardCodec, Xoshiro256PlusPlus, AnnouncementHandler>,
    /// The newest announcement of every node, shared with foca's broadcast handler.
    announcements: AnnouncementTable,
    local_state: NodeState,
    /// Grows with every change of `local_state` within this generation.
    local_version: u64,
    phase: Phase,
    /// The static peers (our own address removed), for hellos.
    peers: Vec<SocketAddr>,
    /// Names the current chain of hello retries.
    join_retry_token: u64,
    /// The delay before the next hello retry: doubles while some peer stays away, up to
    /// `MembershipConfig::join_retry_period_max`.
    join_retry_delay: Duration,
    state_refresh_scheduled: bool,
    timers: TimerQueue,
    outputs: VecDeque<MembershipOutput>,
    /// How many of `outputs` are sends (bounded by `SENDS_QUEUED_MAX`).
    sends_queued: usize,
    /// foca's notifications of the current call, handled when the call returns.
    notifications: Vec<OwnedNotification<GossipIdentity>>,
    view: BTreeMap<NodeId, MemberView>,
}

impl Membership {
    /// A membership for node `node_id` of cluster `cluster_id`, reachable for gossip at
    /// `gossip_addr`, whose data shard 0 serves at `data_addr` (announced to every member;
    /// `None` for a node without data shards), in its life `generation` (grows across
    /// restarts: see the module docs), drawing every random choice from a PRNG seeded with
    /// `seed`. The node starts `Joining` and alone; [`Membership::join`] contacts the cluster.
    pub fn new(
        cluster_id: ClusterId,
        node_id: NodeId,
        gossip_addr: SocketAddr,
        data_addr: Option<SocketAddr>,
        generation: u64,
        config: MembershipConfig,
        seed: u64,
    ) -> Result<Membership, MembershipError> {
        config.validate().map_err(MembershipError::InvalidConfig)?;
        if let Some(data_addr) = data_addr.filter(|addr| addr.port() == 0) {
            return Err(MembershipError::InvalidDataAddr { data_addr });
        }
        let identity = GossipIdentity {
            node: node_id.get(),
            generation,
            gossip_addr,
        };
        let announcements = AnnouncementTable::default();
        let handler = AnnouncementHandler {
            table: announcements.clone(),
            own_node: node_id.get(),
        };
        let foca = Foca::with_custom_broadcast(
            identity,
            config.to_foca(),
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        Ok(Membership {
            cluster_id,
            node_id,
            data_addr,
            config,
            foca,
            announcements,
            local_state: NodeState::Joining,
            local_version: 1,
            phase: Phase::Running,
            peers: Vec::new(),
            join_retry_token: 0,
            join_retry_delay: Duration::ZERO,
            state_refresh_scheduled: false,
            timers: TimerQueue::default(),
            outputs: VecDeque::new(),
            sends_queued: 0,
            notifications: Vec::new(),
            view: BTreeMap::new(),
        })
    }

    /// Contacts the cluster through the static `peers` (our own address may be among them; it
    /// is skipped): sends each a hello, repeated after [`MembershipConfig::join_retry_period`]
    /// and then less and less often while the peer is not a live member, and starts announcing
    /// our state. An empty list starts a cluster of one that others join. Calling it again
    /// replaces the peer list.
    pub fn join(&mut self, now: Time, peers: &[SocketAddr]) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Err(MembershipError::Leaving);
        }
        if peers.len() > PEERS_MAX {
            return Err(MembershipError::TooManyPeers { peers: peers.len() });
        }
        let own_addr = self.foca.identity().gossip_addr;
        let mut seen = BTreeSet::new();
        self.peers = peers
            .iter()
            .copied()
            .filter(|&peer| peer != own_addr && seen.insert(peer))
            .collect();
        tracing::info!(
            at_ms = now.as_millis() as u64,
            local = self.node_id.get(),
            generation = self.foca.identity().generation,
            data_addr = ?self.data_addr,
            peers = self.peers.len(),
            "membership joining"
        );
        self.announce_local_state();
        self.restart_join_retries(now);
        if !self.state_refresh_scheduled {
            self.state_refresh_scheduled = true;
            self.timers.push(
                now + self.config.state_refresh_period,
                TimerEvent::StateRefresh,
            );
        }
        self.after_input(now);
        Ok(())
    }

    /// Takes one received datagram. One that is not for this cluster or fails the header checks
    /// is refused ([`MembershipOutput::Refused`]) before foca sees it and changes nothing; a
    /// body that does not decode is refused too (see [`RefusalReason::Malformed`]). No input
    /// panics. Ignored once the node has left.
    pub fn handle_datagram(&mut self, now: Time, from: SocketAddr, datagram: &[u8]) {
        if self.phase == Phase::Left {
            return;
        }
        match wire::decode_datagram(self.cluster_id, datagram) {
            Err(reason) => self.refuse(from, reason),
            Ok((DatagramKind::Hello, body)) => match wire::decode_hello(body) {
                Err(reason) => self.refuse(from, reason),
                Ok(identity) => self.handle_hello(now, identity),
            },
            Ok((DatagramKind::Gossip, body)) => {
                if let Err(error) = self.foca.handle_data(body, foca_runtime!(self, now)) {
                    self.handle_foca_error(from, error);
                }
            }
        }
        self.after_input(now);
    }

    /// The earliest pending deadline: the driver calls [`Membership::handle_deadline`] once
    /// its clock reaches it. `None` when nothing is pending (before `join`, after leaving).
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    /// Runs every deadline at or before `now`, oldest first. Calling it early or twice is
    /// harmless.
    pub fn handle_deadline(&mut self, now: Time) {
        while let Some(event) = self.timers.pop_due(now) {
            match event {
                TimerEvent::Foca(timer) => {
                    if let Err(error) = self.foca.handle_timer(timer, foca_runtime!(self, now)) {
                        tracing::debug!(local = self.node_id.get(), %error, "foca timer");
                    }
                }
                TimerEvent::JoinRetry { token } if token == self.join_retry_token => {
                    self.join_retry_delay = if self.send_hellos() == 0 {
                        self.config.join_retry_period
                    } else {
                        (self.join_retry_delay * 2).min(self.config.join_retry_period_max)
                    };
                    self.timers
                        .push(now + self.join_retry_delay, TimerEvent::JoinRetry { token });
                }
                TimerEvent::JoinRetry { .. } => {}
                TimerEvent::StateRefresh => {
                    self.announce_local_state();
                    self.timers.push(
                        now + self.config.state_refresh_period,
                        TimerEvent::StateRefresh,
                    );
                }
                TimerEvent::LeaveLinger => self.finish_leave(now),
            }
            if self.phase == Phase::Left {
                break;
            }
        }
        self.after_input(now);
    }

    /// Announces this node's own state to the cluster. The life cycle allows `Joining` ->
    /// `JoinedSyncing` -> `Joined` -> `Leaving`, skipping ahead, and `Joined` ->
    /// `JoinedSyncing` (a node that fell behind); `Dead` is only ever declared by the failure
    /// detector. Setting the current state again does nothing. Use [`Membership::leave`] to
    /// leave: it announces `Leaving` too.
    pub fn set_local_state(&mut self, now: Time, state: NodeState) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Err(MembershipError::Leaving);
        }
        let from = self.local_state;
        if from == state {
            return Ok(());
        }
        let allowed = matches!(
            (from, state),
            (
                NodeState::Joining,
                NodeState::JoinedSyncing | NodeState::Joined | NodeState::Leaving
            ) | (
                NodeState::JoinedSyncing,
                NodeState::Joined | NodeState::Leaving
            ) | (
                NodeState::Joined,
                NodeState::JoinedSyncing | NodeState::Leaving
            )
        );
        if !allowed {
            return Err(MembershipError::InvalidTransition { from, to: state });
        }
        self.change_local_state(now, state);
        self.after_input(now);
        Ok(())
    }

    /// Leaves the cluster gracefully: announces `Leaving` at once, keeps gossiping for
    /// [`MembershipConfig::leave_linger`] so that the cluster learns it, then declares itself
    /// gone and emits [`MembershipOutput::Left`]. Others keep seeing the node as `Leaving`
    /// (not `Dead`) until it comes back with a new generation. Calling it again does nothing.
    pub fn leave(&mut self, now: Time) {
        if self.phase != Phase::Running {
            return;
        }
        if self.local_state != NodeState::Leaving {
            self.change_local_state(now, NodeState::Leaving);
        }
        self.phase = Phase::Lingering;
        if self.config.leave_linger.is_zero() {
            self.finish_leave(now);
        } else {
            self.timers
                .push(now + self.config.leave_linger, TimerEvent::LeaveLinger);
        }
        self.after_input(now);
    }

    /// The next thing the driver must do or know; `None` when there is nothing. The driver
    /// drains this after every call.
    pub fn poll_output(&mut self) -> Option<MembershipOutput> {
        let output = self.outputs.pop_front()?;
        if matches!(output, MembershipOutput::Send { .. }) {
            assert!(self.sends_queued > 0, "every queued send was counted");
            self.sends_queued -= 1;
        }
        Some(output)
    }

    /// Every node this node knows, itself included, with its state: the controller's input.
    pub fn members(&self) -> &BTreeMap<NodeId, MemberView> {
        &self.view
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster this node gossips in.
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    /// Where this node's data shard 0 serves, as it announces it.
    pub fn data_addr(&self) -> Option<SocketAddr> {
        self.data_addr
    }

    /// This node's current generation: the one given at construction, or higher if the
    /// cluster declared the node dead while it lived and it rejoined.
    pub fn generation(&self) -> u64 {
        self.foca.identity().generation
    }

    /// The state this node announces for itself.
    pub fn local_state(&self) -> NodeState {
        self.local_state
    }

    /// Whether the node has left (after [`MembershipOutput::Left`]).
    pub fn has_left(&self) -> bool {
        self.phase == Phase::Left
    }

    fn change_local_state(&mut self, now: Time, state: NodeState) {
        assert_ne!(state, NodeState::Dead, "Dead is never announced");
        self.local_state = state;
        self.local_version += 1;
        self.announce_local_state();
        // Push the news now rather than at the next gossip tick.
        if let Err(error) = self.foca.gossip(foca_runtime!(self, now)) {
            tracing::debug!(local = self.node_id.get(), %error, "foca gossip");
        }
    }

    fn finish_leave(&mut self, now: Time) {
        if self.phase == Phase::Left {
            return;
        }
        if let Err(error) = self.foca.leave_cluster(foca_runtime!(self, now)) {
            tracing::warn!(local = self.node_id.get(), %error, "foca leave");
        }
        self.phase = Phase::Left;
        // Nothing runs after leaving: drop every deadline so the driver can stop.
        self.timers.entries.clear();
        tracing::info!(
            at_ms = now.as_millis() as u64,
            local = self.node_id.get(),
            "membership left the cluster"
        );
        self.outputs.push_back(MembershipOutput::Left { at: now });
    }

    /// (Re)adds our announcement to foca's broadcasts, stamped with the current generation.
    fn announce_local_state(&mut self) {
        let identity = *self.foca.identity();
        let announcement = Announcement {
            node: identity.node,
            generation: identity.generation,
            version: self.local_version,
            state: self.local_state,
            data_addr: self.data_addr,
        };
        if let Err(error) = self.foca.add_broadcast(&announcement.encode()) {
            tracing::error!(local = self.node_id.get(), %error, "own state announcement refused");
        }
    }

    /// Sends hellos now and starts a new chain of retries at the shortest period.
    fn restart_join_retries(&mut self, now: Time) {
        self.send_hellos();
        self.join_retry_token += 1;
        self.join_retry_delay = self.config.join_retry_period;
        self.timers.push(
            now + self.join_retry_delay,
            TimerEvent::JoinRetry {
                token: self.join_retry_token,
            },
        );
    }

    /// Sends a hello to every static peer that is not the address of a live member; returns
    /// how many it sent.
    fn send_hellos(&mut self) -> usize {
        if self.phase != Phase::Running || self.peers.is_empty() {
            return 0;
        }
        let live: BTreeSet<SocketAddr> = self
            .foca
            .iter_members()
            .map(|member| member.id().gossip_addr)
            .collect();
        let hello = wire::encode_datagram(
            self.cluster_id,
            DatagramKind::Hello,
            &wire::encode_hello(self.foca.identity()),
        );
        let mut sent = 0;
        for &peer in &self.peers {
            if !live.contains(&peer) {
                push_send(
                    &mut self.outputs,
                    &mut self.sends_queued,
                    peer,
                    hello.clone(),
                );
                sent += 1;
            }
        }
        sent
    }

    /// Announces to the hello's sender. The identity's own gossip address is used, not the
    /// datagram's source: foca replies to identities, and a node behind an address translation
    /// or bound to a wildcard address knows best where it listens.
    fn handle_hello(&mut self, now: Time, identity: GossipIdentity) {
        if identity.node == self.node_id.get() {
            if identity != *self.foca.identity() {
                tracing::warn!(
                    local = self.node_id.get(),
                    generation = identity.generation,
                    addr = %identity.gossip_addr,
                    "hello from another process with our node id (a duplicate id?)"
                );
            }
            return;
        }
        if let Err(error) = self.foca.announce(identity, foca_runtime!(self, now)) {
            tracing::debug!(local = self.node_id.get(), %error, "foca announce");
        }
    }

    fn refuse(&mut self, from: SocketAddr, reason: RefusalReason) {
        tracing::debug!(local = self.node_id.get(), %from, %reason, "gossip datagram refused");
        self.outputs
            .push_back(MembershipOutput::Refused { from, reason });
    }

    fn handle_foca_error(&mut self, from: SocketAddr, error: foca::Error) {
        match error {
            foca::Error::Decode(_)
            | foca::Error::MalformedPacket
            | foca::Error::DataTooBig
            | foca::Error::CustomBroadcast(_) => self.refuse(
                from,
                RefusalReason::Malformed {
                    detail: error.to_string(),
                },
            ),
            // Protocol noise a healthy cluster produces now and then (data addressed to our
            // former identity, a probe cycle cut short by a reconnection).
            other => tracing::debug!(local = self.node_id.get(), %from, error = %other, "foca"),
        }
    }

    /// Reacts to foca's notifications of the call that just returned, keeps the member table
    /// bounded, and reports what changed in the view.
    fn after_input(&mut self, now: Time) {
        let mut notifications = std::mem::take(&mut self.notifications);
        let mut reannounce = false;
        let mut idle = false;
        for notification in notifications.drain(..) {
            match notification {
                OwnedNotification::Rejoin(identity) => {
                    tracing::warn!(
                        at_ms = now.as_millis() as u64,
                        local = self.node_id.get(),
                        generation = identity.generation,
                        "declared dead while alive: rejoined with a new generation"
                    );
                    reannounce = true;
                }
                // A newcomer must learn our state, which may have stopped spreading long ago.
                OwnedNotification::MemberUp(_) | OwnedNotification::Rename(..) => {
                    reannounce = true;
                }
                OwnedNotification::Defunct if self.phase != Phase::Left => {
                    tracing::error!(
                        local = self.node_id.get(),
                        "declared dead and cannot rejoin: no higher generation left"
                    );
                }
                OwnedNotification::Active => {
                    tracing::debug!(local = self.node_id.get(), "in contact with the cluster");
                }
                OwnedNotification::Idle => {
                    tracing::info!(local = self.node_id.get(), "no live member left");
                    idle = true;
                }
                _ => {}
            }
        }
        self.notifications = notifications;
        reannounce |= self.outvote_claim_about_us(now);
        if idle && self.phase == Phase::Running && !self.peers.is_empty() {
            // Alone again: look for the cluster at the shortest period.
            self.restart_join_retries(now);
        }
        if reannounce && self.phase != Phase::Left {
            self.announce_local_state();
        }
        self.bound_member_table(now);
        self.prune_announcements();
        self.update_view(now);
    }

    /// When others claim a version of our current generation that we did not announce (see
    /// `AnnouncementBook::claim_about_us`), moves our version above it; returns whether our
    /// state must be announced again.
    fn outvote_claim_about_us(&mut self, now: Time) -> bool {
        let Some(claim) = self.announcements.borrow_mut().claim_about_us.take() else {
            return false;
        };
        let ours = (self.foca.identity().generation, self.local_version);
        let echo = claim.generation == ours.0
            && claim.version == ours.1
            && claim.state == self.local_state
            && claim.data_addr == self.data_addr;
        if echo || (claim.generation, claim.version) < ours || claim.generation != ours.0 {
            // An echo, an old one, or one of another life (which the view never reads).
            return false;
        }
        let Some(version) = claim.version.checked_add(1) else {
            tracing::error!(
                local = self.node_id.get(),
                "announcement versions exhausted"
            );
            return false;
        };
        tracing::warn!(
            at_ms = now.as_millis() as u64,
            local = self.node_id.get(),
            claimed_version = claim.version,
            claimed_state = %claim.state,
            version,
            "others hold a state announcement of ours we never sent: announcing above it"
        );
        self.local_version = version;
        true
    }

    /// Drops announcements of lives older than the one foca knows for each node.
    fn prune_announcements(&mut self) {
        let mut announcements = self.announcements.borrow_mut();
        let own = self.foca.identity();
        let lives = self
            .foca
            .iter_membership_state()
            .map(Member::id)
            .filter(|identity| identity.node != own.node)
            .chain(std::iter::once(own));
        for identity in lives {
            if let Some(generations) = announcements.by_node.get_mut(&identity.node) {
                generations.retain(|&generation, _| generation >= identity.generation);
            }
        }
    }

    /// Evicts dead members while foca's table holds more than `MEMBERS_MAX` nodes.
    fn bound_member_table(&mut self, now: Time) {
        let members = self.foca.iter_membership_state().len();
        if members <= MEMBERS_MAX {
            return;
        }
        let evict: Vec<GossipIdentity> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() == State::Down)
            .map(|member| *member.id())
            .take(members - MEMBERS_MAX)
            .collect();
        for identity in evict {
            // RemoveDown is the timer foca would set itself with `remove_down_after`.
            if let Err(error) = self
                .foca
                .handle_timer(Timer::RemoveDown(identity), foca_runtime!(self, now))
            {
                tracing::debug!(local = self.node_id.get(), %error, "foca remove down");
            }
            self.announcements
                .borrow_mut()
                .by_node
                .remove(&identity.node);
        }
        if self.foca.iter_membership_state().len() > MEMBERS_MAX {
            tracing::warn!(
                local = self.node_id.get(),
                "more than {MEMBERS_MAX} live members: the member table exceeds its bound"
            );
        }
    }

    /// The view as foca and the announcements say now (see the module docs).
    fn compute_view(&self) -> BTreeMap<NodeId, MemberView> {
        let own = self.foca.identity();
        let mut view = BTreeMap::new();
        view.insert(
            self.node_id,
            MemberView {
                state: self.local_state,
                suspected: false,
                gossip_addr: own.gossip_addr,
                data_addr: self.data_addr,
                generation: own.generation,
            },
        );
        let announcements = self.announcements.borrow();
        for member in self.foca.iter_membership_state() {
            let identity = member.id();
            if identity.node == own.node {
                // Our own former life, which foca keeps as down.
                continue;
            }
            let announced =
                announcement::announced(&announcements, identity.node, identity.generation);
            let data_addr = announced.and_then(|announcement| announcement.data_addr);
            let announced = announced.map(|announcement| announcement.state);
            let state = match member.state() {
                State::Alive | State::Suspect => announced.unwrap_or(NodeState::Joining),
                State::Down if announced == Some(NodeState::Leaving) => NodeState::Leaving,
                State::Down => NodeState::Dead,
            };
            view.insert(
                NodeId(identity.node),
                MemberView {
                    state,
                    suspected: member.state() == State::Suspect,
                    gossip_addr: identity.gossip_addr,
                    data_addr,
                    generation: identity.generation,
                },
            );
        }
        view
    }

    /// Replaces the view and reports every difference, in node order.
    fn update_view(&mut self, now: Time) {
        let view = self.compute_view();
        let at_ms = now.as_millis() as u64;
        let local = self.node_id.get();
        for (&node, member) in &view {
            let previous = self.view.get(&node);
            let from = previous.map(|previous| previous.state);
            if from != Some(member.state) {
                tracing::info!(
                    at_ms,
                    local,
                    node = node.get(),
                    generation = member.generation,
                    from = ?from,
                    to = %member.state,
                    "member state changed"
                );
                self.outputs.push_back(MembershipOutput::StateChanged {
                    node,
                    from,
                    to: member.state,
                    at: now,
                });
            }
            if previous.is_some_and(|previous| previous.suspected) != member.suspected {
                tracing::info!(
                    at_ms,
                    local,
                    node = node.get(),
                    suspected = member.suspected,
                    "member suspicion changed"
                );
                self.outputs.push_back(MembershipOutput::SuspicionChanged {
                    node,
                    suspected: member.suspected,
                    at: now,
                });
            }
        }
        for &node in self.view.keys() {
            if !view.contains_key(&node) {
                tracing::info!(at_ms, local, node = node.get(), "dead member forgotten");
                self.outputs
                    .push_back(MembershipOutput::Forgotten { node, at: now });
            }
        }
        self.view = view;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership::new(
            ClusterId(*b"unit-test-cluste"),
            NodeId(1),
            "10.0.0.1:7946".parse().unwrap(),
            Some("10.0.0.1:7000".parse().unwrap()),
            1,
            MembershipConfig::lan(3),
            7,
        )
        .unwrap()
    }

    #[test]
    fn the_life_cycle_is_enforced_and_refusals_change_nothing() {
        let mut membership = membership();
        let now = Duration::from_secs(1);
        assert_eq!(
            membership.set_local_state(now, NodeState::Dead),
            Err(MembershipError::InvalidTransition {
                from: NodeState::Joining,
                to: NodeState::Dead
            })
        );
        membership.set_local_state(now, NodeState::Joined).unwrap();
        membership
            .set_local_state(now, NodeState::JoinedSyncing)
            .unwrap();
        assert_eq!(
            membership.set_local_state(now, NodeState::Joining),
            Err(MembershipError::InvalidTransition {
                from: NodeState::JoinedSyncing,
                to: NodeState::Joining
            })
        );
        assert_eq!(membership.local_state(), NodeState::JoinedSyncing);
        let too_many: Vec<SocketAddr> = (0..=PEERS_MAX)
            .map(|port| SocketAddr::from(([10, 0, 0, 2], port as u16)))
            .collect();
        assert_eq!(
            membership.join(now, &too_many),
            Err(MembershipError::TooManyPeers {
                peers: PEERS_MAX + 1
            })
        );
        membership.leave(now);
        assert_eq!(membership.local_state(), NodeState::Leaving);
        assert_eq!(
            membership.set_local_state(now, NodeState::Joined),
            Err(MembershipError::Leaving)
        );
        assert_eq!(membership.join(now, &[]), Err(MembershipError::Leaving));
    }

    #[test]
    fn a_node_reports_its_own_transitions_and_leaves_after_the_linger() {
        let mut membership = membership();
        membership.join(Duration::ZERO, &[]).unwrap();
        membership
            .set_local_state(Duration::from_secs(1), NodeState::Joined)
            .unwrap();
        membership.leave(Duration::from_secs(2));
        let linger_over = Duration::from_secs(2) + membership.config.leave_linger;
        membership.handle_deadline(linger_over);
        let outputs: Vec<MembershipOutput> =
            std::iter::from_fn(|| membership.poll_output()).collect();
        let expected_states = [
            (None, NodeState::Joining, Duration::ZERO),
            (
                Some(NodeState::Joining),
                NodeState::Joined,
                Duration::from_secs(1),
            ),
            (
                Some(NodeState::Joined),
                NodeState::Leaving,
                Duration::from_secs(2),
            ),
        ];
        let states: Vec<_> = outputs
            .iter()
            .filter_map(|output| match *output {
                MembershipOutput::StateChanged { node, from, to, at } => {
                    assert_eq!(node, NodeId(1));
                    Some((from, to, at))
                }
                _ => None,
            })
            .collect();
        assert_eq!(states, expected_states);
        assert_eq!(
            outputs.last(),
            Some(&MembershipOutput::Left { at: linger_over })
        );
        assert!(membership.has_left());
        assert_eq!(membership.next_deadline(), None);
    }

    #[test]
    fn an_invalid_configuration_builds_nothing() {
        let config = MembershipConfig {
            probe_rtt: Duration::from_secs(5),
            ..MembershipConfig::lan(3)
        };
        let built = Membership::new(
            ClusterId::default(),
            NodeId(1),
            "10.0.0.1:7946".parse().unwrap(),
            None,
            1,
            config,
            0,
        );
        assert!(matches!(built, Err(MembershipError::InvalidConfig(_))));
        let data_addr: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let built = Membership::new(
            ClusterId::default(),
            NodeId(1),
            "10.0.0.1:7946".parse().unwrap(),
            Some(data_addr),
            1,
            MembershipConfig::lan(3),
            0,
        );
        assert!(matches!(
            built,
            Err(MembershipError::InvalidDataAddr { data_addr: given }) if given == data_addr
        ));
    }

    #[test]
    fn a_node_shows_and_announces_its_own_data_address() {
        let mut membership = membership();
        let data_addr = Some("10.0.0.1:7000".parse().unwrap());
        assert_eq!(membership.data_addr(), data_addr);
        membership.join(Duration::ZERO, &[]).unwrap();
        assert_eq!(membership.members()[&NodeId(1)].data_addr, data_addr);
        // What others would echo back of us: our own announcement is not a claim to outvote,
        // but the same version with another data address is.
        let own = Announcement {
            node: 1,
            generation: 1,
            version: membership.local_version,
            state: membership.local_state,
            data_addr,
        };
        membership.announcements.borrow_mut().claim_about_us = Some(own);
        assert!(!membership.outvote_claim_about_us(Duration::ZERO));
        let forged = Announcement {
            data_addr: Some("10.6.6.6:7000".parse().unwrap()),
            ..own
        };
        membership.announcements.borrow_mut().claim_about_us = Some(forged);
        assert!(membership.outvote_claim_about_us(Duration::ZERO));
        assert_eq!(membership.local_version, own.version + 1);
    }
}
