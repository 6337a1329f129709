//! One client connection, sans-IO: the [`Outbox`] encodes the hello and the requests and keeps
//! the pending-request table; the [`Inbox`] turns received bytes into handshake and reply
//! events, pairing each answer with its request by request id. They are separate so that a
//! driver can read with the inbox (owned by a reader task) while other tasks send through the
//! outbox; [`Inbox::poll_event`] borrows the outbox only for the moment it pops a reply.

use super::constants::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
use crate::decoder::FrameDecoder;
use crate::error::{DecodeError, EncodeError, FrameError};
use crate::frame::FrameMeta;
use crate::ids::RequestId;
use crate::kind::{ChannelKind, MessageKind};
use crate::message::{
    self, ClusterStatusRequest, ClusterStatusResponse, CompareAndSetRequest,
    CreateCollectionRequest, DeleteRequest, DeleteResponse, DropCollectionRequest, ErrorResponse,
    GetRequest, GetResponse, Hello, HelloAccepted, HelloReply, Message, MessageRef, PutRequest,
    Refusal, TopologyRequest, TopologyResponse, WriteResponse,
};
use crate::validate::{Validate, Violation};
use std::collections::HashMap;

/// A request as it goes on the wire; writes carry their client request id already.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Set a key.
    Put(PutRequest),
    /// Read a key.
    Get(GetRequest),
    /// Remove a key.
    Delete(DeleteRequest),
    /// Set or remove a key if its revision holds.
    CompareAndSet(CompareAndSetRequest),
    /// Create a collection.
    CreateCollection(CreateCollectionRequest),
    /// Drop a collection.
    DropCollection(DropCollectionRequest),
    /// Ask for the node's topology.
    Topology,
    /// Ask for the node's view of the control plane.
    ClusterStatus,
}

impl Request {
    /// The message kind this request is sent as.
    pub fn kind(&self) -> MessageKind {
        match self {
            Request::Put(_) => MessageKind::Put,
            Request::Get(_) => MessageKind::Get,
            Request::Delete(_) => MessageKind::Delete,
            Request::CompareAndSet(_) => MessageKind::CompareAndSet,
            Request::CreateCollection(_) => MessageKind::CreateCollection,
            Request::DropCollection(_) => MessageKind::DropCollection,
            Request::Topology => MessageKind::Topology,
            Request::ClusterStatus => MessageKind::ClusterStatus,
        }
    }

    /// The key the request routes by, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Request::Put(request) => Some(&request.key),
            Request::Get(request) => Some(&request.key),
            Request::Delete(request) => Some(&request.key),
            Request::CompareAndSet(request) => Some(&request.key),
            _ => None,
        }
    }

    /// The client request id of a write; `None` for a request that changes nothing.
    pub fn client_request_id(&self) -> Option<crate::ids::ClientRequestId> {
        match self {
            Request::Put(request) => Some(request.id),
            Request::Delete(request) => Some(request.id),
            Request::CompareAndSet(request) => Some(request.id),
            Request::CreateCollection(request) => Some(request.id),
            Request::DropCollection(request) => Some(request.id),
            Request::Get(_) | Request::Topology | Request::ClusterStatus => None,
        }
    }

    /// Whether the request may change state.
    pub fn is_write(&self) -> bool {
        self.client_request_id().is_some()
    }

    /// Checks the protocol's rules, as a receiver would.
    pub fn validate(&self) -> Result<(), Violation> {
        match self {
            Request::Put(request) => request.validate(),
            Request::Get(request) => request.validate(),
            Request::Delete(request) => request.validate(),
            Request::CompareAndSet(request) => request.validate(),
            Request::CreateCollection(request) => request.validate(),
            Request::DropCollection(request) => request.validate(),
            Request::Topology | Request::ClusterStatus => Ok(()),
        }
    }

    fn encode(&self, out: &mut Vec<u8>, meta: FrameMeta) -> Result<usize, EncodeError> {
        match self {
            Request::Put(request) => message::encode(out, meta, request),
            Request::Get(request) => message::encode(out, meta, request),
            Request::Delete(request) => message::encode(out, meta, request),
            Request::CompareAndSet(request) => message::encode(out, meta, request),
            Request::CreateCollection(request) => message::encode(out, meta, request),
            Request::DropCollection(request) => message::encode(out, meta, request),
            Request::Topology => message::encode(out, meta, &TopologyRequest {}),
            Request::ClusterStatus => message::encode(out, meta, &ClusterStatusRequest {}),
        }
    }
}

/// A successful answer, owned (copied out of the frame).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A put, compare-and-set or collection change was applied.
    Written(WriteResponse),
    /// A get's answer.
    Value(GetResponse),
    /// A delete's answer.
    Deleted(DeleteResponse),
    /// A topology answer.
    Topology(TopologyResponse),
    /// A cluster status answer.
    ClusterStatus(ClusterStatusResponse),
}

/// Why a request could not be queued on a connection. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// [`REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX`] requests are already waiting.
    Saturated,
    /// The request breaks the protocol's rules.
    Encode(EncodeError),
}

/// The sending half of a connection: the bytes to write and the pending-request table.
#[derive(Debug)]
pub struct Outbox {
    buffer: Vec<u8>,
    /// Requests sent and not answered: what answers each may take.
    pending: HashMap<RequestId, MessageKind>,
    next_request_id: u64,
}

impl Outbox {
    /// An outbox whose first frame is `hello` (request id 0; requests count from 1).
    pub fn new(hello: &Hello) -> Result<Outbox, EncodeError> {
        let mut buffer = Vec::new();
        message::encode(&mut buffer, FrameMeta::default(), hello)?;
        Ok(Outbox {
            buffer,
            pending: HashMap::new(),
            next_request_id: 1,
        })
    }

    /// Queues `request`; returns the request id its answer will carry.
    pub fn send(&mut self, request: &Request) -> Result<RequestId, SendError> {
        if self.pending.len() >= REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX {
            return Err(SendError::Saturated);
        }
        let request_id = RequestId(self.next_request_id);
        let meta = FrameMeta {
            request_id,
            epoch: crate::ids::Epoch(0),
        };
        request
            .encode(&mut self.buffer, meta)
            .map_err(SendError::Encode)?;
        self.next_request_id += 1;
        let previous = self.pending.insert(request_id, request.kind());
        assert!(previous.is_none(), "request ids are never reused");
        assert!(self.pending.len() <= REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX);
        Ok(request_id)
    }

    /// The bytes waiting to be written.
    pub fn transmit(&self) -> &[u8] {
        &self.buffer
    }

    /// Records that the first `bytes` bytes of [`Outbox::transmit`] were written.
    pub fn transmitted(&mut self, bytes: usize) {
        assert!(
            bytes <= self.buffer.len(),
            "transmitted more than was queued"
        );
        self.buffer.drain(..bytes);
    }

    /// Takes every byte waiting to be written, leaving `spare` (cleared) in its place, so a
    /// driver can write without holding the outbox.
    pub fn take_transmit(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.buffer, spare)
    }

    /// Requests sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Forgets every pending request (the connection is gone); returns their ids.
    pub fn drain(&mut self) -> Vec<RequestId> {
        self.pending
            .drain()
            .map(|(request_id, _)| request_id)
            .collect()
    }

    /// Pops the pending request `request_id` if an answer of `kind` fits it.
    fn complete(&mut self, request_id: RequestId, kind: MessageKind) -> Result<(), String> {
        let Some(&request_kind) = self.pending.get(&request_id) else {
            return Err(format!(
                "a {kind} answers request {request_id}, which is not pending"
            ));
        };
        if kind != MessageKind::ErrorResponse && !kind_answers(request_kind, kind) {
            return Err(format!(
                "a {kind} answers request {request_id}, which was a {request_kind}"
            ));
        }
        self.pending.remove(&request_id);
        Ok(())
    }
}

fn kind_answers(request: MessageKind, answer: MessageKind) -> bool {
    match request {
        MessageKind::Put | MessageKind::CreateCollection | MessageKind::DropCollection => {
            answer == MessageKind::WriteResponse
        }
        MessageKind::Get => answer == MessageKind::GetResponse,
        MessageKind::Delete => answer == MessageKind::DeleteResponse,
        // A compare-and-set that deletes may be answered as a delete.
        MessageKind::CompareAndSet => {
            answer == MessageKind::WriteResponse || answer == MessageKind::DeleteResponse
        }
        MessageKind::Topology => answer == MessageKind::TopologyResponse,
        MessageKind::ClusterStatus => answer == MessageKind::ClusterStatusResponse,
        _ => false,
    }
}

/// What the receiving side produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The server accepted the handshake; replies follow.
    Accepted(HelloAccepted),
    /// The answer to a request.
    Reply {
        /// The request it answers.
        request_id: RequestId,
        /// The answer, or the server's error for that request.
        result: Result<Reply, ErrorResponse>,
    },
}

/// Why a connection must be dropped. Requests still pending on it got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The byte stream broke (corruption, framing lost, a frame over the limit).
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// An intact frame whose body is not a valid message.
    #[error("bad message: {0}")]
    Decode(#[from] DecodeError),
    /// The server refused the handshake and closes the connection; nothing was applied.
    #[error("handshake refused: {0}")]
    Refused(Refusal),
    /// The server broke the protocol's sequence (an answer to no pending request, an answer
    /// of the wrong kind, a request kind from a server, no hello reply first).
    #[error("{0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeState {
    Waiting,
    Accepted,
}

/// The receiving half of a connection: a frame decoder and the handshake's state.
#[derive(Debug)]
pub struct Inbox {
    decoder: FrameDecoder,
    handshake: HandshakeState,
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbox {
    /// An inbox that first expects the server's hello reply.
    pub fn new() -> Inbox {
        Inbox {
            decoder: FrameDecoder::new(ChannelKind::Handshake),
            handshake: HandshakeState::Waiting,
        }
    }

    /// Whether the handshake was accepted.
    pub fn is_accepted(&self) -> bool {
        self.handshake == HandshakeState::Accepted
    }

    /// Space to read the next bytes into; report how many with [`Inbox::received`].
    pub fn read_buf(&mut self) -> Result<&mut [u8], ConnectionError> {
        Ok(self.decoder.read_buf()?)
    }

    /// Records that `bytes` bytes were read into the last [`Inbox::read_buf`].
    pub fn received(&mut self, bytes: usize) {
        self.decoder.advance(bytes);
    }

    /// Copies `bytes` in (for drivers and tests that hold bytes already); returns how many
    /// were taken (fewer only while whole frames wait: poll them first).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ConnectionError> {
        Ok(self.decoder.feed(bytes)?)
    }

    /// The next event from the bytes received, pairing replies with `outbox`'s pending
    /// requests; `Ok(None)` when more bytes are needed. An error means: drop the connection.
    pub fn poll_event(&mut self, outbox: &mut Outbox) -> Result<Option<Event>, ConnectionError> {
        let Some(frame) = self.decoder.next_frame()? else {
            return Ok(None);
        };
        let decoded = message::decode(&frame)?;
        let kind = decoded.kind();
        let request_id = frame.request_id();
        let copy_failed = |error: crate::rkyv::rancor::Error| {
            ConnectionError::Decode(DecodeError::Malformed {
                kind,
                reason: error.to_string(),
            })
        };
        if self.handshake == HandshakeState::Waiting {
            let MessageRef::HelloReply(view) = decoded else {
                return Err(ConnectionError::Protocol(format!(
                    "expected the hello reply first, got a {kind}"
                )));
            };
            return match HelloReply::to_native(view).map_err(copy_failed)? {
                HelloReply::Accepted(accepted) => {
                    self.handshake = HandshakeState::Accepted;
                    self.decoder.set_channel(ChannelKind::Client);
                    Ok(Some(Event::Accepted(accepted)))
                }
                HelloReply::Refused(refusal) => Err(ConnectionError::Refused(refusal)),
            };
        }
        outbox
            .complete(request_id, kind)
            .map_err(ConnectionError::Protocol)?;
        let result = match decoded {
            MessageRef::WriteResponse(view) => Ok(Reply::Written(
                WriteResponse::to_native(view).map_err(copy_failed)?,
            )),
            MessageRef::GetResponse(view) => Ok(Reply::Value(
                GetResponse::to_native(view).map_err(copy_failed)?,
            )),
            MessageRef::DeleteResponse(view) => Ok(Reply::Deleted(
                DeleteResponse::to_native(view).map_err(copy_failed)?,
            )),
            MessageRef::TopologyResponse(view) => Ok(Reply::Topology(
                TopologyResponse::to_native(view).map_err(copy_failed)?,
            )),
            MessageRef::ClusterStatusResponse(view) => Ok(Reply::ClusterStatus(
                ClusterStatusResponse::to_native(view).map_err(copy_failed)?,
            )),
            MessageRef::ErrorResponse(view) => {
                Err(ErrorResponse::to_native(view).map_err(copy_failed)?)
            }
            // `complete` accepted only answer kinds; anything else is a bug caught there.
            other => {
                return Err(ConnectionError::Protocol(format!(
                    "a {} is not an answer",
                    other.kind()
                )))
            }
        };
        Ok(Some(Event::Reply { request_id, result }))
    }

    /// Called when the server closed the stream: an error if it closed inside a frame.
    pub fn finish(&self) -> Result<(), ConnectionError> {
        Ok(self.decoder.finish()?)
    }
}

#[cfg(test)]
mod tests {
    //! One connection driven by scripted server frames.
    use super::*;
    use crate::ids::{ClientId, ClientRequestId, ClusterId, Epoch, Lsn, NodeId, ShardId};
    use crate::message::{encode, ReadConsistency, WriteConsistency};

    fn frame<M: Message>(request_id: u64, message: &M) -> Vec<u8> {
        let mut out = Vec::new();
        let meta = FrameMeta {
            request_id: RequestId(request_id),
            epoch: Epoch(1),
        };
        encode(&mut out, meta, message).unwrap();
        out
    }

    fn accepted() -> Vec<u8> {
        frame(
            0,
            &HelloReply::Accepted(HelloAccepted {
                node: NodeId(1),
                shard: ShardId(0),
                protocol_version: crate::constants::PROTOCOL_VERSION,
                epoch: Epoch(1),
            }),
        )
    }

    fn open() -> (Outbox, Inbox) {
        let outbox = Outbox::new(&Hello::client(ClusterId([3; 16]), ClientId(5))).unwrap();
        assert!(!outbox.transmit().is_empty(), "the hello is queued first");
        (outbox, Inbox::new())
    }

    fn get(key: &[u8]) -> Request {
        Request::Get(GetRequest {
            consistency: ReadConsistency::Leader,
            collection: "c".into(),
            key: key.to_vec(),
        })
    }

    fn put() -> Request {
        Request::Put(PutRequest {
            id: ClientRequestId {
                client: ClientId(5),
                sequence: 1,
            },
            consistency: WriteConsistency::One,
            collection: "c".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        })
    }

    #[test]
    fn answers_are_paired_with_requests_by_id_in_any_order() {
        let (mut outbox, mut inbox) = open();
        let first = outbox.send(&get(b"a")).unwrap();
        let second = outbox.send(&put()).unwrap();
        assert_ne!(first, second);
        assert_eq!(outbox.in_flight(), 2);
        let mut stream = accepted();
        stream.extend(frame(
            second.get(),
            &WriteResponse {
                revision: Lsn(4),
                hlc: 0,
            },
        ));
        stream.extend(frame(first.get(), &GetResponse::NotFound));
        // Byte by byte: the decoder reassembles.
        let mut events = Vec::new();
        for byte in stream {
            assert_eq!(inbox.feed(&[byte]).unwrap(), 1);
            while let Some(event) = inbox.poll_event(&mut outbox).unwrap() {
                events.push(event);
            }
        }
        assert!(matches!(events[0], Event::Accepted(_)));
        assert_eq!(
            events[1],
            Event::Reply {
                request_id: second,
                result: Ok(Reply::Written(WriteResponse {
                    revision: Lsn(4),
                    hlc: 0
                }))
            }
        );
        assert_eq!(
            events[2],
            Event::Reply {
                request_id: first,
                result: Ok(Reply::Value(GetResponse::NotFound))
            }
        );
        assert_eq!(outbox.in_flight(), 0);
        inbox.finish().unwrap();
    }

    #[test]
    fn a_cluster_status_is_answered_by_a_cluster_status_only() {
        use crate::message::{ControlRole, MemberState, MemberStatus, PartitionStatus};
        let status = ClusterStatusResponse {
            node: NodeId(1),
            term: crate::ids::Term(4),
            role: ControlRole::Controller,
            controller: Some(NodeId(1)),
            epoch: Epoch(7),
            lease: false,
            members: vec![MemberStatus {
                node: NodeId(1),
                state: MemberState::Joined,
                suspected: false,
                voter: true,
                gossip_address: "127.0.0.1:7946".into(),
                data_address: "127.0.0.1:7400".into(),
            }],
            partitions: vec![PartitionStatus {
                leader: Some(NodeId(1)),
                replicas: vec![NodeId(1)],
            }],
        };
        let (mut outbox, mut inbox) = open();
        let id = outbox.send(&Request::ClusterStatus).unwrap();
        inbox.feed(&accepted()).unwrap();
        inbox.poll_event(&mut outbox).unwrap();
        inbox.feed(&frame(id.get(), &status)).unwrap();
        assert_eq!(
            inbox.poll_event(&mut outbox).unwrap(),
            Some(Event::Reply {
                request_id: id,
                result: Ok(Reply::ClusterStatus(status.clone()))
            })
        );
        // A topology request answered with a cluster status is out of protocol.
        let (mut outbox, mut inbox) = open();
        let id = outbox.send(&Request::Topology).unwrap();
        inbox.feed(&accepted()).unwrap();
        inbox.poll_event(&mut outbox).unwrap();
        inbox.feed(&frame(id.get(), &status)).unwrap();
        assert!(matches!(
            inbox.poll_event(&mut outbox),
            Err(ConnectionError::Protocol(_))
        ));
        assert_eq!(Request::ClusterStatus.kind(), MessageKind::ClusterStatus);
        assert!(!Request::ClusterStatus.is_write());
        assert_eq!(Request::ClusterStatus.key(), None);
    }

    #[test]
    fn an_error_answer_fits_any_request() {
        let (mut outbox, mut inbox) = open();
        let id = outbox.send(&put()).unwrap();
        inbox.feed(&accepted()).unwrap();
        inbox.poll_event(&mut outbox).unwrap();
        inbox
            .feed(&frame(id.get(), &ErrorResponse::ShuttingDown))
            .unwrap();
        assert_eq!(
            inbox.poll_event(&mut outbox).unwrap(),
            Some(Event::Reply {
                request_id: id,
                result: Err(ErrorResponse::ShuttingDown)
            })
        );
    }

    #[test]
    fn answers_out_of_protocol_drop_the_connection() {
        // An answer to nothing.
        let (mut outbox, mut inbox) = open();
        inbox.feed(&accepted()).unwrap();
        inbox.poll_event(&mut outbox).unwrap();
        inbox.feed(&frame(99, &GetResponse::NotFound)).unwrap();
        assert!(matches!(
            inbox.poll_event(&mut outbox),
            Err(ConnectionError::Protocol(_))
        ));
        // An answer of the wrong kind.
        let (mut outbox, mut inbox) = open();
        let id = outbox.send(&get(b"a")).unwrap();
        inbox.feed(&accepted()).unwrap();
        inbox.poll_event(&mut outbox).unwrap();
        inbox
            .feed(&frame(
                id.get(),
                &WriteResponse {
                    revision: Lsn(1),
                    hlc: 0,
                },
            ))
            .unwrap();
        assert!(matches!(
            inbox.poll_event(&mut outbox),
            Err(ConnectionError::Protocol(_))
        ));
        // A reply before the hello reply.
        let (mut outbox, mut inbox) = open();
        let id = outbox.send(&get(b"a")).unwrap();
        // A client frame is not allowed on the handshake channel at all.
        inbox
            .feed(&frame(id.get(), &GetResponse::NotFound))
            .unwrap();
        assert!(inbox.poll_event(&mut outbox).is_err());
        // Corrupt bytes.
        let (mut outbox, mut inbox) = open();
        let mut bad = accepted();
        bad[20] ^= 1;
        inbox.feed(&bad).unwrap();
        assert!(matches!(
            inbox.poll_event(&mut outbox),
            Err(ConnectionError::Frame(_))
        ));
    }

    #[test]
    fn a_refused_handshake_says_why() {
        let (mut outbox, mut inbox) = open();
        let refusal = Refusal::WrongCluster {
            expected: ClusterId([1; 16]),
            actual: ClusterId([3; 16]),
        };
        inbox
            .feed(&frame(0, &HelloReply::Refused(refusal.clone())))
            .unwrap();
        assert_eq!(
            inbox.poll_event(&mut outbox),
            Err(ConnectionError::Refused(refusal))
        );
    }

    #[test]
    fn the_pending_table_is_bounded() {
        let (mut outbox, _) = open();
        for _ in 0..REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX {
            outbox.send(&get(b"a")).unwrap();
        }
        let queued = outbox.transmit().len();
        assert_eq!(outbox.send(&get(b"a")), Err(SendError::Saturated));
        assert_eq!(outbox.transmit().len(), queued, "nothing queued");
        assert_eq!(outbox.drain().len(), REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX);
        assert_eq!(outbox.in_flight(), 0);
    }
}
