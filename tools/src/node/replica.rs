//! Pull replication on a node (design.md section 6), both sides, on the data shard that owns
//! each partition:
//!
//! - **Leader.** A follower node opens a replication connection to the shard that owns a
//!   partition here (a `Hello` for the replication channel) and sends `SyncRequest`s on it.
//!   [`fence_sync`] lets one through only if this node leads the partition in the current map,
//!   in the epoch the follower holds, and the follower holds one of its replicas;
//!   [`answer_sync`] then serves it from the partition's WAL (`coregrid_replication::leader`),
//!   and the follower's last record, once known to be on this log, counts as its ack
//!   ([`coregrid_replication::progress::Progress`]).
//! - **Follower.** [`Followers`] keeps, on each data shard, one session per leader node it
//!   follows partitions from: a task that asks the leader for its topology (at the data
//!   address the leader gossips) and opens one replication connection per leader shard that
//!   owns some of them (with equal shard counts, one), then keeps one request in flight per
//!   partition on it, answered in any order: each asks for the records after the partition's
//!   own last one and long-polls when it has them all. It appends what it gets (verified
//!   record by record by the engine before anything is written), cuts its log back where the
//!   leader says the two diverge, and reconnects with a growing pause after a failure. A
//!   session ends when the map changes its leader's partitions, its epoch or its address (a
//!   restarted node listens on new ports); the next view starts the next one.
//!
//! A follower partition writes nothing of its own: its log holds only its leaders' records, so
//! the logs of a partition's replicas agree up to where their epoch histories diverge (the
//! property divergence truncation rests on). This is why collection changes are written only
//! by leaders (`handler::CollectionScope`).
//!
//! A follower the leader's log no longer reaches (`SnapshotNeeded`, or a divergence below its
//! own snapshot) fetches the leader's newest snapshot in chunks on the same connection
//! ([`answer_snapshot`] on the leader, `SnapshotFetch` on the follower), installs it in place
//! of its log, and syncs on from there. Writes waiting for follower acks are the server's
//! (`server.rs`, `Progress`).
//!
//! When a partition loses its leader, the map that fences it gives it none: its session ends,
//! sends no more acks, and [`fenced_positions`] reports the replica's last record for the
//! controller's choice of the next leader (docs/cluster.md, failover).

use super::constants::{
    SNAPSHOT_CHUNK_BYTES, SYNC_ANSWER_GRACE_MS, SYNC_CONNECT_TIMEOUT_MS, SYNC_REQUEST_BYTES,
    SYNC_RETRY_MS_MAX, SYNC_RETRY_MS_MIN, SYNC_WAIT_MS,
};
use super::control::ClusterView;
use coregrid_cluster::map::FencedPosition;
use coregrid_engine::rt::DmaStorage;
use coregrid_engine::{rt, Partition};
use coregrid_net::constants::PROTOCOL_VERSION;
use coregrid_net::message::{
    ArchivedHelloReply, ArchivedSnapshotOutcome, ArchivedSnapshotRequest, ArchivedSyncOutcome,
    ArchivedSyncRequest, EpochStart, ErrorResponse, Hello, HelloReply, Peer, SnapshotOutcome,
    SnapshotRequest, SnapshotResponse, SyncOutcome, SyncRequest, SyncResponse, TopologyRequest,
    TopologyResponse,
};
use coregrid_net::transport::{Connection, ConnectionReader, ConnectionWriter, ReadOutcome};
use coregrid_net::{
    access, encode, ChannelKind, ClusterId, Epoch, Frame, FrameMeta, Lsn, NodeId, PartitionId,
    RequestId, ShardId,
};
use coregrid_replication::follower::{apply_answer, sync_position, Applied};
use coregrid_replication::history::LogEnd;
use coregrid_replication::leader::{serve_sync, SyncAnswer, SyncCursor};
use coregrid_replication::snapshot::{serve_snapshot, Fetched, SnapshotAnswer, SnapshotFetch};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// A follower's sync request, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncAsk {
    /// The partition.
    pub partition: u32,
    /// The map epoch the follower holds.
    pub map_epoch: u64,
    /// The follower's last durable record.
    pub last: LogEnd,
    /// Most record bytes wanted.
    pub max_bytes: usize,
    /// The long poll's limit.
    pub wait: Duration,
}

impl SyncAsk {
    /// From a validated request.
    pub fn from_wire(request: &ArchivedSyncRequest) -> SyncAsk {
        SyncAsk {
            partition: request.partition.get().get(),
            map_epoch: request.map_epoch.get().get(),
            last: LogEnd {
                epoch: request.last_epoch.get().get(),
                lsn: request.last_lsn.get().get(),
            },
            max_bytes: request.max_bytes.to_native() as usize,
            wait: Duration::from_millis(u64::from(request.wait_ms.to_native())),
        }
    }
}

/// Whether this node may serve `peer`'s sync request now: it leads the partition in the
/// current map and is `Joined` with its write lease (the same fence as a write), the follower
/// holds the same map epoch (a deposed leader serves no one; a follower on an older map waits
/// for the new one), and the map gives `peer` a replica of the partition.
pub fn fence_sync(
    view: &ClusterView,
    peer: NodeId,
    partition: u32,
    map_epoch: u64,
) -> Result<(), ErrorResponse> {
    view.fence(partition)?;
    let epoch = view.epoch().get();
    if map_epoch != epoch {
        return Err(ErrorResponse::unavailable(format!(
            "the follower holds map epoch {map_epoch}, this leader {epoch}: the older one must \
             catch up"
        )));
    }
    let replicas = view
        .map
        .as_ref()
        .and_then(|map| map.assignment(PartitionId(partition)))
        .map(|assignment| assignment.replicas.as_slice())
        .unwrap_or_default();
    if peer == view.node || !replicas.contains(&peer) {
        return Err(ErrorResponse::invalid_request(format!(
            "node {peer} holds no replica of partition {partition} in epoch {epoch}"
        )));
    }
    Ok(())
}

/// A follower's snapshot request, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAsk {
    /// The partition.
    pub partition: u32,
    /// The map epoch the follower holds.
    pub map_epoch: u64,
    /// What it asks for.
    pub request: coregrid_replication::snapshot::SnapshotRequest,
}

impl SnapshotAsk {
    /// From a validated request.
    pub fn from_wire(request: &ArchivedSnapshotRequest) -> SnapshotAsk {
        SnapshotAsk {
            partition: request.partition.get().get(),
            map_epoch: request.map_epoch.get().get(),
            request: coregrid_replication::snapshot::SnapshotRequest {
                lsn: request.lsn.get().get(),
                offset: request.offset.to_native(),
                max_bytes: request.max_bytes.to_native() as usize,
            },
        }
    }
}

/// Serves a fenced snapshot request from `partition`'s newest snapshot.
pub async fn answer_snapshot(
    partition: &Partition<DmaStorage>,
    ask: &SnapshotAsk,
) -> Result<SnapshotOutcome, ErrorResponse> {
    let answer = serve_snapshot(partition, &ask.request)
        .await
        .map_err(|error| ErrorResponse::unavailable(error.to_string()))?;
    Ok(match answer {
        SnapshotAnswer::Chunk {
            lsn,
            size,
            offset,
            bytes,
        } => SnapshotOutcome::Chunk {
            lsn: Lsn(lsn),
            size,
            offset,
            bytes,
        },
        SnapshotAnswer::NoSnapshot => SnapshotOutcome::NoSnapshot,
        SnapshotAnswer::Retry => SnapshotOutcome::Retry,
    })
}

/// Serves a fenced sync request from `partition`'s log.
pub async fn answer_sync(
    partition: &Partition<DmaStorage>,
    ask: &SyncAsk,
    cursor: &mut SyncCursor,
) -> Result<SyncAnswer, ErrorResponse> {
    let request = coregrid_replication::leader::SyncRequest {
        last: ask.last,
        max_bytes: ask.max_bytes,
    };
    serve_sync(partition, &request, cursor, ask.wait)
        .await
        .map_err(|error| ErrorResponse::unavailable(error.to_string()))
}

/// The wire form of an answer.
pub fn to_outcome(answer: SyncAnswer) -> SyncOutcome {
    match answer {
        SyncAnswer::Records {
            records,
            last_lsn,
            leader_end,
        } => SyncOutcome::Records {
            last_lsn: Lsn(last_lsn),
            leader_end_epoch: Epoch(leader_end.epoch),
            leader_end_lsn: Lsn(leader_end.lsn),
            records,
        },
        SyncAnswer::Diverged { history, end_lsn } => SyncOutcome::Diverged {
            history: history
                .into_iter()
                .map(|(epoch, first_lsn)| EpochStart {
                    epoch: Epoch(epoch),
                    first_lsn: Lsn(first_lsn),
                })
                .collect(),
            end_lsn: Lsn(end_lsn),
        },
        SyncAnswer::SnapshotNeeded { end_lsn } => SyncOutcome::SnapshotNeeded {
            end_lsn: Lsn(end_lsn),
        },
    }
}

/// This shard's fenced positions in `view` (design.md section 6a): for every partition of
/// `partitions` that the view's map gives no leader and this node a replica of, its last
/// durable record and whether it may lead. Call it after [`Followers::update`] took the same
/// view: the sessions of those partitions are stopped then, and send no more acks.
pub fn fenced_positions(
    view: &ClusterView,
    partitions: &[Rc<Partition<DmaStorage>>],
) -> Vec<FencedPosition> {
    let Some(map) = view.map.as_ref() else {
        return Vec::new();
    };
    partitions
        .iter()
        .filter_map(|partition| {
            let id = PartitionId(partition.id());
            let assignment = map.assignment(id)?;
            if assignment.leader.is_some() || !assignment.replicas.contains(&view.node) {
                return None;
            }
            let last = sync_position(partition);
            Some(FencedPosition {
                partition: id,
                map_epoch: map.epoch,
                last_epoch: Epoch(last.epoch),
                last_lsn: last.lsn,
                usable: partition.may_lead(),
            })
        })
        .collect()
}

/// Who this node is, for the follower sessions' handshakes.
#[derive(Clone, Copy, Debug)]
pub struct FollowerIdentity {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// This node.
    pub node: NodeId,
}

/// A partition of this shard.
type StoredPartition = Rc<Partition<DmaStorage>>;

/// One follower session: the partitions this shard follows from one leader node, at which
/// address (a restarted leader may listen elsewhere), in which map epoch, and how to stop it.
struct Session {
    address: SocketAddr,
    map_epoch: u64,
    partitions: Vec<u32>,
    stop: Rc<Cell<bool>>,
}

/// The follower sessions of one data shard, and how far each partition has caught up.
pub struct Followers {
    identity: FollowerIdentity,
    /// By leader node.
    sessions: RefCell<HashMap<NodeId, Session>>,
    /// Partitions whose last sync found the follower holding every record its leader had:
    /// those answer `Any` reads. Cleared when a session starts or fails.
    caught_up: Rc<RefCell<HashMap<u32, bool>>>,
}

impl Followers {
    /// No sessions yet.
    pub fn new(identity: FollowerIdentity) -> Followers {
        Followers {
            identity,
            sessions: RefCell::new(HashMap::new()),
            caught_up: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// Whether this node's replica of `partition` had every record of its leader at its last
    /// sync (and the session is still on).
    pub fn is_caught_up(&self, partition: u32) -> bool {
        self.caught_up
            .borrow()
            .get(&partition)
            .copied()
            .unwrap_or(false)
    }

    /// Starts, keeps or stops sessions so that there is exactly one per leader node for the
    /// partitions of `partitions` (this shard's) that `view` has this node follow from it,
    /// pulling at the data address the leader gossips, in the view's epoch. A session whose
    /// leader, address, epoch or partition set changed is replaced.
    pub fn update(&self, view: &ClusterView, partitions: &[Rc<Partition<DmaStorage>>]) {
        let epoch = view.epoch().get();
        let mut wanted: HashMap<NodeId, (SocketAddr, Vec<StoredPartition>)> = HashMap::new();
        if let Some(map) = view.map.as_ref() {
            for partition in partitions {
                let id = partition.id();
                let Some(assignment) = map.assignment(PartitionId(id)) else {
                    continue;
                };
                let Some(leader) = assignment.leader else {
                    continue;
                };
                if leader == view.node || !assignment.replicas.contains(&view.node) {
                    continue;
                }
                let Some(address) = view
                    .members
                    .get(&leader)
                    .and_then(|member| member.data_address)
                else {
                    continue;
                };
                wanted
                    .entry(leader)
                    .or_insert_with(|| (address, Vec::new()))
                    .1
                    .push(partition.clone());
            }
        }
        let mut sessions = self.sessions.borrow_mut();
        sessions.retain(|leader, session| {
            let keep = wanted.get(leader).is_some_and(|(address, followed)| {
                *address == session.address
                    && session.map_epoch == epoch
                    && followed
                        .iter()
                        .map(|partition| partition.id())
                        .eq(session.partitions.iter().copied())
            });
            if !keep {
                session.stop.set(true);
                let mut caught_up = self.caught_up.borrow_mut();
                for id in &session.partitions {
                    caught_up.remove(id);
                }
            }
            keep
        });
        for (leader, (address, followed)) in wanted {
            if sessions.contains_key(&leader) {
                continue;
            }
            let stop = Rc::new(Cell::new(false));
            let ids: Vec<u32> = followed.iter().map(|partition| partition.id()).collect();
            tracing::info!(%leader, %address, epoch, partitions = ids.len(), "following");
            sessions.insert(
                leader,
                Session {
                    address,
                    map_epoch: epoch,
                    partitions: ids,
                    stop: stop.clone(),
                },
            );
            let target = SessionTarget {
                identity: self.identity,
                leader,
                address,
                map_epoch: epoch,
            };
            rt::spawn_detached(run_session(target, followed, stop, self.caught_up.clone()));
        }
    }

    /// Stops every session (the shard is stopping).
    pub fn stop_all(&self) {
        for (_, session) in self.sessions.borrow_mut().drain() {
            session.stop.set(true);
        }
        self.caught_up.borrow_mut().clear();
    }
}

/// Pulls `partitions` from the session's leader until `stop` is set, reconnecting after
/// failures with a growing pause.
async fn run_session(
    target: SessionTarget,
    partitions: Vec<Rc<Partition<DmaStorage>>>,
    stop: Rc<Cell<bool>>,
    caught_up: Rc<RefCell<HashMap<u32, bool>>>,
) {
    let mut pause = Duration::from_millis(SYNC_RETRY_MS_MIN);
    while !stop.get() {
        let progressed = Cell::new(false);
        let ended = pull_from_leader(&target, &partitions, &stop, &caught_up, &progressed).await;
        for partition in &partitions {
            caught_up.borrow_mut().remove(&partition.id());
        }
        match ended {
            Ok(()) => break,
            Err(reason) => {
                if progressed.get() {
                    pause = Duration::from_millis(SYNC_RETRY_MS_MIN);
                }
                tracing::info!(leader = %target.leader, %reason, ?pause, "sync stopped; retrying");
                rt::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(SYNC_RETRY_MS_MAX));
            }
        }
    }
    tracing::info!(leader = %target.leader, "no longer following");
}

struct SessionTarget {
    identity: FollowerIdentity,
    leader: NodeId,
    address: SocketAddr,
    map_epoch: u64,
}

/// One round of a session: the leader's topology, then one replication connection per
/// leader shard that owns some of the partitions, all pulling at once. Ends at the first
/// failure (the session reconnects) or when stopped.
async fn pull_from_leader(
    target: &SessionTarget,
    partitions: &[Rc<Partition<DmaStorage>>],
    stop: &Cell<bool>,
    caught_up: &RefCell<HashMap<u32, bool>>,
    progressed: &Cell<bool>,
) -> Result<(), String> {
    let shards = leader_shards(target).await?;
    let mut by_shard: HashMap<(u16, ShardId), Vec<Rc<Partition<DmaStorage>>>> = HashMap::new();
    for partition in partitions {
        let owner = shards
            .iter()
            .find(|(_, _, owned)| owned.contains(&partition.id()))
            .map(|(port, shard, _)| (*port, *shard))
            .ok_or_else(|| {
                format!(
                    "the leader's topology has no shard for partition {}",
                    partition.id()
                )
            })?;
        by_shard.entry(owner).or_default().push(partition.clone());
    }
    let pulls = by_shard.into_iter().map(|((port, shard), group)| {
        let address = SocketAddr::new(target.address.ip(), port);
        async move { pull(target, address, shard, group, stop, caught_up, progressed).await }
    });
    futures::future::try_join_all(pulls).await?;
    Ok(())
}

/// Reads until a whole frame is there and returns what `read` makes of it.
async fn read_answer<T>(
    reader: &mut ConnectionReader,
    timeout: Duration,
    read: impl FnOnce(&Frame<'_>) -> Result<T, String>,
) -> Result<T, String> {
    loop {
        if let Some(frame) = reader
            .decoder()
            .next_frame()
            .map_err(|error| format!("bad frame from the leader: {error}"))?
        {
            return read(&frame);
        }
        read_more(reader, timeout).await?;
    }
}

/// One read into the decoder.
async fn read_more(reader: &mut ConnectionReader, timeout: Duration) -> Result<(), String> {
    match reader.read(timeout).await {
        Ok(ReadOutcome::Received(_)) => Ok(()),
        Ok(ReadOutcome::Closed) => Err("the leader closed the connection".into()),
        Err(error) => Err(format!("reading from the leader: {error}")),
    }
}

/// Opens a connection to `address` and completes the handshake for `channel`.
async fn open(
    session: &SessionTarget,
    address: SocketAddr,
    channel: ChannelKind,
    shard: Option<ShardId>,
) -> Result<(ConnectionReader, ConnectionWriter), String> {
    let timeout = Duration::from_millis(SYNC_CONNECT_TIMEOUT_MS);
    let connection = Connection::connect(address, timeout)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let (mut reader, mut writer) = connection.split(ChannelKind::Handshake);
    let hello = Hello {
        cluster_id: session.identity.cluster_id,
        protocol_version: PROTOCOL_VERSION,
        channel,
        sender: Peer::Node(session.identity.node),
        node: Some(session.leader),
        shard,
    };
    let mut out = Vec::new();
    encode(&mut out, FrameMeta::default(), &hello).map_err(|error| error.to_string())?;
    writer
        .write_all(&out, timeout)
        .await
        .map_err(|error| format!("handshake with {address}: {error}"))?;
    read_answer(&mut reader, timeout, |frame| {
        match access::<HelloReply>(frame).map_err(|error| error.to_string())? {
            ArchivedHelloReply::Accepted(_) => Ok(()),
            refused => Err(format!("{address} refused the handshake: {refused:?}")),
        }
    })
    .await?;
    reader.decoder().set_channel(channel);
    Ok((reader, writer))
}

/// The leader's shards: `(port, shard, partitions)` each, from its topology.
async fn leader_shards(target: &SessionTarget) -> Result<Vec<(u16, ShardId, Vec<u32>)>, String> {
    let (mut reader, mut writer) = open(target, target.address, ChannelKind::Client, None).await?;
    let timeout = Duration::from_millis(SYNC_CONNECT_TIMEOUT_MS);
    let mut out = Vec::new();
    encode(&mut out, FrameMeta::default(), &TopologyRequest {})
        .map_err(|error| error.to_string())?;
    writer
        .write_all(&out, timeout)
        .await
        .map_err(|error| format!("asking for the topology: {error}"))?;
    let shards = read_answer(&mut reader, timeout, |frame| {
        let topology = access::<TopologyResponse>(frame)
            .map_err(|error| format!("the leader's topology: {error}"))?;
        Ok(topology
            .shards
            .iter()
            .map(|shard| {
                (
                    shard.port.to_native(),
                    shard.shard.get(),
                    shard.partitions.iter().map(|id| id.get().get()).collect(),
                )
            })
            .collect())
    })
    .await?;
    let _closing = writer.close();
    Ok(shards)
}

/// What a request in flight on a replication connection asked for.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// The records after this last record.
    Sync(LogEnd),
    /// A chunk of the leader's snapshot.
    Snapshot,
}

/// Numbers and encodes the requests of one replication connection, and remembers what each
/// asked for.
struct Asker {
    map_epoch: u64,
    next_request_id: u64,
    in_flight: HashMap<u64, (usize, Asked)>,
}

impl Asker {
    fn meta(&mut self, index: usize, asked: Asked) -> FrameMeta {
        self.next_request_id += 1;
        self.in_flight.insert(self.next_request_id, (index, asked));
        FrameMeta {
            request_id: RequestId(self.next_request_id),
            epoch: Epoch(self.map_epoch),
        }
    }

    /// Asks for the records after `partition`'s (number `index`) last durable one.
    fn sync(
        &mut self,
        index: usize,
        partition: &Partition<DmaStorage>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let last = sync_position(partition);
        let request = SyncRequest {
            partition: PartitionId(partition.id()),
            map_epoch: Epoch(self.map_epoch),
            last_epoch: Epoch(last.epoch),
            last_lsn: Lsn(last.lsn),
            max_bytes: SYNC_REQUEST_BYTES,
            wait_ms: SYNC_WAIT_MS,
        };
        let meta = self.meta(index, Asked::Sync(last));
        encode(out, meta, &request)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// Asks for the next chunk of the leader's snapshot of `partition` (number `index`).
    fn snapshot(
        &mut self,
        index: usize,
        partition: u32,
        fetch: &SnapshotFetch<DmaStorage>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let next = fetch.next_request();
        let request = SnapshotRequest {
            partition: PartitionId(partition),
            map_epoch: Epoch(self.map_epoch),
            lsn: Lsn(next.lsn),
            offset: next.offset,
            max_bytes: u32::try_from(next.max_bytes).unwrap_or(u32::MAX),
        };
        let meta = self.meta(index, Asked::Snapshot);
        encode(out, meta, &request)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// One replication connection to a leader shard, pulling every partition of `partitions` at
/// once: one request in flight per partition, answered in any order, each answer applied and
/// followed by that partition's next request. A partition the leader's log no longer reaches
/// fetches the leader's snapshot on the same connection, chunk by chunk, installs it, and
/// syncs from the log after it. `Ok` when stopped; `Err` says why the connection ended (a
/// snapshot fetch under way then starts over on the next connection).
async fn pull(
    target: &SessionTarget,
    address: SocketAddr,
    shard: ShardId,
    partitions: Vec<Rc<Partition<DmaStorage>>>,
    stop: &Cell<bool>,
    caught_up: &RefCell<HashMap<u32, bool>>,
    progressed: &Cell<bool>,
) -> Result<(), String> {
    let (mut reader, mut writer) =
        open(target, address, ChannelKind::Replication, Some(shard)).await?;
    let answer_timeout = Duration::from_millis(u64::from(SYNC_WAIT_MS) + SYNC_ANSWER_GRACE_MS);
    let mut out = Vec::new();
    let mut asker = Asker {
        map_epoch: target.map_epoch,
        next_request_id: 0,
        in_flight: HashMap::new(),
    };
    // Partition (index into `partitions`) -> its snapshot fetch under way.
    let mut fetches: HashMap<usize, SnapshotFetch<DmaStorage>> = HashMap::new();
    for (index, partition) in partitions.iter().enumerate() {
        asker.sync(index, partition, &mut out)?;
    }
    writer
        .write_all(&out, answer_timeout)
        .await
        .map_err(|error| format!("sending sync requests: {error}"))?;
    while !stop.get() {
        let frame = loop {
            if let Some(frame) = reader
                .decoder()
                .next_frame()
                .map_err(|error| format!("bad frame from the leader: {error}"))?
            {
                break frame;
            }
            read_more(&mut reader, answer_timeout).await?;
        };
        let Some((index, asked)) = asker.in_flight.remove(&frame.request_id().0) else {
            return Err(format!(
                "an answer to request {}, which was not asked",
                frame.request_id().0
            ));
        };
        let partition = &partitions[index];
        let id = partition.id();
        out.clear();
        match asked {
            Asked::Sync(last) => {
                let response = access::<SyncResponse>(&frame)
                    .map_err(|error| format!("a bad sync answer: {error}"))?;
                check_answered(id, response.partition.get().get())?;
                let next = apply_response(
                    target,
                    partition,
                    &response.outcome,
                    last,
                    caught_up,
                    progressed,
                )
                .await?;
                match next {
                    Next::Sync => asker.sync(index, partition, &mut out)?,
                    Next::Snapshot => {
                        tracing::info!(
                            partition = id,
                            leader = %target.leader,
                            "the leader's log no longer reaches this replica: fetching its snapshot"
                        );
                        let fetch = fetches
                            .entry(index)
                            .or_insert_with(|| SnapshotFetch::new(SNAPSHOT_CHUNK_BYTES));
                        asker.snapshot(index, id, fetch, &mut out)?;
                    }
                }
            }
            Asked::Snapshot => {
                let response = access::<SnapshotResponse>(&frame)
                    .map_err(|error| format!("a bad snapshot answer: {error}"))?;
                check_answered(id, response.partition.get().get())?;
                let answer = match &response.outcome {
                    ArchivedSnapshotOutcome::Chunk {
                        lsn,
                        size,
                        offset,
                        bytes,
                    } => SnapshotAnswer::Chunk {
                        lsn: lsn.get().get(),
                        size: size.to_native(),
                        offset: offset.to_native(),
                        bytes: bytes.to_vec(),
                    },
                    ArchivedSnapshotOutcome::NoSnapshot => SnapshotAnswer::NoSnapshot,
                    ArchivedSnapshotOutcome::Retry => SnapshotAnswer::Retry,
                    ArchivedSnapshotOutcome::Refused(error) => {
                        return Err(format!(
                            "partition {id}: the leader refused its snapshot: {error:?}"
                        ))
                    }
                };
                let fetch = fetches
                    .get_mut(&index)
                    .ok_or_else(|| format!("partition {id}: a snapshot chunk nobody fetches"))?;
                caught_up.borrow_mut().insert(id, false);
                let fetched = fetch
                    .apply(partition, answer)
                    .await
                    .map_err(|error| format!("partition {id}: fetching the snapshot: {error}"))?;
                match fetched {
                    Fetched::More => asker.snapshot(index, id, fetch, &mut out)?,
                    Fetched::Installed(info) => {
                        fetches.remove(&index);
                        tracing::warn!(
                            partition = id,
                            leader = %target.leader,
                            snapshot_lsn = info.snapshot_lsn,
                            bytes = info.bytes,
                            "installed the leader's snapshot in place of this replica's log"
                        );
                        progressed.set(true);
                        asker.sync(index, partition, &mut out)?;
                    }
                    Fetched::NoSnapshot => {
                        return Err(format!(
                            "partition {id}: the leader said this replica needs its snapshot, \
                             then that it has none"
                        ))
                    }
                }
            }
        }
        if stop.get() {
            // The session was replaced while the answer was applied: no more requests, which
            // are acks (the fence of `fenced_positions`).
            break;
        }
        writer
            .write_all(&out, answer_timeout)
            .await
            .map_err(|error| format!("sending a request to the leader: {error}"))?;
    }
    let _closing = writer.close();
    Ok(())
}

/// An answer must be for the partition its request named.
fn check_answered(asked: u32, answered: u32) -> Result<(), String> {
    if asked != answered {
        return Err(format!(
            "an answer for partition {answered} to a request for {asked}"
        ));
    }
    Ok(())
}

/// What a partition asks its leader next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The records after its last one.
    Sync,
    /// The leader's snapshot: its log no longer reaches this replica.
    Snapshot,
}

/// Applies one sync answer to the follower's partition.
async fn apply_response(
    target: &SessionTarget,
    partition: &Rc<Partition<DmaStorage>>,
    outcome: &ArchivedSyncOutcome,
    last: LogEnd,
    caught_up: &RefCell<HashMap<u32, bool>>,
    progressed: &Cell<bool>,
) -> Result<Next, String> {
    let id = partition.id();
    match outcome {
        ArchivedSyncOutcome::Records {
            records,
            last_lsn,
            leader_end_lsn,
            ..
        } => {
            if !records.is_empty() {
                let appended = partition
                    .append_replicated(records.as_slice())
                    .await
                    .map_err(|error| format!("appending the leader's records: {error}"))?;
                if appended != last_lsn.get().get() {
                    return Err(format!(
                        "the leader said its records end at LSN {}, they end at {appended}",
                        last_lsn.get()
                    ));
                }
                progressed.set(true);
            }
            caught_up
                .borrow_mut()
                .insert(id, last_lsn.get().get() >= leader_end_lsn.get().get());
        }
        ArchivedSyncOutcome::Diverged { history, end_lsn } => {
            let answer = SyncAnswer::Diverged {
                history: history
                    .iter()
                    .map(|entry| (entry.epoch.get().get(), entry.first_lsn.get().get()))
                    .collect(),
                end_lsn: end_lsn.get().get(),
            };
            caught_up.borrow_mut().insert(id, false);
            match apply_answer(partition, answer).await {
                Ok(Applied::Truncated(to)) => {
                    tracing::warn!(
                        partition = id,
                        leader = %target.leader,
                        truncated_after = to,
                        "cut this replica's log where it diverged from the leader's"
                    );
                    progressed.set(true);
                }
                // The divergence lies below this replica's own snapshot: it cannot cut there.
                Ok(Applied::NeedsSnapshot) => return Ok(Next::Snapshot),
                Ok(_) => {}
                Err(error) => return Err(format!("partition {id}: truncating: {error}")),
            }
        }
        ArchivedSyncOutcome::SnapshotNeeded { end_lsn } => {
            tracing::info!(
                partition = id,
                leader_end = end_lsn.get().get(),
                last = last.lsn,
                "the leader no longer holds the records after this replica's last one"
            );
            return Ok(Next::Snapshot);
        }
        ArchivedSyncOutcome::Refused(error) => {
            return Err(format!("partition {id}: the leader refused: {error:?}"));
        }
    }
    Ok(Next::Sync)
}
