//! The native client: routes each request to the shard that owns its key's partition, follows
//! redirects, retries safely, and runs on an ordinary thread ([`BlockingClient`]) or inside a
//! glommio executor ([`AsyncClient`], pipelined).
//!
//! # Model
//! - **Sans-IO core.** [`router::Router`] decides (topology cache, key → partition → shard
//!   port, redirects, bounded retries with backoff, client request ids);
//!   [`connection::Outbox`] and [`connection::Inbox`] are one connection (hello, request ids,
//!   pending-request table, answers paired by request id). Neither touches a socket or a clock;
//!   the unit tests drive them with scripted answers.
//! - **Drivers.** [`blocking`] runs them over `std::net::TcpStream`, one request at a time per
//!   client, connections cached per shard address. [`rt`] (every glommio call of the client is
//!   there) runs them inside a glommio executor: one connection per shard address shared by all
//!   the tasks of a client, many requests in flight on it, a reader task pairing answers with
//!   waiting requests by request id, a writer task sending whatever has queued up in one write.
//!   Neither is `Send` across executors: an [`AsyncClient`] lives on the executor that made it.
//! - **Routing.** The first request asks a seed for its node's topology (partition count, per
//!   shard its port and partitions); each key goes to `crc32c(key) % partition_count`'s shard
//!   ([`partition_for_key`], the engine's function). `WrongShard` answers are followed to the
//!   port they name and make the client refresh the topology; `NotLeader` to the named leader
//!   when its topology is known, else to the next seed.
//! - **Retries never apply a write twice.** Each write gets a [`ClientRequestId`] (this
//!   client's random [`ClientId`] and a sequence number) once, when the call starts; every
//!   attempt resends it, and the server applies an id at most once. A write whose attempts all
//!   ended without a definite answer is [`ClientError::OutcomeUnknown`]; every other error
//!   means nothing was applied. The random client id is what keeps two processes' sequences
//!   apart: never configure two live clients with the same [`ClientConfig::client_id`].
//!
//! [`ClientRequestId`]: crate::ids::ClientRequestId

pub mod blocking;
pub mod collections;
pub mod connection;
pub mod constants;
mod error;
pub mod router;
pub mod rt;

pub use blocking::BlockingClient;
pub use connection::{Reply, Request};
pub use error::ClientError;
pub use router::{partition_for_key, Failure, Outcome, Router, Topology};
pub use rt::AsyncClient;

use crate::ids::{ClientId, ClientRequestId, ClusterId, Lsn};
use crate::message::{
    ClusterStatusResponse, CompareAndSetRequest, CreateCollectionRequest, DeleteRequest,
    DeleteResponse, DropCollectionRequest, GetRequest, GetResponse, PutRequest, ReadConsistency,
    TopologyResponse, WriteConsistency, WriteResponse,
};
use constants::{
    BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT, CONNECT_TIMEOUT_DEFAULT, REDIRECTS_DEFAULT,
    REQUEST_TIMEOUT_DEFAULT, RETRIES_DEFAULT, TIMEOUT_MAX,
};
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How many times, and how patiently, a call retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after failures (connection, timeout, unavailable, outcome unknown).
    pub retries_max: u32,
    /// Redirects followed.
    pub redirects_max: u32,
    /// Backoff before the first retry; doubled per retry.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries_max: RETRIES_DEFAULT,
            redirects_max: REDIRECTS_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
        }
    }
}

/// What a client connects to and how it behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Addresses of shards of the cluster's nodes (any shard port answers a topology request).
    pub seeds: Vec<SocketAddr>,
    /// The cluster to reach; a node of another cluster refuses the handshake.
    pub cluster_id: ClusterId,
    /// This client's id (`None`: a random one, which is what every client should use unless
    /// it persists its id and sequence numbers itself).
    pub client_id: Option<ClientId>,
    /// How durable a write must be before it is acknowledged.
    pub write_consistency: WriteConsistency,
    /// Who may answer a read.
    pub read_consistency: ReadConsistency,
    /// How long a connect and handshake may take.
    pub connect_timeout: Duration,
    /// How long one attempt may wait for its answer.
    pub request_timeout: Duration,
    /// Retries and redirects.
    pub retry: RetryPolicy,
}

impl ClientConfig {
    /// A configuration with the defaults for `seeds` of the cluster `cluster_id`.
    pub fn new(seeds: Vec<SocketAddr>, cluster_id: ClusterId) -> ClientConfig {
        ClientConfig {
            seeds,
            cluster_id,
            client_id: None,
            write_consistency: WriteConsistency::default(),
            read_consistency: ReadConsistency::default(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            retry: RetryPolicy::default(),
        }
    }

    /// Parses a comma-separated list of `host:port` (names are resolved; each name may give
    /// several addresses).
    pub fn parse_seeds(text: &str) -> Result<Vec<SocketAddr>, ClientError> {
        let mut seeds = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let resolved = part
                .to_socket_addrs()
                .map_err(|error| ClientError::Config(format!("address {part:?}: {error}")))?;
            let before = seeds.len();
            seeds.extend(resolved);
            if seeds.len() == before {
                return Err(ClientError::Config(format!(
                    "address {part:?} resolves to nothing"
                )));
            }
        }
        if seeds.is_empty() {
            return Err(ClientError::Config(format!("no address in {text:?}")));
        }
        Ok(seeds)
    }

    fn check(&self) -> Result<(), ClientError> {
        for (name, timeout) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
        ] {
            if timeout.is_zero() || timeout > TIMEOUT_MAX {
                return Err(ClientError::Config(format!(
                    "the {name} must be in (0, {TIMEOUT_MAX:?}], got {timeout:?}"
                )));
            }
        }
        Ok(())
    }

    /// A router for this configuration (checks it).
    fn router(&self) -> Result<Router, ClientError> {
        self.check()?;
        Router::new(
            self.seeds.clone(),
            self.client_id.unwrap_or_else(random_client_id),
            self.retry,
        )
    }
}

/// A client id unlikely to be any other live client's: the standard library's per-process
/// random hash keys over the process id and the time.
pub fn random_client_id() -> ClientId {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    ClientId(hasher.finish())
}

/// One logical request, before it is given a client request id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Set `key` in `collection` to `value`.
    Put {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Read `key`.
    Get {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
    },
    /// Set (`Some`) or remove (`None`) `key` if its revision is `expected_revision` (0: absent).
    CompareAndSet {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
        /// The revision the key must have.
        expected_revision: Lsn,
        /// The new value, or `None` to delete.
        value: Option<Vec<u8>>,
    },
    /// Create a collection.
    CreateCollection {
        /// Its name.
        name: String,
    },
    /// Drop a collection and its keys.
    DropCollection {
        /// Its name.
        name: String,
    },
}

impl Operation {
    /// The wire request, with `next_id` called once if this is a write.
    pub fn into_request(
        self,
        write_consistency: WriteConsistency,
        read_consistency: ReadConsistency,
        next_id: &mut dyn FnMut() -> ClientRequestId,
    ) -> Request {
        let consistency = write_consistency;
        match self {
            Operation::Put {
                collection,
                key,
                value,
            } => Request::Put(PutRequest {
                id: next_id(),
                consistency,
                collection,
                key,
                value,
            }),
            Operation::Get { collection, key } => Request::Get(GetRequest {
                consistency: read_consistency,
                collection,
                key,
            }),
            Operation::Delete { collection, key } => Request::Delete(DeleteRequest {
                id: next_id(),
                consistency,
                collection,
                key,
            }),
            Operation::CompareAndSet {
                collection,
                key,
                expected_revision,
                value,
            } => Request::CompareAndSet(CompareAndSetRequest {
                id: next_id(),
                consistency,
                collection,
                key,
                expected_revision,
                value,
            }),
            Operation::CreateCollection { name } => {
                Request::CreateCollection(CreateCollectionRequest {
                    id: next_id(),
                    consistency,
                    name,
                })
            }
            Operation::DropCollection { name } => Request::DropCollection(DropCollectionRequest {
                id: next_id(),
                consistency,
                name,
            }),
        }
    }
}

/// A key's value as a get found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value.
    pub value: Vec<u8>,
    /// The key's revision (the LSN of the write that set it).
    pub revision: Lsn,
    /// That write's HLC timestamp.
    pub hlc: u64,
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol {
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        reason: format!("unexpected answer {reply:?}"),
    }
}

/// Typed views of a [`Reply`], shared by both drivers.
pub(crate) mod typed {
    use super::*;

    pub fn written(reply: Reply) -> Result<WriteResponse, ClientError> {
        match reply {
            Reply::Written(written) => Ok(written),
            // A compare-and-set that deletes may be answered as a delete.
            Reply::Deleted(DeleteResponse::Deleted { revision, hlc, .. }) => {
                Ok(WriteResponse { revision, hlc })
            }
            Reply::Deleted(DeleteResponse::Absent) => Ok(WriteResponse {
                revision: Lsn(0),
                hlc: 0,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub fn value(reply: Reply) -> Result<Option<Value>, ClientError> {
        match reply {
            Reply::Value(GetResponse::Found {
                value,
                revision,
                hlc,
            }) => Ok(Some(Value {
                value,
                revision,
                hlc,
            })),
            Reply::Value(GetResponse::NotFound) => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    pub fn deleted(reply: Reply) -> Result<DeleteResponse, ClientError> {
        match reply {
            Reply::Deleted(deleted) => Ok(deleted),
            other => Err(unexpected(other)),
        }
    }

    pub fn topology(reply: Reply) -> Result<TopologyResponse, ClientError> {
        match reply {
            Reply::Topology(topology) => Ok(topology),
            other => Err(unexpected(other)),
        }
    }

    pub fn cluster_status(reply: Reply) -> Result<ClusterStatusResponse, ClientError> {
        match reply {
            Reply::ClusterStatus(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }
}
