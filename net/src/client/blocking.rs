//! The blocking driver: the client core over `std::net::TcpStream`, for ordinary threads (the
//! command line uses it). One request at a time per client; one cached connection per shard
//! address, reused by every later request to it. A connection that failed, timed out or
//! answered out of protocol is dropped and made again on the next attempt.

use super::collections::{self, CollectionAnswers, CollectionRound, COLLECTION_ROUNDS_MAX};
use super::connection::{ConnectionError, Event, Inbox, Outbox, Request, SendError};
use super::router::{Call, Failure, Outcome, Step, Verdict};
use super::{typed, ClientConfig, ClientError, Operation, Router, Topology, Value};
use crate::ids::{Lsn, NodeId, ShardId};
use crate::message::{
    ClusterStatusResponse, DeleteResponse, Hello, HelloAccepted, TopologyResponse, WriteResponse,
};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Connection {
    stream: TcpStream,
    outbox: Outbox,
    inbox: Inbox,
    accepted: Option<HelloAccepted>,
}

/// A client for ordinary threads. See the module docs.
pub struct BlockingClient {
    config: ClientConfig,
    router: Router,
    connections: HashMap<SocketAddr, Connection>,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BlockingClient")
            .field("client", &self.router.client())
            .field("seeds", &self.config.seeds)
            .field("connections", &self.connections.len())
            .finish()
    }
}

impl BlockingClient {
    /// A client for `config`. Connects lazily: the first request asks a seed for the topology.
    pub fn new(config: ClientConfig) -> Result<BlockingClient, ClientError> {
        let router = config.router()?;
        Ok(BlockingClient {
            config,
            router,
            connections: HashMap::new(),
        })
    }

    /// The routing core (topology in use, client id).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Runs `operation` to its end: routed, redirected and retried as the router decides.
    pub fn execute(&mut self, operation: Operation) -> Result<super::Reply, ClientError> {
        let (write, read) = (self.config.write_consistency, self.config.read_consistency);
        let mut call = self
            .router
            .call(|next_id| operation.into_request(write, read, next_id))?;
        self.run(&mut call)
    }

    fn run(&mut self, call: &mut Call) -> Result<super::Reply, ClientError> {
        loop {
            let step = self.router.next_step(call);
            let outcome = self.attempt(step, step.request(call));
            match self.router.handle_outcome(call, outcome) {
                Verdict::Done(result) => return result,
                Verdict::Continue { backoff } => {
                    if !backoff.is_zero() {
                        std::thread::sleep(backoff);
                    }
                }
            }
        }
    }

    /// Asks a seed for its node's topology (rotating through the seeds on failure) and makes
    /// it the one requests are routed by.
    pub fn refresh_topology(&mut self) -> Result<Topology, ClientError> {
        let mut call = self.router.topology_call();
        typed::topology(self.run(&mut call)?)?;
        self.router
            .topology()
            .cloned()
            .ok_or_else(|| ClientError::Config("no topology after a topology answer".into()))
    }

    /// Asks a seed for its node's view of the control plane: term, role, controller, members
    /// and the leadership map its data shards hold. Not routed by partition; an unreachable
    /// seed is skipped for the next. A node that cannot answer it (an older build, or one
    /// whose control plane is not running) answers with an error: [`ClientError::Rejected`]
    /// or [`ClientError::Unavailable`]; a build that does not know the request at all drops
    /// the connection ([`ClientError::Protocol`] or [`ClientError::ConnectionLost`]).
    pub fn cluster_status(&mut self) -> Result<ClusterStatusResponse, ClientError> {
        let mut call = self.router.cluster_status_call();
        typed::cluster_status(self.run(&mut call)?)
    }

    /// Sets `key` to `value`.
    pub fn put(
        &mut self,
        collection: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<WriteResponse, ClientError> {
        typed::written(self.execute(Operation::Put {
            collection: collection.into(),
            key: key.into(),
            value: value.into(),
        })?)
    }

    /// Reads `key`: `None` if absent.
    pub fn get(&mut self, collection: &str, key: &[u8]) -> Result<Option<Value>, ClientError> {
        typed::value(self.execute(Operation::Get {
            collection: collection.into(),
            key: key.into(),
        })?)
    }

    /// Removes `key`.
    pub fn delete(&mut self, collection: &str, key: &[u8]) -> Result<DeleteResponse, ClientError> {
        typed::deleted(self.execute(Operation::Delete {
            collection: collection.into(),
            key: key.into(),
        })?)
    }

    /// Sets (`Some`) or removes (`None`) `key` if its revision is `expected_revision` (0: the
    /// key must be absent). A mismatch is [`ClientError::CasMismatch`].
    pub fn compare_and_set(
        &mut self,
        collection: &str,
        key: &[u8],
        expected_revision: Lsn,
        value: Option<&[u8]>,
    ) -> Result<WriteResponse, ClientError> {
        typed::written(self.execute(Operation::CompareAndSet {
            collection: collection.into(),
            key: key.into(),
            expected_revision,
            value: value.map(<[u8]>::to_vec),
        })?)
    }

    /// Creates a collection in every partition of the cluster: sent to every partition's
    /// leader, in rounds until one map's leaders all took it (see [`super::collections`]).
    /// `CollectionExists` only if it existed everywhere.
    pub fn create_collection(&mut self, name: &str) -> Result<WriteResponse, ClientError> {
        self.change_collection(Operation::CreateCollection { name: name.into() })
    }

    /// Drops a collection and its keys in every partition of the cluster, as
    /// [`BlockingClient::create_collection`] creates one.
    pub fn drop_collection(&mut self, name: &str) -> Result<WriteResponse, ClientError> {
        self.change_collection(Operation::DropCollection { name: name.into() })
    }

    fn change_collection(&mut self, operation: Operation) -> Result<WriteResponse, ClientError> {
        let mut answers = CollectionAnswers::default();
        let mut why = String::new();
        for round in 0..COLLECTION_ROUNDS_MAX {
            if round > 0 {
                std::thread::sleep(collections::collection_backoff(round));
            }
            let plan = match collections::collection_round(&self.cluster_status()?) {
                Ok(plan) => plan,
                Err(reason) => {
                    why = reason;
                    continue;
                }
            };
            match self.collection_round(&plan, &operation, &mut answers) {
                Ok(None) => return answers.finish(),
                Ok(Some(reason)) => why = reason,
                Err(error) => return Err(error),
            }
        }
        Err(collections::gave_up(&why))
    }

    /// Sends `operation` to every leader of `plan`: `None` once all held its epoch throughout,
    /// else why the round must be repeated.
    fn collection_round(
        &mut self,
        plan: &CollectionRound,
        operation: &Operation,
        answers: &mut CollectionAnswers,
    ) -> Result<Option<String>, ClientError> {
        for &target in &plan.targets {
            let mut node = BlockingClient::new(collections::config_for_node(&self.config, target))?;
            let outcome = node.cluster_status().and_then(|before| {
                let answer = node.execute(operation.clone()).and_then(typed::written);
                Ok((before, answer, node.cluster_status()?))
            });
            if let Some(reason) = collections::settle_leader(plan, outcome, answers)? {
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    /// Connects to one shard directly (handshake and a topology request, no retry): whether
    /// it is reachable, which node and shard answered, and how long the round trip took.
    pub fn probe(
        &mut self,
        address: SocketAddr,
        shard: Option<ShardId>,
    ) -> Result<(HelloAccepted, TopologyResponse, Duration), ClientError> {
        let begun = Instant::now();
        let step = Step {
            address,
            shard,
            node: None,
            kind: super::router::StepKind::Request,
        };
        let outcome = self.attempt(step, &Request::Topology);
        let took = begun.elapsed();
        let accepted = self
            .connections
            .get(&address)
            .and_then(|connection| connection.accepted);
        match (outcome, accepted) {
            (Outcome::Reply(super::Reply::Topology(topology)), Some(accepted)) => {
                Ok((accepted, topology, took))
            }
            (Outcome::Reply(other), _) => Err(ClientError::Protocol {
                address,
                reason: format!("a topology request was answered with {other:?}"),
            }),
            (Outcome::Error(error), _) => Err(ClientError::from_response(error)),
            (Outcome::Failed(failure), _) => Err(failure_error(failure)),
        }
    }

    /// One attempt: connect if needed, send, wait for the answer.
    fn attempt(&mut self, step: Step, request: &Request) -> Outcome {
        let address = step.address;
        if !self.connections.contains_key(&address) {
            match self.connect(address, step.node, step.shard) {
                Ok(connection) => {
                    self.connections.insert(address, connection);
                }
                Err(failure) => return Outcome::Failed(failure),
            }
        }
        let Some(connection) = self.connections.get_mut(&address) else {
            return Outcome::Failed(Failure::Connect {
                address,
                reason: "no connection".into(),
            });
        };
        let outcome = exchange(connection, address, request, self.config.request_timeout);
        if matches!(outcome, Outcome::Failed(_)) {
            self.connections.remove(&address);
        }
        outcome
    }

    fn connect(
        &self,
        address: SocketAddr,
        node: Option<NodeId>,
        shard: Option<ShardId>,
    ) -> Result<Connection, Failure> {
        let connect_failed = |reason: String| Failure::Connect { address, reason };
        let stream = TcpStream::connect_timeout(&address, self.config.connect_timeout)
            .map_err(|error| connect_failed(error.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|error| connect_failed(error.to_string()))?;
        let mut hello = Hello::client(self.config.cluster_id, self.router.client());
        hello.node = node;
        hello.shard = shard;
        let outbox = Outbox::new(&hello).map_err(|error| connect_failed(error.to_string()))?;
        let mut connection = Connection {
            stream,
            outbox,
            inbox: Inbox::new(),
            accepted: None,
        };
        // The hello goes out with the first request; its answer is read before the request's.
        let deadline = Instant::now() + self.config.connect_timeout;
        flush(&mut connection).map_err(|error| connect_failed(error.to_string()))?;
        match read_event(&mut connection, deadline) {
            Ok(Event::Accepted(accepted)) => {
                connection.accepted = Some(accepted);
                Ok(connection)
            }
            Ok(Event::Reply { .. }) => Err(connect_failed("a reply before the hello reply".into())),
            Err(ReadError::Connection(ConnectionError::Refused(refusal))) => {
                Err(Failure::Refused { address, refusal })
            }
            Err(error) => Err(connect_failed(format!("handshake: {error}"))),
        }
    }
}

fn failure_error(failure: Failure) -> ClientError {
    match failure {
        Failure::Connect { address, reason } => ClientError::Connect { address, reason },
        Failure::Refused { address, refusal } => ClientError::Refused { address, refusal },
        Failure::Timeout { address, after, .. } => ClientError::Timeout { address, after },
        Failure::Lost {
            address, reason, ..
        } => ClientError::ConnectionLost { address, reason },
        other => ClientError::ConnectionLost {
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("{other:?}"),
        },
    }
}

/// Sends `request` on `connection` and waits for its answer.
fn exchange(
    connection: &mut Connection,
    address: SocketAddr,
    request: &Request,
    timeout: Duration,
) -> Outcome {
    let request_id = match connection.outbox.send(request) {
        Ok(request_id) => request_id,
        Err(SendError::Saturated) => return Outcome::Failed(Failure::Saturated { address }),
        // The router validated the request; an encode failure is the client's own limit.
        Err(SendError::Encode(error)) => {
            return Outcome::Failed(Failure::Lost {
                address,
                reason: format!("request not encodable: {error}"),
                sent: false,
                protocol: false,
            })
        }
    };
    if let Err(error) = flush(connection) {
        return Outcome::Failed(Failure::Lost {
            address,
            reason: format!("send: {error}"),
            sent: true,
            protocol: false,
        });
    }
    let deadline = Instant::now() + timeout;
    loop {
        match read_event(connection, deadline) {
            Ok(Event::Reply {
                request_id: answered,
                result,
            }) if answered == request_id => {
                return match result {
                    Ok(reply) => Outcome::Reply(reply),
                    Err(error) => Outcome::Error(error),
                };
            }
            // An answer to an earlier request given up on: not ours.
            Ok(Event::Reply { .. }) => {}
            Ok(Event::Accepted(_)) => {
                return Outcome::Failed(Failure::Lost {
                    address,
                    reason: "a second hello reply".into(),
                    sent: true,
                    protocol: true,
                })
            }
            Err(ReadError::TimedOut) => {
                return Outcome::Failed(Failure::Timeout {
                    address,
                    after: timeout,
                    sent: true,
                })
            }
            Err(ReadError::Connection(ConnectionError::Refused(refusal))) => {
                return Outcome::Failed(Failure::Refused { address, refusal })
            }
            Err(error) => {
                let protocol = matches!(error, ReadError::Connection(_));
                return Outcome::Failed(Failure::Lost {
                    address,
                    reason: error.to_string(),
                    sent: true,
                    protocol,
                });
            }
        }
    }
}

fn flush(connection: &mut Connection) -> std::io::Result<()> {
    let bytes = connection.outbox.transmit().len();
    connection.stream.write_all(connection.outbox.transmit())?;
    connection.outbox.transmitted(bytes);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("timed out")]
    TimedOut,
    #[error("closed by the server")]
    Closed,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Connection(ConnectionError),
}

/// Reads until the next event or `deadline`.
fn read_event(connection: &mut Connection, deadline: Instant) -> Result<Event, ReadError> {
    loop {
        if let Some(event) = connection
            .inbox
            .poll_event(&mut connection.outbox)
            .map_err(ReadError::Connection)?
        {
            return Ok(event);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::TimedOut);
        }
        connection
            .stream
            .set_read_timeout(Some(remaining))
            .map_err(ReadError::Io)?;
        let buffer = connection.inbox.read_buf().map_err(ReadError::Connection)?;
        match connection.stream.read(buffer) {
            Ok(0) => {
                connection.inbox.finish().map_err(ReadError::Connection)?;
                return Err(ReadError::Closed);
            }
            Ok(bytes) => connection.inbox.received(bytes),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ReadError::TimedOut)
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(ReadError::Io(error)),
        }
    }
}
