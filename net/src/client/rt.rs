//! The glommio driver, and every glommio call of the client (style.md rule 3).
//!
//! An [`AsyncClient`] lives on the executor that made it (it is `!Send`, like everything on a
//! glommio shard) and may be cloned into any number of local tasks. It keeps one connection per
//! shard address, shared by all of them. Each connection has two tasks:
//! - a **writer** that connects, sends the hello, waits for the server's acceptance, then
//!   writes whatever requests have queued up in the connection's outbox since its last write,
//!   in one write (requests from many tasks share a syscall);
//! - a **reader** that turns received bytes into answers and hands each to the request waiting
//!   for its request id.
//!
//! A request registers a waiter, queues its frame and wakes the writer; it waits for its
//! answer or its timeout, whichever comes first. When a connection breaks, every waiting
//! request gets the failure (with whether it may have been sent) and the connection is
//! forgotten; the next request to that address makes a new one. Dropping the last clone of a
//! client closes its connections.

use super::collections::{self, CollectionAnswers, CollectionRound, COLLECTION_ROUNDS_MAX};
use super::connection::{ConnectionError, Event, Inbox, Outbox, Request, SendError};
use super::router::{Call, Failure, Outcome, Step, Verdict};
use super::{typed, ClientConfig, ClientError, Operation, Router, Topology, Value};
use crate::ids::{Lsn, RequestId};
use crate::message::{ClusterStatusResponse, DeleteResponse, Hello, HelloAccepted, WriteResponse};
use crate::transport::{Connection as Socket, SocketReader};
use futures::channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Waits for `duration` on the current glommio executor.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` to completion on a new glommio executor on the current thread (not pinned to
/// a core), for callers outside any executor: tests, tools, a load generator's threads.
/// `io_memory_bytes` is the memory registered with io_uring for its buffers.
pub fn block_on<F, T>(io_memory_bytes: usize, future: F) -> Result<T, ClientError>
where
    F: Future<Output = T>,
{
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory_bytes)
        .make()
        .map_err(|error| {
            ClientError::Config(format!(
                "cannot start a glommio executor (io_uring and locked memory needed): {error}"
            ))
        })?;
    Ok(executor.run(future))
}

/// Spawns `future` as a detached local task of the current executor.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Spawns `future` as a local task of the current executor; awaiting the task gives its
/// output (dropping it cancels the task).
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> glommio::Task<T> {
    glommio::spawn_local(future)
}

/// Wakes one waiting task (the connection's writer); a wake with nobody waiting is kept.
#[derive(Default)]
struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn wait(&self) -> NotifyWait<'_> {
        NotifyWait(self)
    }
}

struct NotifyWait<'a>(&'a Notify);

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.0.pending.replace(false) {
            return Poll::Ready(());
        }
        self.0.waker.set(Some(context.waker().clone()));
        Poll::Pending
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connecting or waiting for the hello reply.
    Opening,
    Open,
    Closed,
}

struct Shared {
    outbox: Outbox,
    waiters: HashMap<RequestId, oneshot::Sender<Outcome>>,
    state: State,
    /// The TCP connection was made: a queued request may have been written.
    connected: bool,
    /// The client is gone or closing: the writer closes the socket.
    closing: bool,
    accepted: Option<HelloAccepted>,
}

struct Connection {
    address: SocketAddr,
    shared: RefCell<Shared>,
    writer_wake: Notify,
}

impl Connection {
    /// Ends the connection: every waiting request gets `failure(sent)`.
    fn close(&self, failure: impl Fn(bool) -> Failure) {
        let waiters = {
            let mut shared = self.shared.borrow_mut();
            if shared.state == State::Closed {
                return;
            }
            shared.state = State::Closed;
            shared.outbox.drain();
            let sent = shared.connected;
            std::mem::take(&mut shared.waiters)
                .into_values()
                .map(|waiter| (waiter, sent))
                .collect::<Vec<_>>()
        };
        for (waiter, sent) in waiters {
            // The waiter may have timed out already and gone.
            let _gone = waiter.send(Outcome::Failed(failure(sent)));
        }
        self.writer_wake.notify();
    }

    fn lost(&self, reason: String, protocol: bool) {
        let address = self.address;
        self.close(|sent| {
            if sent {
                Failure::Lost {
                    address,
                    reason: reason.clone(),
                    sent,
                    protocol,
                }
            } else {
                Failure::Connect {
                    address,
                    reason: reason.clone(),
                }
            }
        });
    }
}

struct Inner {
    config: ClientConfig,
    router: RefCell<Router>,
    connections: RefCell<HashMap<SocketAddr, Rc<Connection>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for connection in self.connections.borrow().values() {
            connection.shared.borrow_mut().closing = true;
            connection.writer_wake.notify();
        }
    }
}

/// A pipelined client for glommio executors. See the module docs. Cloning is cheap and shares
/// the connections and the routing state.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AsyncClient")
            .field("client", &self.inner.router.borrow().client())
            .field("seeds", &self.inner.config.seeds)
            .finish()
    }
}

impl AsyncClient {
    /// A client for `config`. Connects lazily: the first request asks a seed for the topology.
    pub fn new(config: ClientConfig) -> Result<AsyncClient, ClientError> {
        let router = config.router()?;
        Ok(AsyncClient {
            inner: Rc::new(Inner {
                config,
                router: RefCell::new(router),
                connections: RefCell::new(HashMap::new()),
            }),
        })
    }

    /// The topology in use, if known.
    pub fn topology(&self) -> Option<Topology> {
        self.inner.router.borrow().topology().cloned()
    }

    /// Runs `operation` to its end: routed, redirected and retried as the router decides.
    pub async fn execute(&self, operation: Operation) -> Result<super::Reply, ClientError> {
        let (write, read) = (
            self.inner.config.write_consistency,
            self.inner.config.read_consistency,
        );
        let mut call = self
            .inner
            .router
            .borrow_mut()
            .call(|next_id| operation.into_request(write, read, next_id))?;
        self.run(&mut call).await
    }

    async fn run(&self, call: &mut Call) -> Result<super::Reply, ClientError> {
        loop {
            let step = self.inner.router.borrow_mut().next_step(call);
            let outcome = self.attempt(step, step.request(call)).await;
            let verdict = self.inner.router.borrow_mut().handle_outcome(call, outcome);
            match verdict {
                Verdict::Done(result) => return result,
                Verdict::Continue { backoff } => {
                    if !backoff.is_zero() {
                        sleep(backoff).await;
                    }
                }
            }
        }
    }

    /// Asks a seed for its node's topology and routes by it from now on.
    pub async fn refresh_topology(&self) -> Result<Topology, ClientError> {
        let mut call = self.inner.router.borrow_mut().topology_call();
        typed::topology(self.run(&mut call).await?)?;
        self.topology()
            .ok_or_else(|| ClientError::Config("no topology after a topology answer".into()))
    }

    /// Asks a seed for its node's view of the control plane: term, role, controller, members
    /// and the leadership map its data shards hold. Not routed by partition; an unreachable
    /// seed is skipped for the next. See [`super::BlockingClient::cluster_status`] for the
    /// errors of a node that cannot answer it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        let mut call = self.inner.router.borrow_mut().cluster_status_call();
        typed::cluster_status(self.run(&mut call).await?)
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        collection: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<WriteResponse, ClientError> {
        typed::written(
            self.execute(Operation::Put {
                collection: collection.into(),
                key: key.into(),
                value: value.into(),
            })
            .await?,
        )
    }

    /// Reads `key`: `None` if absent.
    pub async fn get(&self, collection: &str, key: &[u8]) -> Result<Option<Value>, ClientError> {
        typed::value(
            self.execute(Operation::Get {
                collection: collection.into(),
                key: key.into(),
            })
            .await?,
        )
    }

    /// Removes `key`.
    pub async fn delete(
        &self,
        collection: &str,
        key: &[u8],
    ) -> Result<DeleteResponse, ClientError> {
        typed::deleted(
            self.execute(Operation::Delete {
                collection: collection.into(),
                key: key.into(),
            })
            .await?,
        )
    }

    /// Sets (`Some`) or removes (`None`) `key` if its revision is `expected_revision`.
    pub async fn compare_and_set(
        &self,
        collection: &str,
        key: &[u8],
        expected_revision: Lsn,
        value: Option<&[u8]>,
    ) -> Result<WriteResponse, ClientError> {
        typed::written(
            self.execute(Operation::CompareAndSet {
                collection: collection.into(),
                key: key.into(),
                expected_revision,
                value: value.map(<[u8]>::to_vec),
            })
            .await?,
        )
    }

    /// Creates a collection in every partition of the cluster, as
    /// [`super::BlockingClient::create_collection`] does.
    pub async fn create_collection(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.change_collection(Operation::CreateCollection { name: name.into() })
            .await
    }

    /// Drops a collection and its keys in every partition of the cluster.
    pub async fn drop_collection(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.change_collection(Operation::DropCollection { name: name.into() })
            .await
    }

    async fn change_collection(&self, operation: Operation) -> Result<WriteResponse, ClientError> {
        let mut answers = CollectionAnswers::default();
        let mut why = String::new();
        for round in 0..COLLECTION_ROUNDS_MAX {
            if round > 0 {
                sleep(collections::collection_backoff(round)).await;
            }
            let plan = match collections::collection_round(&self.cluster_status().await?) {
                Ok(plan) => plan,
                Err(reason) => {
                    why = reason;
                    continue;
                }
            };
            match self.collection_round(&plan, &operation, &mut answers).await {
                Ok(None) => return answers.finish(),
                Ok(Some(reason)) => why = reason,
                Err(error) => return Err(error),
            }
        }
        Err(collections::gave_up(&why))
    }

    /// Sends `operation` to every leader of `plan`: `None` once all held its epoch throughout,
    /// else why the round must be repeated.
    async fn collection_round(
        &self,
        plan: &CollectionRound,
        operation: &Operation,
        answers: &mut CollectionAnswers,
    ) -> Result<Option<String>, ClientError> {
        for &target in &plan.targets {
            let node = AsyncClient::new(collections::config_for_node(&self.inner.config, target))?;
            let outcome = async {
                let before = node.cluster_status().await?;
                let answer = node
                    .execute(operation.clone())
                    .await
                    .and_then(typed::written);
                Ok::<_, ClientError>((before, answer, node.cluster_status().await?))
            }
            .await;
            node.close();
            if let Some(reason) = collections::settle_leader(plan, outcome, answers)? {
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    /// Closes every connection (requests waiting on them fail); later requests connect again.
    pub fn close(&self) {
        for (_, connection) in self.inner.connections.borrow_mut().drain() {
            connection.shared.borrow_mut().closing = true;
            connection.writer_wake.notify();
        }
    }

    /// The connection to `step.address`, made (and its tasks started) if there is none open.
    fn connection(&self, step: Step) -> Result<Rc<Connection>, Failure> {
        let mut connections = self.inner.connections.borrow_mut();
        if let Some(connection) = connections.get(&step.address) {
            if connection.shared.borrow().state != State::Closed {
                return Ok(connection.clone());
            }
        }
        let mut hello = Hello::client(
            self.inner.config.cluster_id,
            self.inner.router.borrow().client(),
        );
        hello.node = step.node;
        hello.shard = step.shard;
        // A client's hello has only fixed-size fields and always encodes; if it did not, the
        // attempt fails like one that could not connect.
        let outbox = Outbox::new(&hello).map_err(|error| Failure::Connect {
            address: step.address,
            reason: format!("hello not encodable: {error}"),
        })?;
        let connection = Rc::new(Connection {
            address: step.address,
            shared: RefCell::new(Shared {
                outbox,
                waiters: HashMap::new(),
                state: State::Opening,
                connected: false,
                closing: false,
                accepted: None,
            }),
            writer_wake: Notify::default(),
        });
        connections.insert(step.address, connection.clone());
        drop(connections);
        spawn_detached(run_writer(
            connection.clone(),
            Rc::downgrade(&self.inner),
            self.inner.config.connect_timeout,
        ));
        Ok(connection)
    }

    /// One attempt: queue the request on its connection, wait for the answer or the timeout.
    async fn attempt(&self, step: Step, request: &Request) -> Outcome {
        let address = step.address;
        let connection = match self.connection(step) {
            Ok(connection) => connection,
            Err(failure) => return Outcome::Failed(failure),
        };
        let (request_id, receiver) = {
            let mut shared = connection.shared.borrow_mut();
            if shared.state == State::Closed {
                return Outcome::Failed(Failure::Connect {
                    address,
                    reason: "connection closed".into(),
                });
            }
            match shared.outbox.send(request) {
                Ok(request_id) => {
                    let (sender, receiver) = oneshot::channel();
                    shared.waiters.insert(request_id, sender);
                    (request_id, receiver)
                }
                Err(SendError::Saturated) => {
                    return Outcome::Failed(Failure::Saturated { address })
                }
                Err(SendError::Encode(error)) => {
                    return Outcome::Failed(Failure::Lost {
                        address,
                        reason: format!("request not encodable: {error}"),
                        sent: false,
                        protocol: false,
                    })
                }
            }
        };
        connection.writer_wake.notify();
        let timeout = self.inner.config.request_timeout;
        let timer = std::pin::pin!(glommio::timer::Timer::new(timeout));
        match futures::future::select(receiver, timer).await {
            futures::future::Either::Left((Ok(outcome), _)) => outcome,
            futures::future::Either::Left((Err(_canceled), _)) => Outcome::Failed(Failure::Lost {
                address,
                reason: "the connection dropped the request".into(),
                sent: true,
                protocol: false,
            }),
            futures::future::Either::Right((_fired_at, _)) => {
                let mut shared = connection.shared.borrow_mut();
                shared.waiters.remove(&request_id);
                Outcome::Failed(Failure::Timeout {
                    address,
                    after: timeout,
                    sent: shared.connected,
                })
            }
        }
    }
}

/// Connects, sends the hello, waits for acceptance (the reader reports it), then writes the
/// outbox whenever woken, until the connection closes.
async fn run_writer(connection: Rc<Connection>, client: Weak<Inner>, connect_timeout: Duration) {
    let address = connection.address;
    let stream = match Socket::connect(address, connect_timeout).await {
        Ok(stream) => stream,
        Err(error) => {
            connection.close(|_| Failure::Connect {
                address,
                reason: error.to_string(),
            });
            forget(&client, &connection);
            return;
        }
    };
    // `connect` turned Nagle off: requests are written whole, and latency matters more.
    let (reader, mut writer) = stream.into_halves();
    let hello = {
        let mut shared = connection.shared.borrow_mut();
        shared.connected = true;
        shared.outbox.take_transmit(Vec::new())
    };
    spawn_detached(run_reader(connection.clone(), client.clone(), reader));
    let mut buffer = hello;
    // Only the hello goes out until the server accepted it: requests queued meanwhile wait.
    if let Err(error) = writer.write_all(&buffer, None).await {
        connection.lost(format!("send: {error}"), false);
        forget(&client, &connection);
        return;
    }
    buffer.clear();
    loop {
        connection.writer_wake.wait().await;
        let (state, closing) = {
            let shared = connection.shared.borrow();
            (shared.state, shared.closing)
        };
        if closing || state == State::Closed {
            let _closed = writer.close();
            connection.lost("the client closed the connection".into(), false);
            forget(&client, &connection);
            return;
        }
        if state == State::Opening {
            continue;
        }
        buffer = connection.shared.borrow_mut().outbox.take_transmit(buffer);
        if buffer.is_empty() {
            continue;
        }
        if let Err(error) = writer.write_all(&buffer, None).await {
            connection.lost(format!("send: {error}"), false);
            forget(&client, &connection);
            return;
        }
        // More may have queued during the write.
        connection.writer_wake.notify();
    }
}

/// Reads answers and hands each to its waiter, until the connection breaks.
async fn run_reader(connection: Rc<Connection>, client: Weak<Inner>, mut reader: SocketReader) {
    let mut inbox = Inbox::new();
    let failure = loop {
        let buffer = match inbox.read_buf() {
            Ok(buffer) => buffer,
            Err(error) => break (error.to_string(), true),
        };
        let bytes = match reader.read(buffer, None).await {
            Ok(0) => {
                let reason = match inbox.finish() {
                    Ok(()) => "closed by the server".to_string(),
                    Err(error) => format!("closed by the server: {error}"),
                };
                break (reason, false);
            }
            Ok(bytes) => bytes,
            Err(error) => break (format!("receive: {error}"), false),
        };
        inbox.received(bytes);
        if let Some(failure) = dispatch(&connection, &mut inbox) {
            break failure;
        }
        if connection.shared.borrow().state == State::Closed {
            break ("closed".into(), false);
        }
    };
    let (reason, protocol) = failure;
    connection.lost(reason, protocol);
    forget(&client, &connection);
}

/// Hands every complete answer to its waiter; `Some((reason, protocol))` if the connection
/// must be dropped.
fn dispatch(connection: &Connection, inbox: &mut Inbox) -> Option<(String, bool)> {
    loop {
        let mut shared = connection.shared.borrow_mut();
        let event = match inbox.poll_event(&mut shared.outbox) {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(ConnectionError::Refused(refusal)) => {
                drop(shared);
                let address = connection.address;
                connection.close(|_| Failure::Refused {
                    address,
                    refusal: refusal.clone(),
                });
                return Some((format!("refused: {refusal}"), false));
            }
            Err(error) => return Some((error.to_string(), true)),
        };
        match event {
            Event::Accepted(accepted) => {
                shared.accepted = Some(accepted);
                shared.state = State::Open;
                drop(shared);
                connection.writer_wake.notify();
            }
            Event::Reply { request_id, result } => {
                let waiter = shared.waiters.remove(&request_id);
                drop(shared);
                let outcome = match result {
                    Ok(reply) => Outcome::Reply(reply),
                    Err(error) => Outcome::Error(error),
                };
                // No waiter: the request timed out and its caller moved on.
                if let Some(waiter) = waiter {
                    let _gone = waiter.send(outcome);
                }
            }
        }
    }
}

/// Removes `connection` from its client's table, if it is still the one there.
fn forget(client: &Weak<Inner>, connection: &Rc<Connection>) {
    if let Some(client) = client.upgrade() {
        let mut connections = client.connections.borrow_mut();
        if connections
            .get(&connection.address)
            .is_some_and(|current| Rc::ptr_eq(current, connection))
        {
            connections.remove(&connection.address);
        }
    }
}
