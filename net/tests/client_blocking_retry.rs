//! Proves, over real TCP against a scripted server, that the blocking client retries a write
//! whose connection broke or whose answer never came with the *same* client request id on the
//! wire (so the server can apply it at most once), that it reports a success once a retry is
//! answered, and that a write no attempt got an answer for ends as `OutcomeUnknown` after a
//! bounded number of attempts.

use coregrid_net::client::{BlockingClient, ClientConfig, ClientError, RetryPolicy};
use coregrid_net::message::{
    HelloAccepted, HelloReply, ShardTopology, TopologyResponse, WriteResponse,
};
use coregrid_net::{
    decode, encode, ChannelKind, ClientRequestId, ClusterId, Epoch, FrameDecoder, FrameMeta, Lsn,
    MessageRef, NodeId, PartitionId, ShardId,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted server does with the n-th put it receives (0-based).
#[derive(Clone, Copy)]
enum PutScript {
    /// Close the connection without answering.
    Drop,
    /// Never answer (the connection stays open).
    Silent,
    /// Answer with a write response.
    Answer,
}

/// Serves one shard on a free port until the test ends; records every put's client request id.
fn scripted_server(script: Vec<PutScript>) -> (u16, Arc<Mutex<Vec<ClientRequestId>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if let Some(kept) = serve(stream, port, &script, &recorded) {
                held.push(kept);
            }
        }
    });
    (port, seen)
}

/// Serves one connection; returns it if it must stay open unanswered.
fn serve(
    mut stream: TcpStream,
    port: u16,
    script: &[PutScript],
    seen: &Mutex<Vec<ClientRequestId>>,
) -> Option<TcpStream> {
    let mut decoder = FrameDecoder::new(ChannelKind::Handshake);
    loop {
        let buffer = decoder.read_buf().ok()?;
        let read = stream.read(buffer).ok()?;
        if read == 0 {
            return None;
        }
        decoder.advance(read);
        while let Some(frame) = decoder.next_frame().ok()? {
            let meta = FrameMeta {
                request_id: frame.request_id(),
                epoch: Epoch(1),
            };
            let mut out = Vec::new();
            match decode(&frame).ok()? {
                MessageRef::Hello(_) => {
                    let reply = HelloReply::Accepted(HelloAccepted {
                        node: NodeId(1),
                        shard: ShardId(0),
                        protocol_version: coregrid_net::constants::PROTOCOL_VERSION,
                        epoch: Epoch(1),
                    });
                    encode(&mut out, meta, &reply).unwrap();
                    decoder.set_channel(ChannelKind::Client);
                }
                MessageRef::Topology(_) => {
                    let topology = TopologyResponse {
                        node: NodeId(1),
                        epoch: Epoch(1),
                        partition_count: 4,
                        shards: vec![ShardTopology {
                            shard: ShardId(0),
                            port,
                            partitions: (0..4).map(PartitionId).collect(),
                        }],
                    };
                    encode(&mut out, meta, &topology).unwrap();
                }
                MessageRef::Put(put) => {
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(put.id.get());
                        seen.len() - 1
                    };
                    match script.get(index).copied().unwrap_or(PutScript::Answer) {
                        PutScript::Drop => return None,
                        PutScript::Silent => return Some(stream),
                        PutScript::Answer => {
                            let answer = WriteResponse {
                                revision: Lsn(index as u64 + 1),
                                hlc: 0,
                            };
                            encode(&mut out, meta, &answer).unwrap();
                        }
                    }
                }
                _ => return None,
            }
            stream.write_all(&out).ok()?;
        }
    }
}

fn client(port: u16, retries_max: u32, request_timeout: Duration) -> BlockingClient {
    let mut config = ClientConfig::new(
        vec![format!("127.0.0.1:{port}").parse().unwrap()],
        ClusterId::from_name("coregrid").unwrap(),
    );
    config.request_timeout = request_timeout;
    config.retry = RetryPolicy {
        retries_max,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    BlockingClient::new(config).unwrap()
}

#[test]
fn a_write_whose_connection_broke_is_retried_with_the_same_id() {
    let (port, seen) = scripted_server(vec![PutScript::Drop, PutScript::Drop, PutScript::Answer]);
    let mut client = client(port, 4, Duration::from_secs(10));
    let written = client.put("c", b"key", b"value").unwrap();
    assert_eq!(written.revision, Lsn(3), "the third attempt was answered");
    let ids = seen.lock().unwrap().clone();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The next write is a new one: a new sequence number, same client.
    client.put("c", b"key", b"other").unwrap();
    let ids = seen.lock().unwrap().clone();
    assert_eq!(ids[3].client, ids[0].client);
    assert_eq!(ids[3].sequence, ids[0].sequence + 1);
}

#[test]
fn a_write_never_answered_ends_unknown_after_bounded_attempts() {
    let (port, seen) = scripted_server(vec![PutScript::Silent; 16]);
    let mut client = client(port, 2, Duration::from_millis(200));
    let error = client.put("c", b"key", b"value").unwrap_err();
    let ids = seen.lock().unwrap().clone();
    assert!(error.may_have_applied());
    match error {
        ClientError::OutcomeUnknown { id, .. } => assert_eq!(id, ids[0]),
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(ids.len(), 3, "one attempt and two retries");
    assert!(ids.iter().all(|id| *id == ids[0]));
}
