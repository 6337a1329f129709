//! What can go wrong with a client request, and what is known about whether a write applied
//! (style.md rule 8). Every write carries a [`ClientRequestId`] that the client reuses on each
//! retry, so a retry never applies a write twice; what is open is only whether the *last*
//! attempt's write was applied when no answer came back.

use crate::ids::{ClientRequestId, Lsn};
use crate::message::{ErrorResponse, Refusal};
use crate::validate::Violation;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a client request failed. [`ClientError::may_have_applied`] says, for each variant,
/// whether a write might have been applied; only [`ClientError::OutcomeUnknown`] answers yes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's configuration is unusable (no seed, a limit out of range). Nothing was
    /// sent.
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The request breaks a limit or rule of the protocol (empty key, value over 1 MiB, ...);
    /// the client refused it before sending anything. Nothing was applied.
    #[error("invalid request, not sent: {0}")]
    Invalid(Violation),

    /// No connection could be made (refused, unreachable, timed out connecting), on every
    /// attempt. Nothing was sent, so nothing was applied.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The last address tried.
        address: SocketAddr,
        /// What the OS or the timer said.
        reason: String,
    },

    /// The server refused the handshake (another cluster, a protocol version it does not
    /// speak, ...). Nothing was applied; the refusal says what to fix.
    #[error("{address} refused the connection: {refusal}")]
    Refused {
        /// The address that refused.
        address: SocketAddr,
        /// The server's reason.
        refusal: Refusal,
    },

    /// A read (or another request that changes nothing) lost its connection on every attempt.
    /// Nothing was applied. (A write in the same situation is [`ClientError::OutcomeUnknown`].)
    #[error("connection to {address} lost: {reason}")]
    ConnectionLost {
        /// The address of the connection lost last.
        address: SocketAddr,
        /// Why.
        reason: String,
    },

    /// A read (or another request that changes nothing) got no answer in time on every
    /// attempt. Nothing was applied. (A write in the same situation is
    /// [`ClientError::OutcomeUnknown`].)
    #[error("no answer from {address} within {after:?}")]
    Timeout {
        /// The address asked last.
        address: SocketAddr,
        /// The timeout of one attempt.
        after: Duration,
    },

    /// A write was sent and no attempt got a definite answer: it may or may not have been
    /// applied (a timeout, a lost connection, or the server's own `Unknown` after it was
    /// sent). Retrying it with the same `id` is safe: the server applies a client request id
    /// at most once.
    #[error("outcome of write {id} unknown: {reason}")]
    OutcomeUnknown {
        /// The write's client request id, the same on every attempt.
        id: ClientRequestId,
        /// The last thing that happened.
        reason: String,
    },

    /// The request was redirected more times than allowed (a topology changing under the
    /// client, or nodes disagreeing). Every redirect answer means nothing was applied there.
    #[error("too many redirects ({redirects}); last: {last}")]
    TooManyRedirects {
        /// Redirects followed.
        redirects: u32,
        /// The last redirect answer.
        last: ErrorResponse,
    },

    /// A compare-and-set's expected revision did not hold. Nothing was applied.
    #[error("compare-and-set mismatch: the key's revision is {current_revision}")]
    CasMismatch {
        /// The key's current revision (0: absent).
        current_revision: Lsn,
    },

    /// The collection does not exist. Nothing was applied.
    #[error("no such collection: {name:?}")]
    CollectionNotFound {
        /// The collection.
        name: String,
    },

    /// The collection already exists. Nothing was applied.
    #[error("collection already exists: {name:?}")]
    CollectionExists {
        /// The collection.
        name: String,
    },

    /// Too few replicas are in sync for the requested write consistency; the write was refused
    /// up front. Nothing was applied.
    #[error("not enough replicas in sync: {needed} needed, {available} available")]
    NotEnoughReplicas {
        /// Replicas the consistency level needs.
        needed: u32,
        /// Replicas in sync.
        available: u32,
    },

    /// The server could not serve the request (shutting down, poisoned, catching up) on every
    /// attempt. Nothing was applied.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// The server's last reason.
        reason: String,
    },

    /// The server refused the request as malformed or over a limit. Nothing was applied.
    #[error("request refused by the server: {0}")]
    Rejected(ErrorResponse),

    /// The server broke the protocol (an answer of the wrong kind, an answer to no request, a
    /// corrupt frame) and the connection was dropped, on the last attempt of a request that
    /// changes nothing. Nothing was applied.
    #[error("protocol violation by {address}: {reason}")]
    Protocol {
        /// The server's address.
        address: SocketAddr,
        /// What it did.
        reason: String,
    },
}

impl ClientError {
    /// Whether a write may have been applied despite this error. Only
    /// [`ClientError::OutcomeUnknown`]: every other variant means nothing changed.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. })
    }

    /// The error for a server answer that ends a request (one that is neither a redirect nor
    /// worth a retry).
    pub(crate) fn from_response(response: ErrorResponse) -> ClientError {
        match response {
            ErrorResponse::CasMismatch { current_revision } => {
                ClientError::CasMismatch { current_revision }
            }
            ErrorResponse::CollectionNotFound { name } => ClientError::CollectionNotFound { name },
            ErrorResponse::CollectionExists { name } => ClientError::CollectionExists { name },
            ErrorResponse::NotEnoughReplicas { needed, available } => {
                ClientError::NotEnoughReplicas { needed, available }
            }
            ErrorResponse::Unavailable { reason } => ClientError::Unavailable { reason },
            ErrorResponse::ShuttingDown => ClientError::Unavailable {
                reason: "shutting down".into(),
            },
            other => ClientError::Rejected(other),
        }
    }
}
