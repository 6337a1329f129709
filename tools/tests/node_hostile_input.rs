//! Proves design.md promise 6 against a running `coregrid node`: truncated, oversized, corrupt,
//! unknown-kind, garbage and invalid-rkyv frames, a wrong cluster id, a request before the
//! handshake and a silent peer each get a clear error (an error frame or a handshake refusal)
//! and at most the loss of their own connection. A well-behaved connection opened before them
//! gets correct answers between every attack, no stored byte changes (every file of the data
//! directory hashes the same before and after), and the node still accepts new connections.

#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "this file restarts no node on fixed ports")]
mod node_process;
#[path = "common/wire_client.rs"]
#[expect(dead_code, reason = "one shard: no routing client")]
mod wire_client;

use coregrid_net::constants::FRAME_HEADER_BYTES;
use coregrid_net::message::{ErrorResponse, GetResponse, HelloReply, Refusal};
use coregrid_net::{encode_frame_raw, ClusterId, FrameMeta, MessageKind, RequestId};
use node_process::NodeProcess;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use wire_client::{default_cluster, Answer, Received, WireClient};

const COLLECTION: &str = "kept";
const KEYS: u32 = 50;

fn key(index: u32) -> Vec<u8> {
    format!("k{index}").into_bytes()
}

fn value(index: u32) -> Vec<u8> {
    format!("v{index}").repeat(10).into_bytes()
}

/// crc32c and length of every file under `dir`, by path.
fn hash_tree(dir: &Path) -> BTreeMap<String, (u32, usize)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(
                    path.display().to_string(),
                    (crc32c::crc32c(&bytes), bytes.len()),
                );
            }
        }
    }
    files
}

/// The well-behaved connection still reads every key correctly.
fn check_good(good: &mut WireClient) {
    for index in (0..KEYS).step_by(7) {
        match good.get(COLLECTION, &key(index)) {
            Answer::Get(GetResponse::Found { value: found, .. }) => {
                assert_eq!(found, value(index))
            }
            other => panic!("the good connection got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns every answer on the way.
fn answers_until_closed(client: &mut WireClient) -> Vec<(RequestId, Answer)> {
    let mut answers = Vec::new();
    loop {
        match client.receive() {
            Received::Frame(id, answer) => answers.push((id, answer)),
            Received::Closed => return answers,
        }
    }
}

/// A valid put frame for `key`, as bytes.
fn put_frame(client: &mut WireClient, request_id: u64) -> Vec<u8> {
    let request = client.put_request(COLLECTION, b"attack", b"must never be stored");
    let mut out = Vec::new();
    let meta = FrameMeta {
        request_id: RequestId(request_id),
        epoch: Default::default(),
    };
    coregrid_net::encode(&mut out, meta, &request).unwrap();
    out
}

/// Rewrites the header's crc after a field was changed, so only the change is wrong.
fn reseal(frame: &mut [u8]) {
    let crc = crc32c::crc32c(&frame[8..FRAME_HEADER_BYTES]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Opens a connection past the handshake, sends `bytes`, and expects one error frame naming
/// `reason` and then the close.
fn broken_stream(address: SocketAddr, bytes: &[u8], close_write: bool, reason: &str) {
    let mut attacker = WireClient::connect(address, default_cluster());
    attacker.send_raw(bytes).unwrap();
    if close_write {
        attacker.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let answers = answers_until_closed(&mut attacker);
    assert!(
        matches!(
            answers.as_slice(),
            [(_, Answer::Error(ErrorResponse::InvalidRequest { reason: said }))] if said.contains(reason)
        ),
        "expected one error naming {reason:?}, got {answers:?}"
    );
}

/// Opens a connection, sends `bytes` in place of a hello, expects a refusal then the close.
fn refused_handshake(address: SocketAddr, bytes: &[u8], check: impl Fn(&Refusal) -> bool) {
    let mut attacker = WireClient::connect_raw(address);
    attacker.send_raw(bytes).unwrap();
    let answers = answers_until_closed(&mut attacker);
    match answers.as_slice() {
        [(_, Answer::Hello(HelloReply::Refused(refusal)))] if check(refusal) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn hostile_frames_cost_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), 1, &["--handshake-timeout-ms", "500"]);
    let address = node.addresses[0];
    let mut good = WireClient::connect(address, default_cluster());
    good.create_collection(COLLECTION);
    for index in 0..KEYS {
        assert!(matches!(
            good.put(COLLECTION, &key(index), &value(index)),
            Answer::Write(_)
        ));
    }
    check_good(&mut good);
    // Every write is acknowledged, so durable; nothing writes from here on.
    let before = hash_tree(dir.path());

    let mut scratch = WireClient::connect_raw(address);
    let put = put_frame(&mut scratch, 9);

    // Truncated: half a frame, then the end of the stream.
    broken_stream(
        address,
        &put[..put.len() / 2],
        true,
        "stream ended inside a frame",
    );
    check_good(&mut good);

    // Oversized: a header announcing a body over the client channel's limit.
    let mut oversized = put[..FRAME_HEADER_BYTES].to_vec();
    oversized[12..16].copy_from_slice(&(64u32 << 20).to_le_bytes());
    reseal(&mut oversized);
    broken_stream(
        address,
        &oversized,
        false,
        "over the client channel's limit",
    );
    check_good(&mut good);

    // Corrupt: one body bit flipped.
    let mut corrupt = put.clone();
    corrupt[FRAME_HEADER_BYTES + 3] ^= 0x10;
    broken_stream(address, &corrupt, false, "checksum mismatch");
    check_good(&mut good);

    // Unknown kind, header crc resealed.
    let mut unknown = put.clone();
    unknown[8..10].copy_from_slice(&0x01f0u16.to_le_bytes());
    reseal(&mut unknown);
    broken_stream(address, &unknown, false, "unknown message kind");
    check_good(&mut good);

    // A second hello after the handshake.
    let mut hello_again = Vec::new();
    let hello = coregrid_net::message::Hello::client(default_cluster(), coregrid_net::ClientId(1));
    coregrid_net::encode(&mut hello_again, FrameMeta::default(), &hello).unwrap();
    broken_stream(address, &hello_again, false, "not allowed");
    check_good(&mut good);

    // Wrong cluster id.
    let mut other = WireClient::connect_raw(address);
    match other.hello(ClusterId::from_name("other").unwrap()) {
        HelloReply::Refused(Refusal::WrongCluster { .. }) => {}
        reply => panic!("a wrong cluster was not refused: {reply:?}"),
    }
    assert!(answers_until_closed(&mut other).is_empty());
    check_good(&mut good);

    // Garbage (another protocol) in place of a hello.
    refused_handshake(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", |refusal| {
        refusal.to_string().contains("magic")
    });
    // A request before the handshake.
    refused_handshake(address, &put, |refusal| {
        refusal.to_string().contains("not allowed")
    });
    // Silence: refused once the handshake timeout passes.
    refused_handshake(address, b"", |refusal| {
        refusal.to_string().contains("handshake timeout")
    });
    check_good(&mut good);

    // A body that is not a valid archive, with correct crcs: an error for that request id,
    // and the connection goes on.
    let mut invalid = Vec::new();
    let garbage_body: Vec<u8> = (0u8..=200).map(|byte| byte.wrapping_mul(37)).collect();
    encode_frame_raw(
        &mut invalid,
        MessageKind::Put,
        FrameMeta {
            request_id: RequestId(77),
            epoch: Default::default(),
        },
        &garbage_body,
    )
    .unwrap();
    let mut survivor = WireClient::connect(address, default_cluster());
    survivor.send_raw(&invalid).unwrap();
    match survivor.receive() {
        Received::Frame(RequestId(77), Answer::Error(ErrorResponse::InvalidRequest { .. })) => {}
        other => panic!("an invalid archive got {other:?}"),
    }
    // The same connection still serves, and a put to a missing collection changes nothing.
    assert!(matches!(
        survivor.get(COLLECTION, &key(1)),
        Answer::Get(GetResponse::Found { .. })
    ));
    assert!(matches!(
        survivor.put("missing", b"k", b"v"),
        Answer::Error(ErrorResponse::CollectionNotFound { .. })
    ));
    check_good(&mut good);

    let after = hash_tree(dir.path());
    assert_eq!(before, after, "a stored byte changed");
    // A new connection is still accepted and served.
    let mut fresh = WireClient::connect(address, default_cluster());
    check_good(&mut fresh);
    assert_eq!(node.stop_with(libc::SIGTERM).code(), Some(0));
}
