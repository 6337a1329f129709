//! One data shard's server: its listener, its connections, and its part of a shutdown. All of
//! it runs on the shard's own executor (started from `Engine::run_on_shard`), next to the
//! shard's partitions, and calls them directly.
//!
//! **A connection** is two tasks. The reader reads into the connection's frame decoder, takes
//! the handshake (within the handshake timeout), then admits each request: routes and copies
//! it ([`handler::parse_request`]) and spawns a task that executes it. The writer takes the
//! answers in the order they are ready, encodes them under their request ids, and writes them
//! in batches. Memory is bounded per connection: the decoder holds at most one frame; at most
//! `requests_in_flight_per_connection` requests are admitted and not yet answered on the
//! socket, and at most [`REQUEST_BYTES_IN_FLIGHT_PER_CONNECTION_MAX`] bytes of them are
//! waiting for the engine; the writer encodes at most [`WRITE_BATCH_BYTES`] plus one answer at
//! a time. At a limit the reader stops reading, so the peer's TCP window fills: backpressure,
//! not buffering.
//!
//! **Errors.** A request the decoder accepts but that is not valid gets an error answer for
//! its request id and the connection goes on. A broken stream (bad magic, crc, unknown kind,
//! oversized or truncated frame) gets one error frame saying why (request id 0), the answers
//! to requests already admitted, and then the connection is closed. Nothing of it reaches a
//! partition.

use super::config::ReplicaSettings;
use super::constants::{
    ACCEPT_ERROR_PAUSE_MS, DRAIN_POLL_MS, HANDOFF_BACKOFF_MS, HANDOFF_DRAIN_MS, HANDOFF_POLL_MS,
    HANDOFF_WRITE_HOLD_MS, REFUSALS_IN_PROGRESS_MAX, REFUSAL_WRITE_TIMEOUT_MS,
    REQUEST_BYTES_IN_FLIGHT_PER_CONNECTION_MAX, WRITE_BATCH_BYTES,
};
use super::control::{ClusterFeed, ClusterView, ShardPositions};
use super::handler::{self, Answer, CollectionScope, Routing};
use super::replica::{self, FollowerIdentity, Followers, SnapshotAsk, SyncAsk};
use coregrid_cluster::map::Handoff;
use coregrid_engine::rt::{self, Doorbell};
use coregrid_engine::{Engine, LocalShard};
use coregrid_net::constants::FRAME_HEADER_BYTES;
use coregrid_net::kind::ArchivedChannelKind;
use coregrid_net::message::{
    answer_hello, ArchivedPeer, ErrorResponse, Hello, HelloReply, LocalIdentity, MessageRef,
    Refusal, SnapshotOutcome, SnapshotResponse, SyncOutcome, SyncResponse, TopologyResponse,
    WriteConsistency,
};
use coregrid_net::transport::{
    Connection, ConnectionReader, ConnectionWriter, Listener, ReadOutcome, TransportError,
};
use coregrid_net::{
    access, decode, ChannelKind, FrameError, FrameMeta, NodeId, PartitionId, RequestId,
};
use coregrid_replication::leader::{acknowledges, SyncCursor};
use coregrid_replication::progress::{follower_acks_needed, AckError, Progress};
use futures::future::{select, Either};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every shard's server is told at start (`Send`: built on the main thread).
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// Who this node is, for the handshake (the shard field is set per shard).
    pub identity: LocalIdentity,
    /// Listen address.
    pub listen: SocketAddr,
    /// Port of shard 0 (0: any free port for each shard).
    pub base_port: u16,
    /// Connection cap per shard.
    pub connections_max: usize,
    /// Requests in flight per connection.
    pub requests_in_flight_max: usize,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Write progress timeout.
    pub write_timeout: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// How followers are held to this node's writes.
    pub replicas: ReplicaSettings,
}

/// Where a shard's server follows the cluster: the shared latest view and this shard's
/// coalescing "changed" ring.
pub struct ClusterWatch {
    /// The latest view.
    pub feed: ClusterFeed,
    /// Rung when a newer view is there.
    pub changed: flume::Receiver<()>,
}

/// Messages from the main thread to a shard's server.
pub enum Control {
    /// Every shard is bound: start accepting, with the node's topology, following the cluster.
    Start(Arc<TopologyResponse>, ClusterWatch),
    /// Stop accepting, drain, release the engine handle, then report.
    Stop(flume::Sender<DrainReport>),
}

/// How a shard's drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// The shard.
    pub shard: usize,
    /// Requests still unanswered when the drain timeout passed (0: a clean drain).
    pub requests_unanswered: usize,
    /// Connections still open then.
    pub connections_open: usize,
}

/// Binds shard `local`'s listener and spawns its control task; returns the bound address. Runs
/// on the shard (inside `Engine::run_on_shard`).
pub fn start_shard(
    local: LocalShard,
    engine: Engine,
    settings: ShardSettings,
    control: flume::Receiver<Control>,
) -> Result<SocketAddr, String> {
    let shard = local.shard();
    let port = if settings.base_port == 0 {
        0
    } else {
        u16::try_from(usize::from(settings.base_port) + shard)
            .map_err(|_| format!("shard {shard}: port past 65535"))?
    };
    let address = SocketAddr::new(settings.listen.ip(), port);
    let listener = Listener::bind(address)
        .map_err(|error| format!("shard {shard}: cannot listen on {address}: {error}"))?;
    let bound = listener.local_addr();
    rt::spawn_detached(control_loop(local, engine, settings, listener, control));
    Ok(bound)
}

/// The shard's server state, shared by its tasks.
struct ShardServer {
    local: LocalShard,
    identity: LocalIdentity,
    settings: ShardSettings,
    routing: Routing,
    topology: Arc<TopologyResponse>,
    /// The cluster as the control shard last described it: who leads what in which epoch.
    cluster: RefCell<Arc<ClusterView>>,
    /// Where the control shard publishes each new view (read again when a request is refused,
    /// see [`fence`]).
    feed: ClusterFeed,
    /// The node's engine, for collection changes; taken out when the drain ends, so that the
    /// main thread holds the last handle and its drop shuts the engine down.
    engine: RefCell<Option<Engine>>,
    stopping: Cell<bool>,
    /// Open connections: each one's reader doorbell, rung at shutdown.
    connections: RefCell<HashMap<u64, Doorbell>>,
    next_connection: Cell<u64>,
    refusals: Cell<usize>,
    /// Requests admitted on any connection and not yet answered on the socket.
    requests_in_flight: Cell<usize>,
    /// This shard's follower sessions (partitions this node holds a replica of and another
    /// node leads).
    followers: Followers,
    /// For each partition this node leads here: what its followers acknowledged.
    progress: RefCell<HashMap<u32, Progress>>,
    /// The origin of the milliseconds [`Progress`] counts in.
    started: Instant,
    /// Handoffs of partitions this shard leads, under way or just failed.
    handoffs: RefCell<HashMap<u32, HandoffState>>,
}

/// A handoff of a partition's leadership on its leader's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HandoffState {
    handoff: Handoff,
    phase: HandoffPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandoffPhase {
    /// Writes are refused; waiting for the target's ack of the whole log.
    Draining,
    /// Reported ready; writes stay refused until the map moves the partition.
    Ready,
    /// The target did not catch up in time: writes are taken again, no retry until then.
    Backoff(Instant),
}

thread_local! {
    /// This shard's server (one per shard thread), for work another shard of the node hands
    /// it: a collection change checks and waits for the follower acks of each partition on the
    /// shard that tracks them ([`on_owner`]).
    static SHARD_SERVER: RefCell<std::rc::Weak<ShardServer>> =
        const { RefCell::new(std::rc::Weak::new()) };
}

/// Runs `work` with the server of the shard that owns `partition` (through the engine's job
/// channel to that shard, this one included).
async fn on_owner<T, F, Fut>(engine: &Engine, partition: u32, work: F) -> Result<T, ErrorResponse>
where
    F: FnOnce(Rc<ShardServer>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ErrorResponse>> + 'static,
    T: Send + 'static,
{
    let shard = engine.shard_of(partition);
    engine
        .run_on_shard(shard, move |_local| async move {
            match SHARD_SERVER.with(|current| current.borrow().upgrade()) {
                Some(server) => work(server).await,
                None => Err(ErrorResponse::unavailable(format!(
                    "shard {shard} serves no requests (starting or stopping)"
                ))),
            }
        })
        .await
        .unwrap_or_else(|error| Err(handler::map_engine_error(error, true)))
}

/// What a `Quorum` or `All` write waits for once its leader holds it: `needed` follower acks,
/// from the replica set of `generation`.
#[derive(Clone, Copy, Debug)]
struct AckWait {
    partition: u32,
    needed: usize,
    generation: u64,
}

async fn control_loop(
    local: LocalShard,
    engine: Engine,
    settings: ShardSettings,
    listener: Listener,
    control: flume::Receiver<Control>,
) {
    let shard = local.shard();
    let (topology, watch) = match control.recv_async().await {
        Ok(Control::Start(topology, watch)) => (topology, watch),
        Ok(Control::Stop(reply)) => {
            let _gone = reply.send(DrainReport {
                shard,
                requests_unanswered: 0,
                connections_open: 0,
            });
            return;
        }
        Err(_) => return,
    };
    let ports = topology.shards.iter().map(|shard| shard.port).collect();
    let settings_identity = settings.identity;
    let server = Rc::new(ShardServer {
        identity: LocalIdentity {
            shard: coregrid_net::ShardId(u16::try_from(shard).unwrap_or(u16::MAX)),
            ..settings.identity
        },
        routing: Routing {
            shard,
            shard_count: local.shard_count(),
            partition_count: local.partition_count(),
            ports,
        },
        local,
        settings,
        topology,
        cluster: RefCell::new(watch.feed.latest()),
        feed: watch.feed.clone(),
        engine: RefCell::new(Some(engine)),
        stopping: Cell::new(false),
        connections: RefCell::new(HashMap::new()),
        next_connection: Cell::new(0),
        refusals: Cell::new(0),
        requests_in_flight: Cell::new(0),
        followers: Followers::new(FollowerIdentity {
            cluster_id: settings_identity.cluster_id,
            node: settings_identity.node,
        }),
        progress: RefCell::new(HashMap::new()),
        started: Instant::now(),
        handoffs: RefCell::new(HashMap::new()),
    });
    SHARD_SERVER.with(|current| *current.borrow_mut() = Rc::downgrade(&server));
    rt::spawn_detached(follow_cluster(server.clone(), watch));
    let stop_accepting = Doorbell::default();
    let accepting = rt::spawn_local(accept_loop(
        server.clone(),
        listener,
        stop_accepting.clone(),
    ));
    // Until told to stop (or the main thread is gone, which also means stop).
    let reply = match control.recv_async().await {
        Ok(Control::Stop(reply)) => Some(reply),
        Ok(Control::Start(..)) | Err(_) => None,
    };
    server.stopping.set(true);
    server.followers.stop_all();
    stop_accepting.ring();
    accepting.await;
    for bell in server.connections.borrow().values() {
        bell.ring();
    }
    let deadline = Instant::now() + server.settings.drain_timeout;
    while (server.requests_in_flight.get() > 0 || !server.connections.borrow().is_empty())
        && Instant::now() < deadline
    {
        rt::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    drop(server.engine.borrow_mut().take());
    let report = DrainReport {
        shard,
        requests_unanswered: server.requests_in_flight.get(),
        connections_open: server.connections.borrow().len(),
    };
    tracing::info!(
        shard,
        requests_unanswered = report.requests_unanswered,
        connections_open = report.connections_open,
        "shard drained"
    );
    if let Some(reply) = reply {
        let _gone = reply.send(report);
    }
}

/// Takes each new cluster view, and starts the new epoch on every partition of this shard that
/// the view's map has this node lead (the partition's WAL then records where the epoch began,
/// and its writes carry it). Writes to such a partition wait (`Unavailable`) until its epoch
/// has begun. Ends when the control side is gone.
async fn follow_cluster(server: Rc<ShardServer>, watch: ClusterWatch) {
    loop {
        let view = watch.feed.latest();
        *server.cluster.borrow_mut() = view.clone();
        let led: Vec<u32> = server
            .local
            .partitions()
            .map(|partition| partition.id())
            .filter(|&id| view.leader(id) == Some(view.node))
            .collect();
        server.track_followers(&view, &led);
        for id in led {
            if let Err(error) = begin_epoch_if_needed(&server, id).await {
                tracing::error!(partition = id, %error, "cannot begin the epoch");
            }
        }
        if !server.stopping.get() {
            let partitions: Vec<_> = server.local.partitions().cloned().collect();
            server.followers.update(&view, &partitions);
            // Taken after `update` stopped the sessions of partitions that lost their leader:
            // a stopped session sends no more acks (`replica::pull`), so every ack this node
            // ever sent for such a partition is at or below the position reported.
            server.take_handoffs(&view);
            server.report_to_control(&view);
        }
        if watch.changed.recv_async().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(server: Rc<ShardServer>, listener: Listener, stop: Doorbell) {
    let shard = server.routing.shard;
    tracing::info!(shard, address = %listener.local_addr(), "accepting connections");
    loop {
        let accepted = {
            let accept = pin!(listener.accept());
            let stopped = pin!(stop.wait());
            match select(accept, stopped).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => break,
            }
        };
        let connection = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(shard, %error, "accept failed");
                rt::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let open = server.connections.borrow().len();
        if open >= server.settings.connections_max {
            tracing::warn!(
                shard,
                peer = %connection.peer_addr(),
                limit = server.settings.connections_max,
                "connection refused: the shard's connection limit is reached"
            );
            refuse(
                &server,
                connection,
                Refusal::ChannelRefused {
                    channel: ChannelKind::Client,
                    reason: format!(
                        "shard {shard} serves {} connections, its limit; retry later",
                        server.settings.connections_max
                    ),
                },
            );
            continue;
        }
        rt::spawn_detached(serve_connection(server.clone(), connection));
    }
    tracing::info!(shard, "stopped accepting connections");
}

/// Sends `refusal` in place of a handshake answer and closes, in a small task; past
/// [`REFUSALS_IN_PROGRESS_MAX`] of them the connection is closed without one.
fn refuse(server: &Rc<ShardServer>, connection: Connection, refusal: Refusal) {
    if server.refusals.get() >= REFUSALS_IN_PROGRESS_MAX {
        return;
    }
    server.refusals.set(server.refusals.get() + 1);
    let server = server.clone();
    rt::spawn_detached(async move {
        let (_reader, mut writer) = connection.split(ChannelKind::Handshake);
        let mut out = Vec::new();
        let answer = Answer::Hello(HelloReply::Refused(refusal));
        if handler::encode_answer(&mut out, FrameMeta::default(), &answer).is_ok() {
            let timeout = Duration::from_millis(REFUSAL_WRITE_TIMEOUT_MS);
            if writer.write_all(&out, timeout).await.is_ok() {
                let _closing = writer.close();
            }
        }
        server.refusals.set(server.refusals.get() - 1);
    });
}

/// One connection's shared state.
struct ConnectionState {
    /// Rung when the reader may go on: room freed, the writer failed, the shard stops.
    reader_bell: Doorbell,
    /// Rung when there is something for the writer.
    writer_bell: Doorbell,
    /// Answers ready, with the request ids they answer; never more than the requests in
    /// flight plus the handshake answer and one closing error.
    answers: RefCell<VecDeque<Outgoing>>,
    /// Admitted requests whose answers are not yet written.
    requests_in_flight: Cell<usize>,
    /// Bytes of admitted request frames whose execution has not ended.
    request_bytes_in_flight: Cell<usize>,
    /// The reader has ended: the writer closes once the in-flight answers are out.
    reader_done: Cell<bool>,
    /// The writer failed (peer gone, write timeout): the reader stops too.
    writer_failed: Cell<bool>,
    /// The follower node on the other end, once the handshake opened a replication channel.
    replication_peer: Cell<Option<NodeId>>,
    /// Where each partition's last sync answer ended in its WAL, for the next request.
    sync_cursors: RefCell<HashMap<u32, SyncCursor>>,
}

struct Outgoing {
    request_id: RequestId,
    answer: Answer,
    /// Whether it answers an admitted request (counted in flight).
    counted: bool,
}

impl ConnectionState {
    fn push(&self, request_id: RequestId, answer: Answer, counted: bool) {
        self.answers.borrow_mut().push_back(Outgoing {
            request_id,
            answer,
            counted,
        });
        self.writer_bell.ring();
    }
}

/// Why a connection's reader ended, for the log.
#[derive(Debug)]
enum Ending {
    PeerClosed,
    Idle,
    ShuttingDown,
    WriterFailed,
    Refused(Refusal),
    Broken(FrameError),
    Socket(TransportError),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::PeerClosed => formatter.write_str("the peer closed it"),
            Ending::Idle => formatter.write_str("idle timeout"),
            Ending::ShuttingDown => formatter.write_str("the node is shutting down"),
            Ending::WriterFailed => formatter.write_str("writing to the peer failed"),
            Ending::Refused(refusal) => write!(formatter, "handshake refused: {refusal}"),
            Ending::Broken(error) => write!(formatter, "bad frame: {error}"),
            Ending::Socket(error) => write!(formatter, "{error}"),
        }
    }
}

async fn serve_connection(server: Rc<ShardServer>, connection: Connection) {
    let shard = server.routing.shard;
    let peer = connection.peer_addr();
    let id = server.next_connection.get();
    server.next_connection.set(id + 1);
    let state = Rc::new(ConnectionState {
        reader_bell: Doorbell::default(),
        writer_bell: Doorbell::default(),
        answers: RefCell::new(VecDeque::new()),
        requests_in_flight: Cell::new(0),
        request_bytes_in_flight: Cell::new(0),
        reader_done: Cell::new(false),
        writer_failed: Cell::new(false),
        replication_peer: Cell::new(None),
        sync_cursors: RefCell::new(HashMap::new()),
    });
    server
        .connections
        .borrow_mut()
        .insert(id, state.reader_bell.clone());
    tracing::debug!(shard, %peer, "connection opened");
    let (mut reader, writer) = connection.split(ChannelKind::Handshake);
    let writing = rt::spawn_local(write_answers(server.clone(), state.clone(), writer));
    let ending = match handshake(&server, &state, &mut reader).await {
        Ok(()) => read_requests(&server, &state, &mut reader).await,
        Err(ending) => ending,
    };
    state.reader_done.set(true);
    state.writer_bell.ring();
    writing.await;
    server.connections.borrow_mut().remove(&id);
    match &ending {
        Ending::PeerClosed | Ending::ShuttingDown => {
            tracing::debug!(shard, %peer, %ending, "connection closed")
        }
        _ => tracing::info!(shard, %peer, %ending, "connection closed"),
    }
}

/// Reads the `Hello` within the handshake timeout and answers it. On a refusal the answer is
/// queued for the writer and the connection ends.
async fn handshake(
    server: &ShardServer,
    state: &ConnectionState,
    reader: &mut ConnectionReader,
) -> Result<(), Ending> {
    let deadline = Instant::now() + server.settings.handshake_timeout;
    let refuse = |refusal: Refusal, request_id| {
        state.push(
            request_id,
            Answer::Hello(HelloReply::Refused(refusal.clone())),
            false,
        );
        Err(Ending::Refused(refusal))
    };
    let bad_frame = |reason: String| Refusal::ChannelRefused {
        channel: ChannelKind::Handshake,
        reason: coregrid_net::message::truncate_reason(reason),
    };
    loop {
        match reader.decoder().next_frame() {
            Ok(Some(frame)) => {
                let request_id = frame.request_id();
                let mut follower = None;
                let reply = match access::<Hello>(&frame) {
                    Ok(hello) if server.stopping.get() => {
                        let _ = hello;
                        HelloReply::Refused(Refusal::ShuttingDown)
                    }
                    Ok(hello) => {
                        // `answer_hello` accepts replication only from a node.
                        if let (ArchivedChannelKind::Replication, ArchivedPeer::Node(node)) =
                            (&hello.channel, &hello.sender)
                        {
                            follower = Some(node.get());
                        }
                        answer_hello(hello, &server.identity)
                    }
                    Err(error) => {
                        return refuse(bad_frame(format!("bad hello: {error}")), request_id)
                    }
                };
                return match reply {
                    HelloReply::Accepted(accepted) => {
                        state.replication_peer.set(follower);
                        reader.decoder().set_channel(if follower.is_some() {
                            ChannelKind::Replication
                        } else {
                            ChannelKind::Client
                        });
                        state.push(
                            request_id,
                            Answer::Hello(HelloReply::Accepted(accepted)),
                            false,
                        );
                        Ok(())
                    }
                    HelloReply::Refused(refusal) => refuse(refusal, request_id),
                };
            }
            Ok(None) => {}
            Err(error) => {
                return refuse(
                    bad_frame(format!("bad handshake frame: {error}")),
                    RequestId(0),
                )
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return refuse(
                bad_frame(format!(
                    "no hello within the handshake timeout of {:?}",
                    server.settings.handshake_timeout
                )),
                RequestId(0),
            );
        }
        let read = {
            let read = pin!(reader.read(remaining));
            let stopped = pin!(state.reader_bell.wait());
            match select(read, stopped).await {
                Either::Left((read, _)) => read,
                Either::Right(_) => {
                    if server.stopping.get() {
                        return refuse(Refusal::ShuttingDown, RequestId(0));
                    }
                    continue;
                }
            }
        };
        match read {
            Ok(ReadOutcome::Received(_)) => {}
            Ok(ReadOutcome::Closed) => return Err(Ending::PeerClosed),
            Err(TransportError::TimedOut(_)) => {} // the deadline check above refuses
            Err(TransportError::Frame(error)) => {
                return refuse(
                    bad_frame(format!("bad handshake frame: {error}")),
                    RequestId(0),
                )
            }
            Err(error) => return Err(Ending::Socket(error)),
        }
    }
}

/// Admits requests until the peer closes, the stream breaks, the connection idles out, or the
/// shard stops.
async fn read_requests(
    server: &Rc<ShardServer>,
    state: &Rc<ConnectionState>,
    reader: &mut ConnectionReader,
) -> Ending {
    let in_flight_max = server.settings.requests_in_flight_max;
    loop {
        // Admit every whole frame buffered, while there is room.
        loop {
            if server.stopping.get() {
                return Ending::ShuttingDown;
            }
            if state.writer_failed.get() {
                return Ending::WriterFailed;
            }
            if state.requests_in_flight.get() >= in_flight_max
                || state.request_bytes_in_flight.get() >= REQUEST_BYTES_IN_FLIGHT_PER_CONNECTION_MAX
            {
                state.reader_bell.wait().await;
                continue;
            }
            match reader.decoder().next_frame() {
                Ok(Some(frame)) => {
                    let request_id = frame.request_id();
                    if let Some(follower) = state.replication_peer.get() {
                        let asked = match decode(&frame) {
                            Ok(MessageRef::SyncRequest(request)) => Ok(SyncAsk::from_wire(request)),
                            Ok(MessageRef::SnapshotRequest(request)) => {
                                let ask = SnapshotAsk::from_wire(request);
                                admit_snapshot(server, state, request_id, follower, ask);
                                continue;
                            }
                            Ok(other) => Err(ErrorResponse::invalid_request(format!(
                                "{} is not a request a follower may send",
                                other.kind()
                            ))),
                            Err(error) => Err(ErrorResponse::from_decode_error(&error)),
                        };
                        admit_sync(server, state, request_id, follower, asked);
                        continue;
                    }
                    let cost = FRAME_HEADER_BYTES + frame.body().len();
                    let parsed = decode(&frame)
                        .map_err(|error| ErrorResponse::from_decode_error(&error))
                        .and_then(|message| handler::parse_request(message, &server.routing));
                    admit(server, state, request_id, cost, parsed);
                }
                Ok(None) => break,
                Err(error) => return broken(state, error),
            }
        }
        let read = {
            let read = pin!(reader.read(server.settings.idle_timeout));
            let woken = pin!(state.reader_bell.wait());
            match select(read, woken).await {
                Either::Left((read, _)) => read,
                Either::Right(_) => continue,
            }
        };
        match read {
            Ok(ReadOutcome::Received(_)) => {}
            Ok(ReadOutcome::Closed) => {
                return match reader.decoder().finish() {
                    Ok(()) => Ending::PeerClosed,
                    Err(error) => broken(state, error),
                }
            }
            Err(TransportError::TimedOut(_)) if state.requests_in_flight.get() > 0 => {}
            Err(TransportError::TimedOut(_)) => return Ending::Idle,
            Err(TransportError::Frame(error)) => return broken(state, error),
            Err(error) => return Ending::Socket(error),
        }
    }
}

/// The stream broke: one error frame saying why, then the connection closes.
fn broken(state: &ConnectionState, error: FrameError) -> Ending {
    state.push(
        RequestId(0),
        Answer::Error(ErrorResponse::invalid_request(format!(
            "closing the connection: {error}"
        ))),
        false,
    );
    Ending::Broken(error)
}

/// Counts a request in flight and answers it: at once if it was refused, else from a task that
/// executes it.
fn admit(
    server: &Rc<ShardServer>,
    state: &Rc<ConnectionState>,
    request_id: RequestId,
    cost: usize,
    parsed: Result<handler::Request, ErrorResponse>,
) {
    server.count_admitted(state);
    let request = match parsed.and_then(|request| fence(server, request)) {
        Ok(request) => request,
        Err(error) => {
            state.push(request_id, Answer::Error(error), true);
            return;
        }
    };
    if let handler::Request::ClusterStatus = request {
        let status = Arc::new(server.cluster.borrow().status());
        state.push(request_id, Answer::ClusterStatus(status), true);
        return;
    }
    state
        .request_bytes_in_flight
        .set(state.request_bytes_in_flight.get() + cost);
    let (server, state) = (server.clone(), state.clone());
    rt::spawn_detached(async move {
        let engine = server.engine.borrow().clone();
        let topology = server.topology_now();
        let (led, scope) = {
            let view = server.cluster.borrow();
            let led = keyed_partition(&request)
                .filter(|&partition| view.leader(partition) == Some(view.node));
            let scope = match request {
                handler::Request::Collection { .. } => CollectionScope {
                    partitions: (0..server.local.partition_count())
                        .filter(|&partition| view.leader(partition) == Some(view.node))
                        .collect(),
                    epoch: view.epoch().get(),
                },
                _ => CollectionScope::default(),
            };
            (led, scope)
        };
        // An `Any` read served by a follower begins nothing: only leaders write.
        let begun = match led {
            Some(partition) => {
                let held = match request {
                    handler::Request::Write { .. } => server.hold_through_handoff(partition).await,
                    _ => Ok(()),
                };
                match held {
                    Ok(()) => begin_epoch_if_needed(&server, partition).await,
                    Err(error) => Err(error),
                }
            }
            None => Ok(()),
        };
        if let handler::Request::Collection {
            ref name,
            create,
            consistency,
            ..
        } = request
        {
            let answer = server
                .change_collection(engine, name, create, consistency, &scope)
                .await;
            state
                .request_bytes_in_flight
                .set(state.request_bytes_in_flight.get() - cost);
            state.push(request_id, answer, true);
            state.reader_bell.ring();
            return;
        }
        // A write that needs followers is refused up front if too few are in sync.
        let ready = begun.and_then(|()| server.ack_wait(&request));
        let answer = match ready {
            Ok(wait) => {
                let answer =
                    handler::execute(request, &server.local, engine, &topology, &scope).await;
                match (wait, answer.written_lsn()) {
                    (Some(wait), Some(lsn)) => match server.await_acks(wait, lsn).await {
                        Ok(()) => answer,
                        Err(error) => Answer::Error(error),
                    },
                    (_, _) => answer,
                }
            }
            Err(error) => Answer::Error(error),
        };
        state
            .request_bytes_in_flight
            .set(state.request_bytes_in_flight.get() - cost);
        state.push(request_id, answer, true);
        state.reader_bell.ring();
    });
}

/// Answers a follower's sync request from a task (counted in flight like any request): fenced
/// by the current view ([`replica::fence_sync`]), served from the partition's WAL, the
/// follower's last record noted as its ack once it is known to be on this log.
fn admit_sync(
    server: &Rc<ShardServer>,
    state: &Rc<ConnectionState>,
    request_id: RequestId,
    follower: NodeId,
    asked: Result<SyncAsk, ErrorResponse>,
) {
    server.count_admitted(state);
    let (server, state) = (server.clone(), state.clone());
    rt::spawn_detached(async move {
        let epoch = server.cluster.borrow().epoch();
        let partition = asked.as_ref().map_or(0, |ask| ask.partition);
        let outcome = match serve_sync_request(&server, &state, follower, asked).await {
            Ok(outcome) => outcome,
            Err(error) => SyncOutcome::Refused(error),
        };
        let response = SyncResponse {
            partition: PartitionId(partition),
            map_epoch: epoch,
            outcome,
        };
        state.push(request_id, Answer::Sync(response), true);
        state.reader_bell.ring();
    });
}

async fn serve_sync_request(
    server: &ShardServer,
    state: &ConnectionState,
    follower: NodeId,
    asked: Result<SyncAsk, ErrorResponse>,
) -> Result<SyncOutcome, ErrorResponse> {
    let ask = asked?;
    let partition = server.fenced_for_follower(follower, ask.partition, ask.map_epoch)?;
    begin_epoch_if_needed(server, ask.partition).await?;
    if acknowledges(&partition, ask.last) {
        // The follower's last record is on this log: everything up to it is on its disk.
        // Noted now, before the long poll, so that the writes waiting for it go on at once.
        let now = server.now_ms();
        if let Some(progress) = server.progress.borrow_mut().get_mut(&ask.partition) {
            let end = partition.durable_lsn();
            if progress.note_fetch(follower.get(), ask.last.lsn, end, now) {
                let hold = server.settings.replicas.hold_bytes;
                partition.hold_for_replicas(Some(progress.acked_by_all()), hold);
            }
        }
    }
    let mut cursor = state
        .sync_cursors
        .borrow_mut()
        .remove(&ask.partition)
        .unwrap_or_default();
    let answer = replica::answer_sync(&partition, &ask, &mut cursor).await?;
    state
        .sync_cursors
        .borrow_mut()
        .insert(ask.partition, cursor);
    Ok(replica::to_outcome(answer))
}

/// Answers a follower's snapshot request from a task (counted in flight like any request),
/// fenced as a sync request is, from the partition's newest snapshot file.
fn admit_snapshot(
    server: &Rc<ShardServer>,
    state: &Rc<ConnectionState>,
    request_id: RequestId,
    follower: NodeId,
    ask: SnapshotAsk,
) {
    server.count_admitted(state);
    let (server, state) = (server.clone(), state.clone());
    rt::spawn_detached(async move {
        let epoch = server.cluster.borrow().epoch();
        let outcome = match serve_snapshot_request(&server, follower, &ask).await {
            Ok(outcome) => outcome,
            Err(error) => SnapshotOutcome::Refused(error),
        };
        let response = SnapshotResponse {
            partition: PartitionId(ask.partition),
            map_epoch: epoch,
            outcome,
        };
        state.push(request_id, Answer::Snapshot(response), true);
        state.reader_bell.ring();
    });
}

async fn serve_snapshot_request(
    server: &ShardServer,
    follower: NodeId,
    ask: &SnapshotAsk,
) -> Result<SnapshotOutcome, ErrorResponse> {
    let partition = server.fenced_for_follower(follower, ask.partition, ask.map_epoch)?;
    replica::answer_snapshot(&partition, ask).await
}

/// Carries out a handoff on the partition's leader: writes are refused already
/// (`Partition::refuse_writes`, set by [`ShardServer::take_handoffs`]); once every staged
/// record is durable and the target acknowledged the whole log it holds every acknowledged
/// write, and the handoff is reported ready, for the controller to name the target in the
/// next map. A target that does not catch up within
/// [`HANDOFF_DRAIN_MS`] ends it: writes are taken again, and no retry before
/// [`HANDOFF_BACKOFF_MS`].
async fn drain_for_handoff(server: Rc<ShardServer>, handoff: Handoff) {
    let partition_id = handoff.partition.get();
    let Some(partition) = server.local.partition(partition_id).cloned() else {
        return;
    };
    let refused_since = Instant::now();
    let deadline = refused_since + Duration::from_millis(HANDOFF_DRAIN_MS);
    loop {
        let draining = server
            .handoffs
            .borrow()
            .get(&partition_id)
            .is_some_and(|state| state.handoff == handoff && state.phase == HandoffPhase::Draining);
        if !draining {
            return;
        }
        let durable = partition.durable_lsn();
        let acked = server
            .progress
            .borrow()
            .get(&partition_id)
            .and_then(|progress| progress.acked(handoff.to.get()));
        if durable == partition.staged_lsn() && acked.is_some_and(|acked| acked >= durable) {
            if let Some(state) = server.handoffs.borrow_mut().get_mut(&partition_id) {
                state.phase = HandoffPhase::Ready;
            }
            tracing::info!(partition = partition_id, to = %handoff.to, lsn = durable,
                drained = ?refused_since.elapsed(),
                "handoff ready: the target holds the whole log");
            let view = server.cluster.borrow().clone();
            server.report_to_control(&view);
            return;
        }
        if Instant::now() >= deadline {
            tracing::info!(partition = partition_id, to = %handoff.to,
                "handoff abandoned: the target did not catch up; taking writes again");
            if let Some(state) = server.handoffs.borrow_mut().get_mut(&partition_id) {
                state.phase = HandoffPhase::Backoff(
                    Instant::now() + Duration::from_millis(HANDOFF_BACKOFF_MS),
                );
            }
            partition.refuse_writes(None);
            return;
        }
        rt::sleep(Duration::from_millis(HANDOFF_POLL_MS)).await;
    }
}

/// Lets a keyed request through only if this node leads its partition in the current epoch
/// and is `Joined` (design.md section 5, promise 1); the partition begins that epoch before
/// the request runs ([`begin_epoch_if_needed`]).
/// Collection changes and topology requests are node-local and pass.
fn fence(
    server: &ShardServer,
    request: handler::Request,
) -> Result<handler::Request, ErrorResponse> {
    let Some(partition) = keyed_partition(&request) else {
        return Ok(request);
    };
    if let handler::Request::Get {
        any_replica: true, ..
    } = request
    {
        if server.serves_any_read(partition) {
            return Ok(request);
        }
    }
    server.check_view(|view| view.fence(partition))?;
    Ok(request)
}

/// The partition a keyed request runs on.
fn keyed_partition(request: &handler::Request) -> Option<u32> {
    match request {
        handler::Request::Get { partition, .. } | handler::Request::Write { partition, .. } => {
            Some(*partition)
        }
        handler::Request::Collection { .. }
        | handler::Request::Topology
        | handler::Request::ClusterStatus => None,
    }
}

/// Makes sure `partition` has begun the current epoch before a request runs on it (its WAL
/// records where the epoch began, and the request's records carry it): begins it here if the
/// shard's follower task has not yet. `Unavailable` if it cannot.
async fn begin_epoch_if_needed(server: &ShardServer, partition: u32) -> Result<(), ErrorResponse> {
    let epoch = server.cluster.borrow().epoch().get();
    let Some(stored) = server.local.partition(partition) else {
        // Not on this shard: `execute` answers that.
        return Ok(());
    };
    // The common case, with nothing to do: no clone, no await.
    if stored.epoch() >= epoch {
        return Ok(());
    }
    let stored = stored.clone();
    if stored.epoch() < epoch {
        // A concurrent start of the same epoch fails harmlessly: the check below decides.
        let _ = stored.begin_epoch(epoch).await;
    }
    if stored.epoch() < epoch {
        return Err(ErrorResponse::unavailable(format!(
            "partition {partition} cannot start epoch {epoch}"
        )));
    }
    Ok(())
}

impl ShardServer {
    /// Runs `check` against the shard's view of the cluster; if it refuses, once more against
    /// the newest view, which the shard then takes. The shard's follower takes each new view
    /// asynchronously, so the control shard may have published a newer one (and the node
    /// reported it, e.g. printed `ready`) that this shard has not taken yet. Only refusals
    /// pay for the second look (one uncontended lock).
    fn check_view(
        &self,
        check: impl Fn(&ClusterView) -> Result<(), ErrorResponse>,
    ) -> Result<(), ErrorResponse> {
        let refused = match check(&self.cluster.borrow()) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        let latest = self.feed.latest();
        if Arc::ptr_eq(&latest, &self.cluster.borrow()) {
            return Err(refused);
        }
        *self.cluster.borrow_mut() = latest.clone();
        check(&latest)
    }

    /// Counts a request admitted on `state`'s connection as in flight (until its answer is
    /// written).
    fn count_admitted(&self, state: &ConnectionState) {
        state
            .requests_in_flight
            .set(state.requests_in_flight.get() + 1);
        self.requests_in_flight
            .set(self.requests_in_flight.get() + 1);
    }

    /// Whether this node may answer an `Any` read of `partition` as a follower: it is
    /// `Joined`, holds a replica in the current map, and its last sync found it holding every
    /// record the leader had (a replica still catching up sends the reader to the leader,
    /// never answers "not found" for a write it has not pulled yet: promise 3).
    fn serves_any_read(&self, partition: u32) -> bool {
        let view = self.cluster.borrow();
        let replica = view
            .map
            .as_ref()
            .and_then(|map| map.assignment(PartitionId(partition)))
            .is_some_and(|assignment| assignment.replicas.contains(&view.node));
        replica
            && view.state == coregrid_cluster::types::NodeState::Joined
            && !view.behind
            && self.followers.is_caught_up(partition)
    }

    /// Keeps a [`Progress`] for each partition this node leads here, with the followers the
    /// view's map gives it; drops the others'.
    fn track_followers(&self, view: &ClusterView, led: &[u32]) {
        let now = self.now_ms();
        let hold_bytes = self.settings.replicas.hold_bytes;
        let mut progress = self.progress.borrow_mut();
        progress.retain(|partition, known| {
            let keep = led.contains(partition);
            if !keep {
                // Writes waiting for this partition's followers end `Unknown`.
                known.fail_waits();
            }
            keep
        });
        for &partition in led {
            let followers: Vec<u64> = view
                .map
                .as_ref()
                .and_then(|map| map.assignment(PartitionId(partition)))
                .map(|assignment| {
                    assignment
                        .replicas
                        .iter()
                        .filter(|&&node| node != view.node)
                        .map(|node| node.get())
                        .collect()
                })
                .unwrap_or_default();
            let entry = progress
                .entry(partition)
                .or_insert_with(|| Progress::new([], now));
            if !entry.followers().eq(followers.iter().copied()) {
                entry.set_followers(followers, now);
            }
            if let Some(stored) = self.local.partition(partition) {
                let hold = (entry.followers().count() > 0).then(|| entry.acked_by_all());
                stored.hold_for_replicas(hold, hold_bytes);
            }
        }
        // A partition this node no longer leads keeps no records for others.
        for stored in self.local.partitions() {
            if !led.contains(&stored.id()) {
                stored.hold_for_replicas(None, hold_bytes);
            }
        }
    }

    /// `partition` of this shard, if `follower` may pull it now in `map_epoch`
    /// ([`replica::fence_sync`]): for its sync and snapshot requests alike.
    fn fenced_for_follower(
        &self,
        follower: NodeId,
        partition: u32,
        map_epoch: u64,
    ) -> Result<Rc<coregrid_engine::Partition<coregrid_engine::rt::DmaStorage>>, ErrorResponse>
    {
        self.check_view(|view| replica::fence_sync(view, follower, partition, map_epoch))?;
        self.local.partition(partition).cloned().ok_or_else(|| {
            self.routing
                .route_partition(partition)
                .err()
                .unwrap_or_else(|| ErrorResponse::unavailable("partition not open"))
        })
    }

    /// Tells the control shard this shard's fenced positions in `view` and the handoffs it
    /// made ready.
    fn report_to_control(&self, view: &ClusterView) {
        let partitions: Vec<_> = self.local.partitions().cloned().collect();
        self.feed.report_positions(ShardPositions {
            shard: self.routing.shard,
            positions: replica::fenced_positions(view, &partitions),
            ready: self.handoffs_ready(),
        });
    }

    /// Whether this shard is handing `partition` over (draining, or ready and waiting for the
    /// map that moves it): its writes are refused meanwhile.
    fn handing_over(&self, partition: u32) -> bool {
        self.handoffs.borrow().get(&partition).is_some_and(|state| {
            matches!(state.phase, HandoffPhase::Draining | HandoffPhase::Ready)
        })
    }

    /// Holds a write to a partition this shard is handing over until the handoff ends (at most
    /// [`HANDOFF_WRITE_HOLD_MS`]), then fences it again. Once the map has moved the partition the
    /// write is answered `NotLeader` naming the new leader, which the client follows at once;
    /// refused at arrival, it would be `Unavailable` and wait out the client's retry backoff,
    /// which under load grew past a second (tools/tests/cluster_handoff_under_load.rs). An
    /// abandoned handoff lets it through; the engine's refusal stays the guard for a write that
    /// passed just before a handoff began.
    async fn hold_through_handoff(&self, partition: u32) -> Result<(), ErrorResponse> {
        if !self.handing_over(partition) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(HANDOFF_WRITE_HOLD_MS);
        while self.handing_over(partition) && Instant::now() < deadline {
            rt::sleep(Duration::from_millis(HANDOFF_POLL_MS)).await;
        }
        self.check_view(|view| view.fence(partition))
    }

    /// The handoffs this shard made ready.
    fn handoffs_ready(&self) -> Vec<Handoff> {
        self.handoffs
            .borrow()
            .values()
            .filter(|state| state.phase == HandoffPhase::Ready)
            .map(|state| state.handoff)
            .collect()
    }

    /// Starts the handoffs `view` wishes of this shard's partitions, and forgets those it no
    /// longer wishes (the map moved the partition, or the wish was withdrawn). A handoff that
    /// timed out is not tried again before its backoff ends.
    fn take_handoffs(self: &Rc<Self>, view: &ClusterView) {
        let now = Instant::now();
        let mut handoffs = self.handoffs.borrow_mut();
        handoffs.retain(|&partition, state| {
            let keep = match state.phase {
                HandoffPhase::Backoff(until) => now < until,
                _ => view.handoffs.contains(&state.handoff),
            };
            if !keep {
                // Moved, or no longer wished: the partition takes writes again wherever it
                // still leads (a follower's copies pass anyway).
                if let Some(stored) = self.local.partition(partition) {
                    stored.refuse_writes(None);
                }
            }
            keep
        });
        let mut started = Vec::new();
        for handoff in &view.handoffs {
            let partition = handoff.partition.get();
            if self.local.partition(partition).is_none() || handoffs.contains_key(&partition) {
                continue;
            }
            tracing::info!(partition, to = %handoff.to, "handing leadership over");
            if let Some(stored) = self.local.partition(partition) {
                // Every kind of write, collection changes included (which pass no fence here).
                stored.refuse_writes(Some(format!(
                    "partition {partition} is handing its leadership to node {}",
                    handoff.to
                )));
            }
            handoffs.insert(
                partition,
                HandoffState {
                    handoff: *handoff,
                    phase: HandoffPhase::Draining,
                },
            );
            started.push(*handoff);
        }
        // Spawned once the states are released: a spawned task may run at once.
        drop(handoffs);
        for handoff in started {
            rt::spawn_detached(drain_for_handoff(self.clone(), handoff));
        }
    }

    /// Milliseconds since this shard's server started: the clock of its [`Progress`].
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// What `request` must wait for after its leader holds it: nothing for reads, `One`
    /// writes and partitions of one replica; for `Quorum` and `All`, the follower acks its
    /// level needs from the partition's replica set. Refused (`NotEnoughReplicas`) when fewer
    /// followers are in sync than it needs: it would only wait for its timeout.
    fn ack_wait(&self, request: &handler::Request) -> Result<Option<AckWait>, ErrorResponse> {
        let handler::Request::Write {
            partition,
            consistency,
            ..
        } = *request
        else {
            return Ok(None);
        };
        self.ack_wait_for(partition, consistency)
    }

    /// [`ShardServer::ack_wait`] for a write of `consistency` to `partition`.
    fn ack_wait_for(
        &self,
        partition: u32,
        consistency: WriteConsistency,
    ) -> Result<Option<AckWait>, ErrorResponse> {
        let quorum = match consistency {
            WriteConsistency::One => return Ok(None),
            WriteConsistency::Quorum => true,
            WriteConsistency::All => false,
        };
        let replicas = {
            let view = self.cluster.borrow();
            view.map
                .as_ref()
                .and_then(|map| map.assignment(PartitionId(partition)))
                .map_or(1, |assignment| assignment.replicas.len().max(1))
        };
        let needed = follower_acks_needed(quorum, replicas);
        if needed == 0 {
            return Ok(None);
        }
        let progress = self.progress.borrow();
        let Some(known) = progress.get(&partition) else {
            return Err(ErrorResponse::unavailable(format!(
                "partition {partition}: this leader is still taking up its followers"
            )));
        };
        let in_sync = known.in_sync(self.now_ms(), self.settings.replicas.lag.as_millis() as u64);
        if in_sync < needed {
            let count = |followers: usize| u32::try_from(followers + 1).unwrap_or(u32::MAX);
            return Err(ErrorResponse::NotEnoughReplicas {
                needed: count(needed),
                available: count(in_sync),
            });
        }
        Ok(Some(AckWait {
            partition,
            needed,
            generation: known.generation(),
        }))
    }

    /// Creates or drops collection `name` in the partitions this node leads (`scope`), and
    /// answers once each changed partition's followers hold it as `consistency` asks, as a
    /// keyed write would: refused up front, with nothing changed, when one of the partitions
    /// has too few followers in sync.
    async fn change_collection(
        &self,
        engine: Option<Engine>,
        name: &str,
        create: bool,
        consistency: WriteConsistency,
        scope: &CollectionScope,
    ) -> Answer {
        let Some(engine) = engine else {
            return Answer::Error(ErrorResponse::ShuttingDown);
        };
        // Each partition's followers are tracked by its own shard's server.
        let checks = scope.partitions.iter().map(|&partition| {
            on_owner(&engine, partition, move |server| async move {
                server.ack_wait_for(partition, consistency)
            })
        });
        let waits: Vec<AckWait> = match futures::future::try_join_all(checks).await {
            Ok(waits) => waits.into_iter().flatten().collect(),
            Err(error) => return Answer::Error(error),
        };
        let change = match handler::change_collection(&engine, name, create, scope).await {
            Ok(change) => change,
            Err(error) => return Answer::Error(handler::map_engine_error(error, true)),
        };
        // Unchanged partitions wait too: the earlier change that made them so may be a first
        // attempt of this one whose answer was lost.
        let acks = change
            .replicate_to
            .into_iter()
            .filter_map(|(partition, lsn)| {
                let wait = *waits.iter().find(|wait| wait.partition == partition)?;
                Some(on_owner(&engine, partition, move |server| async move {
                    server.await_acks(wait, lsn).await
                }))
            });
        match futures::future::try_join_all(acks).await {
            Ok(_) if change.changed => handler::collection_changed(),
            Ok(_) => Answer::Error(handler::collection_unchanged(name, create)),
            Err(error) => Answer::Error(error),
        }
    }

    /// Waits until `wait.needed` followers acknowledged `lsn`, at most the ack timeout. The
    /// write is durable here either way; a wait that ends without the acks answers `Unknown`
    /// (the client's retry with the same request id applies nothing twice).
    async fn await_acks(&self, wait: AckWait, lsn: u64) -> Result<(), ErrorResponse> {
        let acked = futures::future::poll_fn(|context| {
            let mut progress = self.progress.borrow_mut();
            match progress.get_mut(&wait.partition) {
                Some(known) => known.poll_acked(lsn, wait.needed, wait.generation, context),
                None => std::task::Poll::Ready(Err(AckError::ReplicaSetChanged)),
            }
        });
        let timeout = self.settings.replicas.ack_timeout;
        let expired = rt::sleep(timeout);
        let outcome = match select(pin!(acked), pin!(expired)).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => {
                return Err(ErrorResponse::unknown(format!(
                    "partition {}: LSN {lsn} is durable on the leader, but {} follower acks did \
                     not come within {timeout:?}",
                    wait.partition, wait.needed
                )))
            }
        };
        outcome.map_err(|error| {
            ErrorResponse::unknown(format!(
                "partition {}: LSN {lsn} is durable on the leader; waiting for follower acks: \
                 {error}",
                wait.partition
            ))
        })
    }

    /// The topology stamped with the current epoch.
    fn topology_now(&self) -> Arc<TopologyResponse> {
        let epoch = self.cluster.borrow().epoch();
        if self.topology.epoch == epoch {
            return self.topology.clone();
        }
        Arc::new(TopologyResponse {
            epoch,
            ..(*self.topology).clone()
        })
    }
}

/// The connection's writer: encodes ready answers in batches and writes them; closes once the
/// reader has ended and every admitted request is answered.
async fn write_answers(
    server: Rc<ShardServer>,
    state: Rc<ConnectionState>,
    mut writer: ConnectionWriter,
) {
    let mut out = Vec::with_capacity(WRITE_BATCH_BYTES);
    let settle = |counted: usize| {
        state
            .requests_in_flight
            .set(state.requests_in_flight.get() - counted);
        server
            .requests_in_flight
            .set(server.requests_in_flight.get() - counted);
        state.reader_bell.ring();
    };
    loop {
        let mut counted = 0;
        while out.len() < WRITE_BATCH_BYTES {
            let Some(outgoing) = state.answers.borrow_mut().pop_front() else {
                break;
            };
            counted += usize::from(outgoing.counted);
            let meta = FrameMeta {
                request_id: outgoing.request_id,
                epoch: server.cluster.borrow().epoch(),
            };
            if let Err(error) = handler::encode_answer(&mut out, meta, &outgoing.answer) {
                tracing::error!(%error, "an answer could not be encoded; closing the connection");
                state.writer_failed.set(true);
            }
        }
        if out.is_empty() {
            if state.reader_done.get() && state.requests_in_flight.get() == 0 {
                break;
            }
            state.writer_bell.wait().await;
            continue;
        }
        if !state.writer_failed.get() {
            if let Err(error) = writer.write_all(&out, server.settings.write_timeout).await {
                tracing::debug!(%error, "write failed; closing the connection");
                state.writer_failed.set(true);
            }
        }
        out.clear();
        if out.capacity() > 2 * WRITE_BATCH_BYTES {
            out = Vec::with_capacity(WRITE_BATCH_BYTES);
        }
        settle(counted);
    }
    if !state.writer_failed.get() {
        let _closing = writer.close();
    }
}
