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
//! - **Follower.** [`Followers`] keeps one session per partition this node follows: a task that
//!   finds the shard of the leader node that owns the partition (a `Topology` request to the
//!   data address the leader gossips), opens a replication connection to it, and then asks for
//!   the records after its own last one, long-polling when it has them all; it appends what it
//!   gets (verified record by record by the engine before anything is written), cuts its log
//!   back where the leader says the two diverge, and reconnects with a growing pause after a
//!   failure. A session ends when the map gives the partition another leader, a new epoch, or
//!   makes this node its leader; the next view starts the next one.
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

/// One follower session: which leader, at which address (a restarted leader may listen
/// elsewhere), in which map epoch, and how to stop it.
struct Session {
    leader: NodeId,
    address: SocketAddr,
    map_epoch: u64,
    stop: Rc<Cell<bool>>,
}

/// The follower sessions of one data shard, and how far each partition has caught up.
pub struct Followers {
    identity: FollowerIdentity,
    sessions: RefCell<HashMap<u32, Session>>,
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

    /// Starts, keeps or stops sessions so that there is exactly one for each of `partitions`
    /// (this shard's) that `view` has this node follow, pulling from its leader at the data
    /// address it gossips, in the view's epoch.
    pub fn update(&self, view: &ClusterView, partitions: &[Rc<Partition<DmaStorage>>]) {
        let epoch = view.epoch().get();
        let mut wanted: HashMap<u32, (NodeId, SocketAddr, Rc<Partition<DmaStorage>>)> =
            HashMap::new();
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
                wanted.insert(id, (leader, address, partition.clone()));
            }
        }
        let mut sessions = self.sessions.borrow_mut();
        sessions.retain(|id, session| {
            let keep = wanted.get(id).is_some_and(|(leader, address, _)| {
                *leader == session.leader
                    && *address == session.address
                    && session.map_epoch == epoch
            });
            if !keep {
                session.stop.set(true);
                self.caught_up.borrow_mut().remove(id);
            }
            keep
        });
        for (id, (leader, address, partition)) in wanted {
            if sessions.contains_key(&id) {
                continue;
            }
            let stop = Rc::new(Cell::new(false));
            sessions.insert(
                id,
                Session {
                    leader,
                    address,
                    map_epoch: epoch,
                    stop: stop.clone(),
                },
            );
            tracing::info!(partition = id, %leader, %address, epoch, "following");
            rt::spawn_detached(run_session(
                self.identity,
                partition,
                leader,
                address,
                epoch,
                stop,
                self.caught_up.clone(),
            ));
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

/// Pulls `partition` from `leader` until `stop` is set, reconnecting after failures with a
/// growing pause.
async fn run_session(
    identity: FollowerIdentity,
    partition: Rc<Partition<DmaStorage>>,
    leader: NodeId,
    address: SocketAddr,
    map_epoch: u64,
    stop: Rc<Cell<bool>>,
    caught_up: Rc<RefCell<HashMap<u32, bool>>>,
) {
    let id = partition.id();
    let mut pause = Duration::from_millis(SYNC_RETRY_MS_MIN);
    let session = SessionTarget {
        identity,
        leader,
        address,
        map_epoch,
    };
    while !stop.get() {
        let mut progressed = false;
        let ended = pull(&session, &partition, &stop, &caught_up, &mut progressed).await;
        caught_up.borrow_mut().remove(&id);
        match ended {
            Ok(()) => break,
            Err(reason) => {
                if progressed {
                    pause = Duration::from_millis(SYNC_RETRY_MS_MIN);
                }
                tracing::info!(partition = id, %leader, %reason, ?pause, "sync stopped; retrying");
                rt::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(SYNC_RETRY_MS_MAX));
            }
        }
    }
    tracing::info!(partition = id, %leader, "no longer following");
}

struct SessionTarget {
    identity: FollowerIdentity,
    leader: NodeId,
    address: SocketAddr,
    map_epoch: u64,
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

/// The port of the leader's shard that owns the partition, from the leader's topology.
async fn leader_port(session: &SessionTarget, partition: u32) -> Result<(u16, ShardId), String> {
    let (mut reader, mut writer) =
        open(session, session.address, ChannelKind::Client, None).await?;
    let timeout = Duration::from_millis(SYNC_CONNECT_TIMEOUT_MS);
    let mut out = Vec::new();
    encode(&mut out, FrameMeta::default(), &TopologyRequest {})
        .map_err(|error| error.to_string())?;
    writer
        .write_all(&out, timeout)
        .await
        .map_err(|error| format!("asking for the topology: {error}"))?;
    let found = read_answer(&mut reader, timeout, |frame| {
        let topology = access::<TopologyResponse>(frame)
            .map_err(|error| format!("the leader's topology: {error}"))?;
        Ok(topology
            .shards
            .iter()
            .find(|shard| {
                shard
                    .partitions
                    .iter()
                    .any(|id| id.get() == PartitionId(partition))
            })
            .map(|shard| (shard.port.to_native(), shard.shard.get())))
    })
    .await?;
    let _closing = writer.close(timeout).await;
    found.ok_or_else(|| format!("the leader's topology has no shard for partition {partition}"))
}

/// One connection's worth of pulling. `Ok` when stopped; `Err` says why the connection ended.
async fn pull(
    session: &SessionTarget,
    partition: &Rc<Partition<DmaStorage>>,
    stop: &Cell<bool>,
    caught_up: &RefCell<HashMap<u32, bool>>,
    progressed: &mut bool,
) -> Result<(), String> {
    let id = partition.id();
    let (port, shard) = leader_port(session, id).await?;
    let address = SocketAddr::new(session.address.ip(), port);
    let (mut reader, mut writer) =
        open(session, address, ChannelKind::Replication, Some(shard)).await?;
    let answer_timeout = Duration::from_millis(u64::from(SYNC_WAIT_MS) + SYNC_ANSWER_GRACE_MS);
    let mut out = Vec::new();
    let mut request_id = 0u64;
    while !stop.get() {
        request_id += 1;
        let last = sync_position(partition);
        let request = SyncRequest {
            partition: PartitionId(id),
            map_epoch: Epoch(session.map_epoch),
            last_epoch: Epoch(last.epoch),
            last_lsn: Lsn(last.lsn),
            max_bytes: SYNC_REQUEST_BYTES,
            wait_ms: SYNC_WAIT_MS,
        };
        out.clear();
        let meta = FrameMeta {
            request_id: RequestId(request_id),
            epoch: Epoch(session.map_epoch),
        };
        encode(&mut out, meta, &request).map_err(|error| error.to_string())?;
        writer
            .write_all(&out, answer_timeout)
            .await
            .map_err(|error| format!("sending a sync request: {error}"))?;
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
        if frame.request_id() != RequestId(request_id) {
            return Err(format!(
                "an answer to request {} where {request_id} was asked",
                frame.request_id().0
            ));
        }
        let response = access::<SyncResponse>(&frame)
            .map_err(|error| format!("a bad sync answer: {error}"))?;
        if response.partition.get().get() != id {
            return Err(format!(
                "an answer for partition {} to a request for {id}",
                response.partition.get()
            ));
        }
        match &response.outcome {
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
                    *progressed = true;
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
                            leader = %session.leader,
                            truncated_after = to,
                            "cut this replica's log where it diverged from the leader's"
                        );
                        *progressed = true;
                    }
                    Ok(Applied::NeedsSnapshot) => {
                        return Err(
                            "the divergence lies below this replica's snapshot: it needs \
                                    the leader's snapshot, which replication cannot send yet"
                                .into(),
                        )
                    }
                    Ok(_) => {}
                    Err(error) => return Err(format!("truncating to the leader's log: {error}")),
                }
            }
            ArchivedSyncOutcome::SnapshotNeeded { end_lsn } => {
                return Err(format!(
                    "the leader (at LSN {}) no longer holds the records after LSN {}: this \
                     replica needs its snapshot, which replication cannot send yet",
                    end_lsn.get(),
                    last.lsn
                ));
            }
            ArchivedSyncOutcome::Refused(error) => {
                return Err(format!("the leader refused: {error:?}"));
            }
        }
    }
    let _closing = writer
        .close(Duration::from_millis(SYNC_CONNECT_TIMEOUT_MS))
        .await;
    Ok(())
}
