//! The node's control shard (design.md sections 1 and 6 "Control"): the thin glommio driver
//! around the sans-IO state machines of `coregrid-cluster` (style.md rule 1).
//!
//! # Model
//! - **One thread, one socket.** The control shard is a glommio executor of its own (not
//!   pinned: it is idle almost always). It owns one UDP socket, the node's *control address*
//!   (`listen_address:control_port`), which carries both gossip (the [`Membership`]'s
//!   datagrams, magic `CGG2`) and the election's messages (one net frame of kind `Control`
//!   each, see [`coregrid_cluster::wire`]); the first four bytes tell them apart.
//! - **Time.** The driver reads the clock and hands the state machines the time since the
//!   control shard started; it wakes at the earlier of their deadlines or a datagram.
//! - **Order of effects.** The election's outputs are acted on in order, and a
//!   [`Output::Persist`] is stored durably ([`control_state::store`]) before the next output is
//!   looked at: no message of a term leaves before the term is on disk. A failed store stops
//!   the control shard and the node (it cannot keep a promise it could not store).
//! - **Voters.** Fixed at the cluster's first start: with no `--peers`, this node alone; with
//!   `--voters`, those nodes once each was heard; else the first five members by id once this
//!   node has heard from every static peer (every node of a new cluster must be started with
//!   the same lists). They are stored with the election's state, so a restart never changes
//!   them.
//! - **Data shards.** Each published map, with this node's own state and the status the CLI
//!   shows, becomes a new [`ClusterView`]; the data shards take it whole at their next look
//!   (style.md rule 4: they never wait on the control shard). Only the current epoch's leader
//!   of a partition, in state `Joined`, takes writes for it ([`ClusterView::fence`]).
//! - **Node state.** A node starts `Joining`; once the voters are known and its election runs
//!   it is `JoinedSyncing`; once it holds the map its controller announced as committed it is
//!   `Joined`. Data catch-up is per partition, not a node state: a follower answers reads only
//!   once its last sync found it holding its leader's whole log, a failover chooses the most
//!   recent replica, and a handoff waits until the target acknowledged the whole log
//!   (docs/cluster.md), so a `Joined` node still catching up never serves stale data.
//! - **Write lease** ([`Lease`], docs/cluster.md "The write lease"). A node takes writes only
//!   while it is in contact with a majority of voters: as the controller, it heard a majority
//!   of voters in its term within the election timeout (the check-quorum condition); as a
//!   follower, it heard its controller's heartbeat within the election timeout. Otherwise the
//!   view says `lease: false` and the data shards answer `Unavailable` for the partitions this
//!   node leads. The driver wakes when the lease runs out, so the data shards keep a plain
//!   flag to look at (no clock read, no lock per request).
//! - **Faults for tests** ([`super::fault`]): with `--fault-file`, datagrams to and from the
//!   addresses the file lists are dropped here, on send and on receive.

use super::control_state::{self, ControlState};
use super::fault::FaultFile;
use coregrid_cluster::election::ControlMessage;
use coregrid_cluster::election::{self, Controller, Output, Role, Status, Strategy};
use coregrid_cluster::map::{FencedPosition, Handoff, LeadershipMap};
use coregrid_cluster::membership::{MemberView, Membership, MembershipConfig, MembershipOutput};
use coregrid_cluster::types::{ClusterId, Epoch, NodeId, NodeState, PartitionId, Term, Time};
use coregrid_cluster::wire::{self as control_wire, ControlDatagram};
use coregrid_engine::rt::{self, ShardThread};
use coregrid_net::message::{
    ClusterStatusResponse, ControlRole, ErrorResponse, MemberState, MemberStatus, PartitionStatus,
};
use coregrid_net::transport::{DatagramSocket, TransportError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest the driver sleeps without looking at the state machines' deadlines.
const WAKE_INTERVAL_MAX: Duration = Duration::from_millis(100);
/// Largest datagram the control socket receives (a control frame's body is at most 64 KiB).
const DATAGRAM_BYTES_MAX: usize = 65_536 + 64;
/// How long a datagram send may wait for room in the socket buffer.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a node waiting for its static peers says so in the log.
const BOOTSTRAP_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long a leaving node keeps gossiping so that others see it leave rather than die.
const LEAVE_LINGER: Duration = Duration::from_millis(300);

/// What the control shard needs to start.
#[derive(Clone, Debug)]
pub struct ControlSettings {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// This node.
    pub node: NodeId,
    /// Where the control socket binds (port 0: any free port).
    pub bind: SocketAddr,
    /// Where this node's data shard 0 serves (its bound address): announced through gossip,
    /// so that other nodes can reach this one's data shards (a follower pulls from a
    /// partition's leader there; a `Topology` request tells which port serves which
    /// partitions). `None` only for a node without data shards.
    pub data_address: Option<SocketAddr>,
    /// Other nodes' control addresses (this node's own may be among them).
    pub peers: Vec<SocketAddr>,
    /// The voters' control addresses, as configured; empty: the first five members by id
    /// once every peer was heard.
    pub voters: Vec<SocketAddr>,
    /// How elections decide who stands.
    pub strategy: Strategy,
    /// The election timeout `T`.
    pub election_timeout: Duration,
    /// The controller's heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Partitions of the cluster.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// The data directory (holds `control.state`).
    pub data_dir: PathBuf,
    /// Test only: the fault file ([`super::fault`]).
    pub fault_file: Option<PathBuf>,
}

/// One member as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its state in this node's view.
    pub state: NodeState,
    /// Whether the failure detector suspects it.
    pub suspected: bool,
    /// Whether it votes.
    pub voter: bool,
    /// Its control (gossip) address.
    pub gossip_address: SocketAddr,
    /// The address of its data shard 0, as it announced it through gossip (this node's own:
    /// its own shard 0's bound address): where to reach its data shards. `None` until its
    /// announcement arrives, or for a node without data shards.
    pub data_address: Option<SocketAddr>,
}

/// What the control shard tells the data shards, whole: the latest published map, this node's
/// own state, and what `coregrid status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// This node.
    pub node: NodeId,
    /// This node's own state.
    pub state: NodeState,
    /// The latest map this node published, if any.
    pub map: Option<Arc<LeadershipMap>>,
    /// The election's term.
    pub term: coregrid_cluster::types::Term,
    /// This node's role.
    pub role: Role,
    /// The controller this node follows, if known.
    pub controller: Option<NodeId>,
    /// Every member this node knows, by id.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// The controller announced a newer committed map than `map`: serving by `map` could let
    /// this node take writes for a partition the newer map gave to another node.
    pub behind: bool,
    /// This node holds the write lease ([`Lease`]): it is in contact with a majority of voters,
    /// so it is not cut off on a minority side.
    pub lease: bool,
    /// The handoffs the controller wishes of partitions this node leads in `map` (each to
    /// carry out by its data shard: stop taking writes, wait for the target's ack of the whole
    /// log, report ready).
    pub handoffs: Vec<Handoff>,
}

impl ClusterView {
    /// A node that knows nothing yet.
    pub fn starting(node: NodeId) -> ClusterView {
        ClusterView {
            node,
            state: NodeState::Joining,
            map: None,
            term: coregrid_cluster::types::Term(0),
            role: Role::Follower,
            controller: None,
            members: BTreeMap::new(),
            behind: false,
            lease: false,
            handoffs: Vec::new(),
        }
    }

    /// The epoch of the map (0 before the first).
    pub fn epoch(&self) -> Epoch {
        self.map.as_ref().map_or(Epoch(0), |map| map.epoch)
    }

    /// The leader of `partition` in the current map.
    pub fn leader(&self, partition: u32) -> Option<NodeId> {
        self.map.as_ref()?.leader(PartitionId(partition))
    }

    /// What `coregrid status` shows of this view.
    pub fn status(&self) -> ClusterStatusResponse {
        ClusterStatusResponse {
            node: self.node,
            term: self.term,
            role: match self.role {
                Role::Follower => ControlRole::Follower,
                Role::Candidate => ControlRole::Candidate,
                Role::Controller => ControlRole::Controller,
            },
            controller: self.controller,
            epoch: self.epoch(),
            lease: self.lease,
            members: self
                .members
                .iter()
                .map(|(node, member)| MemberStatus {
                    node: *node,
                    state: match member.state {
                        NodeState::Joining => MemberState::Joining,
                        NodeState::JoinedSyncing => MemberState::JoinedSyncing,
                        NodeState::Joined => MemberState::Joined,
                        NodeState::Leaving => MemberState::Leaving,
                        NodeState::Dead => MemberState::Dead,
                    },
                    suspected: member.suspected,
                    voter: member.voter,
                    gossip_address: member.gossip_address.to_string(),
                    data_address: member
                        .data_address
                        .map_or_else(String::new, |address| address.to_string()),
                })
                .collect(),
            partitions: self
                .map
                .as_ref()
                .map(|map| {
                    map.partitions
                        .iter()
                        .map(|assignment| PartitionStatus {
                            leader: assignment.leader,
                            replicas: assignment.replicas.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether this node may serve `partition` now (design.md section 5, promise 1): the
    /// current map names it the leader, it is `Joined` and it holds the write lease; else the
    /// `NotLeader` answer, with the leader this node knows, or `Unavailable` while this node
    /// leads the partition but is out of contact with a majority (it may be cut off).
    pub fn fence(&self, partition: u32) -> Result<(), ErrorResponse> {
        let leader = self.leader(partition);
        if self.behind {
            return Err(ErrorResponse::unavailable(format!(
                "this node is catching up to a newer leadership map than epoch {}",
                self.epoch()
            )));
        }
        if leader == Some(self.node) && self.state == NodeState::Joined {
            if self.lease {
                Ok(())
            } else {
                Err(ErrorResponse::unavailable(format!(
                    "this node leads partition {partition} in epoch {} but has not heard a \
                     majority of voters within the election timeout (no write lease): it may \
                     be cut off from the cluster",
                    self.epoch()
                )))
            }
        } else {
            Err(ErrorResponse::NotLeader {
                leader: leader.filter(|&leader| leader != self.node),
                epoch: self.epoch(),
            })
        }
    }
}

/// The write lease (docs/cluster.md "The write lease"): whether this node is in contact with a
/// majority of voters, so that its data shards may take writes for the partitions it leads.
/// A node cut off on a minority side loses it within at most two election timeouts, and
/// gets it back with the first heartbeat of the controller it then follows.
///
/// Sans-IO (style.md rule 1): the driver reports every election message it handed the
/// election, with the election's status after it, and asks until when the lease holds.
/// - As the **controller** of term `t`, the lease holds while a majority of voters (itself
///   included) sent it a message of term `t` within the election timeout: the condition of
///   the election's own check-quorum, which steps the controller down no later.
/// - As a **follower**, it holds while the controller it follows sent it a heartbeat,
///   proposal or commit of the current term within the election timeout: that controller
///   holds a majority, or steps down (check-quorum) and stops sending within an election
///   timeout.
/// - A candidate, or a follower that knows no controller, holds none.
///
/// Why contact with the controller rather than with every voter: followers exchange no
/// election messages with each other (gossip reaches each peer only now and then), while the
/// controller hears every voter every heartbeat; it is Raft's check-quorum, carried to the
/// followers by the heartbeats. The price: while a new controller is being elected, no node
/// takes writes (about one to two election timeouts after a controller dies).
#[derive(Debug)]
pub struct Lease {
    node: NodeId,
    timeout: Duration,
    voters: Vec<NodeId>,
    /// Each voter's last message to this node: its term and when.
    voters_heard: BTreeMap<NodeId, (Term, Time)>,
    /// The last heartbeat, proposal or commit of the controller this node followed: who, in
    /// which term, when.
    controller_heard: Option<(NodeId, Term, Time)>,
}

impl Lease {
    /// No lease yet, for `node` among `voters`, with the election timeout `timeout`.
    pub fn new(node: NodeId, voters: Vec<NodeId>, timeout: Duration) -> Lease {
        Lease {
            node,
            timeout,
            voters,
            voters_heard: BTreeMap::new(),
            controller_heard: None,
        }
    }

    /// Notes a message of `term` from `from` that the election just handled; `status` is the
    /// election's status after handling it.
    pub fn heard(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        from_controller: bool,
        status: &Status,
    ) {
        if term != status.term || from == self.node {
            return;
        }
        if self.voters.contains(&from) {
            self.voters_heard.insert(from, (term, now));
        }
        if from_controller && status.role == Role::Follower && status.controller == Some(from) {
            self.controller_heard = Some((from, term, now));
        }
    }

    /// Until when the lease holds (it may be past: compare with the time), or `None` when
    /// this node holds none in its present role.
    pub fn until(&self, status: &Status) -> Option<Time> {
        match status.role {
            Role::Controller => {
                if !self.voters.contains(&self.node) {
                    return None;
                }
                // A majority is `voters / 2 + 1`, this node included.
                let others_needed = self.voters.len() / 2;
                if others_needed == 0 {
                    return Some(Time::MAX);
                }
                let mut heard: Vec<Time> = self
                    .voters_heard
                    .iter()
                    .filter(|(voter, (term, _))| {
                        **voter != self.node && *term == status.term && self.voters.contains(voter)
                    })
                    .map(|(_, (_, at))| *at)
                    .collect();
                heard.sort_unstable_by(|a, b| b.cmp(a));
                heard
                    .get(others_needed - 1)
                    .map(|at| at.saturating_add(self.timeout))
            }
            Role::Follower => {
                let (controller, term, at) = self.controller_heard?;
                (status.controller == Some(controller) && status.term == term)
                    .then(|| at.saturating_add(self.timeout))
            }
            Role::Candidate => None,
        }
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Time, status: &Status) -> bool {
        self.until(status).is_some_and(|until| now < until)
    }
}

/// Whether only the controller of the message's term sends it (so hearing it renews a
/// follower's lease).
fn is_controller_message(message: &ControlMessage) -> bool {
    matches!(
        message,
        ControlMessage::Heartbeat { .. }
            | ControlMessage::Propose { .. }
            | ControlMessage::Commit { .. }
    )
}

/// The latest view, shared by the control shard (which replaces it) and the data shards
/// (which each take a copy of the `Arc` when rung).
#[derive(Clone)]
pub struct ClusterFeed {
    latest: Arc<Mutex<Arc<ClusterView>>>,
    /// One per data shard: a coalescing "a new view is there".
    changed: Vec<flume::Sender<()>>,
    /// The other way: each data shard's fenced positions, for the control shard.
    positions: flume::Sender<ShardPositions>,
}

/// One data shard's fenced positions (design.md section 6a): its last record of every
/// partition it holds a replica of and that has no leader in the view it took, each taken
/// once it stopped following that partition. The control shard hands them to the election,
/// which reports them to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPositions {
    /// The data shard.
    pub shard: usize,
    /// Its positions (all of them: they replace the shard's earlier report).
    pub positions: Vec<FencedPosition>,
    /// The handoffs it made ready (all of them).
    pub ready: Vec<Handoff>,
}

impl ClusterFeed {
    /// A feed for `shards` data shards; returns it, each shard's receiver, and the control
    /// shard's receiver of the shards' fenced positions.
    pub fn new(
        node: NodeId,
        shards: usize,
    ) -> (
        ClusterFeed,
        Vec<flume::Receiver<()>>,
        flume::Receiver<ShardPositions>,
    ) {
        let (changed, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(1)).unzip();
        let (positions, positions_in) = flume::unbounded();
        let feed = ClusterFeed {
            latest: Arc::new(Mutex::new(Arc::new(ClusterView::starting(node)))),
            changed,
            positions,
        };
        (feed, receivers, positions_in)
    }

    /// A data shard's fenced positions, for the control shard (which may be gone at shutdown).
    pub fn report_positions(&self, report: ShardPositions) {
        let _gone = self.positions.send(report);
    }

    /// The latest view.
    pub fn latest(&self) -> Arc<ClusterView> {
        match self.latest.lock() {
            Ok(latest) => latest.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn publish(&self, view: ClusterView) {
        let view = Arc::new(view);
        match self.latest.lock() {
            Ok(mut latest) => *latest = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
        for changed in &self.changed {
            // Full: a ring is pending already, and the shard reads the latest when it wakes.
            let _pending = changed.try_send(());
        }
    }
}

/// What the main thread hears from the control shard.
#[derive(Debug)]
pub enum ControlEvent {
    /// The control socket is bound.
    Bound(SocketAddr),
    /// This node is `Joined` and holds a map that names a leader for every partition: it
    /// serves what it leads, and the cluster serves the rest.
    Joined(Epoch),
    /// The control shard stopped on an error it cannot continue after.
    Failed(String),
}

/// The running control shard.
pub struct ControlShard {
    thread: Option<ShardThread<()>>,
    stop: flume::Sender<()>,
    /// Events for the main thread.
    pub events: flume::Receiver<ControlEvent>,
}

impl ControlShard {
    /// Asks the control shard to leave the cluster and stop, and waits for its thread.
    pub fn stop(mut self) {
        let _gone = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            if let Err(error) = thread.join() {
                tracing::error!(%error, "the control shard ended abnormally");
            }
        }
    }
}

impl Drop for ControlShard {
    fn drop(&mut self) {
        let _gone = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the control shard over the stored `state` (read by the caller, so a bad file stops
/// the node before anything starts).
pub fn start(
    settings: ControlSettings,
    state: Option<ControlState>,
    feed: ClusterFeed,
    positions: flume::Receiver<ShardPositions>,
) -> anyhow::Result<ControlShard> {
    let (stop, stopped) = flume::bounded(1);
    let (events_sender, events) = flume::unbounded();
    let thread = rt::spawn_executor("coregrid-control", None, move || async move {
        let ends = (stopped, positions, events_sender.clone());
        if let Err(reason) = run(settings, state, feed, ends).await {
            tracing::error!(%reason, "the control shard stopped");
            let _gone = events_sender.send(ControlEvent::Failed(reason));
        }
    })?;
    Ok(ControlShard {
        thread: Some(thread),
        stop,
        events,
    })
}

struct Driver {
    settings: ControlSettings,
    origin: Instant,
    socket: DatagramSocket,
    membership: Membership,
    controller: Option<Controller>,
    /// Created with the election, once the voters are known.
    lease: Option<Lease>,
    /// Whether the last view published said the lease holds (to log changes).
    lease_held: bool,
    /// Test only: datagrams to drop.
    faults: Option<FaultFile>,
    state: ControlState,
    feed: ClusterFeed,
    events: flume::Sender<ControlEvent>,
    /// Expected static peers (this node's own address removed), for the first start.
    peers: BTreeSet<SocketAddr>,
    published: Option<Arc<LeadershipMap>>,
    joined_reported: bool,
    last_bootstrap_log: Option<Time>,
    last_view: Option<ClusterView>,
    out: Vec<u8>,
    /// The data shards' fenced positions, as each last reported them.
    positions_in: flume::Receiver<ShardPositions>,
    shard_positions: BTreeMap<usize, Vec<FencedPosition>>,
    shard_ready: BTreeMap<usize, Vec<Handoff>>,
}

async fn run(
    settings: ControlSettings,
    state: Option<ControlState>,
    feed: ClusterFeed,
    (stop, positions_in, events): (
        flume::Receiver<()>,
        flume::Receiver<ShardPositions>,
        flume::Sender<ControlEvent>,
    ),
) -> Result<(), String> {
    let mut state = state.unwrap_or_default();
    state.restarts += 1;
    control_state::store(&settings.data_dir, &state).map_err(|error| error.to_string())?;
    let socket = DatagramSocket::bind(settings.bind).map_err(|error| {
        format!(
            "cannot bind the control socket on {}: {error}",
            settings.bind
        )
    })?;
    let bound = socket.local_addr();
    let _gone = events.send(ControlEvent::Bound(bound));
    let mut config = MembershipConfig::lan(u32::try_from(settings.peers.len() + 1).unwrap_or(64));
    config.leave_linger = LEAVE_LINGER;
    // The generation grows with every start: a restarted node outranks its former life.
    let generation = state.restarts << 32;
    let mut membership = Membership::new(
        settings.cluster_id,
        settings.node,
        bound,
        settings.data_address,
        generation,
        config,
        rand::random(),
    )
    .map_err(|error| format!("membership: {error}"))?;
    let origin = Instant::now();
    let peers: BTreeSet<SocketAddr> = settings
        .peers
        .iter()
        .copied()
        .filter(|&peer| peer != bound && peer != settings.bind)
        .collect();
    membership
        .join(Time::ZERO, &peers.iter().copied().collect::<Vec<_>>())
        .map_err(|error| format!("membership: {error}"))?;
    let mut driver = Driver {
        settings,
        origin,
        socket,
        membership,
        controller: None,
        lease: None,
        lease_held: false,
        faults: None,
        state,
        feed,
        events,
        peers,
        published: None,
        joined_reported: false,
        last_bootstrap_log: None,
        last_view: None,
        out: Vec::new(),
        positions_in,
        shard_positions: BTreeMap::new(),
        shard_ready: BTreeMap::new(),
    };
    driver.published = driver.state.published_map.clone().map(Arc::new);
    if let Some(path) = driver.settings.fault_file.clone() {
        tracing::warn!(path = %path.display(),
            "TEST ONLY: control datagrams are dropped as this fault file says");
        let mut faults = FaultFile::new(path);
        faults.refresh(driver.now());
        driver.faults = Some(faults);
    }
    let mut buffer = coregrid_net::rkyv::util::AlignedVec::<16>::with_capacity(DATAGRAM_BYTES_MAX);
    buffer.resize(DATAGRAM_BYTES_MAX, 0);
    let mut leaving = false;
    loop {
        if let Some(faults) = driver.faults.as_mut() {
            faults.refresh(driver.origin.elapsed());
        }
        driver.maybe_start_election()?;
        driver.take_positions();
        driver.drain().await?;
        if leaving && driver.membership.has_left() {
            return Ok(());
        }
        if !leaving && (stop.try_recv().is_ok() || stop.is_disconnected()) {
            leaving = true;
            let now = driver.now();
            driver.membership.leave(now);
            continue;
        }
        let now = driver.now();
        let deadline = [
            driver.membership.next_deadline(),
            driver
                .controller
                .as_ref()
                .and_then(Controller::next_deadline),
            // Wake when the lease runs out, so the data shards hear of it at once.
            driver.lease_until().filter(|&until| until > now),
            driver.faults.as_ref().map(FaultFile::next_check),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + WAKE_INTERVAL_MAX)
        .min(now + WAKE_INTERVAL_MAX);
        let wait = deadline.saturating_sub(now).max(Duration::from_micros(100));
        match driver.socket.recv_from(&mut buffer, wait).await {
            Ok((length, from)) => {
                let now = driver.now();
                driver.handle_datagram(now, from, &buffer[..length]);
            }
            Err(TransportError::TimedOut(_)) => {}
            Err(error) => tracing::warn!(%error, "control socket receive failed"),
        }
        let now = driver.now();
        if driver
            .membership
            .next_deadline()
            .is_some_and(|deadline| deadline <= now)
        {
            driver.membership.handle_deadline(now);
        }
        if let Some(controller) = driver.controller.as_mut() {
            if controller
                .next_deadline()
                .is_some_and(|deadline| deadline <= now)
            {
                controller.tick(now);
            }
        }
    }
}

/// The ids of the live members whose gossip address is one of `voters` (configured control
/// addresses; a member announcing an unspecified IP matches by port, as
/// [`sent_from_its_address`] does), sorted.
fn configured_voters(members: &BTreeMap<NodeId, MemberView>, voters: &[SocketAddr]) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = members
        .iter()
        .filter(|(_, member)| member.state != NodeState::Dead)
        .filter(|(_, member)| {
            voters.iter().any(|voter| {
                *voter == member.gossip_addr
                    || (member.gossip_addr.ip().is_unspecified()
                        && voter.port() == member.gossip_addr.port())
            })
        })
        .map(|(node, _)| *node)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether a control datagram claiming to come from node `claimed` arrived from that node's
/// address: gossip and control share each node's socket, so a member's datagrams come from the
/// gossip address it announced (its port, on any address when it announced an unspecified
/// one). A node the membership does not know yet passes: the election ignores strangers.
fn sent_from_its_address(
    members: &BTreeMap<NodeId, MemberView>,
    claimed: NodeId,
    source: SocketAddr,
) -> bool {
    let Some(member) = members.get(&claimed) else {
        return true;
    };
    let announced = member.gossip_addr;
    announced == source || (announced.ip().is_unspecified() && announced.port() == source.port())
}

impl Driver {
    fn now(&self) -> Time {
        self.origin.elapsed()
    }

    fn handle_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        if let Some(faults) = self.faults.as_mut() {
            if faults.drops_received(from) {
                return;
            }
        }
        if !control_wire::is_control_datagram(bytes) {
            self.membership.handle_datagram(now, from, bytes);
            return;
        }
        let datagram = match control_wire::decode(bytes) {
            Ok(datagram) => datagram,
            Err(error) => {
                tracing::debug!(%from, %error, "control datagram refused");
                return;
            }
        };
        if datagram.cluster != self.settings.cluster_id {
            tracing::debug!(%from, "control datagram of another cluster refused");
            return;
        }
        if !sent_from_its_address(self.membership.members(), datagram.from, from) {
            tracing::debug!(%from, claimed = %datagram.from,
                "control datagram refused: not from the claimed node's address");
            return;
        }
        if let Some(controller) = self.controller.as_mut() {
            let term = datagram.message.term();
            let from_controller = is_controller_message(&datagram.message);
            controller.handle_message(now, datagram.from, datagram.message);
            let status = controller.status();
            if let Some(lease) = self.lease.as_mut() {
                lease.heard(now, datagram.from, term, from_controller, &status);
            }
        }
    }

    /// Takes the data shards' new fenced positions and, if they changed, hands them all to
    /// the election.
    fn take_positions(&mut self) {
        let mut changed = false;
        let mut ready_changed = false;
        while let Ok(report) = self.positions_in.try_recv() {
            if self.shard_ready.get(&report.shard) != Some(&report.ready) {
                ready_changed = true;
                self.shard_ready.insert(report.shard, report.ready);
            }
            let known = self.shard_positions.get(&report.shard);
            if known != Some(&report.positions) {
                changed = true;
                self.shard_positions.insert(report.shard, report.positions);
            }
        }
        let now = self.now();
        if ready_changed {
            let ready: Vec<Handoff> = self.shard_ready.values().flatten().copied().collect();
            if !ready.is_empty() {
                tracing::info!(?ready, "handoffs ready");
            }
            if let Some(controller) = self.controller.as_mut() {
                controller.handle_local_ready(now, ready);
            }
        }
        if !changed {
            return;
        }
        let all: Vec<FencedPosition> = self.shard_positions.values().flatten().copied().collect();
        if !all.is_empty() {
            tracing::info!(
                partitions = all.len(),
                "reporting the last records of replicas whose partition has no leader"
            );
        }
        if let Some(controller) = self.controller.as_mut() {
            controller.handle_local_positions(now, all);
        }
    }

    /// Until when the write lease holds, if it does in this node's present role.
    fn lease_until(&self) -> Option<Time> {
        let status = self.controller.as_ref()?.status();
        self.lease.as_ref()?.until(&status)
    }

    /// Says, at most once per [`BOOTSTRAP_LOG_INTERVAL`], that a first start still waits to
    /// hear from `expected` nodes (`who`), `seen` of them heard so far.
    fn log_bootstrap_wait(&mut self, now: Time, seen: usize, expected: usize, who: &str) {
        if self
            .last_bootstrap_log
            .is_none_or(|last| now >= last + BOOTSTRAP_LOG_INTERVAL)
        {
            self.last_bootstrap_log = Some(now);
            tracing::info!(
                seen,
                expected,
                "first start: waiting to hear from every {who}"
            );
        }
    }

    /// Creates the election once the voters are known.
    fn maybe_start_election(&mut self) -> Result<(), String> {
        if self.controller.is_some() {
            return Ok(());
        }
        let now = self.now();
        if self.state.voters.is_empty() && !self.settings.voters.is_empty() {
            // Configured: their ids, once each was heard (gossip tells which id is where).
            let heard = configured_voters(self.membership.members(), &self.settings.voters);
            // More matches than voters (members announcing unspecified IPs on one port) is
            // ambiguous: wait, and say so, rather than give a vote to the wrong node.
            if heard.len() != self.settings.voters.len() {
                let expected = self.settings.voters.len();
                self.log_bootstrap_wait(now, heard.len(), expected, "configured voter");
                return Ok(());
            }
            self.state.voters = heard;
            control_state::store(&self.settings.data_dir, &self.state)
                .map_err(|error| error.to_string())?;
            tracing::info!(voters = ?self.state.voters, "voters fixed, as configured");
        }
        if self.state.voters.is_empty() {
            let alive: Vec<NodeId> = self
                .membership
                .members()
                .iter()
                .filter(|(_, member)| member.state != NodeState::Dead)
                .map(|(node, _)| *node)
                .collect();
            // Every static peer and this node.
            if alive.len() < self.peers.len() + 1 {
                let expected = self.peers.len() + 1;
                self.log_bootstrap_wait(
                    now,
                    alive.len(),
                    expected,
                    "static peer to fix the voters",
                );
                return Ok(());
            }
            self.state.voters = election::Config::default_voters(alive);
            control_state::store(&self.settings.data_dir, &self.state)
                .map_err(|error| error.to_string())?;
            tracing::info!(voters = ?self.state.voters, "voters fixed");
        }
        let mut config = election::Config::new(
            self.state.voters.clone(),
            self.settings.strategy,
            self.settings.partitions,
            self.settings.replication_factor,
        );
        config.election_timeout = self.settings.election_timeout;
        config.heartbeat_interval = self.settings.heartbeat_interval;
        config.election_backoff_cap = config
            .election_backoff_cap
            .max(self.settings.election_timeout * 2);
        let alone = config.voters == [self.settings.node];
        self.lease = Some(Lease::new(
            self.settings.node,
            config.voters.clone(),
            self.settings.election_timeout,
        ));
        let mut controller = Controller::new(
            config,
            self.settings.node,
            Some(self.state.election()),
            now,
            rand::random(),
        )
        .map_err(|error| format!("election configuration: {error}"))?;
        controller.handle_members(now, &self.member_states());
        let positions: Vec<FencedPosition> =
            self.shard_positions.values().flatten().copied().collect();
        controller.handle_local_positions(now, positions);
        if alone {
            // Nobody to wait for or to disrupt: a single voter stands at once.
            controller.stand(now);
        }
        self.controller = Some(controller);
        // A member now, syncing: it may hold "paper" leadership (design.md section 4), so the
        // first map with leaders spreads them over every node instead of piling them on the
        // first to be `Joined` (without replication, leadership never moves afterwards).
        if self.membership.local_state() < NodeState::JoinedSyncing {
            if let Err(error) = self
                .membership
                .set_local_state(now, NodeState::JoinedSyncing)
            {
                tracing::warn!(%error, "own state not changed");
            }
        }
        Ok(())
    }

    fn member_states(&self) -> BTreeMap<NodeId, NodeState> {
        self.membership
            .members()
            .iter()
            .map(|(node, member)| (*node, member.state))
            .collect()
    }

    /// Acts on every output of both state machines until neither has any.
    async fn drain(&mut self) -> Result<(), String> {
        loop {
            let mut progressed = false;
            let mut members_changed = false;
            while let Some(output) = self.membership.poll_output() {
                progressed = true;
                match output {
                    MembershipOutput::Send { to, bytes } => self.send(to, &bytes).await,
                    MembershipOutput::StateChanged { .. }
                    | MembershipOutput::SuspicionChanged { .. }
                    | MembershipOutput::Forgotten { .. } => members_changed = true,
                    MembershipOutput::Refused { from, reason } => {
                        tracing::debug!(%from, ?reason, "gossip datagram refused");
                    }
                    MembershipOutput::Left { .. } => {}
                }
            }
            if members_changed {
                let now = self.now();
                let states = self.member_states();
                if let Some(controller) = self.controller.as_mut() {
                    controller.handle_members(now, &states);
                }
            }
            while let Some(output) = self.controller.as_mut().and_then(Controller::poll_output) {
                progressed = true;
                match output {
                    Output::Persist(persisted) => {
                        self.state.set_election(persisted);
                        control_state::store(&self.settings.data_dir, &self.state)
                            .map_err(|error| error.to_string())?;
                    }
                    Output::Send { to, message } => {
                        let Some(address) = self
                            .membership
                            .members()
                            .get(&to)
                            .map(|member| member.gossip_addr)
                        else {
                            continue;
                        };
                        let datagram = ControlDatagram {
                            cluster: self.settings.cluster_id,
                            from: self.settings.node,
                            message,
                        };
                        self.out.clear();
                        match control_wire::encode(&mut self.out, &datagram) {
                            Ok(_) => {
                                let bytes = std::mem::take(&mut self.out);
                                self.send(address, &bytes).await;
                                self.out = bytes;
                            }
                            Err(error) => {
                                tracing::error!(%error, "a control message could not be encoded")
                            }
                        }
                    }
                    Output::Publish(map) => {
                        tracing::info!(epoch = %map.epoch, term = %map.term, "map published");
                        self.published = Some(Arc::new(map));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if self.holds_current_map() && self.membership.local_state() < NodeState::Joined {
            self.advance_local_state();
            // Its announcement goes out on the next round.
        }
        // Heartbeats change what the view shows (the controller, whether this node is
        // behind) without an output: compare, and publish only a change.
        self.publish_view();
        Ok(())
    }

    /// Whether this node holds the map the controller it follows last announced as committed
    /// (or is the controller, with a map).
    fn holds_current_map(&self) -> bool {
        let Some(status) = self.controller.as_ref().map(Controller::status) else {
            return false;
        };
        let held = self.published.as_ref().map(|map| map.epoch);
        match (status.controller_committed_epoch, held) {
            (Some(committed), Some(held)) => held >= committed,
            _ => false,
        }
    }

    /// Once this node holds a map published in this life: `JoinedSyncing`, then `Joined`
    /// (data catch-up is per partition; see the module docs).
    fn advance_local_state(&mut self) {
        let now = self.now();
        for state in [NodeState::JoinedSyncing, NodeState::Joined] {
            if self.membership.local_state() < state {
                if let Err(error) = self.membership.set_local_state(now, state) {
                    tracing::warn!(%error, "own state not changed");
                }
            }
        }
    }

    fn publish_view(&mut self) {
        let status: Option<Status> = self.controller.as_ref().map(Controller::status);
        let voters: BTreeSet<NodeId> = self.state.voters.iter().copied().collect();
        let members = self
            .membership
            .members()
            .iter()
            .map(|(node, member)| {
                (
                    *node,
                    MemberInfo {
                        state: member.state,
                        suspected: member.suspected,
                        voter: voters.contains(node),
                        gossip_address: member.gossip_addr,
                        data_address: member.data_addr,
                    },
                )
            })
            .collect();
        let now = self.now();
        let lease = match (self.lease.as_ref(), status.as_ref()) {
            (Some(lease), Some(status)) => lease.holds(now, status),
            _ => false,
        };
        if lease != self.lease_held {
            self.lease_held = lease;
            tracing::info!(
                at_ms = now.as_millis() as u64,
                node = %self.settings.node,
                lease,
                role = ?status.map(|status| status.role),
                controller = ?status.and_then(|status| status.controller),
                "write lease {}",
                if lease {
                    "held: in contact with a majority of voters"
                } else {
                    "lost: no majority of voters heard within the election timeout"
                }
            );
        }
        let view = ClusterView {
            lease,
            node: self.settings.node,
            state: self.membership.local_state(),
            map: self.published.clone(),
            term: status.map_or(self.state.term, |status| status.term),
            role: status.map_or(Role::Follower, |status| status.role),
            controller: status.and_then(|status| status.controller),
            members,
            behind: status
                .and_then(|status| status.controller_committed_epoch)
                .is_some_and(|committed| {
                    self.published
                        .as_ref()
                        .is_none_or(|map| map.epoch < committed)
                }),
            handoffs: match (self.controller.as_ref(), self.published.as_ref()) {
                (Some(controller), Some(map)) => controller
                    .handoffs_wanted()
                    .iter()
                    .filter(|handoff| {
                        handoff.map_epoch == map.epoch
                            && map.leader(handoff.partition) == Some(self.settings.node)
                    })
                    .copied()
                    .collect(),
                _ => Vec::new(),
            },
        };
        let every_partition_led = view.map.as_ref().is_some_and(|map| {
            map.partitions
                .iter()
                .all(|assignment| assignment.leader.is_some())
        });
        let joined =
            (!self.joined_reported && view.state == NodeState::Joined && every_partition_led)
                .then(|| view.epoch());
        if self.last_view.as_ref() != Some(&view) {
            self.last_view = Some(view.clone());
            self.feed.publish(view);
        }
        // After the data shards were handed the view: the node prints `ready` on this event,
        // and a client's first request must not find a shard still without the map.
        if let Some(epoch) = joined {
            self.joined_reported = true;
            let _gone = self.events.send(ControlEvent::Joined(epoch));
        }
    }

    async fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        if let Some(faults) = self.faults.as_mut() {
            if faults.drops_sent(to) {
                return;
            }
        }
        if let Err(error) = self.socket.send_to(bytes, to, SEND_TIMEOUT).await {
            tracing::debug!(%to, %error, "control datagram not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregrid_cluster::map::PartitionAssignment;
    use coregrid_cluster::types::Term;

    fn view(state: NodeState, behind: bool) -> ClusterView {
        let (me, other) = (NodeId(1), NodeId(2));
        ClusterView {
            state,
            behind,
            lease: true,
            map: Some(Arc::new(LeadershipMap {
                epoch: Epoch(5),
                term: Term(2),
                partitions: vec![
                    PartitionAssignment {
                        leader: Some(me),
                        replicas: vec![me, other],
                    },
                    PartitionAssignment {
                        leader: Some(other),
                        replicas: vec![other, me],
                    },
                    PartitionAssignment {
                        leader: None,
                        replicas: vec![me, other],
                    },
                ],
            })),
            ..ClusterView::starting(me)
        }
    }

    fn not_leader(leader: Option<u64>, epoch: u64) -> Result<(), ErrorResponse> {
        Err(ErrorResponse::NotLeader {
            leader: leader.map(NodeId),
            epoch: Epoch(epoch),
        })
    }

    #[test]
    fn configured_voters_are_the_live_members_at_their_addresses() {
        let member = |address: &str, state: NodeState| MemberView {
            state,
            suspected: false,
            gossip_addr: address.parse().unwrap(),
            data_addr: None,
            generation: 1,
        };
        let members: BTreeMap<NodeId, MemberView> = [
            (NodeId(9), member("127.0.0.1:7300", NodeState::Joining)),
            (NodeId(4), member("127.0.0.1:7301", NodeState::Joining)),
            (NodeId(5), member("127.0.0.1:7302", NodeState::Joining)),
            (NodeId(6), member("127.0.0.1:7303", NodeState::Dead)),
            (NodeId(7), member("0.0.0.0:7304", NodeState::Joining)),
        ]
        .into_iter()
        .collect();
        let at = |ports: &[u16]| -> Vec<SocketAddr> {
            ports
                .iter()
                .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
                .collect()
        };
        assert_eq!(
            configured_voters(&members, &at(&[7300, 7301])),
            vec![NodeId(4), NodeId(9)],
            "by address, sorted by id"
        );
        assert_eq!(
            configured_voters(&members, &at(&[7300, 7303, 7309])),
            vec![NodeId(9)],
            "a dead member and an unheard address are not (yet) voters"
        );
        assert_eq!(
            configured_voters(&members, &at(&[7304])),
            vec![NodeId(7)],
            "an unspecified IP matches by port"
        );
    }

    #[test]
    fn a_control_datagram_counts_only_from_the_claimed_nodes_address() {
        let member = |address: &str| MemberView {
            state: NodeState::Joined,
            suspected: false,
            gossip_addr: address.parse().unwrap(),
            data_addr: None,
            generation: 1,
        };
        let members: BTreeMap<NodeId, MemberView> = [
            (NodeId(1), member("127.0.0.1:7301")),
            (NodeId(2), member("0.0.0.0:7302")),
        ]
        .into_iter()
        .collect();
        let at = |address: &str| address.parse::<SocketAddr>().unwrap();
        assert!(sent_from_its_address(
            &members,
            NodeId(1),
            at("127.0.0.1:7301")
        ));
        assert!(
            !sent_from_its_address(&members, NodeId(1), at("127.0.0.1:9999")),
            "another socket claiming node 1"
        );
        assert!(!sent_from_its_address(
            &members,
            NodeId(1),
            at("10.0.0.5:7301")
        ));
        assert!(sent_from_its_address(
            &members,
            NodeId(2),
            at("10.0.0.5:7302")
        ));
        assert!(!sent_from_its_address(
            &members,
            NodeId(2),
            at("10.0.0.5:7303")
        ));
        assert!(
            sent_from_its_address(&members, NodeId(3), at("10.0.0.5:1")),
            "a stranger is left to the election, which ignores it"
        );
    }

    #[test]
    fn only_the_joined_leader_of_the_current_map_passes_the_fence() {
        let joined = view(NodeState::Joined, false);
        assert_eq!(joined.fence(0), Ok(()));
        assert_eq!(joined.fence(1), not_leader(Some(2), 5));
        assert_eq!(joined.fence(2), not_leader(None, 5));
        assert_eq!(
            joined.fence(3),
            not_leader(None, 5),
            "a partition past the map"
        );
        for state in [
            NodeState::Joining,
            NodeState::JoinedSyncing,
            NodeState::Leaving,
            NodeState::Dead,
        ] {
            assert_eq!(view(state, false).fence(0), not_leader(None, 5), "{state}");
        }
        assert!(matches!(
            view(NodeState::Joined, true).fence(0),
            Err(ErrorResponse::Unavailable { .. })
        ));
        assert_eq!(
            ClusterView::starting(NodeId(1)).fence(0),
            not_leader(None, 0)
        );
    }

    #[test]
    fn without_the_lease_a_leader_refuses_and_others_still_name_the_leader() {
        let cut_off = ClusterView {
            lease: false,
            ..view(NodeState::Joined, false)
        };
        assert!(
            matches!(cut_off.fence(0), Err(ErrorResponse::Unavailable { .. })),
            "the partition it leads: {:?}",
            cut_off.fence(0)
        );
        assert_eq!(
            cut_off.fence(1),
            not_leader(Some(2), 5),
            "another's partition"
        );
        assert_eq!(cut_off.fence(2), not_leader(None, 5));
    }

    fn status(term: u64, role: Role, controller: Option<u64>) -> Status {
        Status {
            term: Term(term),
            role,
            controller: controller.map(NodeId),
            controller_committed_epoch: None,
            published_epoch: Epoch(0),
            persisted_term: Term(term),
            stored_version: Default::default(),
        }
    }

    fn ms(milliseconds: u64) -> Time {
        Duration::from_millis(milliseconds)
    }

    const TIMEOUT: Duration = Duration::from_millis(300);

    #[test]
    fn a_follower_holds_the_lease_while_its_controller_heartbeats() {
        let voters: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let mut lease = Lease::new(NodeId(1), voters, TIMEOUT);
        let following = status(3, Role::Follower, Some(2));
        assert!(!lease.holds(ms(0), &following), "nothing heard yet");
        lease.heard(ms(10), NodeId(2), Term(3), true, &following);
        assert!(lease.holds(ms(10), &following));
        assert!(lease.holds(ms(309), &following));
        assert!(
            !lease.holds(ms(310), &following),
            "silent for the election timeout"
        );
        assert_eq!(lease.until(&following), Some(ms(310)));
        // Other nodes' messages, or the controller's election messages, renew nothing.
        lease.heard(ms(320), NodeId(3), Term(3), false, &following);
        lease.heard(ms(320), NodeId(2), Term(3), false, &following);
        assert!(!lease.holds(ms(320), &following));
        // A heartbeat of an older term renews nothing.
        lease.heard(ms(330), NodeId(2), Term(2), true, &following);
        assert!(!lease.holds(ms(330), &following));
        lease.heard(ms(340), NodeId(2), Term(3), true, &following);
        assert!(lease.holds(ms(340), &following), "contact is back");
        // A new term or another controller: the old contact counts for nothing.
        assert!(!lease.holds(ms(341), &status(4, Role::Follower, Some(2))));
        assert!(!lease.holds(ms(341), &status(3, Role::Follower, Some(4))));
        assert!(!lease.holds(ms(341), &status(3, Role::Follower, None)));
        assert!(!lease.holds(ms(341), &status(3, Role::Candidate, Some(2))));
    }

    #[test]
    fn a_controller_holds_the_lease_while_a_majority_of_voters_answer() {
        let voters: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let mut lease = Lease::new(NodeId(1), voters, TIMEOUT);
        let controlling = status(7, Role::Controller, Some(1));
        assert!(
            !lease.holds(ms(0), &controlling),
            "itself alone is not a majority of 5"
        );
        lease.heard(ms(10), NodeId(2), Term(7), false, &controlling);
        assert!(!lease.holds(ms(10), &controlling), "two of five");
        lease.heard(ms(20), NodeId(3), Term(7), false, &controlling);
        assert!(lease.holds(ms(20), &controlling), "three of five");
        // The lease runs out with the second most recent of the others.
        assert_eq!(lease.until(&controlling), Some(ms(310)));
        lease.heard(ms(100), NodeId(4), Term(7), false, &controlling);
        assert_eq!(lease.until(&controlling), Some(ms(320)));
        // Messages of another term, or from a non-voter, do not count.
        lease.heard(ms(200), NodeId(5), Term(6), false, &controlling);
        lease.heard(ms(200), NodeId(9), Term(7), false, &controlling);
        assert_eq!(lease.until(&controlling), Some(ms(320)));
        assert!(!lease.holds(ms(320), &controlling));
        // In a later term, the earlier term's answers count for nothing.
        assert_eq!(lease.until(&status(8, Role::Controller, Some(1))), None);
        // A single voter needs nobody.
        let alone = Lease::new(NodeId(1), vec![NodeId(1)], TIMEOUT);
        assert!(alone.holds(Duration::from_secs(1_000_000), &controlling));
        // A controller that is not a voter (never happens) holds none.
        let stranger = Lease::new(NodeId(9), vec![NodeId(1)], TIMEOUT);
        assert!(!stranger.holds(ms(0), &controlling));
    }
}
