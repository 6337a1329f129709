//! A minimal blocking client for the node tests, written on the wire crate's codec and
//! `std::net` alone, so the server is tested against the protocol rather than against the
//! native client it shares code with. Shared by the `node_*` tests; each test file includes it
//! with `#[path = "common/wire_client.rs"] mod wire_client;`.

use coregrid_net::message::{
    CreateCollectionRequest, ErrorResponse, GetRequest, GetResponse, Hello, HelloReply, PutRequest,
    ReadConsistency, TopologyRequest, TopologyResponse, WriteConsistency, WriteResponse,
};
use coregrid_net::{
    decode, encode, ChannelKind, ClientId, ClientRequestId, ClusterId, FrameDecoder, FrameMeta,
    Message, MessageKind, MessageRef, RequestId,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for one answer before failing (answers normally take milliseconds).
pub const ANSWER_WAIT_MAX: Duration = Duration::from_secs(20);

/// The cluster id of the default cluster name, "coregrid".
pub fn default_cluster() -> ClusterId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"coregrid");
    ClusterId(id)
}

/// A client id no other connection of any test run has used: the node remembers applied
/// (client, sequence) pairs across restarts, so a reused id would make new writes look like
/// retries.
fn fresh_client_id() -> ClientId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ClientId(nanos ^ (u64::from(std::process::id()) << 40) ^ (count << 20))
}

/// Any answer, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Hello(HelloReply),
    Write(WriteResponse),
    Get(GetResponse),
    Topology(TopologyResponse),
    Error(ErrorResponse),
    Other(MessageKind),
}

/// What came back from a read.
#[derive(Debug)]
pub enum Received {
    /// A frame: its request id and answer.
    Frame(RequestId, Answer),
    /// The server closed the connection.
    Closed,
}

/// One blocking connection.
pub struct WireClient {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    next_request: u64,
    next_sequence: u64,
    client: ClientId,
}

impl WireClient {
    /// Connects without a handshake (for tests that send their own first bytes).
    pub fn connect_raw(address: SocketAddr) -> WireClient {
        let stream = TcpStream::connect(address).expect("connect to the node");
        stream
            .set_read_timeout(Some(ANSWER_WAIT_MAX))
            .expect("set a read timeout");
        WireClient {
            stream,
            decoder: FrameDecoder::new(ChannelKind::Handshake),
            next_request: 1,
            next_sequence: 1,
            client: fresh_client_id(),
        }
    }

    /// Connects and completes the handshake for `cluster`; panics on a refusal.
    pub fn connect(address: SocketAddr, cluster: ClusterId) -> WireClient {
        let mut client = WireClient::connect_raw(address);
        match client.hello(cluster) {
            HelloReply::Accepted(_) => client,
            HelloReply::Refused(refusal) => panic!("handshake refused: {refusal}"),
        }
    }

    /// Sends a hello and returns the reply (the decoder switches to the client channel on an
    /// acceptance).
    pub fn hello(&mut self, cluster: ClusterId) -> HelloReply {
        let hello = Hello::client(cluster, self.client);
        let id = self.send(&hello);
        match self.receive() {
            Received::Frame(answer_id, Answer::Hello(reply)) => {
                assert_eq!(answer_id, id);
                if matches!(reply, HelloReply::Accepted(_)) {
                    self.decoder.set_channel(ChannelKind::Client);
                }
                reply
            }
            other => panic!("expected a hello reply, got {other:?}"),
        }
    }

    /// Sends `message` under a fresh request id; returns the id.
    pub fn send<M: Message>(&mut self, message: &M) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let mut out = Vec::new();
        let meta = FrameMeta {
            request_id: id,
            epoch: Default::default(),
        };
        encode(&mut out, meta, message).expect("encode a request");
        self.stream.write_all(&out).expect("send a request");
        id
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next frame, or the end of the stream (a reset counts as closed).
    pub fn receive(&mut self) -> Received {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    let id = frame.request_id();
                    let answer = match decode(&frame).expect("the server sends valid bodies") {
                        MessageRef::HelloReply(view) => {
                            Answer::Hello(HelloReply::to_native(view).expect("deserialize"))
                        }
                        MessageRef::WriteResponse(view) => {
                            Answer::Write(WriteResponse::to_native(view).expect("deserialize"))
                        }
                        MessageRef::GetResponse(view) => {
                            Answer::Get(GetResponse::to_native(view).expect("deserialize"))
                        }
                        MessageRef::TopologyResponse(view) => Answer::Topology(
                            TopologyResponse::to_native(view).expect("deserialize"),
                        ),
                        MessageRef::ErrorResponse(view) => {
                            Answer::Error(ErrorResponse::to_native(view).expect("deserialize"))
                        }
                        other => Answer::Other(other.kind()),
                    };
                    return Received::Frame(id, answer);
                }
                Ok(None) => {}
                Err(error) => panic!("the server broke framing: {error}"),
            }
            let buffer = self.decoder.read_buf().expect("decoder usable");
            match self.stream.read(buffer) {
                Ok(0) => return Received::Closed,
                Ok(count) => self.decoder.advance(count),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Received::Closed
                }
                Err(error) => panic!("reading an answer: {error}"),
            }
        }
    }

    /// Sends `message` and reads answers until the one for it (panics on a close).
    pub fn call<M: Message>(&mut self, message: &M) -> Answer {
        let id = self.send(message);
        match self.receive() {
            Received::Frame(answer_id, answer) => {
                assert_eq!(answer_id, id, "one request at a time: answers in order");
                answer
            }
            Received::Closed => panic!("the server closed the connection"),
        }
    }

    fn write_id(&mut self) -> ClientRequestId {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        ClientRequestId {
            client: self.client,
            sequence,
        }
    }

    /// Creates `name` (an existing one is fine).
    pub fn create_collection(&mut self, name: &str) {
        match self.create_collection_at(name, WriteConsistency::One) {
            Answer::Write(_) | Answer::Error(ErrorResponse::CollectionExists { .. }) => {}
            other => panic!("create collection: {other:?}"),
        }
    }

    /// Asks this shard's node to create `name` in the partitions it leads, at `consistency`:
    /// the answer as it comes.
    pub fn create_collection_at(&mut self, name: &str, consistency: WriteConsistency) -> Answer {
        let request = CreateCollectionRequest {
            id: self.write_id(),
            consistency,
            name: name.into(),
        };
        self.call(&request)
    }

    /// The put request for `key`.
    pub fn put_request(&mut self, collection: &str, key: &[u8], value: &[u8]) -> PutRequest {
        PutRequest {
            id: self.write_id(),
            consistency: WriteConsistency::One,
            collection: collection.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    /// Puts and returns the answer.
    pub fn put(&mut self, collection: &str, key: &[u8], value: &[u8]) -> Answer {
        let request = self.put_request(collection, key, value);
        self.call(&request)
    }

    /// Gets and returns the answer.
    pub fn get(&mut self, collection: &str, key: &[u8]) -> Answer {
        self.call(&GetRequest {
            consistency: ReadConsistency::Leader,
            collection: collection.into(),
            key: key.to_vec(),
        })
    }

    /// The node's topology.
    pub fn topology(&mut self) -> TopologyResponse {
        match self.call(&TopologyRequest {}) {
            Answer::Topology(topology) => topology,
            other => panic!("topology: {other:?}"),
        }
    }
}

/// Connections to every shard of a node, routing each key as a client would: the engine's
/// placement, `crc32c(key) % partitions` on shard `partition % shards`.
pub struct NodeClient {
    pub shards: Vec<WireClient>,
    pub partition_count: u32,
}

impl NodeClient {
    /// Connects to shard 0, reads the topology, connects to every shard it lists.
    pub fn connect(first: SocketAddr, cluster: ClusterId) -> NodeClient {
        let mut seed = WireClient::connect(first, cluster);
        let topology = seed.topology();
        let shards = topology
            .shards
            .iter()
            .map(|shard| WireClient::connect(SocketAddr::new(first.ip(), shard.port), cluster))
            .collect();
        NodeClient {
            shards,
            partition_count: topology.partition_count,
        }
    }

    /// The connection to the shard that owns `key`.
    pub fn for_key(&mut self, key: &[u8]) -> &mut WireClient {
        let partition = crc32c::crc32c(key) % self.partition_count;
        let shard = partition as usize % self.shards.len();
        &mut self.shards[shard]
    }
}
