//! The client's decisions, sans-IO: which address and shard a request goes to, what to do with
//! each answer or failure (done, follow a redirect, refresh the topology, retry after a
//! backoff, give up), and the client request ids of writes. A driver asks [`Router::next_step`]
//! where to send, does it, and hands the outcome to [`Router::handle_outcome`]; it owns the
//! sockets and the clock, the router owns the rules.
//!
//! **Retries never apply a write twice.** [`Router::call`] gives a write its
//! [`ClientRequestId`] once; every attempt sends the same request, id included, and the server
//! applies an id at most once. So a write whose answer was lost is retried, not reported as
//! failed; only when every attempt ended without a definite answer is it
//! [`ClientError::OutcomeUnknown`].
//!
//! **Bounded.** A call follows at most `redirects_max` redirects and retries at most
//! `retries_max` times after failures, with exponential backoff (jittered, from a seeded
//! generator: no clock, no global randomness).

use super::connection::{Reply, Request};
use super::constants::{ADDRESSES_LEARNED_MAX, REDIRECTS_MAX, RETRIES_MAX, SEEDS_MAX};
use super::error::ClientError;
use super::RetryPolicy;
use crate::ids::{ClientId, ClientRequestId, NodeId, PartitionId, ShardId};
use crate::message::{ErrorResponse, Refusal, TopologyResponse};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The partition that owns `key` among `partition_count`: crc32c of the key modulo the count.
/// Must equal the engine's `partition_for_key` (`tests/partition_function.rs` checks it).
///
/// # Panics
/// If `partition_count` is 0 (topology answers are validated to have at least one).
pub fn partition_for_key(key: &[u8], partition_count: u32) -> PartitionId {
    assert!(
        partition_count > 0,
        "a key space has at least one partition"
    );
    PartitionId(crc_fast::crc32_iscsi(key) % partition_count)
}

/// A node's topology as the client keeps it: which shard, at which address, serves each
/// partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The address the answer came from (its host serves every shard port).
    pub address: SocketAddr,
    /// The answer.
    pub response: TopologyResponse,
    /// Per partition, the index in `response.shards` of the shard that serves it.
    shard_of_partition: Vec<Option<u16>>,
}

impl Topology {
    /// Builds the routing table of an (already validated) answer. A partition listed by two
    /// shards goes to the first.
    pub fn new(address: SocketAddr, response: TopologyResponse) -> Topology {
        let mut shard_of_partition = vec![None; response.partition_count as usize];
        for (index, shard) in response.shards.iter().enumerate() {
            for partition in &shard.partitions {
                if let Some(slot) = shard_of_partition.get_mut(partition.get() as usize) {
                    if slot.is_none() {
                        *slot = u16::try_from(index).ok();
                    }
                }
            }
        }
        Topology {
            address,
            response,
            shard_of_partition,
        }
    }

    /// The shard serving `partition` and its address, if the topology names one.
    pub fn route(&self, partition: PartitionId) -> Option<(SocketAddr, ShardId)> {
        let index = (*self.shard_of_partition.get(partition.get() as usize)?)?;
        let shard = self.response.shards.get(usize::from(index))?;
        Some((SocketAddr::new(self.address.ip(), shard.port), shard.shard))
    }

    /// Every shard of the node with its address.
    pub fn shards(&self) -> impl Iterator<Item = (ShardId, SocketAddr, usize)> + '_ {
        self.response.shards.iter().map(|shard| {
            (
                shard.shard,
                SocketAddr::new(self.address.ip(), shard.port),
                shard.partitions.len(),
            )
        })
    }
}

/// What a step sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A topology request, to learn the routes.
    Topology,
    /// A cluster status request, to learn where a leader the client does not know serves
    /// (its members' data addresses).
    Members,
    /// The call's own request.
    Request,
}

/// Where the driver sends next, and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The address to send to (a connection to it may be reused).
    pub address: SocketAddr,
    /// The shard the connection's hello asks for, if known.
    pub shard: Option<ShardId>,
    /// The node the connection's hello asks for, if known.
    pub node: Option<NodeId>,
    /// What to send.
    pub kind: StepKind,
}

impl Step {
    /// The request to send for this step of `call`.
    pub fn request<'a>(&self, call: &'a Call) -> &'a Request {
        match self.kind {
            StepKind::Topology => &Request::Topology,
            StepKind::Members => &Request::ClusterStatus,
            StepKind::Request => &call.request,
        }
    }
}

/// How an attempt failed without an answer from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No connection could be made. Nothing was sent.
    Connect {
        /// The address.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The server refused the handshake. Nothing was applied.
    Refused {
        /// The address.
        address: SocketAddr,
        /// The refusal.
        refusal: Refusal,
    },
    /// The connection has too many requests in flight; this one was not sent.
    Saturated {
        /// The address.
        address: SocketAddr,
    },
    /// The connection broke (closed, reset, corrupt frames, a protocol violation).
    Lost {
        /// The address.
        address: SocketAddr,
        /// Why.
        reason: String,
        /// Whether any byte of the request may have reached the server.
        sent: bool,
        /// Whether the server broke the protocol (rather than the connection breaking).
        protocol: bool,
    },
    /// No answer within the attempt's timeout.
    Timeout {
        /// The address.
        address: SocketAddr,
        /// The timeout.
        after: Duration,
        /// Whether the request may have reached the server.
        sent: bool,
    },
}

impl Failure {
    fn may_have_reached_server(&self) -> bool {
        match self {
            Failure::Connect { .. } | Failure::Refused { .. } | Failure::Saturated { .. } => false,
            Failure::Lost { sent, .. } | Failure::Timeout { sent, .. } => *sent,
        }
    }

    fn to_error(&self) -> ClientError {
        match self.clone() {
            Failure::Connect { address, reason } => ClientError::Connect { address, reason },
            Failure::Refused { address, refusal } => ClientError::Refused { address, refusal },
            Failure::Saturated { address } => ClientError::Connect {
                address,
                reason: "too many requests in flight on the connection".into(),
            },
            Failure::Lost {
                address,
                reason,
                protocol: true,
                ..
            } => ClientError::Protocol { address, reason },
            Failure::Lost {
                address, reason, ..
            } => ClientError::ConnectionLost { address, reason },
            Failure::Timeout { address, after, .. } => ClientError::Timeout { address, after },
        }
    }
}

/// What came back for one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A successful answer.
    Reply(Reply),
    /// The server's error answer.
    Error(ErrorResponse),
    /// No answer.
    Failed(Failure),
}

/// The router's verdict on an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The call is over.
    Done(Result<Reply, ClientError>),
    /// Ask [`Router::next_step`] again after waiting `backoff` (zero for a redirect).
    Continue {
        /// How long to wait first.
        backoff: Duration,
    },
}

/// One logical request through all its attempts.
#[derive(Clone, Debug)]
pub struct Call {
    request: Request,
    failures: u32,
    redirects: u32,
    /// Where a redirect said to go.
    redirect: Option<(SocketAddr, Option<ShardId>)>,
    /// The step in flight, if any.
    in_flight: Option<Step>,
    /// Whether an earlier attempt of this write may have been applied.
    maybe_applied: bool,
    /// A leader this call was sent to by `NotLeader` whose address the router does not know,
    /// and the node to ask for it (its cluster status lists every member's data address).
    lookup: Option<(NodeId, SocketAddr)>,
}

impl Call {
    /// The request, as every attempt sends it.
    pub fn request(&self) -> &Request {
        &self.request
    }
    /// Redirects followed so far.
    pub fn redirects(&self) -> u32 {
        self.redirects
    }
    /// Retries after failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The client's routing and retry state. See the module docs.
#[derive(Debug)]
pub struct Router {
    seeds: Vec<SocketAddr>,
    /// How many of `seeds` came from the configuration (the rest were learned).
    configured_seeds: usize,
    /// The seed asked for the topology next.
    seed_index: usize,
    topology: Option<Topology>,
    /// The topology is known to be out of date (a redirect, a refused shard).
    topology_stale: bool,
    /// Topologies learned per node, to follow `NotLeader { leader }`.
    nodes: HashMap<NodeId, Topology>,
    /// Data addresses of members learned from cluster statuses, for leaders not among the
    /// seeds (leadership moves on failover).
    addresses: HashMap<NodeId, SocketAddr>,
    client: ClientId,
    next_sequence: u64,
    policy: RetryPolicy,
    /// xorshift64 state for backoff jitter.
    jitter: u64,
}

impl Router {
    /// A router for `client` over `seeds`.
    pub fn new(
        seeds: Vec<SocketAddr>,
        client: ClientId,
        policy: RetryPolicy,
    ) -> Result<Router, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::Config("no seed address".into()));
        }
        if seeds.len() > SEEDS_MAX {
            return Err(ClientError::Config(format!(
                "{} seed addresses, at most {SEEDS_MAX}",
                seeds.len()
            )));
        }
        if policy.retries_max > RETRIES_MAX || policy.redirects_max > REDIRECTS_MAX {
            return Err(ClientError::Config(format!(
                "retries at most {RETRIES_MAX}, redirects at most {REDIRECTS_MAX}"
            )));
        }
        if policy.backoff_initial > policy.backoff_max {
            return Err(ClientError::Config(
                "the initial backoff is longer than the longest".into(),
            ));
        }
        Ok(Router {
            configured_seeds: seeds.len(),
            seeds,
            seed_index: 0,
            topology: None,
            topology_stale: false,
            nodes: HashMap::new(),
            addresses: HashMap::new(),
            client,
            next_sequence: 1,
            policy,
            jitter: client.get() | 1,
        })
    }

    /// This client's id.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// The topology in use, if one is known.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// The next client request id: a new write's, never reused for another write.
    pub fn next_client_request_id(&mut self) -> ClientRequestId {
        let id = ClientRequestId {
            client: self.client,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        id
    }

    /// Starts a call. `build` makes the request; a write is given its client request id here,
    /// once. The request is checked against the protocol's rules before anything is sent.
    pub fn call(
        &mut self,
        build: impl FnOnce(&mut dyn FnMut() -> ClientRequestId) -> Request,
    ) -> Result<Call, ClientError> {
        let request = build(&mut || self.next_client_request_id());
        request.validate().map_err(ClientError::Invalid)?;
        Ok(Call {
            request,
            failures: 0,
            redirects: 0,
            redirect: None,
            in_flight: None,
            maybe_applied: false,
            lookup: None,
        })
    }

    /// A call that only fetches the topology (from the seeds, rotating on failure).
    pub fn topology_call(&mut self) -> Call {
        self.topology_stale = true;
        Call {
            request: Request::Topology,
            failures: 0,
            redirects: 0,
            redirect: None,
            in_flight: None,
            maybe_applied: false,
            lookup: None,
        }
    }

    /// A call that asks a seed for its node's view of the control plane (rotating through the
    /// seeds on failure). Not routed by partition: any node answers for itself. It leaves the
    /// topology in use as it is.
    pub fn cluster_status_call(&mut self) -> Call {
        Call {
            request: Request::ClusterStatus,
            failures: 0,
            redirects: 0,
            redirect: None,
            in_flight: None,
            maybe_applied: false,
            lookup: None,
        }
    }

    /// Where `call`'s next attempt goes.
    pub fn next_step(&mut self, call: &mut Call) -> Step {
        let seed = self.seeds[self.seed_index % self.seeds.len()];
        let step = if let Some((_, address)) = call.lookup {
            Step {
                address,
                shard: None,
                node: None,
                kind: StepKind::Members,
            }
        } else if let Some((address, shard)) = call.redirect.take() {
            Step {
                address,
                shard,
                node: None,
                kind: StepKind::Request,
            }
        } else if matches!(call.request, Request::Topology | Request::ClusterStatus) {
            // Any node answers these for itself: the current seed, not a partition's shard.
            Step {
                address: seed,
                shard: None,
                node: None,
                kind: StepKind::Request,
            }
        } else {
            match (&self.topology, self.topology_stale) {
                (Some(topology), false) => {
                    let node = Some(topology.response.node);
                    let routed = call.request.key().and_then(|key| {
                        topology.route(partition_for_key(key, topology.response.partition_count))
                    });
                    match routed {
                        Some((address, shard)) => Step {
                            address,
                            shard: Some(shard),
                            node,
                            kind: StepKind::Request,
                        },
                        // No key (collections), or a partition the node does not list: its
                        // first shard answers or redirects.
                        None => Step {
                            address: topology.address,
                            shard: None,
                            node,
                            kind: StepKind::Request,
                        },
                    }
                }
                _ => Step {
                    address: seed,
                    shard: None,
                    node: None,
                    kind: StepKind::Topology,
                },
            }
        };
        call.in_flight = Some(step);
        step
    }

    /// Decides what `outcome` (of the step [`Router::next_step`] last gave for `call`) means.
    pub fn handle_outcome(&mut self, call: &mut Call, outcome: Outcome) -> Verdict {
        let Some(step) = call.in_flight.take() else {
            // A driver bug, not a peer's: keep going rather than panic.
            return Verdict::Continue {
                backoff: Duration::ZERO,
            };
        };
        if step.kind == StepKind::Members
            && !matches!(outcome, Outcome::Reply(Reply::ClusterStatus(_)))
        {
            // The node that named the leader could not say where it is: back to the seeds
            // (this is no answer to the call's own request, and bounded by its redirects).
            call.lookup = None;
            self.rotate_seed();
            return Verdict::Continue {
                backoff: Duration::ZERO,
            };
        }
        let fetching_topology =
            step.kind == StepKind::Topology || matches!(call.request, Request::Topology);
        match outcome {
            Outcome::Reply(Reply::Topology(response)) if fetching_topology => {
                let topology = Topology::new(step.address, response.clone());
                self.nodes.insert(response.node, topology.clone());
                self.topology = Some(topology);
                self.topology_stale = false;
                if step.kind == StepKind::Topology {
                    Verdict::Continue {
                        backoff: Duration::ZERO,
                    }
                } else {
                    Verdict::Done(Ok(Reply::Topology(response)))
                }
            }
            Outcome::Reply(Reply::ClusterStatus(status)) if step.kind == StepKind::Members => {
                for member in &status.members {
                    if let Ok(address) = member.data_address.parse::<SocketAddr>() {
                        if self.addresses.len() < ADDRESSES_LEARNED_MAX
                            || self.addresses.contains_key(&member.node)
                        {
                            self.addresses.insert(member.node, address);
                        }
                    }
                }
                if let Some((leader, _)) = call.lookup.take() {
                    match self.addresses.get(&leader).copied() {
                        Some(address) => self.ask_next(address),
                        None => self.rotate_seed(),
                    }
                }
                self.topology_stale = true;
                Verdict::Continue {
                    backoff: Duration::ZERO,
                }
            }
            Outcome::Reply(reply) if step.kind == StepKind::Request => Verdict::Done(Ok(reply)),
            Outcome::Reply(reply) => self.fail(
                call,
                ClientError::Protocol {
                    address: step.address,
                    reason: format!("a topology request was answered with {reply:?}"),
                },
            ),
            Outcome::Error(response) => self.handle_error(call, step, response),
            Outcome::Failed(failure) => self.handle_failure(call, step, failure),
        }
    }

    fn handle_error(&mut self, call: &mut Call, step: Step, response: ErrorResponse) -> Verdict {
        match &response {
            ErrorResponse::WrongShard { port, shard, .. } => {
                self.topology_stale = true;
                if let Some(port) = port {
                    call.redirect = Some((SocketAddr::new(step.address.ip(), *port), *shard));
                }
                self.redirect(call, response)
            }
            ErrorResponse::NotLeader { leader, epoch } => {
                self.topology_stale = true;
                let known = leader.and_then(|leader| self.nodes.get(&leader));
                match (known, call.request.key()) {
                    (Some(topology), Some(key)) if topology.response.epoch >= *epoch => {
                        call.redirect = topology
                            .route(partition_for_key(key, topology.response.partition_count))
                            .map(|(address, shard)| (address, Some(shard)));
                    }
                    // The leader's topology is not known (or older than the epoch): ask the
                    // leader if its address is known, else learn it from the node that named it
                    // (leadership moves on failover, to nodes that may not be seeds).
                    _ => {
                        match leader.map(|leader| (leader, self.addresses.get(&leader).copied())) {
                            Some((_, Some(address))) => self.ask_next(address),
                            Some((leader, None)) if step.kind == StepKind::Request => {
                                call.lookup = Some((leader, step.address));
                            }
                            _ => self.rotate_seed(),
                        }
                    }
                }
                self.redirect(call, response)
            }
            ErrorResponse::Unknown { reason } => {
                call.maybe_applied = true;
                let reason = format!("the server could not tell: {reason}");
                let error = self.unknown(call, reason);
                self.retry(call, error)
            }
            ErrorResponse::ShuttingDown | ErrorResponse::Unavailable { .. } => {
                self.topology_stale = true;
                self.rotate_seed();
                self.retry(call, ClientError::from_response(response))
            }
            _ => self.fail(call, ClientError::from_response(response)),
        }
    }

    fn handle_failure(&mut self, call: &mut Call, step: Step, failure: Failure) -> Verdict {
        if let Failure::Refused { refusal, .. } = &failure {
            match refusal {
                Refusal::WrongShard { .. } | Refusal::WrongNode { .. } => {
                    // The address now serves another shard or node: learn the routes again.
                    self.topology_stale = true;
                    let last = ErrorResponse::invalid_request(refusal.to_string());
                    return self.redirect(call, last);
                }
                Refusal::ShuttingDown => {}
                // Another cluster or protocol: retrying cannot help.
                _ => return self.fail(call, failure.to_error()),
            }
        }
        if step.kind == StepKind::Request
            && call.request.is_write()
            && failure.may_have_reached_server()
        {
            call.maybe_applied = true;
        }
        // The node may have restarted with other ports, or be gone: ask again.
        self.topology_stale = true;
        if let Failure::Connect { address, .. } = &failure {
            self.forget_address(*address);
            self.rotate_seed();
        }
        let error = if call.maybe_applied {
            self.unknown(call, failure.to_error().to_string())
        } else {
            failure.to_error()
        };
        self.retry(call, error)
    }

    fn unknown(&self, call: &Call, reason: String) -> ClientError {
        match call.request.client_request_id() {
            Some(id) => ClientError::OutcomeUnknown { id, reason },
            None => ClientError::Unavailable { reason },
        }
    }

    /// Makes `address` the seed asked for the topology next (added to the seeds if new, up to
    /// [`ADDRESSES_LEARNED_MAX`] more than configured).
    fn ask_next(&mut self, address: SocketAddr) {
        match self.seeds.iter().position(|seed| *seed == address) {
            Some(index) => self.seed_index = index,
            None if self.seeds.len() < self.configured_seeds + ADDRESSES_LEARNED_MAX => {
                self.seeds.push(address);
                self.seed_index = self.seeds.len() - 1;
            }
            None => self.rotate_seed(),
        }
    }

    /// Forgets what was learned of the node that served `address`, which refused a
    /// connection: it may be back on other ports (a restart without fixed ports, a new host),
    /// so the next `NotLeader` naming it asks the cluster where it is now instead of trying the
    /// dead address until the call's retries run out.
    fn forget_address(&mut self, address: SocketAddr) {
        let served = |topology: &Topology| topology.shards().any(|(_, at, _)| at == address);
        self.nodes.retain(|_, topology| !served(topology));
        self.addresses.retain(|_, known| *known != address);
    }

    fn rotate_seed(&mut self) {
        self.seed_index = (self.seed_index + 1) % self.seeds.len();
    }

    fn redirect(&mut self, call: &mut Call, last: ErrorResponse) -> Verdict {
        call.redirects += 1;
        if call.redirects > self.policy.redirects_max {
            call.redirect = None;
            let error = ClientError::TooManyRedirects {
                redirects: call.redirects - 1,
                last,
            };
            return self.fail(call, error);
        }
        Verdict::Continue {
            backoff: Duration::ZERO,
        }
    }

    fn retry(&mut self, call: &mut Call, error: ClientError) -> Verdict {
        call.failures += 1;
        if call.failures > self.policy.retries_max {
            return self.fail(call, error);
        }
        Verdict::Continue {
            backoff: self.backoff(call.failures),
        }
    }

    /// Ends the call with `error`, unless an earlier attempt of the write may have applied:
    /// then only a success settles it, and anything else leaves the outcome unknown (a retry's
    /// refusal may be evaluated while the first attempt is still in flight on the server).
    fn fail(&mut self, call: &mut Call, error: ClientError) -> Verdict {
        let error = match (call.maybe_applied, call.request.client_request_id()) {
            (true, Some(id)) if !matches!(error, ClientError::OutcomeUnknown { .. }) => {
                ClientError::OutcomeUnknown {
                    id,
                    reason: error.to_string(),
                }
            }
            _ => error,
        };
        Verdict::Done(Err(error))
    }

    /// The wait before retry number `retry` (1-based): the initial backoff doubled per retry,
    /// capped, with up to 50 % taken off at random so that many clients do not retry in step.
    fn backoff(&mut self, retry: u32) -> Duration {
        let doubling = retry.saturating_sub(1).min(30);
        let full = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << doubling)
            .min(self.policy.backoff_max);
        // xorshift64
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let cut_per_mille = self.jitter % 500;
        full - full.mul_f64(cut_per_mille as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    //! The router driven by scripted outcomes: no socket, no clock.
    use super::*;
    use crate::client::{Operation, RetryPolicy};
    use crate::ids::{Epoch, Lsn};
    use crate::message::{
        GetResponse, ReadConsistency, ShardTopology, WriteConsistency, WriteResponse,
    };

    const SEED: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        7400,
    );
    const SEED_2: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
        7400,
    );

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries_max: 3,
            redirects_max: 4,
            ..RetryPolicy::default()
        }
    }

    fn router(seeds: Vec<SocketAddr>) -> Router {
        Router::new(seeds, ClientId(42), policy()).unwrap()
    }

    /// Two shards on ports 7400 and 7401; shard `p % 2` owns partition `p` of 16.
    fn topology(node: u64) -> TopologyResponse {
        TopologyResponse {
            node: NodeId(node),
            epoch: Epoch(1),
            partition_count: 16,
            shards: (0..2u16)
                .map(|shard| ShardTopology {
                    shard: ShardId(shard),
                    port: 7400 + shard,
                    partitions: (0..16)
                        .filter(|p| p % 2 == u32::from(shard))
                        .map(PartitionId)
                        .collect(),
                })
                .collect(),
        }
    }

    fn put(router: &mut Router, key: &[u8]) -> Call {
        router
            .call(|next_id| {
                Operation::Put {
                    collection: "c".into(),
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                }
                .into_request(
                    WriteConsistency::One,
                    ReadConsistency::Leader,
                    next_id,
                )
            })
            .unwrap()
    }

    fn get(router: &mut Router, key: &[u8]) -> Call {
        router
            .call(|next_id| {
                Operation::Get {
                    collection: "c".into(),
                    key: key.to_vec(),
                }
                .into_request(
                    WriteConsistency::One,
                    ReadConsistency::Leader,
                    next_id,
                )
            })
            .unwrap()
    }

    fn written() -> Outcome {
        Outcome::Reply(Reply::Written(WriteResponse {
            revision: Lsn(7),
            hlc: 0,
        }))
    }

    fn timeout(sent: bool) -> Outcome {
        Outcome::Failed(Failure::Timeout {
            address: SEED,
            after: Duration::from_secs(1),
            sent,
        })
    }

    /// Learns the topology through `call`'s first step.
    fn learn(router: &mut Router, call: &mut Call, node: u64) {
        let step = router.next_step(call);
        assert_eq!(step.kind, StepKind::Topology);
        let verdict = router.handle_outcome(call, Outcome::Reply(Reply::Topology(topology(node))));
        assert_eq!(
            verdict,
            Verdict::Continue {
                backoff: Duration::ZERO
            }
        );
    }

    fn is_continue(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Continue { .. })
    }

    #[test]
    fn cluster_status_asks_a_seed_and_rotates_past_unreachable_ones() {
        use crate::message::{ClusterStatusResponse, ControlRole};
        let mut router = router(vec![SEED, SEED_2]);
        let mut call = router.cluster_status_call();
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Request));
        assert_eq!(step.request(&call), &Request::ClusterStatus);
        let verdict = router.handle_outcome(
            &mut call,
            Outcome::Failed(Failure::Connect {
                address: SEED,
                reason: "refused".into(),
            }),
        );
        assert!(is_continue(&verdict));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED_2, StepKind::Request));
        let status = ClusterStatusResponse {
            node: NodeId(2),
            term: crate::ids::Term(1),
            role: ControlRole::Follower,
            controller: None,
            epoch: Epoch(0),
            lease: false,
            members: vec![],
            partitions: vec![],
        };
        assert_eq!(
            router.handle_outcome(
                &mut call,
                Outcome::Reply(Reply::ClusterStatus(status.clone()))
            ),
            Verdict::Done(Ok(Reply::ClusterStatus(status)))
        );
        // It needs no topology, and learns none.
        assert!(router.topology().is_none());
        // A node that does not answer it (an older build) refuses it at once: no retry.
        let mut call = router.cluster_status_call();
        router.next_step(&mut call);
        let refused = ErrorResponse::invalid_request("ClusterStatus is not a request here");
        assert_eq!(
            router.handle_outcome(&mut call, Outcome::Error(refused.clone())),
            Verdict::Done(Err(ClientError::Rejected(refused)))
        );
    }

    #[test]
    fn keys_go_to_the_shard_that_owns_their_partition() {
        let mut router = router(vec![SEED]);
        let mut first = put(&mut router, b"first");
        let step = router.next_step(&mut first);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Topology));
        router.handle_outcome(&mut first, Outcome::Reply(Reply::Topology(topology(1))));
        let mut ports_seen = std::collections::BTreeSet::new();
        for index in 0..200u32 {
            let key = format!("key-{index}");
            let mut call = get(&mut router, key.as_bytes());
            let step = router.next_step(&mut call);
            let partition = partition_for_key(key.as_bytes(), 16).get();
            let shard = (partition % 2) as u16;
            assert_eq!(step.kind, StepKind::Request);
            assert_eq!(step.shard, Some(ShardId(shard)));
            assert_eq!(step.node, Some(NodeId(1)));
            assert_eq!(step.address, SocketAddr::new(SEED.ip(), 7400 + shard));
            ports_seen.insert(step.address.port());
            let verdict = router.handle_outcome(
                &mut call,
                Outcome::Reply(Reply::Value(GetResponse::NotFound)),
            );
            assert_eq!(
                verdict,
                Verdict::Done(Ok(Reply::Value(GetResponse::NotFound)))
            );
        }
        assert_eq!(ports_seen.len(), 2, "both shards get keys");
    }

    #[test]
    fn wrong_shard_is_followed_to_the_named_port_then_the_topology_is_refreshed() {
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        learn(&mut router, &mut call, 1);
        router.next_step(&mut call);
        let verdict = router.handle_outcome(
            &mut call,
            Outcome::Error(ErrorResponse::WrongShard {
                partition: PartitionId(3),
                shard: Some(ShardId(5)),
                port: Some(7405),
            }),
        );
        assert_eq!(
            verdict,
            Verdict::Continue {
                backoff: Duration::ZERO
            }
        );
        let step = router.next_step(&mut call);
        assert_eq!(step.address, SocketAddr::new(SEED.ip(), 7405));
        assert_eq!(step.shard, Some(ShardId(5)));
        assert_eq!(
            router.handle_outcome(&mut call, written()),
            Verdict::Done(Ok(match written() {
                Outcome::Reply(reply) => reply,
                _ => unreachable!(),
            }))
        );
        assert_eq!(call.redirects(), 1);
        // The map was wrong: the next call asks for it again.
        let mut next = put(&mut router, b"k2");
        assert_eq!(router.next_step(&mut next).kind, StepKind::Topology);
    }

    #[test]
    fn a_retried_write_keeps_its_client_request_id() {
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        let id = call.request().client_request_id().unwrap();
        assert_eq!(
            id,
            ClientRequestId {
                client: ClientId(42),
                sequence: 1
            }
        );
        learn(&mut router, &mut call, 1);
        let mut ids = Vec::new();
        for outcome in [
            timeout(true),
            Outcome::Failed(Failure::Lost {
                address: SEED,
                reason: "reset".into(),
                sent: true,
                protocol: false,
            }),
            Outcome::Error(ErrorResponse::unknown("replicas slow")),
        ] {
            let step = router.next_step(&mut call);
            ids.push(step.request(&call).client_request_id());
            let verdict = router.handle_outcome(&mut call, outcome);
            match verdict {
                Verdict::Continue { backoff } => assert!(backoff > Duration::ZERO),
                other => panic!("expected a retry, got {other:?}"),
            }
            // A topology refresh may come between attempts; it carries no id.
            let step = router.next_step(&mut call);
            if step.kind == StepKind::Topology {
                router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(1))));
            } else {
                call.in_flight = None;
            }
        }
        let step = router.next_step(&mut call);
        ids.push(step.request(&call).client_request_id());
        assert!(matches!(
            router.handle_outcome(&mut call, written()),
            Verdict::Done(Ok(_))
        ));
        assert_eq!(ids, vec![Some(id); 4]);
        // The next write gets the next sequence number.
        let next = put(&mut router, b"k");
        assert_eq!(next.request().client_request_id().unwrap().sequence, 2);
        // A read has none and uses none.
        let read = get(&mut router, b"k");
        assert_eq!(read.request().client_request_id(), None);
        assert_eq!(
            put(&mut router, b"k")
                .request()
                .client_request_id()
                .unwrap()
                .sequence,
            3
        );
    }

    /// Runs `call` against a server that always gives `outcome`; returns the verdict and the
    /// number of requests (not topology fetches) sent.
    fn run_against(router: &mut Router, call: &mut Call, outcome: &Outcome) -> (Verdict, u32) {
        let mut sent = 0;
        for _ in 0..1000 {
            let step = router.next_step(call);
            let verdict = if step.kind == StepKind::Topology {
                router.handle_outcome(call, Outcome::Reply(Reply::Topology(topology(1))))
            } else {
                sent += 1;
                router.handle_outcome(call, outcome.clone())
            };
            if let Verdict::Done(_) = verdict {
                return (verdict, sent);
            }
        }
        panic!("the call never ended");
    }

    #[test]
    fn retries_are_bounded_and_a_sent_write_ends_unknown() {
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        let id = call.request().client_request_id().unwrap();
        let (verdict, sent) = run_against(&mut router, &mut call, &timeout(true));
        assert_eq!(sent, policy().retries_max + 1);
        match verdict {
            Verdict::Done(Err(ClientError::OutcomeUnknown { id: unknown, .. })) => {
                assert_eq!(unknown, id)
            }
            other => panic!("{other:?}"),
        }
        // A read in the same situation changed nothing: a plain timeout.
        let mut call = get(&mut router, b"k");
        let (verdict, sent) = run_against(&mut router, &mut call, &timeout(true));
        assert_eq!(sent, policy().retries_max + 1);
        assert!(matches!(
            verdict,
            Verdict::Done(Err(ClientError::Timeout { .. }))
        ));
        // A write that never left: nothing applied, so not unknown.
        let mut call = put(&mut router, b"k");
        let refused = Outcome::Failed(Failure::Connect {
            address: SEED,
            reason: "connection refused".into(),
        });
        let (verdict, _) = run_against(&mut router, &mut call, &refused);
        assert!(matches!(
            verdict,
            Verdict::Done(Err(ClientError::Connect { .. }))
        ));
        assert!(!matches!(verdict, Verdict::Done(Err(ref error)) if error.may_have_applied()));
    }

    #[test]
    fn not_leader_naming_a_node_beyond_the_seeds_is_followed_through_the_members_addresses() {
        use crate::message::{ClusterStatusResponse, ControlRole, MemberStatus};
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        learn(&mut router, &mut call, 1);
        let step = router.next_step(&mut call);
        assert_eq!(step.kind, StepKind::Request);
        // Leadership moved to node 2, which is not a seed and whose address is unknown.
        let not_leader = Outcome::Error(ErrorResponse::NotLeader {
            leader: Some(NodeId(2)),
            epoch: Epoch(2),
        });
        assert!(is_continue(&router.handle_outcome(&mut call, not_leader)));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Members));
        assert_eq!(step.request(&call), &Request::ClusterStatus);
        let status = ClusterStatusResponse {
            node: NodeId(1),
            term: crate::ids::Term(2),
            role: ControlRole::Follower,
            controller: Some(NodeId(2)),
            epoch: Epoch(2),
            lease: true,
            members: vec![
                MemberStatus::joined(1, "127.0.0.1:7400"),
                MemberStatus::joined(2, "127.0.0.2:7400"),
            ],
            partitions: vec![],
        };
        let verdict =
            router.handle_outcome(&mut call, Outcome::Reply(Reply::ClusterStatus(status)));
        assert!(is_continue(&verdict));
        // Its topology, at the learned address, then the request at its shard.
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED_2, StepKind::Topology));
        let verdict =
            router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(2))));
        assert!(is_continue(&verdict));
        let step = router.next_step(&mut call);
        assert_eq!(step.kind, StepKind::Request);
        assert_eq!(step.address.ip(), SEED_2.ip());
        assert_eq!(
            router.handle_outcome(&mut call, written()),
            Verdict::Done(Ok(Reply::Written(WriteResponse {
                revision: Lsn(7),
                hlc: 0
            })))
        );
        // A later NotLeader naming node 2 goes there at once, without asking.
        let mut call = put(&mut router, b"k");
        router.next_step(&mut call);
        let not_leader = Outcome::Error(ErrorResponse::NotLeader {
            leader: Some(NodeId(2)),
            epoch: Epoch(3),
        });
        assert!(is_continue(&router.handle_outcome(&mut call, not_leader)));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED_2, StepKind::Topology));
    }

    #[test]
    fn a_node_that_refuses_connections_is_looked_up_again_when_next_named_leader() {
        use crate::message::{ClusterStatusResponse, ControlRole, MemberStatus};
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        learn(&mut router, &mut call, 1);
        router.next_step(&mut call);
        let not_leader = || {
            Outcome::Error(ErrorResponse::NotLeader {
                leader: Some(NodeId(2)),
                epoch: Epoch(2),
            })
        };
        let status = |address: &str| ClusterStatusResponse {
            node: NodeId(1),
            term: crate::ids::Term(2),
            role: ControlRole::Follower,
            controller: Some(NodeId(2)),
            epoch: Epoch(2),
            lease: true,
            members: vec![
                MemberStatus::joined(1, "127.0.0.1:7400"),
                MemberStatus::joined(2, address),
            ],
            partitions: vec![],
        };
        // Node 2 leads; the client learns where it is and writes there.
        assert!(is_continue(&router.handle_outcome(&mut call, not_leader())));
        assert_eq!(router.next_step(&mut call).kind, StepKind::Members);
        let learned = Outcome::Reply(Reply::ClusterStatus(status("127.0.0.2:7400")));
        assert!(is_continue(&router.handle_outcome(&mut call, learned)));
        assert_eq!(
            router.next_step(&mut call),
            Step {
                address: SEED_2,
                shard: None,
                node: None,
                kind: StepKind::Topology
            }
        );
        let verdict =
            router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(2))));
        assert!(is_continue(&verdict));
        let step = router.next_step(&mut call);
        assert!(matches!(
            router.handle_outcome(&mut call, written()),
            Verdict::Done(Ok(_))
        ));
        // Node 2 restarts on other ports: its old shard refuses the next connection.
        let mut call = put(&mut router, b"k");
        assert_eq!(router.next_step(&mut call).address, step.address);
        let refused = Outcome::Failed(Failure::Connect {
            address: step.address,
            reason: "refused".into(),
        });
        assert!(is_continue(&router.handle_outcome(&mut call, refused)));
        // A seed names node 2 again: the client asks where it is now, not the dead address.
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Topology));
        let verdict =
            router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(1))));
        assert!(is_continue(&verdict));
        router.next_step(&mut call);
        assert!(is_continue(&router.handle_outcome(&mut call, not_leader())));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Members));
        let moved = Outcome::Reply(Reply::ClusterStatus(status("127.0.0.3:7400")));
        assert!(is_continue(&router.handle_outcome(&mut call, moved)));
        let step = router.next_step(&mut call);
        assert_eq!(
            (step.address, step.kind),
            ("127.0.0.3:7400".parse().unwrap(), StepKind::Topology)
        );
    }

    #[test]
    fn redirects_are_bounded() {
        let mut router = router(vec![SEED]);
        let mut call = put(&mut router, b"k");
        let wrong_shard = Outcome::Error(ErrorResponse::WrongShard {
            partition: PartitionId(1),
            shard: Some(ShardId(1)),
            port: Some(7401),
        });
        let (verdict, sent) = run_against(&mut router, &mut call, &wrong_shard);
        assert_eq!(sent, policy().redirects_max + 1);
        assert!(matches!(
            verdict,
            Verdict::Done(Err(ClientError::TooManyRedirects { redirects: 4, .. }))
        ));
    }

    #[test]
    fn definite_answers_end_the_call_at_once() {
        let mut router = router(vec![SEED]);
        for (response, check) in [
            (
                ErrorResponse::CasMismatch {
                    current_revision: Lsn(9),
                },
                ClientError::CasMismatch {
                    current_revision: Lsn(9),
                },
            ),
            (
                ErrorResponse::CollectionNotFound { name: "c".into() },
                ClientError::CollectionNotFound { name: "c".into() },
            ),
            (
                ErrorResponse::NotEnoughReplicas {
                    needed: 2,
                    available: 1,
                },
                ClientError::NotEnoughReplicas {
                    needed: 2,
                    available: 1,
                },
            ),
        ] {
            let mut call = put(&mut router, b"k");
            let (verdict, sent) = run_against(&mut router, &mut call, &Outcome::Error(response));
            assert_eq!(sent, 1);
            assert_eq!(verdict, Verdict::Done(Err(check)));
        }
        // After an attempt that may have applied, only a success settles a write.
        let mut call = put(&mut router, b"k");
        assert_eq!(router.next_step(&mut call).kind, StepKind::Request);
        assert!(is_continue(
            &router.handle_outcome(&mut call, timeout(true))
        ));
        let (verdict, _) = run_against(
            &mut router,
            &mut call,
            &Outcome::Error(ErrorResponse::CasMismatch {
                current_revision: Lsn(9),
            }),
        );
        assert!(matches!(
            verdict,
            Verdict::Done(Err(ClientError::OutcomeUnknown { .. }))
        ));
    }

    #[test]
    fn a_handshake_for_another_cluster_is_not_retried() {
        let mut router = router(vec![SEED]);
        let mut call = get(&mut router, b"k");
        let refusal = Refusal::WrongCluster {
            expected: crate::ids::ClusterId([1; 16]),
            actual: crate::ids::ClusterId([2; 16]),
        };
        let step = router.next_step(&mut call);
        assert_eq!(step.kind, StepKind::Topology);
        let verdict = router.handle_outcome(
            &mut call,
            Outcome::Failed(Failure::Refused {
                address: SEED,
                refusal: refusal.clone(),
            }),
        );
        assert_eq!(
            verdict,
            Verdict::Done(Err(ClientError::Refused {
                address: SEED,
                refusal
            }))
        );
    }

    #[test]
    fn unreachable_seeds_are_rotated_and_not_leader_asks_another_node() {
        let mut router = router(vec![SEED, SEED_2]);
        let mut call = put(&mut router, b"k");
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Topology));
        let verdict = router.handle_outcome(
            &mut call,
            Outcome::Failed(Failure::Connect {
                address: SEED,
                reason: "refused".into(),
            }),
        );
        assert!(is_continue(&verdict));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED_2, StepKind::Topology));
        router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(2))));
        let step = router.next_step(&mut call);
        assert_eq!(step.address.ip(), SEED_2.ip());
        // Node 2 does not lead; the leader (node 9) is unknown: ask node 2 where it is, and
        // when node 2 cannot say, the next seed.
        let verdict = router.handle_outcome(
            &mut call,
            Outcome::Error(ErrorResponse::NotLeader {
                leader: Some(NodeId(9)),
                epoch: Epoch(2),
            }),
        );
        assert!(is_continue(&verdict));
        let step = router.next_step(&mut call);
        assert_eq!(
            (step.address.ip(), step.kind),
            (SEED_2.ip(), StepKind::Members)
        );
        let refused = ErrorResponse::invalid_request("ClusterStatus is not a request here");
        assert!(is_continue(
            &router.handle_outcome(&mut call, Outcome::Error(refused))
        ));
        let step = router.next_step(&mut call);
        assert_eq!((step.address, step.kind), (SEED, StepKind::Topology));
        router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(1))));
        let step = router.next_step(&mut call);
        assert_eq!(step.address.ip(), SEED.ip());
        assert!(matches!(
            router.handle_outcome(&mut call, written()),
            Verdict::Done(Ok(_))
        ));
        assert_eq!(call.redirects(), 1);
    }

    #[test]
    fn not_leader_naming_a_known_node_goes_straight_to_it() {
        let mut router = router(vec![SEED, SEED_2]);
        // Learn node 2's topology through seed 2, then route by node 1's.
        let mut call = router.topology_call();
        router.rotate_seed();
        router.next_step(&mut call);
        router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(2))));
        let mut call = router.topology_call();
        router.rotate_seed();
        router.next_step(&mut call);
        router.handle_outcome(&mut call, Outcome::Reply(Reply::Topology(topology(1))));
        let mut call = put(&mut router, b"k");
        let step = router.next_step(&mut call);
        assert_eq!(step.address.ip(), SEED.ip());
        router.handle_outcome(
            &mut call,
            Outcome::Error(ErrorResponse::NotLeader {
                leader: Some(NodeId(2)),
                epoch: Epoch(1),
            }),
        );
        let step = router.next_step(&mut call);
        assert_eq!(step.kind, StepKind::Request);
        assert_eq!(step.address.ip(), SEED_2.ip());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut router = router(vec![SEED]);
        let policy = policy();
        let mut previous_max = Duration::ZERO;
        for retry in 1..40 {
            let backoff = router.backoff(retry);
            let full = policy
                .backoff_initial
                .saturating_mul(1 << (retry - 1).min(30))
                .min(policy.backoff_max);
            assert!(
                backoff <= full && backoff >= full / 2,
                "{retry}: {backoff:?}"
            );
            previous_max = previous_max.max(backoff);
        }
        assert!(previous_max <= policy.backoff_max);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(Router::new(vec![], ClientId(1), policy()).is_err());
        let too_many = RetryPolicy {
            retries_max: RETRIES_MAX + 1,
            ..policy()
        };
        assert!(Router::new(vec![SEED], ClientId(1), too_many).is_err());
        // An invalid request is refused before any step.
        let mut router = router(vec![SEED]);
        let empty_key = router.call(|next_id| {
            Operation::Put {
                collection: "c".into(),
                key: vec![],
                value: vec![],
            }
            .into_request(WriteConsistency::One, ReadConsistency::Leader, next_id)
        });
        assert!(matches!(empty_key, Err(ClientError::Invalid(_))));
    }
}
