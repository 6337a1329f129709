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
//! Not yet: writes do not wait for follower acks (`Quorum`/`All` are answered once the leader
//! holds the write, as `One`), leadership does not fail over to an in-sync follower, and a
//! follower the leader has pruned too far for stops with a message (catch-up by snapshot).

use super::constants::{
    SYNC_ANSWER_GRACE_MS, SYNC_CONNECT_TIMEOUT_MS, SYNC_REQUEST_BYTES, SYNC_RETRY_MS_MAX,
    SYNC_RETRY_MS_MIN, SYNC_WAIT_MS,
};
use super::control::ClusterView;
use coregrid_engine::rt::DmaStorage;
use coregrid_engine::{rt, Partition};
use coregrid_net::constants::PROTOCOL_VERSION;
use coregrid_net::message::{
    ArchivedHelloReply, ArchivedSyncOutcome, ArchivedSyncRequest, EpochStart, ErrorResponse, Hello,
    HelloReply, Peer, SyncOutcome, SyncRequest, SyncResponse, TopologyRequest, TopologyResponse,
};
use coregrid_net::transport::{Connection, ConnectionReader, ConnectionWriter, ReadOutcome};
use coregrid_net::{
    access, encode, ChannelKind, ClusterId, Epoch, Frame, FrameMeta, Lsn, NodeId, PartitionId,
    RequestId, ShardId,
};
use coregrid_replication::follower::{apply_answer, sync_position, Applied};
use coregrid_replication::history::LogEnd;
use coregrid_replication::leader::{serve_sync, SyncAnswer, SyncCursor};
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
pub fn fence_sync(view: &ClusterView, peer: NodeId, ask: &SyncAsk) -> Result<(), ErrorResponse> {
    view.fence(ask.partition)?;
    let epoch = view.epoch().get();
    if ask.map_epoch != epoch {
        return Err(ErrorResponse::unavailable(format!(
            "the follower holds map epoch {}, this leader {epoch}: the older one must catch up",
            ask.map_epoch
        )));
    }
    let replicas = view
        .map
        .as_ref()
        .and_then(|map| map.assignment(PartitionId(ask.partition)))
        .map(|assignment| assignment.replicas.as_slice())
        .unwrap_or_default();
    if peer == view.node || !replicas.contains(&peer) {
        return Err(ErrorResponse::invalid_request(format!(
            "node {peer} holds no replica of partition {} in epoch {epoch}",
            ask.partition
        )));
    }
    Ok(())
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
    let _closing = writer.close(timeout).await;
    Ok(shards)
}

/// One replication connection to a leader shard, pulling every partition of `partitions` at
/// once: one request in flight per partition, answered in any order, each answer applied and
/// followed by that partition's next request. `Ok` when stopped; `Err` says why the
/// connection ended.
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
    let mut next_request_id = 0u64;
    // Request id -> the partition (index into `partitions`) and the last record it named.
    let mut in_flight: HashMap<u64, (usize, LogEnd)> = HashMap::new();
    let mut ask =
        |index: usize, out: &mut Vec<u8>, in_flight: &mut HashMap<u64, (usize, LogEnd)>| {
            next_request_id += 1;
            let partition = &partitions[index];
            let last = sync_position(partition);
            let request = SyncRequest {
                partition: PartitionId(partition.id()),
                map_epoch: Epoch(target.map_epoch),
                last_epoch: Epoch(last.epoch),
                last_lsn: Lsn(last.lsn),
                max_bytes: SYNC_REQUEST_BYTES,
                wait_ms: SYNC_WAIT_MS,
            };
            let meta = FrameMeta {
                request_id: RequestId(next_request_id),
                epoch: Epoch(target.map_epoch),
            };
            in_flight.insert(next_request_id, (index, last));
            encode(out, meta, &request).map_err(|error| error.to_string())
        };
    for index in 0..partitions.len() {
        ask(index, &mut out, &mut in_flight)?;
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
        let Some((index, last)) = in_flight.remove(&frame.request_id().0) else {
            return Err(format!(
                "an answer to request {}, which was not asked",
                frame.request_id().0
            ));
        };
        let partition = &partitions[index];
        let id = partition.id();
        let response = access::<SyncResponse>(&frame)
            .map_err(|error| format!("a bad sync answer: {error}"))?;
        if response.partition.get().get() != id {
            return Err(format!(
                "an answer for partition {} to a request for {id}",
                response.partition.get()
            ));
        }
        apply_response(
            target,
            partition,
            &response.outcome,
            last,
            caught_up,
            progressed,
        )
        .await?;
        out.clear();
        ask(index, &mut out, &mut in_flight)?;
        writer
            .write_all(&out, answer_timeout)
            .await
            .map_err(|error| format!("sending a sync request: {error}"))?;
    }
    let _closing = writer
        .close(Duration::from_millis(SYNC_CONNECT_TIMEOUT_MS))
        .await;
    Ok(())
}

/// Applies one sync answer to the follower's partition.
async fn apply_response(
    target: &SessionTarget,
    partition: &Rc<Partition<DmaStorage>>,
    outcome: &ArchivedSyncOutcome,
    last: LogEnd,
    caught_up: &RefCell<HashMap<u32, bool>>,
    progressed: &Cell<bool>,
) -> Result<(), String> {
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
                Ok(Applied::NeedsSnapshot) => {
                    return Err(format!(
                        "partition {id}: the divergence lies below this replica's snapshot: it \
                         needs the leader's snapshot, which replication cannot send yet"
                    ))
                }
                Ok(_) => {}
                Err(error) => return Err(format!("partition {id}: truncating: {error}")),
            }
        }
        ArchivedSyncOutcome::SnapshotNeeded { end_lsn } => {
            return Err(format!(
                "partition {id}: the leader (at LSN {}) no longer holds the records after LSN \
                 {}: this replica needs its snapshot, which replication cannot send yet",
                end_lsn.get(),
                last.lsn
            ));
        }
        ArchivedSyncOutcome::Refused(error) => {
            return Err(format!("partition {id}: the leader refused: {error:?}"));
        }
    }
    Ok(())
}
